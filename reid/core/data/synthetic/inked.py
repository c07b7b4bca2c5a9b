"""The inked style: black-and-white line art with screentone, where colour cannot decide identity.

A coloured corpus lets a model tell characters apart by costume and hair colour; real black-and-white comics
(manga, ink-first comics) do not. In this style the same cast is drawn in ink on white paper:

- every fill is a grey *tone*; mid tones become screentone (a clustered-dot halftone whose dot pitch varies
  per panel), so what is left of a colour is the share of black, white and dots in a crop;
- hair is black, white or toned, the same for a character in every panel (as artists keep it); skin is white;
  clothes are mostly white or toned and their tone changes between appearances (another outfit, a shadow, a
  different screentone sheet), so tone alone names nobody;
- identity lives in shapes: head shape, hair silhouette, eyes, mouth, clothing pattern, accessory, build;
- characters come at every scale: far figures, medium shots cut by the panel's bottom or side border and
  close-ups whose face fills the panel; panels are 300-800 px like page scans;
- unnamed extras (a pool of passers-by per series) share panels with the cast: they have boxes in the instance
  CSV, an empty identity in the ground truth, and belong to no labelled sequence;
- lighting is a shadow gradient over part of the panel, then scan noise and JPEG of a grey image.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid.core.data.synthetic.cast import _PALETTE_ATTRIBUTES, RGB, CharacterDesign, _sample_design

# grey levels of the fills; everything strictly between _BLACK_BELOW and _WHITE_ABOVE becomes dots
_TONES = {"white": 252, "light": 205, "mid": 150, "dark": 95, "black": 22}
_BLACK_BELOW, _WHITE_ABOVE = 40, 238
_HAIR_TONES = (("black", 0.4), ("white", 0.35), ("mid", 0.25))
_CLOTH_TONES = (("white", 0.5), ("light", 0.2), ("mid", 0.15), ("black", 0.15))
_BG_GREYS = ((252, 252, 252), (235, 235, 235), (215, 215, 215), (190, 190, 190), (160, 160, 160))
EXTRA_POOL = 40  # unnamed passers-by per series


def _grey(tone: str) -> RGB:
    v = _TONES[tone]
    return (v, v, v)


def _draw_tone(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*table, strict=True)
    return names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]


def inked_cast(cast: list[CharacterDesign], seed: int, series_id: int) -> list[CharacterDesign]:
    """The same characters as ``cast`` with grey tones for fills: white skin, a fixed hair tone, clothes tones.

    Clothes tones here are only the character's usual ones; :func:`appearance` varies them per panel.
    """
    rng = np.random.default_rng([seed, series_id, 0x1C4])
    out = []
    for design in cast:
        tones = {"skin": _grey("white"), "hair": _grey(_draw_tone(rng, _HAIR_TONES))}
        for name in ("shirt", "pants", "accent"):
            tones[name] = _grey(_draw_tone(rng, _CLOTH_TONES))
        out.append(dataclasses.replace(design, **tones))
    return out


def make_extras(seed: int, series_id: int, count: int = EXTRA_POOL) -> list[CharacterDesign]:
    """A series' pool of unnamed extras: random designs with an empty identity (never in a sequence)."""
    rng = np.random.default_rng([seed, series_id, 0xE7A5])
    extras = [dataclasses.replace(_sample_design(rng, series_id, 1000 + k), identity="")
              for k in range(count)]
    return inked_cast(extras, seed, series_id + 100000)


def appearance(design: CharacterDesign, rng: np.random.Generator) -> CharacterDesign:
    """One panel's version of a character: its clothes tones may change (outfit, shadow, another sheet)."""
    changes: dict[str, Any] = {}
    for name, p in (("shirt", 0.35), ("pants", 0.3), ("accent", 0.25)):
        if rng.random() < p:
            changes[name] = _grey(_draw_tone(rng, _CLOTH_TONES))
    if rng.random() < 0.15:  # a light tone over the skin (a shadowed face)
        changes["skin"] = _grey("light")
    return dataclasses.replace(design, **changes) if changes else design


def inked_scene_colors(rng: np.random.Generator) -> tuple[RGB, RGB]:
    """Two background greys: mostly paper white, sometimes a toned or dark (night) scene."""
    if rng.random() < 0.08:
        return (40, 40, 40), (70, 70, 70)
    i, j = rng.choice(len(_BG_GREYS), 2, replace=True, p=[0.45, 0.2, 0.15, 0.12, 0.08])
    return _BG_GREYS[int(i)], _BG_GREYS[int(j)]


def panel_figure_size(rng: np.random.Generator, h: int, height: float, crowd: int) -> tuple[float, str]:
    """Height in px of a standing figure and its shot: ``far`` (small), ``full`` or ``medium`` (cut by the
    panel's bottom border: only the upper body shows)."""
    u = rng.random()
    if u < 0.25:
        return h * float(rng.uniform(0.22, 0.45)) * height, "far"
    if u < 0.5:
        return h * float(rng.uniform(0.85, 1.25)) * height, "medium"
    return h * float(rng.uniform(0.45, 0.9)) * height * (1 - 0.06 * (crowd - 1)), "full"


def halftone(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Black-and-white print of a grey image (H, W uint8): mid tones as a clustered-dot screen at 45°.

    The dot pitch (4-8 px) and phase are drawn per panel, as different screentone sheets would be.
    """
    h, w = grey.shape
    pitch = float(rng.uniform(4.0, 8.0))
    phase = rng.uniform(0, pitch, 2)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs + ys + phase[0]) / (pitch * math.sqrt(2))
    v = (xs - ys + phase[1]) / (pitch * math.sqrt(2))
    # distance to the nearest screen cell centre, 0 (centre) .. ~0.7 (corner), as a threshold map 0..255
    du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
    screen = np.clip(np.sqrt(du * du + dv * dv) / 0.7071, 0, 1) * 255.0
    out = np.where(grey.astype(np.float32) > 255.0 - screen, 255, 0).astype(np.uint8)
    out[grey >= _WHITE_ABOVE] = 255
    out[grey <= _BLACK_BELOW] = 0
    return out


def finish_inked(rng: np.random.Generator, img: Image.Image, style: dict[str, Any]) -> Image.Image:
    """A drawn RGB panel → the printed grey panel: shadow gradient, screentone, ink specks, scan blur, border."""
    w, h = img.size
    grey = np.asarray(img.convert("L"), np.float32)
    if rng.random() < 0.4:  # a shadow falling over one side of the panel
        a = float(rng.uniform(0, 2 * math.pi))
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xs * math.cos(a) + ys * math.sin(a))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        grey = grey * (1.0 - float(rng.uniform(0.15, 0.4)) * np.clip(t * 2 - 0.6, 0, 1))
    printed = halftone(np.clip(grey, 0, 255).astype(np.uint8), rng)
    out = Image.fromarray(printed, "L")
    d = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(3, 14))):  # dust and stray ink
        x, y, r = float(rng.uniform(0, w)), float(rng.uniform(0, h)), float(rng.uniform(0.5, 1.8))
        d.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.choice([0, 255])))
    out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))  # the scanner's softness
    noise = rng.normal(0.0, float(style["scan_noise"]), (h, w))
    out = Image.fromarray(np.clip(np.asarray(out, np.float32) + noise, 0, 255).astype(np.uint8), "L")
    ImageDraw.Draw(out).rectangle([0, 0, w - 1, h - 1], outline=0, width=style["border"])
    return out


def inked_style(rng: np.random.Generator) -> dict[str, Any]:
    """What a series' inked look adds to its style: scan noise level (ink is always black)."""
    return {"ink": (0, 0, 0), "scan_noise": float(rng.uniform(2.0, 7.0))}


def grey_only(design: CharacterDesign) -> bool:
    """Whether every fill of ``design`` is a grey (what the inked style promises)."""
    return all(len(set(getattr(design, n))) == 1 for n in _PALETTE_ATTRIBUTES)
