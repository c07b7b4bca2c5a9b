"""Image transforms (torchvision.transforms.v2) for SSL views, weak views and evaluation (docs/DATA.md).

Every pipeline takes a uint8 (C, H, W) tensor or a PIL image (grayscale is expanded to RGB) and
returns a float32 (3, size, size) tensor normalised with mean 0.5 and std 0.5 (values in [-1, 1]).
Faces are resized to a square (their crops are already squared, docs/DATA.md); bodies are resized on
their longer side and padded square, so their aspect ratio is kept.
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

    def __init__(self, size: int, fill: int = 0) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.fill = fill

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = TF.get_size(inpt)
        scale = self.size / max(height, width)
        new_h = min(self.size, max(1, round(height * scale)))
        new_w = min(self.size, max(1, round(width * scale)))
        resized = TF.resize(inpt, [new_h, new_w], antialias=True)
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


def ssl_strong(size: int, kind: str = "face") -> v2.Compose:
    """SimCLR view: random resized crop (scale 0.08-1), flip, colour jitter 0.5/0.5/0.5/0.1 (p 0.8),
    grayscale (p 0.2), Gaussian blur (p 0.5). Bodies are padded square before the crop."""
    _check(size, kind)
    geometry = [] if kind == "face" else [ResizePadSquare(size)]
    return v2.Compose(
        [
            *_head(),
            *geometry,
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
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
