"""The one embedding path: crops → the Re-ID network's input → L2-normalised embeddings (Ray-free).

Labeling (every actor of the label job), validation during fine-tuning, threshold calibration, the threshold
sweep, evaluation and the notebook API (:func:`reid.core.label_window.label_window`) all embed through
:class:`CharacterEmbedder`, whose preprocessing is :class:`CropPreprocessor` (exactly the eval transform of
:func:`reid.core.data.augment.eval_transform`, split into a uint8 geometry on the CPU and a batched normalisation
on the device). Crops are decoded by :func:`decode_rgb`, i.e. :func:`reid.core.images.decode_image` with its pixel
limit, wherever they come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from reid.core.data import augment
from reid.core.images import decode_image


def decode_rgb(data: bytes, source: str = "crop") -> Image.Image:
    """Crop bytes → RGB image through the one decoder (:func:`reid.core.images.decode_image`, pixel limit)."""
    return decode_image(data, source)


def to_uint8_chw(image: torch.Tensor | Image.Image) -> np.ndarray:
    """A PIL image, a uint8 tensor, or an augment pipeline's output (float, mean 0.5 std 0.5) → uint8 CHW.

    Samples travel through Ray Data as uint8 (4x smaller than float) and are normalised on the device.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    if image.dtype.is_floating_point:
        image = (image * 0.5 + 0.5).mul_(255.0).round_().clamp_(0, 255)
    return image.to(torch.uint8).numpy()


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) → float, mean 0.5 std 0.5 per channel (the paper's normalisation)."""
    return images.float().div_(255.0).sub_(0.5).div_(0.5)


class CropPreprocessor:
    """Crops → uint8 arrays with exactly the geometry of :func:`reid.core.data.augment.eval_transform`, or of the
    model's recorded ``transform`` spec (``ModelConfig.transform``, see
    :func:`reid.core.data.augment.eval_transform_from_spec`) when one is given.

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
        kernels and memory it keeps (a labeling actor's memory grows with every distinct batch size:
        docs/BENCHMARKS.md), and a GPU new autotuning. Eval mode makes rows independent, so padding changes
        no embedding."""
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


def collate_sequences(batch: dict[str, Any], first_label: int = 0) -> dict[str, torch.Tensor]:
    """A batch of sequence rows → one flat batch of instances with global labels and sequence ids.

    Labels become unique across the batch's sequences (a charId is only meaningful inside its sequence);
    ``panels`` lists each instance's panel (its index in the sequence, as a string; empty when the rows carry
    none): only compared within a sequence, for the assigner's cannot-link.
    """
    faces, bodies, fmask, bmask, labels, seq_index, series, panels = [], [], [], [], [], [], [], []
    next_label = first_label
    for s, (face, body, fm, bm, lab, ser) in enumerate(zip(batch["face"], batch["body"], batch["face_mask"],
                                                           batch["body_mask"], batch["labels"],
                                                           batch["series_id"], strict=True)):
        if len(lab) == 0:
            continue
        faces.append(torch.tensor(np.asarray(face)))
        bodies.append(torch.tensor(np.asarray(body)))
        fmask.append(torch.tensor(np.asarray(fm, bool)))
        bmask.append(torch.tensor(np.asarray(bm, bool)))
        lab = torch.tensor(np.asarray(lab, np.int64))
        labels.append(lab + next_label)
        next_label += int(lab.max()) + 1
        seq_index.append(torch.full((len(lab),), s, dtype=torch.int64))
        series.append(torch.full((len(lab),), int(ser), dtype=torch.int64))
        if "panels" in batch:
            panels += [str(int(p)) for p in batch["panels"][s]]
    if not labels:
        return {}
    return {"face": torch.cat(faces), "body": torch.cat(bodies), "face_mask": torch.cat(fmask),
            "body_mask": torch.cat(bmask), "labels": torch.cat(labels), "sequence": torch.cat(seq_index),
            "series": torch.cat(series), "panels": panels}


def embed_batches(model: torch.nn.Module, batches, device: torch.device) -> dict[str, np.ndarray]:
    """Embed collated sequence batches → embeddings, labels (unique per sequence and charId), sequence ids,
    panel ids. The forward is the labeling job's (:class:`CharacterEmbedder`), so
    validation, threshold calibration, the threshold sweep and labeling embed through one code path."""
    embedder = CharacterEmbedder(model, device)
    embs, labels, seqs, panels, series = [], [], [], [], []
    next_label, next_seq = 0, 0
    for raw in batches:
        batch = collate_sequences(raw, first_label=next_label)
        if not batch:
            continue
        embs.append(embedder.embed_uint8(batch["face"].numpy(), batch["body"].numpy(), batch["face_mask"].numpy(),
                                         batch["body_mask"].numpy()))
        labels.append(batch["labels"].numpy())
        seqs.append(batch["sequence"].numpy() + next_seq)
        panels += batch["panels"]
        series.append(batch["series"].numpy())
        next_label = int(batch["labels"].max()) + 1
        next_seq += int(batch["sequence"].max()) + 1
    if not embs:
        return {"embeddings": np.zeros((0, model.config.embed_dim), np.float32), "labels": np.zeros(0, np.int64),
                "sequences": np.zeros(0, np.int64), "panels": np.zeros(0, object), "series": np.zeros(0, np.int64)}
    return {"embeddings": np.concatenate(embs), "labels": np.concatenate(labels),
            "sequences": np.concatenate(seqs), "panels": np.asarray(panels, object),
            "series": np.concatenate(series)}
