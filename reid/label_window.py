"""Label one window without Ray: crop, embed, cluster (for notebooks, and the labeling job's reference).

The labeling job (:mod:`reid.label`) uses the same three steps on every window of the corpus:
:func:`embed_characters` (eval transforms, a missing modality masked, never a fake image) and
:func:`cluster_window` (the assigner of :mod:`reid.assign`, plus each cluster's centre and each member's
distance to it). A *character instance* is a face and/or a body with the same ``char_index`` in one panel
(:func:`reid.train.data.pair_rows`); both boxes of a character get its identity.
"""

from __future__ import annotations

import io as _io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torchvision.transforms import v2

from reid.assign import assign_window
from reid.data import augment
from reid.geometry import EmptyBoxError, crop_box
from reid.train.data import pair_rows

ImageLike = Image.Image | np.ndarray | bytes


def _pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, bytes | bytearray):
        return Image.open(_io.BytesIO(image)).convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


class CropPreprocessor:
    """Crops → uint8 arrays with exactly the geometry of :func:`reid.data.augment.eval_transform`, or of the
    model's recorded ``transform`` spec (``ModelConfig.transform``, see
    :func:`reid.data.augment.eval_transform_from_spec`) when one is given.

    The eval transform is split where its dtype conversion starts: the geometry (square resize for faces,
    resize + pad for bodies) runs on the CPU, per crop, and yields uint8 (3, S, S) (4x smaller to move
    between processes and to the GPU); the rest (scale to [0, 1], normalise) runs batched on the device in
    :meth:`normalize`. The composition equals ``eval_transform(size, kind)`` (or the spec's) bit for bit.
    """

    def __init__(self, face_size: int, body_size: int, transform: dict[str, Any] | None = None) -> None:
        self.sizes = {"face": face_size, "body": body_size}
        if transform is not None and (transform["face"]["size"], transform["body"]["size"]) != (face_size,
                                                                                                 body_size):
            raise ValueError(f"transform spec sizes {transform['face']['size']}/{transform['body']['size']} "
                             f"!= face/body sizes {face_size}/{body_size}")
        self.geometry, self.tail = {}, {}
        for kind, size in self.sizes.items():
            steps = list((augment.eval_transform(size, kind) if transform is None
                          else augment.eval_transform_from_spec(transform, kind)).transforms)
            split = next((i for i, t in enumerate(steps) if isinstance(t, v2.ToDtype)), None)
            if split is None or not all(isinstance(t, v2.ToDtype | v2.Normalize) for t in steps[split:]):
                raise TypeError(f"eval_transform({size}, {kind!r}) no longer ends in ToDtype/Normalize: {steps}")
            self.geometry[kind], self.tail[kind] = v2.Compose(steps[:split]), v2.Compose(steps[split:])

    def __call__(self, faces: Sequence[Image.Image | None], bodies: Sequence[Image.Image | None]
                 ) -> dict[str, np.ndarray]:
        """Crops (None = missing) → face (N,3,F,F), body (N,3,B,B) uint8; face_mask, body_mask bool (N,).

        A missing crop is a zero image whose mask is False: the network never sees it.
        """
        out: dict[str, np.ndarray] = {}
        for kind, crops in (("face", faces), ("body", bodies)):
            size = self.sizes[kind]
            images = np.zeros((len(crops), 3, size, size), np.uint8)
            for i, crop in enumerate(crops):
                if crop is not None:
                    images[i] = self.geometry[kind](crop).numpy()
            out[kind] = images
            out[f"{kind}_mask"] = np.asarray([c is not None for c in crops], bool)
        return out

    def normalize(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        """uint8 (N,3,S,S) on any device → the eval transform's float output (mean 0.5, std 0.5)."""
        return self.tail[kind](images)


PAD_MULTIPLE = 8


def _pad_rows(x: np.ndarray, pad: int, value: object = 0) -> np.ndarray:
    if not pad:
        return x
    return np.concatenate([x, np.full((pad, *x.shape[1:]), value, x.dtype)])


class CharacterEmbedder:
    """Embeds character instances with a Re-ID net: face (F px) and body (B px) crops → (N, embed_dim).

    Holds the model in eval mode on ``device`` (this puts a model passed in into eval mode) and a
    :class:`CropPreprocessor` for its input sizes and its recorded transform (``model.config.transform``).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None,
                 batch_size: int = 128) -> None:
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.preprocess = CropPreprocessor(model.config.face_size, model.config.body_size,
                                           getattr(model.config, "transform", None))

    def padded_size(self, n: int) -> int:
        """Rows a chunk of ``n`` is padded to: the next multiple of :data:`PAD_MULTIPLE`, at most the batch size.

        Work units give every size from 1 to ``batch_size``; each new input shape costs the CPU backend new
        kernels and memory it keeps (RSS of a labeling actor grew 1.2 → 3.5 GB over 40 distinct batch sizes),
        and a GPU new autotuning. Eval mode makes rows independent, so padding changes no embedding."""
        return n if n >= self.batch_size else min(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE, self.batch_size)

    @torch.inference_mode()
    def embed_uint8(self, face: np.ndarray, body: np.ndarray, face_mask: np.ndarray, body_mask: np.ndarray
                    ) -> np.ndarray:
        """Preprocessed crops (see :class:`CropPreprocessor`) → (N, embed_dim) float32, L2-normalised,
        in batches of ``batch_size``."""
        chunks = []
        for i in range(0, len(face_mask), self.batch_size):
            part = slice(i, i + self.batch_size)
            n = len(face_mask[part])
            pad = self.padded_size(n) - n
            f, b = (torch.from_numpy(_pad_rows(np.ascontiguousarray(x[part]), pad)).to(self.device,
                                                                                        non_blocking=True)
                    for x in (face, body))
            fm = _pad_rows(np.asarray(face_mask[part], bool), pad, True)  # a padding row is a black "face"
            bm = _pad_rows(np.asarray(body_mask[part], bool), pad, False)
            out = self.model(self.preprocess.normalize(f, "face"), self.preprocess.normalize(b, "body"),
                             torch.from_numpy(fm).to(self.device), torch.from_numpy(bm).to(self.device))
            chunks.append(out[:n].float().cpu().numpy())
        if not chunks:
            return np.zeros((0, self.model.config.embed_dim), np.float32)
        return np.concatenate(chunks)

    def __call__(self, faces: Sequence[Image.Image | None], bodies: Sequence[Image.Image | None]) -> np.ndarray:
        """Face and body crops (None = missing; never both) → (N, embed_dim) float32."""
        return self.embed_uint8(**self.preprocess(faces, bodies))


def cluster_window(embeddings: np.ndarray, threshold: float = 0.82, metric: str = "euclidean",
                   linkage: str = "average") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window's embeddings (N, D) → identities (N,) int64 0..K-1, centres (K, D), distances (N,).

    A centre is the mean of its members' unit embeddings, re-normalised (as :func:`reid.assign.link_windows`
    computes it); a distance is the Euclidean distance of a member's unit embedding to its centre.
    """
    points = np.asarray(embeddings, np.float64)
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    labels = assign_window(points, threshold, metric, linkage)
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
    in the instance CSV) or a ready crop ``image``. A box with no pixels in its panel gets None.
    """
    crops = crop_boxes(panels, boxes, face_scale)
    characters = pair_boxes(boxes, [c is not None for c in crops])
    identities: list[int | None] = [None] * len(boxes)
    if not characters:
        return identities
    embed = CharacterEmbedder(model, device)
    embeddings = embed([crops[f] if f is not None else None for f, _ in characters],
                       [crops[b] if b is not None else None for _, b in characters])
    labels, _, _ = cluster_window(embeddings, threshold, metric, linkage)
    for (f, b), label in zip(characters, labels, strict=True):
        for index in (f, b):
            if index is not None:
                identities[index] = int(label)
    return identities
