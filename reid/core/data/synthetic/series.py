"""One series: draw and write its pages' panels; its instance rows, ground truth and labelled windows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np

from reid.core import io
from reid.core.data.ids import PanelId, instance_id, panel_image_relpath, seq_id
from reid.core.data.synthetic import inked
from reid.core.data.synthetic.cast import CharacterDesign, _pick, make_cast
from reid.core.data.synthetic.config import WINDOW_PANELS, SyntheticConfig
from reid.core.data.synthetic.panels import _make_scene, _Placed, _render_panel


@dataclass(frozen=True)
class _SeriesTask:
    cfg: SyntheticConfig
    out_dir: str
    series_id: int
    page_splits: tuple[str, ...]


def _series_style(rng: np.random.Generator, max_panel_size: int) -> dict[str, Any]:
    """A series' drawing style: ink colour, line weight, panel border and pixel-noise tile."""
    noise = int(rng.integers(3, 9))
    side = max_panel_size + 64
    return {"ink": _pick(rng, ((0, 0, 0), (20, 20, 60), (60, 35, 20))),
            "line_scale": float(rng.uniform(0.7, 1.5)), "border": int(rng.integers(2, 5)),
            "noise_tile": rng.integers(-noise, noise + 1, size=(side, side, 3), dtype=np.int16)}


def _generate_series(task: _SeriesTask) -> dict[str, Any]:
    """Draw and write one series' panels; return its rows (instances, ground truth, windows, cast)."""
    cfg, sid = task.cfg, task.series_id
    cast = make_cast(cfg.seed, sid, cfg.cast, cfg.lookalike_ratio)
    weights = 1.0 / np.arange(1, len(cast) + 1) ** 0.7
    weights /= weights.sum()
    style = _series_style(np.random.default_rng([cfg.seed, sid, 0x57]), cfg.max_panel_size)
    extras: list[CharacterDesign] = []
    figures = cast
    if cfg.style == "inked":
        figures = inked.inked_cast(cast, cfg.seed, sid)
        extras = inked.make_extras(cfg.seed, sid) if cfg.extras_rate > 0 else []
        style.update(inked.inked_style(np.random.default_rng([cfg.seed, sid, 0x1C5])))
    everyone = figures + extras  # what a placed character's member index points into
    instances: list[tuple] = []
    truth: list[dict[str, Any]] = []
    panels: list[tuple[int, int, int, int]] = []
    windows: list[tuple[str, str, list[tuple[str, list[dict[str, Any]]]]]] = []
    for page in range(cfg.pages):
        rng = np.random.default_rng([cfg.seed, sid, page])
        scene = _make_scene(rng, cast, weights)
        if cfg.style == "inked":
            scene = dataclasses.replace(scene, colors=inked.inked_scene_colors(rng), tint=(1.0, 1.0, 1.0))
        n_panels = int(rng.integers(WINDOW_PANELS, cfg.panels_per_page + 1))
        page_chars: list[list[_Placed]] = []
        for panel in range(n_panels):
            img, placed = _render_panel(rng, cfg, figures, weights, scene, style, extras)
            buffer = BytesIO()
            img.save(buffer, "JPEG", quality=cfg.jpeg_quality)
            pid = PanelId(sid, page, panel)
            io.write_bytes_atomic(io.join(task.out_dir, panel_image_relpath(pid)), buffer.getvalue())
            panels.append((page, panel, img.size[0], img.size[1]))
            _panel_rows(rng, pid, placed, everyone, task.page_splits[page], instances, truth)
            page_chars.append(placed)
        windows.extend(_page_windows(sid, page, page_chars, everyone, task.page_splits[page], cfg.window_stride))
    return {"series_id": sid, "instances": instances, "truth": truth, "panels": panels, "windows": windows,
            "cast": [dataclasses.asdict(c) for c in figures]}


def _panel_rows(rng: np.random.Generator, pid: PanelId, placed: list[_Placed], cast: list[CharacterDesign],
                split: str, instances: list[tuple], truth: list[dict[str, Any]]) -> None:
    """Number a panel's boxes (``index`` per type, left to right) and append CSV and ground-truth rows."""
    for type_ in ("face", "body"):
        boxed = [p for p in placed if getattr(p, f"{type_}_box") is not None]
        boxed.sort(key=lambda p: (getattr(p, f"{type_}_box"), p.char_index))
        for index, p in enumerate(boxed):
            box = getattr(p, f"{type_}_box")
            setattr(p, f"{type_}_id", instance_id(pid.series, pid.page, pid.panel, type_, index))
            score = round(float(rng.uniform(0.5, 1.0)), 3)
            instances.append((pid.series, pid.page_panel, type_, index, p.char_index, *box, score))
            design = cast[p.member]
            truth.append({
                "instance_id": getattr(p, f"{type_}_id"), "series_id": pid.series, "page_id": pid.page_panel,
                "panel_id": str(pid), "type": type_, "index": index, "char_index": p.char_index,
                "identity": design.identity, "member": design.member, "lookalike_of": design.lookalike_of,
                "split": split, "view": p.view,
                "visible": round(p.face_visible if type_ == "face" else p.body_visible, 3),
                "x_0": box[0], "y_0": box[1], "x1": box[2], "y_1": box[3], "fault": ""})


def _page_windows(sid: int, page: int, page_chars: list[list[_Placed]], cast: list[CharacterDesign],
                  split: str, stride: int) -> list[tuple[str, str, list[tuple[str, list[dict[str, Any]]]]]]:
    """The labelled windows of one page: (split, seq_id, [(identity, charInstances)])."""
    out = []
    for start in range(0, len(page_chars) - WINDOW_PANELS + 1, stride):
        sequence = seq_id(PanelId(sid, page, p) for p in range(start, start + WINDOW_PANELS))
        by_identity: dict[str, list[dict[str, Any]]] = {}
        visual: set[str] = set()
        for placed in page_chars[start:start + WINDOW_PANELS]:
            for p in sorted(placed, key=lambda q: q.char_index):
                entry: dict[str, Any] = {}
                for type_ in ("face", "body"):
                    if getattr(p, f"{type_}_id", None):
                        entry[type_] = getattr(p, f"{type_}_id")
                if p.bubbles:
                    entry["speechBubbles"] = p.bubbles
                if not entry:
                    continue
                identity = cast[p.member].identity
                if not identity:  # an unnamed extra: in the instance CSV, never in a sequence
                    continue
                by_identity.setdefault(identity, []).append(entry)
                if "face" in entry or "body" in entry:
                    visual.add(identity)
        characters = [(identity, entries) for identity, entries in by_identity.items() if identity in visual]
        out.append((split, sequence, characters))
    return out
