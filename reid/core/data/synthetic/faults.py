"""Injected faults: broken and missing panel images, boxes moved across or off a page edge."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from reid.core import io
from reid.core.data.ids import PanelId, instance_id, page_panel, panel_image_relpath, parse_page_panel
from reid.core.data.synthetic.cast import _pick
from reid.core.data.synthetic.config import SyntheticConfig
from reid.core.errors import ConfigError


def _inject_faults(cfg: SyntheticConfig, instances: pd.DataFrame, truth: pd.DataFrame,
                   panels: list[tuple[int, int, int, int, int]], out_dir: str
                   ) -> dict[str, list[dict[str, Any]]]:
    """Apply the configured faults; boxes are changed in ``instances`` in place, images on disk."""
    rng = np.random.default_rng([cfg.seed, 0xFA])
    faults: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "corrupt_images", "missing_images", "offpage_partial", "offpage_whole")}
    n_panel_faults = cfg.corrupt_images + cfg.missing_images
    # only panels the CSV references, so that a reader meets the broken file
    referenced = set(zip(instances["series_id"], instances["page_id"], strict=True))
    candidates = [p for p in panels if (p[0], page_panel(p[1], p[2])) in referenced]
    if n_panel_faults > len(candidates):
        raise ConfigError(f"corrupt_images + missing_images = {n_panel_faults} > {len(candidates)} panels "
                          "with instances")
    if cfg.offpage_partial + cfg.offpage_whole > len(instances):
        raise ConfigError(f"offpage_partial + offpage_whole = {cfg.offpage_partial + cfg.offpage_whole} > "
                          f"{len(instances)} instances")
    sizes = {(s, page_panel(p, q)): (w, h) for s, p, q, w, h in panels}
    chosen = rng.permutation(len(instances))[:cfg.offpage_partial + cfg.offpage_whole]
    for k, row in enumerate(sorted(int(i) for i in chosen)):
        kind = "offpage_partial" if k < cfg.offpage_partial else "offpage_whole"
        r = instances.iloc[row]
        w, h = sizes[(int(r["series_id"]), r["page_id"])]
        old = [int(r[c]) for c in ("x_0", "y_0", "x1", "y_1")]
        edge = _pick(rng, ("left", "right", "top", "bottom"))
        gap = int(rng.integers(1, 20))
        new = _offpage_box(kind, old, edge, gap, w, h)
        instances.iloc[row, [instances.columns.get_loc(c) for c in ("x_0", "y_0", "x1", "y_1")]] = new
        iid = instance_id(int(r["series_id"]), *parse_page_panel(r["page_id"]), r["type"], int(r["index"]))
        truth.loc[truth["instance_id"] == iid, "fault"] = kind
        faults[kind].append({"instance_id": iid, "edge": edge, "page_size": [w, h], "box": old,
                             "written": new})
    for k, i in enumerate(rng.permutation(len(candidates))[:n_panel_faults]):
        s, p, q, _, _ = candidates[int(i)]
        pid = PanelId(s, p, q)
        path = io.join(out_dir, panel_image_relpath(pid))
        if k < cfg.corrupt_images:
            data = io.read_bytes(path)
            mode = "truncate" if k % 2 == 0 else "garble"
            broken = data[: len(data) // 3] if mode == "truncate" else (
                b"\x00\x13" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)) + data[66:])
            io.write_bytes_atomic(path, broken)
            faults["corrupt_images"].append({"panel_id": str(pid), "path": panel_image_relpath(pid),
                                             "mode": mode})
            truth.loc[truth["panel_id"] == str(pid), "fault"] = "corrupt_image"
        else:
            io.delete_file(path)
            faults["missing_images"].append({"panel_id": str(pid), "path": panel_image_relpath(pid)})
            truth.loc[truth["panel_id"] == str(pid), "fault"] = "missing_image"
    for records in faults.values():
        records.sort(key=lambda r: r.get("instance_id", r.get("panel_id")))
    return faults


def _offpage_box(kind: str, old: list[int], edge: str, gap: int, w: int, h: int) -> list[int]:
    """``old`` (x0, y0, x1, y1) moved across the page's ``edge``: half outside (``offpage_partial``), or wholly
    outside, ``gap`` px past the edge (``offpage_whole``)."""
    bw, bh = old[2] - old[0], old[3] - old[1]
    if kind == "offpage_partial":
        return {"left": [-(bw // 2), old[1], bw - bw // 2, old[3]],
                "right": [w - bw // 2, old[1], w - bw // 2 + bw, old[3]],
                "top": [old[0], -(bh // 2), old[2], bh - bh // 2],
                "bottom": [old[0], h - bh // 2, old[2], h - bh // 2 + bh]}[edge]
    return {"left": [-bw - gap, old[1], -gap, old[3]],
            "right": [w + gap, old[1], w + gap + bw, old[3]],
            "top": [old[0], -bh - gap, old[2], -gap],
            "bottom": [old[0], h + gap, old[2], h + gap + bh]}[edge]
