"""Label one window without Ray: crop, embed, cluster (for notebooks, and the labeling job's reference).

The labeling job (:mod:`reid.stages.label`) uses the same three steps on every window of the corpus:
:func:`embed_characters` (eval transforms, a missing modality masked, never a fake image) and
:func:`cluster_window` (the assigner of :mod:`reid.core.assign`, plus each cluster's centre and each member's
distance to it). A *character instance* is a face and/or a body with the same ``char_index`` in one panel
(:func:`reid.core.contracts.crops.pair_rows`); both boxes of a character get its identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from reid.core.assign import assign_window
from reid.core.contracts.crops import pair_rows
from reid.core.embedding import CharacterEmbedder, CropPreprocessor  # noqa: F401 (part of this API)
from reid.core.geometry import EmptyBoxError, crop_box
from reid.core.images import decode_image

ImageLike = Image.Image | np.ndarray | bytes


def _pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, bytes | bytearray):
        return decode_image(bytes(image), "label_window image")  # the one decoder, with its pixel limit
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def cluster_window(embeddings: np.ndarray, threshold: float = 0.82, metric: str = "euclidean",
                   linkage: str = "average", panels: Sequence[str] | None = None,
                   cannot_link: np.ndarray | None = None, must_link: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window's embeddings (N, D) → identities (N,) int64 0..K-1, centres (K, D), distances (N,).

    ``panels`` (N,), the panel of each character instance: two instances of one panel never share an
    identity (cannot-link, :func:`reid.core.assign.assign_window`). None clusters without constraints.
    ``cannot_link`` / ``must_link`` (N, N) bool: a reviewer's corrections (:mod:`reid.core.corrections`).

    A centre is the mean of its members' unit embeddings, re-normalised (as :func:`reid.core.assign.link_windows`
    computes it); a distance is the Euclidean distance of a member's unit embedding to its centre.
    """
    points = np.asarray(embeddings, np.float64)
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    labels = assign_window(points, threshold, metric, linkage, panels=panels, cannot_link=cannot_link,
                           must_link=must_link)
    k = int(labels.max()) + 1 if len(labels) else 0
    centres = np.zeros((k, points.shape[1]))
    np.add.at(centres, labels, points)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    distances = np.linalg.norm(points - centres[labels], axis=1) if k else np.zeros(0)
    return labels, centres.astype(np.float32), distances.astype(np.float32)


def crop_boxes(panels: Sequence[ImageLike], boxes: Sequence[dict[str, Any]], face_scale: float = 1.2
               ) -> list[Image.Image | None]:
    """The crop of every box, as the crop job makes it (faces scaled and squared, clipped to the panel).

    A box is ``{"panel": index into panels, "type": "face"|"body", "box": (x0, y0, x1, y1)}`` in the
    instance CSV's pixel coordinates, or carries a ready ``"image"`` (PIL, array or encoded bytes).
    A box with no pixels inside its panel gives None.
    """
    decoded: dict[int, Image.Image] = {}
    crops: list[Image.Image | None] = []
    for b in boxes:
        if b.get("image") is not None:
            crops.append(_pil(b["image"]))
            continue
        index = int(b["panel"])
        if index not in decoded:
            decoded[index] = _pil(panels[index])
        panel = decoded[index]
        try:
            box = crop_box(b["type"], *map(float, b["box"]), panel.width, panel.height, face_scale)
        except EmptyBoxError:
            crops.append(None)
            continue
        crops.append(panel.crop(box))
    return crops


def pair_boxes(boxes: Sequence[dict[str, Any]], usable: Sequence[bool]) -> list[tuple[int | None, int | None]]:
    """Group boxes into character instances with the crop job's pairing rules (:func:`pair_rows`).

    Returns (face box index, body box index) per character instance; unusable boxes are left out.
    """
    rows = [{"instance_id": str(i), "panel_id": str(int(b["panel"])), "series_id": 0, "type": b["type"],
             "char_index": int(b.get("char_index", -1)), "image": b"x"}
            for i, (b, ok) in enumerate(zip(boxes, usable, strict=True)) if ok]
    if not rows:
        return []
    characters = pair_rows(pa.Table.from_pylist(rows))
    return [(int(c["face_id"]) if c["face_id"] else None, int(c["body_id"]) if c["body_id"] else None)
            for c in characters]


def label_window(model: torch.nn.Module, panels: Sequence[ImageLike], boxes: Sequence[dict[str, Any]],
                 threshold: float = 0.82, metric: str = "euclidean", linkage: str = "average",
                 face_scale: float = 1.2, device: torch.device | str | None = None) -> list[int | None]:
    """Identities (0..K-1, numbered by first appearance) of the boxes of one window; no Ray needed.

    ``panels``: the window's panel images (PIL or HxWx3 uint8 arrays); ``boxes``: dicts with ``panel``
    (index into ``panels``), ``type`` (face | body), ``char_index`` (a face and a body with the same
    non-negative value in one panel are one character and get one identity) and ``box`` (x0, y0, x1, y1 as
    in the instance CSV) or a ready crop ``image``. A box with no pixels in its panel gets None. Two
    characters of one panel never get one identity (cannot-link).
    """
    crops = crop_boxes(panels, boxes, face_scale)
    characters = pair_boxes(boxes, [c is not None for c in crops])
    identities: list[int | None] = [None] * len(boxes)
    if not characters:
        return identities
    embed = CharacterEmbedder(model, device)
    embeddings = embed([crops[f] if f is not None else None for f, _ in characters],
                       [crops[b] if b is not None else None for _, b in characters])
    panel_of = [boxes[f if f is not None else b]["panel"] for f, b in characters]
    labels, _, _ = cluster_window(embeddings, threshold, metric, linkage, panels=[str(p) for p in panel_of])
    for (f, b), label in zip(characters, labels, strict=True):
        for index in (f, b):
            if index is not None:
                identities[index] = int(label)
    return identities
