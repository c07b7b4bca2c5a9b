"""Crop-box geometry of the seed data (docs/DATA.md)."""

from __future__ import annotations

import math

Box = tuple[int, int, int, int]


class EmptyBoxError(ValueError):
    """The box has no pixels inside the page."""


def _clip(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Box:
    cx0, cy0 = max(0.0, x0), max(0.0, y0)
    cx1, cy1 = min(float(width), x1), min(float(height), y1)
    box = (int(cx0), int(cy0), int(cx1), int(cy1))  # truncation, as the seed's crops
    if box[2] <= box[0] or box[3] <= box[1]:
        raise EmptyBoxError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no pixels inside the "
                            f"{width}x{height} page")
    return box


def face_crop_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int,
                  scale: float = 1.2) -> Box:
    """Face box scaled by ``scale`` about its centre, squared to its longer side, clipped, truncated."""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise EmptyBoxError(f"box ({x0}, {y0}, {x1}, {y1}) has non-finite coordinates")
    _clip(x0, y0, x1, y1, width, height)  # a face box wholly off the page is an error, even if its ×1.2 is not
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    half = max(x1 - x0, y1 - y0) * scale / 2.0
    return _clip(cx - half, cy - half, cx + half, cy + half, width, height)


def body_crop_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Box:
    """Body box as given, clipped to the page, truncated to ints."""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise EmptyBoxError(f"box ({x0}, {y0}, {x1}, {y1}) has non-finite coordinates")
    return _clip(x0, y0, x1, y1, width, height)


def crop_box(type_: str, x0: float, y0: float, x1: float, y1: float, width: int, height: int,
             face_scale: float = 1.2) -> Box:
    if type_ == "face":
        return face_crop_box(x0, y0, x1, y1, width, height, face_scale)
    return body_crop_box(x0, y0, x1, y1, width, height)
