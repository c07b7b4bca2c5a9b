"""Image transforms (torchvision.transforms.v2) for SSL views, weak views and evaluation (docs/DATA.md).

Every pipeline takes a uint8 (C, H, W) tensor or a PIL image (grayscale is expanded to RGB) and
returns a float32 (3, size, size) tensor normalised with mean 0.5 and std 0.5 (values in [-1, 1]).
Faces are resized to a square (their crops are already squared, docs/DATA.md); bodies are resized on
their longer side and padded square, so their aspect ratio is kept.

A model may record its own inference transform as a *transform spec* (a JSON-safe dict, see
:func:`check_transform_spec`): :func:`eval_transform_from_spec` builds it; :func:`default_transform_spec` is
today's :func:`eval_transform` and :func:`paper_transform_spec` the paper's ``SIMCLR_TEST`` transform.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

KINDS = ("face", "body")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class ResizePadSquare(v2.Transform):
    """Resize so the longer side is ``size``, then pad both sides evenly to ``size`` x ``size``."""

    def __init__(self, size: int, fill: int = 0, antialias: bool = True) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.fill = fill
        self.antialias = antialias

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = TF.get_size(inpt)
        scale = self.size / max(height, width)
        new_h = min(self.size, max(1, round(height * scale)))
        new_w = min(self.size, max(1, round(width * scale)))
        resized = TF.resize(inpt, [new_h, new_w], antialias=self.antialias)
        left, top = (self.size - new_w) // 2, (self.size - new_h) // 2
        padding = [left, top, self.size - new_w - left, self.size - new_h - top]
        return TF.pad(resized, padding, fill=self.fill)


def _check(size: int, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")


def _square(size: int, kind: str) -> v2.Transform:
    return v2.Resize((size, size), antialias=True) if kind == "face" else ResizePadSquare(size)


def _blur(size: int) -> v2.GaussianBlur:
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # SimCLR: about 10% of the image side, odd
    return v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))


def _head() -> list[v2.Transform]:
    return [v2.ToImage(), v2.RGB()]


def _tail() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


PAPER_HUE = 0.1
PAPER_GRAYSCALE = 0.2
COLOUR_SATURATION = 0.08  # mean HSV saturation (0..1) of a crop sample above which a corpus counts as coloured


def mean_saturation(images: Any) -> float:
    """Mean HSV saturation (0..1) over every pixel of ``images`` (PIL images; grayscale ones count as 0)."""
    import numpy as np

    total, pixels = 0.0, 0
    for image in images:
        saturation = np.asarray(image.convert("HSV"), np.float64)[..., 1] if image.mode != "L" else np.zeros(1)
        total += float(saturation.sum()) / 255.0
        pixels += saturation.size
    return total / pixels if pixels else 0.0


def colour_augmentation(saturation: float) -> dict[str, Any]:
    """The strong views' colour augmentations chosen from a corpus's measured ``saturation``.

    A coloured corpus keeps its colours (hue jitter 0, no grayscale): costume and hair colours carry identity
    there, and removing them cost precision (docs/RESULTS.md). A black-and-white one (saturation below
    :data:`COLOUR_SATURATION`: ink, screentone, a faint paper tint) gets SimCLR's (the paper's): they cost
    nothing where there is no colour, and take a scan's tint out of the views.
    """
    coloured = saturation >= COLOUR_SATURATION
    return {"corpus_colour": "colour" if coloured else "black-and-white", "mean_saturation": round(saturation, 4),
            "hue": 0.0 if coloured else PAPER_HUE, "grayscale": 0.0 if coloured else PAPER_GRAYSCALE}


def ssl_strong(size: int, kind: str = "face", hue: float = PAPER_HUE, grayscale: float = PAPER_GRAYSCALE
               ) -> v2.Compose:
    """SimCLR view: random resized crop (scale 0.08-1), flip, colour jitter 0.5/0.5/0.5/``hue`` (p 0.8),
    grayscale (p ``grayscale``), Gaussian blur (p 0.5). Bodies are padded square before the crop.

    The defaults are the paper's (SimCLR's). Hue jitter and grayscale remove colour, which in comics carries
    identity (costume and hair colours): the product's pretraining turns both off (``--hue 0 --grayscale 0``,
    measured in docs/RESULTS.md)."""
    _check(size, kind)
    if not (0 <= hue <= 0.5 and 0 <= grayscale <= 1):
        raise ValueError(f"need 0 <= hue <= 0.5 and 0 <= grayscale <= 1, got {hue}, {grayscale}")
    geometry = [] if kind == "face" else [ResizePadSquare(size)]
    return v2.Compose(
        [
            *_head(),
            *geometry,
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, hue)], p=0.8),
            v2.RandomGrayscale(p=grayscale),
            v2.RandomApply([_blur(size)], p=0.5),
            *_tail(),
        ]
    )


def _weak(size: int, kind: str) -> v2.Compose:
    _check(size, kind)
    return v2.Compose(
        [
            *_head(),
            _square(size, kind),
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            v2.RandomApply([_blur(size)], p=0.1),
            *_tail(),
        ]
    )


def weak_face(size: int) -> v2.Compose:
    """Weak face view (face<->body term): resize, mild crop, flip, small shift-scale-rotate, rare blur."""
    return _weak(size, "face")


def weak_body(size: int) -> v2.Compose:
    """Weak body view for the face<->body term: resize/pad square, then as ``weak_face``."""
    return _weak(size, "body")


def eval_transform(size: int, kind: str) -> v2.Compose:
    """Deterministic transform for embedding: square resize (face) or resize + pad (body), normalise."""
    _check(size, kind)
    return v2.Compose([*_head(), _square(size, kind), *_tail()])


# -- transform specs ---------------------------------------------------------------------------------------

RESIZES = ("square", "longest_pad")
"""``square``: resize to size x size (aspect ratio not kept); ``longest_pad``: longer side to size, zero padding
centred to size x size (:class:`ResizePadSquare`)."""


def default_transform_spec(face_size: int, body_size: int) -> dict[str, Any]:
    """The spec of :func:`eval_transform`: faces square-resized, bodies longest side + pad, mean/std 0.5."""
    return {"face": {"size": face_size, "resize": "square", "antialias": True},
            "body": {"size": body_size, "resize": "longest_pad", "antialias": True}, "mean": 0.5, "std": 0.5}


def paper_transform_spec(face_size: int = 96, body_size: int = 128) -> dict[str, Any]:
    """The paper's inference transform (``VisionTransformSetting.SIMCLR_TEST``): longest side to N, zero padding
    to N x N, mean/std 0.5, for faces and bodies alike. Its resize is OpenCV's bilinear without antialiasing,
    hence ``antialias: False`` (torchvision's bilinear equals it up to uint8 rounding)."""
    return {"face": {"size": face_size, "resize": "longest_pad", "antialias": False},
            "body": {"size": body_size, "resize": "longest_pad", "antialias": False}, "mean": 0.5, "std": 0.5}


def _channels(name: str, value: Any) -> float | list[float]:
    if isinstance(value, bool):
        raise ValueError(f"transform spec {name}={value!r}: expected a number or 3 numbers")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple) and len(value) == 3 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    raise ValueError(f"transform spec {name}={value!r}: expected a number or 3 numbers")


def check_transform_spec(spec: Any) -> dict[str, Any]:
    """A validated, normalised copy of a transform spec; raises ValueError naming the bad entry.

    ``{"face": {"size": int > 0, "resize": "square" | "longest_pad", "antialias": bool (default True)},
    "body": {...}, "mean": float or 3 floats, "std": float or 3 floats (> 0)}``; no other keys.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"transform spec must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - {"face", "body", "mean", "std"})
    if unknown:
        raise ValueError(f"transform spec: unknown keys {unknown}")
    out: dict[str, Any] = {}
    for kind in KINDS:
        part = spec.get(kind)
        if not isinstance(part, dict):
            raise ValueError(f"transform spec {kind!r}: expected a dict with size and resize, got {part!r}")
        extra = sorted(set(part) - {"size", "resize", "antialias"})
        size, resize, antialias = part.get("size"), part.get("resize"), part.get("antialias", True)
        if extra or isinstance(size, bool) or not isinstance(size, int) or size <= 0 or resize not in RESIZES \
                or not isinstance(antialias, bool):
            raise ValueError(f"transform spec {kind!r}={part!r}: expected size (int > 0), resize in {RESIZES}, "
                             "antialias (bool)")
        out[kind] = {"size": size, "resize": resize, "antialias": antialias}
    for name in ("mean", "std"):
        out[name] = _channels(name, spec.get(name))
    std = out["std"] if isinstance(out["std"], list) else [out["std"]]
    if min(std) <= 0:
        raise ValueError(f"transform spec std={out['std']!r}: must be positive")
    return out


def eval_transform_from_spec(spec: dict[str, Any], kind: str) -> v2.Compose:
    """The deterministic transform a spec describes for ``kind`` (face | body): uint8/PIL image ->
    float32 (3, size, size). ``default_transform_spec(F, B)`` gives exactly ``eval_transform(F|B, kind)``."""
    spec = check_transform_spec(spec)
    _check(spec[kind]["size"], kind)
    part = spec[kind]
    size, antialias = part["size"], part["antialias"]
    geometry = (v2.Resize((size, size), antialias=antialias) if part["resize"] == "square"
                else ResizePadSquare(size, antialias=antialias))
    mean, std = ([spec[k]] * 3 if isinstance(spec[k], float) else spec[k] for k in ("mean", "std"))
    return v2.Compose([*_head(), geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
