"""Visual report of a labels output: windows with identity-coloured boxes, identity galleries, one HTML page.

``write_report`` draws, for a deterministic sample of windows, the window's panels side by side with every
face (thick) and body (thin) box in its identity's colour and numbered by it (the paper's "Appendix A"
picture), and for a few series a gallery with one row of member crops per series-level identity. It writes
PNGs and ``index.html`` (relative links only: the folder opens offline and as an MLflow artifact). Colours
are generated for any number of identities (:func:`identity_color`), never taken from a fixed list.
"""

from __future__ import annotations

import colorsys
import heapq
import html
import io as _io
import json
import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont, ImageOps

from reid.core import io
from reid.core.contracts.crops import read_shard_crops, series_of_shard
from reid.core.contracts.labels import labels_output, read_quality, split_row_id, window_panels
from reid.core.data import formats
from reid.core.data.ids import parse_instance_id
from reid.core.errors import DataFormatError
from reid.core.images import decode_image, read_image_file

GOLDEN = 0.6180339887498949
GALLERY_IDENTITIES = 12


def identity_color(identity: int) -> tuple[int, int, int]:
    """A colour for identity ``identity`` >= 0: hues spread by the golden ratio, so neighbours differ."""
    hue = (0.05 + identity * GOLDEN) % 1.0
    saturation = (0.9, 0.65, 1.0)[identity % 3]
    value = (0.95, 0.75, 0.55)[(identity // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _tag(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: tuple[int, int, int],
         font: ImageFont.ImageFont) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text(xy, text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)


def _placeholder(width: int, height: int, text: str) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 200, 200))
    ImageDraw.Draw(image).text((8, height // 2), text, fill=(60, 60, 60), font=_font(14))
    return image


def draw_window(panels: Sequence[Image.Image | None], boxes: Sequence[dict[str, Any]], height: int = 300,
                gap: int = 8) -> Image.Image:
    """The panels of a window side by side (scaled to ``height`` px) with their boxes drawn.

    ``boxes``: dicts with ``panel`` (index into ``panels``), ``type`` (face | body), ``box`` (x0, y0, x1, y1
    in panel pixels) and ``identity`` (int; None draws a grey box marked "?"). A missing panel (None) is a
    grey placeholder.
    """
    scaled, scales = [], []
    for panel in panels:
        if panel is None:
            scaled.append(_placeholder(height * 3 // 4, height, "panel missing"))
            scales.append(0.0)
            continue
        scale = height / panel.height
        scaled.append(panel.convert("RGB").resize((max(1, round(panel.width * scale)), height)))
        scales.append(scale)
    width = sum(p.width for p in scaled) + gap * (len(scaled) + 1)
    canvas = Image.new("RGB", (width, height + 2 * gap), (255, 255, 255))
    offsets, x = [], gap
    for panel in scaled:
        canvas.paste(panel, (x, gap))
        offsets.append(x)
        x += panel.width + gap
    draw, font = ImageDraw.Draw(canvas), _font(max(12, height // 22))
    for b in sorted(boxes, key=lambda b: b["type"] == "face"):  # faces on top of bodies
        scale = scales[b["panel"]]
        if not scale:
            continue
        x0, y0, x1, y1 = (v * scale for v in b["box"])
        ox, oy = offsets[b["panel"]], gap
        identity = b.get("identity")
        color = identity_color(identity) if identity is not None else (128, 128, 128)
        draw.rectangle((ox + x0, oy + y0, ox + x1, oy + y1), outline=color, width=4 if b["type"] == "face" else 2)
        text = str(identity) if identity is not None else "?"
        anchor = (ox + x0 + 3, oy + y0 + 2) if b["type"] == "face" else (ox + x0 + 3, oy + y1 - font.size - 6)
        _tag(draw, anchor, text, color, font)
    return canvas


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    image = ImageOps.contain(image.convert("RGB"), (size, size))
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def identity_gallery(rows: Sequence[tuple[int, int, Sequence[Image.Image]]], thumb: int = 72,
                     gap: int = 4) -> Image.Image:
    """One row per identity: ``(identity, number of members, member crops)`` → a gallery image."""
    label_w = 110
    columns = max((len(crops) for _, _, crops in rows), default=1)
    canvas = Image.new("RGB", (label_w + columns * (thumb + gap) + gap, max(1, len(rows)) * (thumb + gap) + gap),
                       (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), _font(14)
    for r, (identity, count, crops) in enumerate(rows):
        y = gap + r * (thumb + gap)
        color = identity_color(identity)
        draw.rectangle((gap, y, label_w - gap, y + thumb), outline=color, width=4)
        _tag(draw, (gap + 8, y + 8), str(identity), color, font)
        draw.text((gap + 8, y + thumb - 22), f"boxes: {count}", fill=(0, 0, 0), font=font)
        for c, crop in enumerate(crops):
            canvas.paste(_thumbnail(crop, thumb), (label_w + c * (thumb + gap), y))
    return canvas


# -- reading the labels output --------------------------------------------------------------------------

def _png(image: Image.Image) -> bytes:
    out = _io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def sample_windows(labels_root: str, count: int) -> list[tuple[str, str]]:
    """``count`` (window_id, shard) picked by a hash of the window id: deterministic, spread over the corpus,
    streaming (one shard's window ids in memory at a time)."""
    heap: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    output = labels_output(labels_root)
    for shard in sorted(output.committed()):
        for window_id in set(io.read_parquet(output.data_path(shard), ["window_id"])["window_id"].to_pylist()):
            if window_id in seen:
                continue
            item = (-zlib.crc32(window_id.encode()), window_id, shard)
            if len(heap) < count:
                heapq.heappush(heap, item)
                seen.add(window_id)
            elif item > heap[0]:
                seen.discard(heapq.heappushpop(heap, item)[1])
                seen.add(window_id)
    return [(w, s) for _, w, s in sorted(heap, reverse=True)]


def _panel_image(comics_root: str, panel_id: str) -> Image.Image | None:
    if not comics_root:
        return None
    path = formats.panel_image_path(comics_root, panel_id)
    try:  # the same checks as the crop job's: a directory, a device or a huge file is no panel to draw
        return decode_image(read_image_file(path, inside=[comics_root, io.join(comics_root, "raw_panel_images")],
                                            what="panel image"), path)
    except DataFormatError:
        return None


def _window_figure(labels_root: str, comics_root: str, window_id: str, shard: str, out_dir: str,
                   rows_cache: dict[str, pa.Table]) -> dict[str, Any]:
    if shard not in rows_cache:
        rows_cache.clear()
        rows_cache[shard] = io.read_parquet(labels_output(labels_root).data_path(shard),
                                            ["window_id", "panel_id", "type", "box", "identity"])
    rows = rows_cache[shard]
    rows = rows.filter(pc.equal(rows["window_id"], window_id)).to_pylist()
    panel_ids = window_panels(window_id)
    boxes = [{"panel": panel_ids.index(r["panel_id"]), "type": r["type"], "box": r["box"],
              "identity": r["identity"]} for r in rows]
    errors = io.read_parquet(labels_output(labels_root).errors_path(shard), ["id"])["id"].to_pylist()
    unassigned = sum(1 for e in errors if split_row_id(e)[1] == window_id)
    image = draw_window([_panel_image(comics_root, p) for p in panel_ids], boxes)
    name = f"windows/{window_id.replace('+', '__')}.png"
    io.write_bytes_atomic(io.join(out_dir, name), _png(image))
    return {"file": name, "window_id": window_id, "boxes": len(boxes), "unassigned": unassigned,
            "identities": len({b["identity"] for b in boxes})}


def _series_gallery(labels_root: str, crops_root: str, series: int, out_dir: str, members: int) -> dict[str, Any]:
    output = labels_output(labels_root)
    shards = [s for s in sorted(output.committed()) if series_of_shard(s) == series]
    by_identity: dict[int, list[str]] = defaultdict(list)
    for shard in shards:
        table = io.read_parquet(output.data_path(shard), ["instance_id", "series_identity"])
        for instance_id, identity in zip(table["instance_id"].to_pylist(), table["series_identity"].to_pylist(),
                                         strict=True):
            if instance_id not in by_identity[identity]:
                by_identity[identity].append(instance_id)
    ranked = sorted(by_identity.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:GALLERY_IDENTITIES]
    chosen = {identity: _spread(ids, members) for identity, ids in ranked}
    crops = _crop_images(crops_root, shards, {i for ids in chosen.values() for i in ids})
    rows = [(identity, len(by_identity[identity]), [crops[i] for i in ids if i in crops])
            for identity, ids in chosen.items()]
    name = f"series/{series}.png"
    io.write_bytes_atomic(io.join(out_dir, name), _png(identity_gallery(rows)))
    return {"file": name, "series": series, "identities": len(by_identity), "shown": len(rows)}


def _spread(instance_ids: list[str], count: int) -> list[str]:
    """Up to ``count`` members, half faces and half bodies when there are both, spread over the series."""
    faces = sorted(i for i in instance_ids if parse_instance_id(i).type == "face")
    bodies = sorted(i for i in instance_ids if parse_instance_id(i).type == "body")
    n_faces = min(len(faces), max((count + 1) // 2, count - len(bodies)))
    picked_faces, picked_bodies = _evenly(faces, n_faces), _evenly(bodies, count - n_faces)
    out = [i for pair in zip(picked_faces, picked_bodies, strict=False) for i in pair]
    longer = picked_faces if len(picked_faces) > len(picked_bodies) else picked_bodies
    return out + longer[len(out) // 2:]


def _evenly(items: list[str], count: int) -> list[str]:
    count = min(count, len(items))
    return [items[i * len(items) // count] for i in range(count)] if count > 0 else []


def _crop_images(crops_root: str, shards: list[str], ids: set[str]) -> dict[str, Image.Image]:
    """Crops of ``ids`` from the crop job's Parquet (the label shards of a series are crop shards)."""
    out: dict[str, Image.Image] = {}
    for shard in shards:
        table = read_shard_crops(crops_root, shard, ["instance_id", "image"]) if ids else None
        if table is None:
            continue
        table = table.filter(pc.is_in(table["instance_id"], pa.array(sorted(ids))))
        for instance_id, data in zip(table["instance_id"].to_pylist(), table["image"].to_pylist(), strict=True):
            try:
                out[instance_id] = decode_image(data, f"{crops_root} shard {shard}#{instance_id}")
            except DataFormatError:
                continue
    return out


def write_report(labels_root: str, crops_root: str, comics_root: str, out_dir: str, windows: int = 8,
                 series: int = 4, members: int = 8) -> str:
    """Draw the report of a finished labels output into ``out_dir``; returns the path of ``index.html``."""
    sampled = sample_windows(labels_root, windows)
    cache: dict[str, pa.Table] = {}
    figures = [_window_figure(labels_root, comics_root, w, s, out_dir, cache)
               for w, s in sorted(sampled, key=lambda ws: ws[1])]
    series_ids = sorted({series_of_shard(s) for _, s in sampled})[:series]
    galleries = [_series_gallery(labels_root, crops_root, k, out_dir, members) for k in series_ids]
    path = io.join(out_dir, "index.html")
    io.write_text_atomic(path, _html(labels_root, figures, galleries))
    return path


def _html(labels_root: str, figures: list[dict[str, Any]], galleries: list[dict[str, Any]]) -> str:
    esc = html.escape
    summary = {}
    for name in ("_SUCCESS", "metrics.json"):
        path = io.join(labels_root, name)
        if io.exists(path):
            summary.update(json.loads(io.read_text(path)))
    table = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in sorted(summary.items()))
    words = _quality_in_words(summary, read_quality(labels_root))
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>comic-reid labels</title><style>",
             "body{font-family:sans-serif;margin:1.5em}img{max-width:100%;border:1px solid #ccc}"
             "figure{margin:0 0 2em 0}td{padding:0 1em 0 0}</style></head><body>",
             "<h1>comic-reid: identity labels</h1>", words,
             "<p>Boxes: thick = face, thin = body; colour and number = identity within the window; "
             "grey '?' = unassigned. Galleries: one row per series-level identity.</p>",
             f"<h2>All figures</h2><table>{table}</table><h2>Windows</h2>"]
    for f in figures:
        parts.append(f"<figure><img src='{esc(f['file'])}' alt='{esc(f['window_id'])}'><figcaption>"
                     f"{esc(f['window_id'])}: {f['identities']} identities, {f['boxes']} boxes, "
                     f"{f['unassigned']} unassigned</figcaption></figure>")
    parts.append("<h2>Series identities</h2>")
    for g in galleries:
        parts.append(f"<figure><img src='{esc(g['file'])}' alt='series {g['series']}'><figcaption>series "
                     f"{g['series']}: {g['identities']} identities ({g['shown']} largest shown)</figcaption>"
                     "</figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _quality_in_words(summary: dict[str, Any], quality: list[dict] | None) -> str:
    """The report's opening: the thresholds used and, with ground truth, one plain sentence per series."""
    esc = html.escape
    parts = []
    if "threshold" in summary:
        parts.append(f"<p>Thresholds: window {_fmt(summary['threshold'])} "
                     f"({esc(str(summary.get('threshold_source', '?')))}); series linking "
                     f"{_fmt(summary.get('link_threshold'))} ({esc(str(summary.get('link_threshold_source', '?')))}).</p>")
    if quality:
        parts.append("<h2>Quality against the ground truth</h2><ul>")
        parts += [f"<li>series {q['series']}: {q['identities']} identities found; ground truth {q['true_identities']}; "
                  f"B-cubed F1 {q['bcubed_f1']:.2f} (precision {q['bcubed_precision']:.2f}, recall "
                  f"{q['bcubed_recall']:.2f}); AMI {q['AMI']:.2f}</li>" for q in quality]
        parts.append("</ul>")
    return "\n".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
