"""Synthetic COMICS-format corpus: panel images, instance CSVs, sequence JSONs and ground truth.

``python -m reid.data.synthetic --out DIR [--preset tiny|demo|bench] [--series N --pages N --seed S ...]``
writes, in exactly the formats of DESIGN §2::

    DIR/raw_panel_images/<series>/<page>_<panel>.jpg
    DIR/data/ssl/merged_face_body.csv              (+ an extra ``score`` column readers must ignore)
    DIR/data/ssl/filtered_all_{face,body}.csv      (boxes with a min side of 16 px (faces) / 24 px (bodies))
    DIR/data/comics_seq/{train,validation,test}_sequences.json
    DIR/data/comics_seq/{train,val,test}_char_{faces,bodies}.json   (the seed's inconsistent naming)
    DIR/ground_truth.csv          one row per instance: global identity, split, view, visibility, fault
    DIR/ground_truth_charids.csv  one row per (sequence, charId): its global identity
    DIR/cast.json                 every series' cast: drawing attributes, look-alike relations
    DIR/faults.json, DIR/summary.json

Content: each series has a cast of recurring characters whose identity shows in face and body (palette,
head shape, hair, eyes, mouth, clothing pattern, accessory). Some cast members are *look-alikes* of another
(same palette and build, one shape attribute different). A page is a scene with a subset of the cast; its
panels show 1-4 of them with per-appearance variation (scale, position, flip, rotation/shear, arm/leg
pose, colour jitter, lighting tint, line and pixel noise, occlusion by other characters, balloons and the
panel border). Close-ups give face-only instances, back views body-only ones; a box whose visible part is
too small is not annotated. Sequences are windows of 4 consecutive panels of one page (stride
``window_stride``); their ``charId`` is an opaque hash of (seed, seq_id, identity), so the same character
gets another ``charId`` in another sequence (labels are relative to a sequence).

Splits: ``split_by="series"`` puts whole series into train/validation/test; ``"page"`` splits the pages of
every series. ``"auto"`` (default) splits by series when there are at least 8 series, else by page. Either
way a page (and so every window and instance on it) belongs to exactly one split.

Determinism: every random draw comes from a numpy Generator seeded by ``(seed, series_id[, page])``, so the
output is byte-identical for the same config whatever ``workers`` is (series are generated in parallel).

Faults (for tests; recorded in ``faults.json`` and the ground truth's ``fault`` column): ``corrupt_images``
panels get their JPEG bytes truncated or their header garbled (alternately) so decoding fails;
``missing_images`` panel files are deleted while the CSVs still reference them; ``offpage_partial`` boxes
are moved to straddle a page edge and ``offpage_whole`` boxes wholly outside the page (in
``merged_face_body.csv`` only; the filtered CSVs and ground truth boxes keep the true geometry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from reid import io
from reid.config import build_parser, check, from_dict, load_yaml, to_dict
from reid.data.ids import PanelId, instance_id, panel_image_relpath
from reid.errors import ConfigError

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
# The seed names the validation split "validation" in sequence files and "val" in char-map files.
CHAR_MAP_SPLIT_NAMES: dict[str, str] = {"train": "train", "validation": "val", "test": "test"}
INSTANCE_CSV_COLUMNS: tuple[str, ...] = ("series_id", "page_id", "type", "index", "char_index",
                                         "x_0", "y_0", "x1", "y_1", "score")
FILTERED_CSV_COLUMNS: tuple[str, ...] = ("img_path", "series_id", "page_id", "index", "char_index")
FACE_CROP_PREFIX = "/datasets/comics/comics_crops_large_faces"
BODY_CROP_PREFIX = "/datasets/comics/comics_crops"
WINDOW_PANELS = 4
MIN_FILTERED_SIDE = {"face": 16, "body": 24}

# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, content and injected faults of a synthetic corpus (defaults: the ``demo`` preset)."""

    series: int = field(default=4, metadata={"help": "number of series (comic titles)"})
    pages: int = field(default=12, metadata={"help": "pages per series"})
    panels_per_page: int = field(default=6, metadata={"help": "most panels on a page (each has 4..this)"})
    cast: int = field(default=6, metadata={"help": "recurring characters per series"})
    seed: int = field(default=0, metadata={"help": "random seed; same seed and config = same bytes"})
    max_chars_per_panel: int = field(default=4, metadata={"help": "most characters drawn in one panel"})
    lookalike_ratio: float = field(default=0.34, metadata={
        "help": "fraction of a cast that are look-alikes of another member (one attribute differs)"})
    closeup_rate: float = field(default=0.08, metadata={"help": "per appearance: close-up, face box only"})
    back_view_rate: float = field(default=0.08, metadata={"help": "per appearance: back view, body box only"})
    window_stride: int = field(default=2, metadata={"help": "panels between the starts of two windows"})
    split_by: str = field(default="auto", metadata={"help": "auto | series | page"})
    split_fractions: tuple[float, ...] = field(default=(0.7, 0.15, 0.15), metadata={
        "help": "train,validation,test fractions of series (or of each series' pages)"})
    min_panel_size: int = field(default=200, metadata={"help": "smallest panel side in pixels"})
    max_panel_size: int = field(default=400, metadata={"help": "largest panel side in pixels"})
    jpeg_quality: int = field(default=90, metadata={"help": "JPEG quality of the panel images"})
    corrupt_images: int = field(default=0, metadata={"help": "fault: panels whose JPEG bytes are broken"})
    missing_images: int = field(default=0, metadata={"help": "fault: panel files deleted but referenced"})
    offpage_partial: int = field(default=0, metadata={"help": "fault: boxes moved to straddle a page edge"})
    offpage_whole: int = field(default=0, metadata={"help": "fault: boxes moved wholly off the page"})

    def __post_init__(self) -> None:
        check(1 <= self.series <= 9000, f"series must be in 1..9000, got {self.series}")
        check(self.pages >= 1, f"pages must be >= 1, got {self.pages}")
        check(self.panels_per_page >= WINDOW_PANELS,
              f"panels_per_page must be >= {WINDOW_PANELS} (a window is {WINDOW_PANELS} panels), "
              f"got {self.panels_per_page}")
        check(self.cast >= 1, f"cast must be >= 1, got {self.cast}")
        check(self.max_chars_per_panel >= 1,
              f"max_chars_per_panel must be >= 1, got {self.max_chars_per_panel}")
        check(0.0 <= self.lookalike_ratio <= 0.5,
              f"lookalike_ratio must be in [0, 0.5], got {self.lookalike_ratio}")
        for name in ("closeup_rate", "back_view_rate"):
            check(0.0 <= getattr(self, name) <= 0.5, f"{name} must be in [0, 0.5], got {getattr(self, name)}")
        check(self.window_stride >= 1, f"window_stride must be >= 1, got {self.window_stride}")
        check(self.split_by in ("auto", "series", "page"),
              f"split_by must be auto, series or page, got {self.split_by!r}")
        check(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
              and abs(sum(self.split_fractions) - 1.0) < 1e-6,
              f"split_fractions must be 3 non-negative numbers summing to 1, got {self.split_fractions}")
        check(self.split_by != "series" or self.series >= 3,
              f"split_by='series' needs at least 3 series, got {self.series}")
        check(64 <= self.min_panel_size <= self.max_panel_size <= 4000,
              f"need 64 <= min_panel_size <= max_panel_size <= 4000, got {self.min_panel_size}, "
              f"{self.max_panel_size}")
        check(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        for name in ("corrupt_images", "missing_images", "offpage_partial", "offpage_whole"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def effective_split_by(self) -> str:
        """``series`` or ``page``: what ``auto`` resolves to for this config."""
        if self.split_by != "auto":
            return self.split_by
        return "series" if self.series >= 8 else "page"


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"series": 2, "pages": 3, "panels_per_page": 6, "cast": 4},  # test fixture, ~1 s
    "demo": {},  # the dataclass defaults: ~1k instances
    "bench": {"series": 40, "pages": 140, "panels_per_page": 6, "cast": 8},  # ~100k instances
}


def preset_config(name: str, **overrides: Any) -> SyntheticConfig:
    """The config of preset ``name`` (tiny | demo | bench) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return from_dict(SyntheticConfig, {**PRESETS[name], **overrides}, source=f"preset {name}")


@dataclass(frozen=True)
class CorpusSummary:
    """What :func:`generate_corpus` wrote: counts, file paths and injected faults."""

    out_dir: str
    series_ids: tuple[int, ...]
    panels: int
    instances: int
    faces: int
    bodies: int
    sequences: dict[str, int]
    split_by: str
    paths: dict[str, str]
    faults: dict[str, list[dict[str, Any]]]
    seconds: float = 0.0

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- cast

_SKIN = ((255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
         (255, 205, 148), (170, 220, 160), (180, 200, 240))
_HAIR = ((25, 20, 20), (90, 56, 37), (200, 160, 60), (235, 215, 120), (180, 40, 30), (120, 120, 130),
         (240, 240, 240), (40, 60, 160), (150, 50, 160), (30, 130, 60))
_CLOTH = ((200, 30, 40), (30, 70, 190), (250, 210, 40), (40, 150, 60), (120, 50, 160), (240, 130, 30),
          (40, 180, 210), (210, 50, 140), (45, 45, 55), (240, 240, 235), (120, 80, 40), (130, 130, 140),
          (20, 30, 90), (0, 120, 120), (250, 160, 190), (120, 130, 40))
HEAD_SHAPES = ("round", "tall", "wide", "square", "chin")
HAIR_STYLES = ("bald", "flat", "spiky", "long", "bun", "mohawk", "curly")
EYES = ("dots", "round", "narrow", "visor", "big")
MOUTHS = ("line", "smile", "open", "frown", "beard")
PATTERNS = ("solid", "hstripes", "vstripes", "dots", "star", "circle", "sash", "checker")
ACCESSORIES = ("none", "cape", "hat", "glasses", "scarf")
SHAPE_ATTRIBUTES = ("head_shape", "hair_style", "eyes", "mouth", "pattern", "accessory")
_CHOICES = {"head_shape": HEAD_SHAPES, "hair_style": HAIR_STYLES, "eyes": EYES, "mouth": MOUTHS,
            "pattern": PATTERNS, "accessory": ACCESSORIES}
_PALETTE_ATTRIBUTES = ("skin", "hair", "shirt", "pants", "accent")

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class CharacterDesign:
    """How one cast member looks; ``identity`` is ``"<series>/<member>"``."""

    identity: str
    member: int
    skin: RGB
    hair: RGB
    shirt: RGB
    pants: RGB
    accent: RGB
    head_shape: str
    hair_style: str
    eyes: str
    mouth: str
    pattern: str
    accessory: str
    build: float
    height: float
    head_size: float
    lookalike_of: str = ""
    differs_in: str = ""


def _pick(rng: np.random.Generator, options: tuple) -> Any:
    return options[int(rng.integers(len(options)))]


def _sample_design(rng: np.random.Generator, series_id: int, member: int) -> CharacterDesign:
    shirt, pants, accent = (_CLOTH[int(i)] for i in rng.choice(len(_CLOTH), 3, replace=False))
    return CharacterDesign(
        identity=f"{series_id}/{member}", member=member, skin=_pick(rng, _SKIN), hair=_pick(rng, _HAIR),
        shirt=shirt, pants=pants, accent=accent,
        **{name: _pick(rng, options) for name, options in _CHOICES.items()},
        build=round(float(rng.uniform(0.8, 1.3)), 3), height=round(float(rng.uniform(0.85, 1.0)), 3),
        head_size=round(float(rng.uniform(0.85, 1.2)), 3))


def _visible(design: CharacterDesign) -> dict[str, Any]:
    """The attributes as drawn in a front view: glasses vanish under a visor, most hair under a hat."""
    out = {n: getattr(design, n) for n in _PALETTE_ATTRIBUTES + SHAPE_ATTRIBUTES}
    if design.accessory == "glasses" and design.eyes == "visor":
        out["accessory"] = "none"
    if design.accessory == "hat" and design.hair_style not in ("long", "curly"):
        out["hair_style"] = "hidden"
    return out


def _differences(a: CharacterDesign, b: CharacterDesign) -> int:
    va, vb = _visible(a), _visible(b)
    return sum(va[n] != vb[n] for n in va)


def make_cast(seed: int, series_id: int, size: int, lookalike_ratio: float) -> list[CharacterDesign]:
    """The recurring characters of one series; the last members are look-alikes of earlier ones."""
    rng = np.random.default_rng([seed, series_id, 0xCA57])
    n_look = min(int(round(lookalike_ratio * size)), size // 2)
    cast: list[CharacterDesign] = []
    for member in range(size - n_look):
        design = _sample_design(rng, series_id, member)
        for _ in range(30):  # distinct characters differ in several attributes
            if all(_differences(design, other) >= 4 for other in cast):
                break
            design = _sample_design(rng, series_id, member)
        cast.append(design)
    bases = rng.choice(size - n_look, n_look, replace=False) if n_look else []
    for k, base_member in enumerate(bases):
        base = cast[int(base_member)]
        member = size - n_look + k
        for _ in range(50):  # exactly one attribute differs, and visibly so
            attribute = _pick(rng, SHAPE_ATTRIBUTES)
            options = tuple(o for o in _CHOICES[attribute] if o != getattr(base, attribute))
            twin = dataclasses.replace(base, identity=f"{series_id}/{member}", member=member,
                                       **{attribute: _pick(rng, options)}, lookalike_of=base.identity,
                                       differs_in=attribute)
            if _differences(base, twin) == 1:
                break
        cast.append(twin)
    return cast


# ---------------------------------------------------------------------------------------------- drawing


def _jitter(color: RGB, gain: float, offset: np.ndarray) -> RGB:
    return tuple(int(min(255, max(0, round(c * gain + o)))) for c, o in zip(color, offset, strict=True))


def _shade(color: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in color)


@dataclass
class _Figure:
    image: Image.Image  # RGBA, transparent outside the figure
    head_box: tuple[float, float, float, float]  # in image coordinates


def _draw_figure(design: CharacterDesign, size: float, view: str, rng: np.random.Generator, ink: RGB,
                 line_scale: float, max_height: int | None = None) -> _Figure:
    """Draw a standing figure ``size`` px tall on a transparent canvas (front, back or close-up view)."""
    gain, offset = float(rng.uniform(0.82, 1.15)), rng.normal(0.0, 9.0, 3)
    col = {n: _jitter(getattr(design, n), gain, offset) for n in _PALETTE_ATTRIBUTES}
    s = size
    lw = max(1, int(round(s / 90 * line_scale)))
    width = int(s * 0.62 * design.build) + 8
    height = int(s * 1.02) + 6
    if max_height is not None:
        height = max(8, min(height, max_height))
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    cx = width / 2
    rx = ry = 0.105 * s * design.head_size
    if design.head_shape == "tall":
        rx, ry = rx * 0.84, ry * 1.12
    elif design.head_shape == "wide":
        rx, ry = rx * 1.18, ry * 0.9
    cy = 0.04 * s + ry + 3
    neck = cy + ry * 0.95
    torso_top, torso_bottom = neck + 0.025 * s, neck + 0.36 * s
    half_w = 0.15 * s * design.build
    hip_y = torso_bottom
    # cape behind everything
    if design.accessory == "cape":
        d.polygon([(cx - half_w * 0.9, torso_top), (cx + half_w * 0.9, torso_top),
                   (cx + half_w * 1.6, hip_y + 0.25 * s), (cx - half_w * 1.6, hip_y + 0.25 * s)],
                  fill=_shade(col["accent"], 0.8), outline=ink, width=lw)
    # legs
    leg_len = 0.98 * s - hip_y
    spread = float(rng.uniform(-0.25, 0.35))
    for side in (-1, 1):
        hx = cx + side * half_w * 0.45
        angle = side * spread + float(rng.normal(0, 0.06))
        fx, fy = hx + math.sin(angle) * leg_len, hip_y + math.cos(angle) * leg_len
        d.line([(hx, hip_y), (fx, fy)], fill=ink, width=int(0.085 * s) + 2 * lw)
        d.line([(hx, hip_y), (fx, fy)], fill=col["pants"], width=int(0.085 * s))
        d.ellipse([fx - 0.05 * s, fy - 0.025 * s, fx + 0.05 * s, fy + 0.02 * s], fill=ink)
    # arms (behind the torso's outline, in sleeves of the shirt colour)
    arm_len = 0.32 * s
    for side in (-1, 1):
        sx, sy = cx + side * half_w * 0.92, torso_top + 0.03 * s
        angle = float(rng.uniform(-0.3, 1.6))
        ex, ey = sx + side * math.sin(angle) * arm_len, sy + math.cos(angle) * arm_len
        d.line([(sx, sy), (ex, ey)], fill=ink, width=int(0.07 * s * design.build) + 2 * lw)
        d.line([(sx, sy), (ex, ey)], fill=col["shirt"], width=int(0.07 * s * design.build))
        d.ellipse([ex - 0.035 * s, ey - 0.035 * s, ex + 0.035 * s, ey + 0.035 * s], fill=col["skin"],
                  outline=ink, width=lw)
    # torso with its clothing pattern
    torso = [(cx - half_w, torso_top), (cx + half_w, torso_top), (cx + half_w * 0.8, torso_bottom),
             (cx - half_w * 0.8, torso_bottom)]
    d.polygon(torso, fill=col["shirt"])
    _draw_pattern(img, torso, design.pattern if view != "back" or design.pattern in
                  ("hstripes", "vstripes", "dots", "checker") else "solid", col["accent"], s)
    d.polygon(torso, outline=ink, width=lw)
    d.line([(cx - half_w * 0.8, torso_bottom), (cx + half_w * 0.8, torso_bottom)], fill=ink, width=lw * 2)
    if design.accessory == "scarf":
        d.rounded_rectangle([cx - half_w * 0.7, neck - 0.01 * s, cx + half_w * 0.7, neck + 0.05 * s],
                            radius=0.02 * s, fill=col["accent"], outline=ink, width=lw)
    head_box = (cx - rx, cy - ry, cx + rx, cy + ry)
    _draw_head(d, design, col, view, cx, cy, rx, ry, s, ink, lw)
    return _Figure(img, head_box)


def _draw_pattern(img: Image.Image, torso: list[tuple[float, float]], pattern: str, accent: RGB,
                  s: float) -> None:
    if pattern == "solid":
        return
    x0, y0 = int(min(p[0] for p in torso)), int(min(p[1] for p in torso))
    x1, y1 = int(max(p[0] for p in torso)) + 1, int(max(p[1] for p in torso)) + 1
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    step = max(3, int(0.06 * s))
    if pattern == "hstripes":
        for y in range(0, h, 2 * step):
            d.rectangle([0, y, w, y + step - 1], fill=accent)
    elif pattern == "vstripes":
        for x in range(0, w, 2 * step):
            d.rectangle([x, 0, x + step - 1, h], fill=accent)
    elif pattern == "checker":
        for y in range(0, h, step):
            for x in range((y // step) % 2 * step, w, 2 * step):
                d.rectangle([x, y, x + step - 1, y + step - 1], fill=accent)
    elif pattern == "dots":
        r = max(1, step // 3)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    elif pattern == "sash":
        d.line([(0, 0), (w, h)], fill=accent, width=max(2, int(0.07 * s)))
    elif pattern in ("star", "circle"):
        cx, cy, r = w / 2, h * 0.4, min(w, h) * 0.28
        if pattern == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=accent)
            d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(250, 250, 250))
        else:
            pts = [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                    cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
            d.polygon(pts, fill=accent)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in torso], fill=255)
    img.paste(layer, (x0, y0), Image.composite(layer, Image.new("RGBA", (w, h)), mask).getchannel("A"))


def _draw_head(d: ImageDraw.ImageDraw, design: CharacterDesign, col: dict[str, RGB], view: str, cx: float,
               cy: float, rx: float, ry: float, s: float, ink: RGB, lw: int) -> None:
    box = [cx - rx, cy - ry, cx + rx, cy + ry]
    hair = col["hair"]
    style = design.hair_style
    if style == "long":
        d.rounded_rectangle([cx - rx * 1.15, cy - ry * 0.6, cx + rx * 1.15, cy + ry * 1.5], radius=rx * 0.5,
                            fill=hair, outline=ink, width=lw)
    if design.head_shape == "square":
        d.rounded_rectangle(box, radius=rx * 0.3, fill=col["skin"], outline=ink, width=lw)
    elif design.head_shape == "chin":
        d.polygon([(cx - rx, cy - ry * 0.5), (cx - rx * 0.6, cy - ry), (cx + rx * 0.6, cy - ry),
                   (cx + rx, cy - ry * 0.5), (cx + rx * 0.7, cy + ry * 0.5), (cx, cy + ry),
                   (cx - rx * 0.7, cy + ry * 0.5)], fill=col["skin"], outline=ink, width=lw)
    else:
        d.ellipse(box, fill=col["skin"], outline=ink, width=lw)
    # hair on top
    top = [cx - rx * 1.05, cy - ry * 1.1, cx + rx * 1.05, cy + ry * 0.5]
    if style in ("flat", "long", "bun"):
        d.chord(top, 180, 360, fill=hair, outline=ink, width=lw)
    elif style == "spiky":
        n = 6
        pts = [(cx - rx, cy - ry * 0.2)]
        for k in range(n + 1):
            x = cx - rx + 2 * rx * k / n
            pts.append((x, cy - ry * (1.45 if k % 2 else 0.85)))
        pts.append((cx + rx, cy - ry * 0.2))
        d.polygon(pts, fill=hair, outline=ink, width=lw)
    elif style == "mohawk":
        d.polygon([(cx - rx * 0.22, cy - ry * 0.7), (cx, cy - ry * 1.6), (cx + rx * 0.22, cy - ry * 0.7)],
                  fill=hair, outline=ink, width=lw)
    elif style == "curly":
        for k in range(7):
            a = math.pi * (0.05 + 0.9 * k / 6)
            px, py = cx - math.cos(a) * rx * 0.95, cy - math.sin(a) * ry * 0.95
            r = rx * 0.32
            d.ellipse([px - r, py - r, px + r, py + r], fill=hair, outline=ink, width=lw)
    if style == "bun":
        r = rx * 0.38
        d.ellipse([cx - r, cy - ry * 1.05 - 2 * r, cx + r, cy - ry * 1.05], fill=hair, outline=ink, width=lw)
    if design.accessory == "hat":
        d.rectangle([cx - rx * 1.35, cy - ry * 0.75, cx + rx * 1.35, cy - ry * 0.58], fill=col["accent"],
                    outline=ink, width=lw)
        d.rectangle([cx - rx * 0.8, cy - ry * 1.5, cx + rx * 0.8, cy - ry * 0.7], fill=col["accent"],
                    outline=ink, width=lw)
    if view == "back":
        if style != "bald":
            d.ellipse([cx - rx * 1.02, cy - ry * 1.05, cx + rx * 1.02, cy + ry * 0.8], fill=hair, outline=ink,
                      width=lw)
        return
    _draw_face(d, design, col, cx, cy, rx, ry, ink, lw)


def _draw_face(d: ImageDraw.ImageDraw, design: CharacterDesign, col: dict[str, RGB], cx: float, cy: float,
               rx: float, ry: float, ink: RGB, lw: int) -> None:
    ey, ex = cy - ry * 0.05, rx * 0.42
    er = max(1.0, rx * 0.12)
    for side in (-1, 1):
        x = cx + side * ex
        if design.eyes == "dots":
            d.ellipse([x - er, ey - er, x + er, ey + er], fill=ink)
        elif design.eyes == "round":
            d.ellipse([x - er * 2, ey - er * 2, x + er * 2, ey + er * 2], fill=(255, 255, 255), outline=ink,
                      width=lw)
            d.ellipse([x - er * 0.8, ey - er * 0.8, x + er * 0.8, ey + er * 0.8], fill=ink)
        elif design.eyes == "narrow":
            d.line([(x - er * 2, ey), (x + er * 2, ey - side * er * 0.6)], fill=ink, width=max(lw, 2))
        elif design.eyes == "big":
            d.ellipse([x - er * 2.2, ey - er * 3, x + er * 2.2, ey + er * 2], fill=(255, 255, 255),
                      outline=ink,
                      width=lw)
            d.ellipse([x - er * 1.4, ey - er * 1.8, x + er * 1.4, ey + er * 1.4], fill=col["accent"])
            d.ellipse([x - er * 0.5, ey - er * 1.2, x + er * 0.2, ey - er * 0.5], fill=(255, 255, 255))
    if design.eyes == "visor":
        d.rounded_rectangle([cx - rx * 0.85, ey - er * 1.5, cx + rx * 0.85, ey + er * 1.5], radius=er,
                            fill=col["accent"], outline=ink, width=lw)
    if design.accessory == "glasses" and design.eyes != "visor":
        for side in (-1, 1):
            x = cx + side * ex
            d.ellipse([x - er * 2.6, ey - er * 2.3, x + er * 2.6, ey + er * 2.3], outline=ink,
                      width=max(lw, 2))
        d.line([(cx - ex + er * 2.6, ey), (cx + ex - er * 2.6, ey)], fill=ink, width=max(lw, 2))
    my, mw = cy + ry * 0.5, rx * 0.38
    if design.mouth == "line":
        d.line([(cx - mw, my), (cx + mw, my)], fill=ink, width=max(lw, 2))
    elif design.mouth == "smile":
        d.arc([cx - mw, my - mw * 0.9, cx + mw, my + mw * 0.5], 20, 160, fill=ink, width=max(lw, 2))
    elif design.mouth == "open":
        d.ellipse([cx - mw * 0.5, my - mw * 0.45, cx + mw * 0.5, my + mw * 0.45], fill=(120, 20, 30),
                  outline=ink, width=lw)
    elif design.mouth == "frown":
        d.arc([cx - mw, my - mw * 0.2, cx + mw, my + mw * 1.0], 200, 340, fill=ink, width=max(lw, 2))
    elif design.mouth == "beard":
        d.polygon([(cx - rx * 0.8, cy + ry * 0.2), (cx + rx * 0.8, cy + ry * 0.2),
                   (cx + rx * 0.45, cy + ry * 1.05), (cx, cy + ry * 1.25), (cx - rx * 0.45, cy + ry * 1.05)],
                  fill=col["hair"], outline=ink, width=lw)
        d.line([(cx - mw * 0.6, my - ry * 0.05), (cx + mw * 0.6, my - ry * 0.05)], fill=ink, width=max(lw, 2))


def _affine(fig: _Figure, angle: float, shear: float, flip: bool) -> _Figure:
    """Flip, shear and rotate a figure about its centre; the head box follows (bbox of its corners)."""
    img = fig.image
    x0, y0, x1, y1 = fig.head_box
    w, h = img.size
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x0, x1 = w - x1, w - x0
    if angle == 0.0 and shear == 0.0:
        return _Figure(img, (x0, y0, x1, y1))
    c, s = math.cos(angle), math.sin(angle)
    forward = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    centre = np.array([w / 2, h / 2])
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float) - centre
    moved = corners @ forward.T
    lo, hi = moved.min(axis=0), moved.max(axis=0)
    size = (int(math.ceil(hi[0] - lo[0])), int(math.ceil(hi[1] - lo[1])))
    inverse = np.linalg.inv(forward)
    shift = inverse @ lo + centre
    data = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    out = img.transform(size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    head = (np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - centre) @ forward.T - lo
    return _Figure(out, (*head.min(axis=0), *head.max(axis=0)))


# ---------------------------------------------------------------------------------------------- panels

_BACKGROUNDS = ("gradient", "radial", "hatch", "halftone", "city", "speedlines", "interior")
_BG_COLORS = ((250, 240, 210), (200, 225, 250), (230, 200, 230), (210, 240, 210), (250, 215, 180),
              (160, 180, 210), (240, 190, 170), (230, 230, 230), (120, 130, 170), (255, 250, 200),
              (180, 210, 200), (90, 100, 130))


@dataclass(frozen=True)
class _Scene:
    """What the panels of one page share: location look, lighting, and which characters are present."""

    background: str
    colors: tuple[RGB, RGB]
    tint: tuple[float, float, float]
    members: tuple[int, ...]


@dataclass
class _Placed:
    """One character drawn in a panel and what of it is annotated."""

    member: int
    view: str
    char_index: int = -1
    face_box: tuple[int, int, int, int] | None = None
    body_box: tuple[int, int, int, int] | None = None
    face_visible: float = 0.0
    body_visible: float = 0.0
    bubbles: list[list[int]] = field(default_factory=list)
    face_id: str | None = None
    body_id: str | None = None


def _background(rng: np.random.Generator, scene: _Scene, w: int, h: int) -> Image.Image:
    c1 = np.array(_jitter(scene.colors[0], float(rng.uniform(0.9, 1.1)), rng.normal(0, 6, 3)), np.float32)
    c2 = np.array(_jitter(scene.colors[1], float(rng.uniform(0.9, 1.1)), rng.normal(0, 6, 3)), np.float32)
    # the gradient is smooth: compute it on a 4x coarser grid and let PIL upsample it
    gw, gh = w // 4 + 2, h // 4 + 2
    xs, ys = np.arange(gw, dtype=np.float32)[None, :], np.arange(gh, dtype=np.float32)[:, None]
    if scene.background in ("radial", "speedlines"):
        fx, fy = float(rng.uniform(0.2, 0.8)) * gw, float(rng.uniform(0.2, 0.8)) * gh
        t = np.sqrt((xs - fx) ** 2 + (ys - fy) ** 2)
    else:
        a = float(rng.uniform(0, 2 * math.pi))
        t = xs * math.cos(a) + ys * math.sin(a)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    coarse = Image.fromarray((c1 + t[..., None] * (c2 - c1)).astype(np.uint8), "RGB")
    img = coarse.resize((w, h), Image.Resampling.BILINEAR, box=(0, 0, (w - 1) / 4 + 0.5, (h - 1) / 4 + 0.5))
    if scene.background == "halftone":
        p = int(rng.integers(5, 10))
        fx, fy = np.arange(w) % p - p / 2, np.arange(h) % p - p / 2
        r = float(rng.uniform(0.2, 0.45)) * p
        dots = (fx[None, :] ** 2 + fy[:, None] ** 2) < r**2
        pixels = np.asarray(img)
        img = Image.fromarray(np.where(dots[..., None], (pixels * 0.75).astype(np.uint8), pixels), "RGB")
    d = ImageDraw.Draw(img)
    dark = tuple(int(v * 0.6) for v in c2)
    if scene.background == "hatch":
        step, a = int(rng.integers(6, 13)), float(rng.uniform(0.3, 1.3))
        dx, dy = math.cos(a) * (w + h), math.sin(a) * (w + h)
        for k in range(-(w + h), w + h, step):
            d.line([(k, 0), (k + dx, dy)], fill=dark, width=1)
    elif scene.background == "city":
        x = int(rng.integers(-20, 0))
        while x < w:
            bw, bh = int(rng.integers(w // 8, w // 3)), int(rng.uniform(0.25, 0.7) * h)
            d.rectangle([x, h - bh, x + bw, h], fill=_shade(tuple(dark), float(rng.uniform(0.8, 1.4))),
                        outline=(30, 30, 30))
            for wy in range(h - bh + 8, h - 8, 14):
                for wx in range(x + 5, x + bw - 8, 12):
                    d.rectangle([wx, wy, wx + 5, wy + 6], fill=(250, 240, 150))
            x += bw + int(rng.integers(0, 10))
    elif scene.background == "speedlines":
        fx, fy = float(rng.uniform(0.3, 0.7)) * w, float(rng.uniform(0.3, 0.7)) * h
        for _ in range(int(rng.integers(25, 50))):
            a, spread = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.01, 0.03))
            r = w + h
            d.polygon([(fx, fy), (fx + r * math.cos(a), fy + r * math.sin(a)),
                       (fx + r * math.cos(a + spread), fy + r * math.sin(a + spread))], fill=dark)
    elif scene.background == "interior":
        floor = int(rng.uniform(0.6, 0.8) * h)
        d.polygon([(0, floor), (w, floor), (w, h), (0, h)], fill=_shade(tuple(dark), 1.3))
        wx, wy = int(rng.uniform(0.1, 0.6) * w), int(rng.uniform(0.1, 0.3) * h)
        d.rectangle([wx, wy, wx + w // 4, wy + h // 4], fill=(200, 230, 250), outline=(40, 30, 20), width=3)
    return img


def _make_scene(rng: np.random.Generator, cast: list[CharacterDesign], weights: np.ndarray) -> _Scene:
    n = len(cast)
    k = min(n, int(rng.integers(2, 6)))
    members = [int(m) for m in rng.choice(n, k, replace=False, p=weights)]
    by_identity = {c.identity: c.member for c in cast}
    for m in list(members):  # bring look-alikes into the same scene: the hard negatives of a window
        c = cast[m]
        partners = [by_identity[c.lookalike_of]] if c.lookalike_of else [
            o.member for o in cast if o.lookalike_of == c.identity]
        for p in partners:
            if p not in members and rng.random() < 0.6:
                members.append(p)
    i, j = rng.choice(len(_BG_COLORS), 2, replace=False)
    tint = (1.0, 1.0, 1.0) if rng.random() < 0.6 else tuple(float(v) for v in rng.uniform(0.75, 1.08, 3))
    return _Scene(_pick(rng, _BACKGROUNDS), (_BG_COLORS[int(i)], _BG_COLORS[int(j)]), tint, tuple(members))


def _render_panel(rng: np.random.Generator, cfg: SyntheticConfig, cast: list[CharacterDesign],
                  weights: np.ndarray, scene: _Scene, style: dict[str, Any]
                  ) -> tuple[Image.Image, list[_Placed]]:
    w = int(rng.integers(cfg.min_panel_size, cfg.max_panel_size + 1))
    h = int(rng.integers(cfg.min_panel_size, cfg.max_panel_size + 1))
    img = _background(rng, scene, w, h)
    scene_w = weights[list(scene.members)] / weights[list(scene.members)].sum()
    most = min(cfg.max_chars_per_panel, len(scene.members))
    count_p = np.array([1.0, 1.5, 1.0, 0.6, 0.3, 0.2][:most])
    n = 1 + int(rng.choice(most, p=count_p / count_p.sum()))
    picks = rng.choice(len(scene.members), n, replace=False, p=scene_w)
    members = [int(scene.members[int(i)]) for i in picks]
    placed = []
    for m in members:
        u = rng.random()
        view = ("closeup" if u < cfg.closeup_rate else
                "back" if u < cfg.closeup_rate + cfg.back_view_rate else "front")
        if view == "closeup" and any(p.view == "closeup" for p in placed):
            view = "front"
        placed.append(_Placed(m, view))
    # far (small) figures first, the close-up last: later figures occlude earlier ones
    standing = [p for p in placed if p.view != "closeup"]
    slots = rng.permutation(len(standing))
    sizes = [h * float(rng.uniform(0.5, 0.95)) * cast[p.member].height * (1 - 0.08 * (len(placed) - 1))
             for p in standing]
    order = sorted(range(len(standing)), key=lambda i: sizes[i])
    owner = np.full((h, w), -1, np.int16)
    stats: list[tuple[int, int, tuple[int, int, int, int]]] = []
    draw_list: list[tuple[_Placed, float, float, float]] = []
    for i in order:
        slot_w = w / len(standing)
        x = (int(slots[i]) + 0.5 + float(rng.uniform(-0.3, 0.3))) * slot_w
        top = h * float(rng.uniform(0.88, 1.25)) - sizes[i]
        draw_list.append((standing[i], sizes[i], x, max(top, -0.06 * sizes[i])))
    for p in placed:
        if p.view == "closeup":
            size = h * float(rng.uniform(1.5, 2.3))
            draw_list.append((p, size, w * float(rng.uniform(0.3, 0.7)), h * float(rng.uniform(0.0, 0.15))))
    for k, (p, size, x, top) in enumerate(draw_list):
        p.char_index = k
        design = cast[p.member]
        fig = _draw_figure(design, size, p.view, rng, style["ink"], style["line_scale"],
                           max_height=int(h - top + 0.15 * size) if p.view == "closeup" else None)
        tilt = 0.35 if p.view != "closeup" else 0.15
        angle = float(rng.uniform(-tilt, tilt)) * 0.5 if rng.random() < 0.7 else 0.0
        shear = float(rng.uniform(-0.25, 0.25)) if rng.random() < 0.6 else 0.0
        fig = _affine(fig, angle, shear, flip=bool(rng.random() < 0.5))
        fw, fh = fig.image.size
        left, upper = int(round(x - fw / 2)), int(round(top))
        img.paste(fig.image, (left, upper), fig.image)
        alpha = np.asarray(fig.image.getchannel("A")) > 127
        hx0, hy0, hx1, hy1 = (int(math.floor(fig.head_box[0])), int(math.floor(fig.head_box[1])),
                              int(math.ceil(fig.head_box[2])), int(math.ceil(fig.head_box[3])))
        face_full = int(alpha[max(0, hy0):max(0, hy1), max(0, hx0):max(0, hx1)].sum())
        body_full = int(alpha.sum())
        _stamp(owner, alpha, left, upper, k)
        stats.append((face_full, body_full, (hx0 + left, hy0 + upper, hx1 + left, hy1 + upper)))
    heads = {p.char_index: ((head[0] + head[2]) / 2, (head[1] + head[3]) / 2)
             for (p, *_), (_, _, head) in zip(draw_list, stats, strict=True)}
    _add_balloons(rng, img, owner, placed, heads, scene, w, h)
    for (p, *_), (face_full, body_full, head) in zip(draw_list, stats, strict=True):
        _annotate(p, owner, face_full, body_full, head, w, h)
    _finish(rng, img, scene, style)
    return img, placed


def _stamp(owner: np.ndarray, alpha: np.ndarray, left: int, upper: int, value: int) -> None:
    """Mark the panel pixels covered by ``alpha`` pasted at (left, upper) as owned by ``value``."""
    h, w = owner.shape
    fh, fw = alpha.shape
    x0, y0, x1, y1 = max(0, left), max(0, upper), min(w, left + fw), min(h, upper + fh)
    if x0 >= x1 or y0 >= y1:
        return
    region = owner[y0:y1, x0:x1]
    region[alpha[y0 - upper:y1 - upper, x0 - left:x1 - left]] = value


def _clip_box(box: tuple[int, int, int, int], w: int, h: int) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _annotate(p: _Placed, owner: np.ndarray, face_full: int, body_full: int,
              head: tuple[int, int, int, int], w: int, h: int) -> None:
    """Decide which boxes of a drawn character are annotated, from what of it is still visible.

    The body box spans the figure's visible pixels; the face box is the head region clipped to the panel
    and to the body box. A box whose visible share is too small is not annotated.
    """
    mine = owner == p.char_index
    p.body_visible = float(mine.sum()) / max(1, body_full)
    cols, rows = np.flatnonzero(mine.any(axis=0)), np.flatnonzero(mine.any(axis=1))
    body = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) if len(cols) else None
    face = _clip_box(head, w, h)
    if face is not None:
        p.face_visible = float(mine[face[1]:face[3], face[0]:face[2]].sum()) / max(1, face_full)
    if p.view != "closeup" and body is not None and p.body_visible >= 0.3:
        p.body_box = body
    if (p.view != "back" and face is not None and p.face_visible >= 0.45
            and min(face[2] - face[0], face[3] - face[1]) >= 10):
        if p.body_box is not None:
            b = p.body_box
            face = (max(face[0], b[0]), max(face[1], b[1]), min(face[2], b[2]), min(face[3], b[3]))
        if face[2] > face[0] and face[3] > face[1]:
            p.face_box = face


def _add_balloons(rng: np.random.Generator, img: Image.Image, owner: np.ndarray, placed: list[_Placed],
                  heads: dict[int, tuple[float, float]], scene: _Scene, w: int, h: int) -> None:
    """Draw 0-2 speech balloons above the speakers' heads (or with a tail off-panel) and record them.

    Balloons occlude what is under them: their pixels are marked in ``owner`` (value -2).
    """
    speakers = [p for p in placed if p.view != "back"]
    off_panel = [m for m in scene.members if m not in {p.member for p in placed}]
    d = ImageDraw.Draw(img)
    mask = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask)
    for _ in range(int(rng.choice(3, p=[0.4, 0.4, 0.2]))):
        if off_panel and (not speakers or rng.random() < 0.2):
            speaker = _Placed(off_panel[int(rng.integers(len(off_panel)))], "offpanel")
            placed.append(speaker)  # speech only: no box, not drawn
            target = (float(rng.choice([0, w])), h * 0.5)
        elif speakers:
            speaker = speakers[int(rng.integers(len(speakers)))]
            target = heads[speaker.char_index]
        else:
            return
        bw, bh = int(rng.uniform(0.28, 0.45) * w), int(rng.uniform(0.12, 0.2) * h)
        if speaker.view != "offpanel" and rng.random() < 0.5:  # beside the head rather than above it
            x = target[0] + 0.08 * w if target[0] < w / 2 else target[0] - 0.08 * w - bw
        else:
            x = target[0] - bw / 2 + rng.uniform(-0.2, 0.2) * w
        bx = int(min(max(2, x), w - bw - 2))
        by = int(rng.uniform(0.02, 0.08) * h)
        box = [bx, by, bx + bw, by + bh]
        tail = [(bx + bw * 0.4, by + bh * 0.8), (bx + bw * 0.6, by + bh * 0.8),
                (target[0] * 0.5 + (bx + bw / 2) * 0.5, by + bh * 1.6)]
        d.polygon(tail, fill=(255, 255, 255), outline=(0, 0, 0))
        d.ellipse(box, fill=(255, 255, 255), outline=(0, 0, 0), width=2)
        md.polygon(tail, fill=255)
        md.ellipse(box, fill=255)
        for row in range(1, 3):
            y = by + bh * row / 3
            d.line([(bx + bw * 0.22, y), (bx + bw * float(rng.uniform(0.55, 0.78)), y)], fill=(40, 40, 40),
                   width=2)
        speaker.bubbles.append([max(0, bx), max(0, by), min(w, bx + bw), min(h, by + bh)])
    owner[np.asarray(mask) > 0] = -2


def _finish(rng: np.random.Generator, img: Image.Image, scene: _Scene, style: dict[str, Any]) -> None:
    """Line noise, lighting tint, pixel noise and the panel border, in place."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 10))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        a, length = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(5, 30))
        d.line([(x, y), (x + length * math.cos(a), y + length * math.sin(a))], fill=style["ink"], width=1)
    # pixel noise: a random window of the series' noise tile (cheaper than fresh noise per panel)
    tile = style["noise_tile"]
    ox, oy = int(rng.integers(0, tile.shape[1] - w + 1)), int(rng.integers(0, tile.shape[0] - h + 1))
    pixels = np.asarray(img, dtype=np.int16) + tile[oy:oy + h, ox:ox + w]
    if scene.tint != (1.0, 1.0, 1.0):
        pixels = pixels * np.asarray(scene.tint, np.float32)
    img.paste(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    ImageDraw.Draw(img).rectangle([0, 0, w - 1, h - 1], outline=(0, 0, 0), width=style["border"])


# ---------------------------------------------------------------------------------------------- series


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
    instances: list[tuple] = []
    truth: list[dict[str, Any]] = []
    panels: list[tuple[int, int, int, int]] = []
    windows: list[tuple[str, str, list[tuple[str, list[dict[str, Any]]]]]] = []
    for page in range(cfg.pages):
        rng = np.random.default_rng([cfg.seed, sid, page])
        scene = _make_scene(rng, cast, weights)
        n_panels = int(rng.integers(WINDOW_PANELS, cfg.panels_per_page + 1))
        page_chars: list[list[_Placed]] = []
        for panel in range(n_panels):
            img, placed = _render_panel(rng, cfg, cast, weights, scene, style)
            buffer = BytesIO()
            img.save(buffer, "JPEG", quality=cfg.jpeg_quality)
            pid = PanelId(sid, page, panel)
            io.write_bytes_atomic(io.join(task.out_dir, panel_image_relpath(pid)), buffer.getvalue())
            panels.append((page, panel, img.size[0], img.size[1]))
            _panel_rows(rng, pid, placed, cast, task.page_splits[page], instances, truth)
            page_chars.append(placed)
        windows.extend(_page_windows(sid, page, page_chars, cast, task.page_splits[page], cfg.window_stride))
    return {"series_id": sid, "instances": instances, "truth": truth, "panels": panels, "windows": windows,
            "cast": [dataclasses.asdict(c) for c in cast]}


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
        seq_id = "+".join(str(PanelId(sid, page, p)) for p in range(start, start + WINDOW_PANELS))
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
                by_identity.setdefault(identity, []).append(entry)
                if "face" in entry or "body" in entry:
                    visual.add(identity)
        characters = [(identity, entries) for identity, entries in by_identity.items() if identity in visual]
        out.append((split, seq_id, characters))
    return out


# ---------------------------------------------------------------------------------------------- corpus


def _series_ids(cfg: SyntheticConfig) -> list[int]:
    rng = np.random.default_rng([cfg.seed, 0x5E])
    return sorted(int(v) + 1000 for v in rng.choice(9000, cfg.series, replace=False))


def _split_counts(n: int, fractions: tuple[float, ...]) -> tuple[int, int, int]:
    """(train, validation, test) counts of ``n`` items; each split gets one item when n >= 3."""
    val, test = (int(round(f * n)) for f in fractions[1:])
    if n >= 3:
        val, test = max(val, 1 if fractions[1] > 0 else 0), max(test, 1 if fractions[2] > 0 else 0)
    val, test = min(val, n), min(test, max(0, n - val))
    return n - val - test, val, test


def _assign_splits(cfg: SyntheticConfig, series_ids: list[int]) -> dict[int, tuple[str, ...]]:
    """Split of every page, by series or by page (DESIGN: no page is in two splits)."""
    rng = np.random.default_rng([cfg.seed, 0x5B])
    labels = lambda n: np.repeat(np.array(SPLITS), _split_counts(n, cfg.split_fractions))  # noqa: E731
    if cfg.effective_split_by == "series":
        per_series = labels(len(series_ids))[rng.permutation(len(series_ids))]
        return {sid: (str(per_series[i]),) * cfg.pages for i, sid in enumerate(series_ids)}
    return {sid: tuple(str(s) for s in labels(cfg.pages)[rng.permutation(cfg.pages)]) for sid in series_ids}


def _char_id(seed: int, seq_id: str, identity: str, used: set[str]) -> str:
    salt = 0
    while True:
        text = f"{seed}|{seq_id}|{identity}|{salt}"
        char_id = hashlib.blake2b(text.encode(), digest_size=5).hexdigest()
        if char_id not in used:
            used.add(char_id)
            return char_id
        salt += 1


def corpus_paths(out_dir: str) -> dict[str, str]:
    """Where :func:`generate_corpus` writes each file (keys are stable names)."""
    ssl, seq = io.join(out_dir, "data", "ssl"), io.join(out_dir, "data", "comics_seq")
    paths = {"panels": io.join(out_dir, "raw_panel_images"), "ssl": ssl, "comics_seq": seq,
             "instances": io.join(ssl, "merged_face_body.csv"),
             "filtered_face": io.join(ssl, "filtered_all_face.csv"),
             "filtered_body": io.join(ssl, "filtered_all_body.csv"),
             "ground_truth": io.join(out_dir, "ground_truth.csv"),
             "ground_truth_charids": io.join(out_dir, "ground_truth_charids.csv"),
             "cast": io.join(out_dir, "cast.json"), "faults": io.join(out_dir, "faults.json"),
             "summary": io.join(out_dir, "summary.json")}
    for split in SPLITS:
        short = CHAR_MAP_SPLIT_NAMES[split]
        paths[f"{split}_sequences"] = io.join(seq, f"{split}_sequences.json")
        paths[f"{split}_char_faces"] = io.join(seq, f"{short}_char_faces.json")
        paths[f"{split}_char_bodies"] = io.join(seq, f"{short}_char_bodies.json")
    return paths


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def _write_sequences(cfg: SyntheticConfig, results: list[dict[str, Any]], paths: dict[str, str]
                     ) -> tuple[dict[str, int], list[dict[str, Any]]]:
    per_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    charid_rows: list[dict[str, Any]] = []
    used: dict[str, set[str]] = {s: set() for s in SPLITS}
    for result in results:
        for split, seq_id, characters in result["windows"]:
            annotations = []
            for identity, entries in characters:
                char_id = _char_id(cfg.seed, seq_id, identity, used[split])
                annotations.append({"charId": char_id, "charInstances": entries})
                charid_rows.append({"split": split, "seq_id": seq_id, "charId": char_id, "identity": identity,
                                    "series_id": result["series_id"]})
            annotations.sort(key=lambda a: a["charId"])  # the order must not reveal the cast
            per_split[split].append({"seq_id": seq_id, "annotations": annotations})
    for split, sequences in per_split.items():
        faces = {a["charId"]: [e["face"] for e in a["charInstances"] if "face" in e]
                 for s in sequences for a in s["annotations"]}
        bodies = {a["charId"]: [e["body"] for e in a["charInstances"] if "body" in e]
                  for s in sequences for a in s["annotations"]}
        io.write_text_atomic(paths[f"{split}_sequences"], _dumps(sequences))
        io.write_text_atomic(paths[f"{split}_char_faces"], _dumps({k: v for k, v in faces.items() if v}))
        io.write_text_atomic(paths[f"{split}_char_bodies"], _dumps({k: v for k, v in bodies.items() if v}))
    return {s: len(v) for s, v in per_split.items()}, charid_rows


def _filtered(instances: pd.DataFrame, type_: str) -> pd.DataFrame:
    rows = instances[(instances["type"] == type_) & (
        np.minimum(instances["x1"] - instances["x_0"], instances["y_1"] - instances["y_0"])
        >= MIN_FILTERED_SIDE[type_])]
    prefix, sub = (FACE_CROP_PREFIX, "") if type_ == "face" else (BODY_CROP_PREFIX, "bodies/")
    img_path = (prefix + "/" + rows["series_id"].astype(str) + "/" + rows["page_id"] + "/" + sub
                + rows["index"].astype(str) + ".jpg")
    return pd.DataFrame({"img_path": img_path, **{c: rows[c] for c in FILTERED_CSV_COLUMNS[1:]}})


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
    candidates = [p for p in panels if (p[0], f"{p[1]}_{p[2]}") in referenced]
    if n_panel_faults > len(candidates):
        raise ConfigError(f"corrupt_images + missing_images = {n_panel_faults} > {len(candidates)} panels "
                          "with instances")
    if cfg.offpage_partial + cfg.offpage_whole > len(instances):
        raise ConfigError(f"offpage_partial + offpage_whole = {cfg.offpage_partial + cfg.offpage_whole} > "
                          f"{len(instances)} instances")
    sizes = {(s, f"{p}_{q}"): (w, h) for s, p, q, w, h in panels}
    chosen = rng.permutation(len(instances))[:cfg.offpage_partial + cfg.offpage_whole]
    for k, row in enumerate(sorted(int(i) for i in chosen)):
        kind = "offpage_partial" if k < cfg.offpage_partial else "offpage_whole"
        r = instances.iloc[row]
        w, h = sizes[(int(r["series_id"]), r["page_id"])]
        old = [int(r[c]) for c in ("x_0", "y_0", "x1", "y_1")]
        bw, bh = old[2] - old[0], old[3] - old[1]
        edge = _pick(rng, ("left", "right", "top", "bottom"))
        gap = int(rng.integers(1, 20))
        if kind == "offpage_partial":
            new = {"left": [-(bw // 2), old[1], bw - bw // 2, old[3]],
                   "right": [w - bw // 2, old[1], w - bw // 2 + bw, old[3]],
                   "top": [old[0], -(bh // 2), old[2], bh - bh // 2],
                   "bottom": [old[0], h - bh // 2, old[2], h - bh // 2 + bh]}[edge]
        else:
            new = {"left": [-bw - gap, old[1], -gap, old[3]],
                   "right": [w + gap, old[1], w + gap + bw, old[3]],
                   "top": [old[0], -bh - gap, old[2], -gap],
                   "bottom": [old[0], h + gap, old[2], h + gap + bh]}[edge]
        instances.iloc[row, [instances.columns.get_loc(c) for c in ("x_0", "y_0", "x1", "y_1")]] = new
        iid = instance_id(int(r["series_id"]), *map(int, r["page_id"].split("_")), r["type"], int(r["index"]))
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


def generate_corpus(out_dir: str, cfg: SyntheticConfig, workers: int = 1) -> CorpusSummary:
    """Write a synthetic corpus under ``out_dir`` (local path or pyarrow-filesystem URI); see the module doc.

    ``workers`` > 1 draws series in a process pool; the bytes written do not depend on it. Files already
    in ``out_dir`` with the same names are replaced; others are left alone, so use a fresh folder.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    paths = corpus_paths(out_dir)
    series_ids = _series_ids(cfg)
    splits = _assign_splits(cfg, series_ids)
    tasks = [_SeriesTask(cfg, out_dir, sid, splits[sid]) for sid in series_ids]
    if workers == 1 or len(tasks) == 1:
        results = [_generate_series(t) for t in tasks]
    else:
        context = multiprocessing.get_context("spawn")  # the parent may hold Ray/torch threads: no fork
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            results = list(pool.map(_generate_series, tasks))
    instances = pd.DataFrame([row for r in results for row in r["instances"]],
                             columns=list(INSTANCE_CSV_COLUMNS))
    truth = pd.DataFrame([row for r in results for row in r["truth"]])
    panels = [(r["series_id"], *p) for r in results for p in r["panels"]]
    filtered = {t: _filtered(instances, t) for t in ("face", "body")}
    faults = _inject_faults(cfg, instances, truth, panels, out_dir)
    io.write_text_atomic(paths["instances"], instances.to_csv(index=False))
    for type_, frame in filtered.items():
        io.write_text_atomic(paths[f"filtered_{type_}"], frame.to_csv(index=False))
    n_sequences, charid_rows = _write_sequences(cfg, results, paths)
    io.write_text_atomic(paths["ground_truth"], truth.to_csv(index=False))
    io.write_text_atomic(paths["ground_truth_charids"], pd.DataFrame(
        charid_rows, columns=["split", "seq_id", "charId", "identity", "series_id"]).to_csv(index=False))
    casts = {str(r["series_id"]): r["cast"] for r in results}
    io.write_text_atomic(paths["cast"], json.dumps(casts, indent=1))
    io.write_text_atomic(paths["faults"], json.dumps(faults, indent=1))
    n_faces = int((instances["type"] == "face").sum())
    summary = CorpusSummary(
        out_dir=str(out_dir), series_ids=tuple(series_ids), panels=len(panels), instances=len(instances),
        faces=n_faces, bodies=len(instances) - n_faces, sequences=n_sequences,
        split_by=cfg.effective_split_by,
        paths=paths, faults=faults)
    # no timings or paths: the same config must give the same bytes
    record = {k: v for k, v in dataclasses.asdict(summary).items()
              if k not in ("seconds", "out_dir", "paths")}
    record["config"] = to_dict(cfg)
    io.write_text_atomic(paths["summary"], json.dumps(record, indent=1))
    return dataclasses.replace(summary, seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> tuple[str, SyntheticConfig, int]:
    """CLI → (out_dir, config, workers). Precedence: defaults < --preset < --config YAML < flags."""
    parser = build_parser(SyntheticConfig, "Write a synthetic corpus in the COMICS / seed data formats.")
    parser.add_argument("--out", required=True, help="output folder (local path or URI)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="tiny (test fixture) | demo | bench (~100k instances); flags override it")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing series in parallel")
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    if args.config:
        values.update(load_yaml(args.config))
    for f in dataclasses.fields(SyntheticConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    return args.out, from_dict(SyntheticConfig, values, source=args.config or "command line"), args.workers


def main(argv: list[str] | None = None) -> CorpusSummary:
    """CLI entry point: generate the corpus and print its counts and rate (instances/s)."""
    out_dir, cfg, workers = parse_args(argv)
    summary = generate_corpus(out_dir, cfg, workers=workers)
    faults = {k: len(v) for k, v in summary.faults.items() if v}
    print(f"wrote {summary.instances} instances ({summary.faces} faces, {summary.bodies} bodies) in "
          f"{summary.panels} panels of {len(summary.series_ids)} series to {out_dir} "
          f"in {summary.seconds:.1f} s "
          f"({summary.instances_per_second:.0f} instances/s); sequences {summary.sequences} "
          f"(split by {summary.split_by}){'; faults ' + str(faults) if faults else ''}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
