"""The visual report: unbounded identity colours, window drawings, galleries, an offline HTML page."""

from __future__ import annotations

import itertools
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from reid.core.contracts.labels import row_id, window_panels
from reid.core.contracts.manifest import ShardedOutput, error_table
from reid.core.data.ids import PanelId, instance_id, panel_image_relpath, parse_panel_id
from reid.core.images import encode_jpeg
from reid.stages.label import LABEL_SCHEMA
from reid.stages.report import draw_window, identity_color, identity_gallery, sample_windows, write_report


def test_identity_colours_are_unbounded_and_distinct():
    colours = [identity_color(k) for k in range(1000)]
    assert len(set(colours)) == 1000
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)
    first = np.asarray(colours[:12], float)
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(first, 2)) > 50


def test_draw_window_colours_every_identity_and_survives_missing_panels():
    height, gap = 160, 8
    panels = [Image.new("RGB", (140, height), (255, 255, 255)), None, Image.new("RGB", (120, height), "white")]
    boxes = []
    for p, n in ((0, 5), (2, 4)):
        for j in range(n):
            kind = "face" if j % 2 else "body"
            boxes.append({"panel": p, "type": kind, "box": (5 + 25 * j, 20, 25 + 25 * j, 140),
                          "identity": len(boxes)})
    boxes.append({"panel": 1, "type": "face", "box": (0, 0, 10, 10), "identity": 99})  # on the missing panel
    boxes.append({"panel": 2, "type": "body", "box": (105, 20, 118, 140), "identity": None})
    image = draw_window(panels, boxes, height=height, gap=gap)
    placeholder_w = height * 3 // 4
    assert image.size == (140 + placeholder_w + 120 + 4 * gap, height + 2 * gap)
    offsets = {0: gap, 2: gap + 140 + gap + placeholder_w + gap}
    for b in boxes:
        if b["panel"] == 1:
            continue
        x0, y0, _, y1 = b["box"]
        expected = identity_color(b["identity"]) if b["identity"] is not None else (128, 128, 128)
        assert image.getpixel((offsets[b["panel"]] + x0, gap + (y0 + y1) // 2)) == expected, b
    assert len({b["identity"] for b in boxes}) > 5  # the seed's fixed palette crashed at the 6th


def test_identity_gallery_layout():
    crop = Image.new("RGB", (30, 60), (10, 200, 10))
    image = identity_gallery([(0, 1, [crop]), (7, 12, [crop] * 9), (3, 0, [])], thumb=40, gap=4)
    assert image.size == (110 + 9 * 44 + 4, 3 * 44 + 4)
    assert image.getpixel((4, 4 + 44 + 20)) == identity_color(7)  # the frame of the second row
    assert image.getpixel((110 + 20, 4 + 44 + 20)) == (10, 200, 10)  # a member crop, scaled to fit


def _labels_output(root: Path, crops_root: Path, comics_root: Path) -> list[str]:
    """A hand-made finished labels output: 2 series, 3 windows, one unassigned box, one missing panel."""
    windows = {"5-00000": ["5_0_0+5_0_1", "5_1_0"], "6-00000": ["6_0_0+6_0_1"]}
    labels, crops = ShardedOutput(str(root), "row_id"), ShardedOutput(str(crops_root), "instance_id")
    for shard, window_ids in windows.items():
        rows, crop_rows = [], []
        for w, window in enumerate(window_ids):
            for panel in map(parse_panel_id, window_panels(window)):
                if str(panel) != "6_0_1":  # a panel whose image is missing
                    Image.new("RGB", (100, 80), (230, 230, 200)).save(_panel_path(comics_root, panel))
                for k, kind in enumerate(("face", "body")):
                    iid = instance_id(panel.series, panel.page, panel.panel, kind, 0)
                    rows.append({"row_id": row_id(iid, window), "instance_id": iid, "type": kind,
                                 "panel_id": str(panel), "series_id": int(shard[0]), "window_id": window,
                                 "char_key": f"{panel}#0", "identity": w, "series_identity": w + k,
                                 "distance": 0.1, "box": [10, 10, 40, 70], "model": "m", "model_sha256": "x",
                                 "run_id": "r", "shard": shard})
                    crop_rows.append({"instance_id": iid, "image": encode_jpeg(Image.new("RGB", (30, 60), "red"))})
        first = parse_panel_id(window_panels(window_ids[0])[0])
        errors = error_table([{"id": row_id(instance_id(first.series, first.page, first.panel, "face", 1), window_ids[0]),
                               "shard": shard,
                               "stage": "crop", "source": "x", "reason": "panel image not found"}])
        labels.commit(shard, pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), errors, len(rows) + 1)
        crops.commit(shard, pa.Table.from_pylist(crop_rows), error_table([]), len(crop_rows))
    labels.finalize(windows)
    return [w for ws in windows.values() for w in ws]


def _panel_path(comics_root: Path, panel: PanelId) -> Path:
    path = comics_root / panel_image_relpath(panel)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_write_report_is_an_offline_page_of_existing_pngs(tmp_path):
    labels_root, crops_root, comics_root = tmp_path / "labels", tmp_path / "crops", tmp_path / "comics"
    window_ids = _labels_output(labels_root, crops_root, comics_root)
    index = Path(write_report(str(labels_root), str(crops_root), str(comics_root), str(tmp_path / "report"),
                              windows=3, series=2))
    text = index.read_text()
    sources = re.findall(r"<img src='([^']+)'", text)
    assert len(sources) == 3 + 2
    for src in sources:
        assert not src.startswith("/") and "://" not in src and ".." not in src
        with Image.open(index.parent / src) as image:
            assert image.format == "PNG"
    assert "6_0_0+6_0_1: 1 identities, 4 boxes, 1 unassigned" in text
    # the sample is the windows with the smallest id hashes, whatever shard they sit in
    expected = sorted(window_ids, key=lambda w: zlib.crc32(w.encode()))[:2]
    assert [w for w, _ in sample_windows(str(labels_root), 2)] == expected
