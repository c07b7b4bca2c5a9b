"""Training and labeling inputs streamed from the crops Parquet with Ray Data.

- :func:`character_instances`: one row per character instance (a face and/or a body with the same
  ``char_index`` in one panel; docs/DATA.md). Each crops shard file holds whole panels, so pairing is done
  file by file, with nothing gathered in the driver. Training passes a ``seed``: the files are then read in a
  seeded random order, so that the trainer's local shuffle buffer mixes series and pages (a shard holds a few
  pages of one series; read in order, a batch holds the same few characters many times over).
- :func:`ssl_dataset`: those rows decoded and augmented (two strong views + one weak view per modality)
  as uint8 arrays, normalised on the training device.
- :func:`sequence_dataset`: one row per labelled sequence (window) with every instance's face and body, for
  fine-tuning and evaluation; crops are fetched from just the shard files that hold them.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reid.core import io
from reid.core.contracts.crops import committed_crop_files, crop_job_params, pair_rows, shard_id
from reid.core.data.formats import Sequence
from reid.core.errors import DataFormatError

VAL_BUCKETS = 20  # 1 instance in 20 (by a hash of its key) is held out of SSL training for validation


def is_validation_key(key: str) -> bool:
    """Deterministic hold-out of character instances for the SSL validation signal."""
    return zlib.crc32(key.encode()) % VAL_BUCKETS == 0


def _pair_file(item: dict[str, Any]) -> list[dict[str, Any]]:
    return pair_rows(io.read_parquet(item["path"]))


def crop_files_of(crops: str | list[str]) -> list[str]:
    """The data files of a finished crop output: ``crops`` is its folder (verified here, see
    :func:`reid.core.contracts.crops.committed_crop_files`) or the file list a driver already verified once for the
    whole job, passed on as it is."""
    return list(crops) if isinstance(crops, list | tuple) else committed_crop_files(crops)


def character_instances(crops: str | list[str], seed: int | None = None):
    """Ray Dataset of character instances (one row each), read shard file by shard file (in a random order
    drawn from ``seed`` when one is given, else in the crop job's order). ``crops``: see :func:`crop_files_of`."""
    import ray

    files = crop_files_of(crops)
    if seed is not None:
        files = [files[k] for k in np.random.default_rng(seed).permutation(len(files))]
    # fractional CPUs: on a small node, whole-CPU read tasks would starve beside the train workers
    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, len(files))) \
        .flat_map(_pair_file, num_cpus=0.25)


def count_character_instances(crops: str | list[str]) -> int:
    """Number of character instances, from the ids alone (no image bytes are read). ``crops``: see
    :func:`crop_files_of`."""
    total = 0
    for path in crop_files_of(crops):
        table = io.read_parquet(path, ["instance_id", "panel_id", "series_id", "type", "char_index"])
        total += len(pair_rows(table.append_column("image", pa.array([b"x"] * table.num_rows, pa.binary()))))
    return total


class SSLViews:
    """Ray Data UDF: decode a batch of character instances into SSL views (uint8, CHW).

    Output columns: face_a, face_b, face_weak (N,3,F,F); body_a, body_b, body_weak (N,3,B,B);
    has_face, has_body (N,) bool. A missing modality is all zeros with its flag False: the training step
    drops those rows before the forward pass, so they are never seen as images.
    """

    def __init__(self, face_size: int, body_size: int, hue: float = 0.1, grayscale: float = 0.2) -> None:
        from reid.core.data import augment
        from reid.core.embedding import decode_rgb, to_uint8_chw  # torch: only where crops are decoded

        self._decode, self._chw = decode_rgb, to_uint8_chw
        self.face_size, self.body_size = face_size, body_size
        self.strong_face = augment.ssl_strong(face_size, "face", hue, grayscale)
        self.strong_body = augment.ssl_strong(body_size, "body", hue, grayscale)
        self.weak_face = augment.weak_face(face_size)
        self.weak_body = augment.weak_body(body_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        out = {f"{m}_{v}": np.zeros((n, 3, s, s), np.uint8)
               for m, s in (("face", self.face_size), ("body", self.body_size)) for v in ("a", "b", "weak")}
        out["has_face"] = np.zeros(n, bool)
        out["has_body"] = np.zeros(n, bool)
        for i in range(n):
            for modality, strong, weak in (("face", self.strong_face, self.weak_face),
                                           ("body", self.strong_body, self.weak_body)):
                data = batch[modality][i]
                if not data:
                    continue
                image = self._decode(data)
                out[f"{modality}_a"][i] = self._chw(strong(image))
                out[f"{modality}_b"][i] = self._chw(strong(image))
                out[f"{modality}_weak"][i] = self._chw(weak(image))
                out[f"has_{modality}"][i] = True
        return out


@functools.lru_cache(maxsize=8)
def _udf(cls: type, *args: Any) -> Any:
    """One instance of a decode/augment UDF per worker process (built once, reused across tasks)."""
    return cls(*args)


def _ssl_views(batch: dict[str, np.ndarray], face_size: int, body_size: int, hue: float = 0.1,
               grayscale: float = 0.2) -> dict[str, np.ndarray]:
    return _udf(SSLViews, face_size, body_size, hue, grayscale)(batch)


def ssl_dataset(crops: str | list[str], face_size: int, body_size: int, num_cpus: float = 0.5, hue: float = 0.1,
                grayscale: float = 0.2, seed: int | None = None):
    """Ray Dataset of augmented SSL samples (see :class:`SSLViews`); ``crops``: see :func:`crop_files_of`.

    Decoding runs in tasks with fractional CPUs, not an actor pool: tasks release their CPUs between
    batches, so the pipeline cannot starve the training workers on a small node.
    """
    train = character_instances(crops, seed).filter(lambda row: not is_validation_key(row["key"]), num_cpus=0.25)
    return train.map_batches(_ssl_views, fn_kwargs={"face_size": face_size, "body_size": body_size, "hue": hue,
                                                    "grayscale": grayscale},
                             batch_size=32, num_cpus=num_cpus)


# -- labelled sequences -----------------------------------------------------------------------------

def sequence_rows(sequences: list[Sequence], pages_per_shard: int) -> list[dict[str, Any]]:
    """Plain rows for a Ray Dataset: one per sequence, instances listed with their charId label."""
    rows = []
    for seq in sequences:
        faces, bodies, labels, panels = [], [], [], []
        panel_index = {str(p): k for k, p in enumerate(seq.panels)}  # an int per panel: Arrow-friendly
        for label, character in enumerate(seq.characters):
            for inst in character.instances:
                faces.append(inst.face or "")
                bodies.append(inst.body or "")
                labels.append(label)
                panels.append(panel_index.get(inst.panel_id, -1))
        if not labels:
            continue
        shards = sorted({shard_id(p.series, p.page, pages_per_shard) for p in seq.panels})
        rows.append({"seq_id": seq.seq_id, "series_id": seq.series_id, "face_ids": faces, "body_ids": bodies,
                     "labels": labels, "panels": panels, "shards": shards})
    return rows


class SequenceCrops:
    """Ray Data UDF: fetch and decode every crop of a batch of sequences (reading only their shards).

    Output per sequence: face (K,3,F,F) / body (K,3,B,B) uint8, face_mask / body_mask (K,), labels (K,),
    panels (K,) the index of each instance's panel in its sequence. A crop that the crop job could not produce is masked out; an instance with neither
    is dropped. Evaluation crops get exactly the labeling job's preprocessing (:class:`CropPreprocessor`'s
    uint8 geometry), so validation, calibration and labeling see the same pixels.
    """

    def __init__(self, crops_root: str, face_size: int, body_size: int, augment_train: bool,
                 transform_json: str = "") -> None:
        from reid.core.data import augment
        from reid.core.embedding import decode_rgb, to_uint8_chw  # torch: only where crops are decoded

        self._decode, self._chw = decode_rgb, to_uint8_chw
        self.crops_root = crops_root
        if augment_train:
            self.face_tf = augment.weak_face(face_size)
            self.body_tf = augment.weak_body(body_size)
        else:
            from reid.core.embedding import CropPreprocessor

            geometry = CropPreprocessor(face_size, body_size, json.loads(transform_json) if transform_json
                                        else None).geometry
            self.face_tf, self.body_tf = geometry["face"], geometry["body"]
        self.face_size, self.body_size = face_size, body_size

    def _fetch(self, shards: set[str], ids: set[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for shard in sorted(shards):
            path = io.join(self.crops_root, "data", f"{shard}.parquet")
            if not io.exists(path):
                continue
            table = io.read_parquet(path, ["instance_id", "image"])
            table = table.filter(pc.is_in(table["instance_id"], value_set=pa.array(sorted(ids))))
            found.update(zip(table["instance_id"].to_pylist(), table["image"].to_pylist(), strict=True))
        return found

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        ids = {i for col in ("face_ids", "body_ids") for ids_ in batch[col] for i in ids_ if i}
        crops = self._fetch({s for shards in batch["shards"] for s in shards}, ids)
        out: dict[str, list] = defaultdict(list)
        for seq_id, series_id, face_ids, body_ids, labels, panels in zip(
                batch["seq_id"], batch["series_id"], batch["face_ids"], batch["body_ids"], batch["labels"],
                batch["panels"], strict=True):
            faces, bodies, fmask, bmask, kept, kept_panels = [], [], [], [], [], []
            for face_id, body_id, label, panel in zip(face_ids, body_ids, labels, panels, strict=True):
                has_face, has_body = face_id in crops, body_id in crops
                if not (has_face or has_body):
                    continue
                faces.append(self._image(crops.get(face_id), self.face_tf, self.face_size))
                bodies.append(self._image(crops.get(body_id), self.body_tf, self.body_size))
                fmask.append(has_face)
                bmask.append(has_body)
                kept.append(label)
                kept_panels.append(int(panel))
            out["seq_id"].append(seq_id)
            out["series_id"].append(series_id)
            out["face"].append(np.stack(faces) if faces else np.zeros((0, 3, self.face_size, self.face_size), np.uint8))
            out["body"].append(np.stack(bodies) if bodies else np.zeros((0, 3, self.body_size, self.body_size),
                                                                        np.uint8))
            out["face_mask"].append(np.asarray(fmask, bool))
            out["body_mask"].append(np.asarray(bmask, bool))
            out["labels"].append(np.asarray(kept, np.int64))
            out["panels"].append(np.asarray(kept_panels, np.int64))
        return dict(out)

    def _image(self, data: bytes | None, transform, size: int) -> np.ndarray:
        if not data:
            return np.zeros((3, size, size), np.uint8)
        return self._chw(transform(self._decode(data)))


def sequence_dataset(crops_root: str, sequences: list[Sequence], face_size: int, body_size: int,
                     augment_train: bool, num_cpus: float = 0.5, transform: dict[str, Any] | None = None,
                     seed: int | None = None):
    """Ray Dataset with one row per labelled sequence (see :class:`SequenceCrops`); evaluation crops get the
    model's recorded ``transform`` (its ``ModelConfig.transform``; None: the default eval transform).

    ``seed`` (training): the rows in a seeded random order. A sequences file lists one series after another;
    in that order a batch holds sequences of one series only, and the loss's other-series negatives vanish."""
    import ray

    rows = sequence_rows(sequences, crop_job_params(crops_root)["pages_per_shard"])
    if not rows:
        raise DataFormatError(crops_root, "no labelled sequence has any instance")
    if seed is not None:
        rows = [rows[k] for k in np.random.default_rng(seed).permutation(len(rows))]
    return ray.data.from_items(rows, override_num_blocks=min(len(rows), 16)).map_batches(
        _sequence_crops, fn_kwargs={"crops_root": crops_root, "face_size": face_size, "body_size": body_size,
                                    "augment_train": augment_train,
                                    "transform_json": json.dumps(transform, sort_keys=True) if transform else ""},
        batch_size=8, num_cpus=num_cpus)


def _sequence_crops(batch: dict[str, np.ndarray], crops_root: str, face_size: int, body_size: int,
                    augment_train: bool, transform_json: str = "") -> dict[str, Any]:
    return _udf(SequenceCrops, crops_root, face_size, body_size, augment_train, transform_json)(batch)


