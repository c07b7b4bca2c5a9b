"""Reference embeddings that learn nothing: what a corpus gives away without a model.

A colour histogram of a character's crops is the cheapest identity cue. On a corpus where it already finds
the same character in a sequence, a learnt model's precision@1 says little; on real black-and-white pages it
is weak (the style calibration in ``docs/RESULTS.md``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HISTOGRAM_LEVELS = 4  # per channel: 4**3 = 64 bins


def colour_histogram(image: Image.Image, levels: int = HISTOGRAM_LEVELS) -> np.ndarray:
    """The normalised joint RGB histogram of an image, ``levels`` per channel: (levels**3,) float64, sum 1."""
    pixels = np.asarray(image.convert("RGB"), np.int64) * levels // 256
    codes = (pixels[..., 0] * levels + pixels[..., 1]) * levels + pixels[..., 2]
    counts = np.bincount(codes.ravel(), minlength=levels**3).astype(np.float64)
    return counts / max(1.0, counts.sum())


def colour_histogram_embedding(face: Image.Image | None, body: Image.Image | None,
                               levels: int = HISTOGRAM_LEVELS) -> np.ndarray:
    """A character instance as [face histogram, body histogram] (a missing crop is zeros), L2-normalised:
    (2 * levels**3,) float64, comparable with the Euclidean kNN the retrieval metrics use."""
    zeros = np.zeros(levels**3)
    vector = np.concatenate([colour_histogram(face, levels) if face is not None else zeros,
                             colour_histogram(body, levels) if body is not None else zeros])
    return vector / max(1e-12, float(np.linalg.norm(vector)))
