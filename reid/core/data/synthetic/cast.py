"""A series' cast: the drawing attributes of its recurring characters and their look-alike relations."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

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
