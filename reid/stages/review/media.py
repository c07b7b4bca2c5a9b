"""Crops and panels for the review app: thumbnails from the crops Parquet through a shard cache, panel images
from the corpus (the app draws the box over the panel)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import pyarrow as pa

from reid.core import io
from reid.core.contracts.crops import crop_job_params, read_shard_crops
from reid.core.data.formats import panel_image_path
from reid.core.errors import DataFormatError


class CropCache:
    """instance id → JPEG bytes of its crop, reading a crops shard's ``image`` column once and keeping the
    ``shards`` most recently used shards (a request never reads a whole shard that is already cached)."""

    def __init__(self, crops_root: str, instance_shard: dict[str, str], shards: int = 16) -> None:
        self.crops_root = crops_root
        self.instance_shard = instance_shard
        self.capacity = shards
        self.cache: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self.lock = threading.Lock()
        self.reads = 0

    def get(self, instance_id: str) -> bytes:
        shard = self.instance_shard.get(instance_id)
        if shard is None:
            raise KeyError(f"no crop of instance {instance_id!r} in these labels")
        with self.lock:
            images = self.cache.get(shard)
            if images is not None:
                self.cache.move_to_end(shard)
        if images is None:
            images = self._read(shard)
            with self.lock:
                self.cache[shard] = images
                while len(self.cache) > self.capacity:
                    self.cache.popitem(last=False)
        if instance_id not in images:
            raise KeyError(f"no crop of instance {instance_id!r} in {self.crops_root} shard {shard}")
        return images[instance_id]

    def _read(self, shard: str) -> dict[str, bytes]:
        table: pa.Table | None = read_shard_crops(self.crops_root, shard, ["instance_id", "image"])
        self.reads += 1
        if table is None:
            return {}
        return dict(zip(table["instance_id"].to_pylist(), table["image"].to_pylist(), strict=True))


def comics_root_of(crops_root: str, comics_root: str = "") -> str:
    """The corpus with the panel images: ``--comics-root``, else the one the crop job read ("" if unknown)."""
    if comics_root:
        return comics_root
    try:
        return str(crop_job_params(crops_root).get("comics_root", ""))
    except (FileNotFoundError, OSError, DataFormatError):
        return ""


def panel_bytes(comics_root: str, panel_id: str) -> bytes:
    """The panel image file's bytes (FileNotFoundError when there is no corpus or no such panel)."""
    if not comics_root:
        raise FileNotFoundError("no --comics-root: panels cannot be shown")
    return io.read_bytes(panel_image_path(comics_root, panel_id))
