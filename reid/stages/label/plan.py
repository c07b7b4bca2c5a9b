"""Planning the label job: which windows each work unit (one crops shard) labels, and reading its crops."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from reid.core.contracts.crops import (
    CROP_SCHEMA,
    read_shard_crops,
    read_shard_errors,
    shard_id,
)
from reid.core.contracts.labels import (
    window_id,
    window_panels,
)
from reid.core.contracts.manifest import ERROR_SCHEMA, ShardedOutput
from reid.core.data import formats
from reid.core.data.ids import panel_id, parse_instance_id, parse_panel_id
from reid.core.errors import DataFormatError
from reid.stages.label.config import LabelConfig

log = logging.getLogger(__name__)


def sliding_windows(panel_ids: Iterator[str] | list[str], window_size: int, stride: int) -> list[str]:
    """Window ids over the pages of ``panel_ids`` (the panels that have instances); see the module doc."""
    pages: dict[tuple[int, int], set[int]] = defaultdict(set)
    for text in panel_ids:
        p = parse_panel_id(text)
        pages[(p.series, p.page)].add(p.panel)
    windows = []
    for (series, page), present in sorted(pages.items()):
        n = max(present) + 1
        start = 0
        while start < n:
            numbers = range(start, min(start + window_size, n))
            if present.intersection(numbers):
                windows.append(window_id([panel_id(series, page, k) for k in numbers]))
            if start + window_size >= n:
                break
            start += stride
    return windows


def plan_items(cfg: LabelConfig, crops: ShardedOutput, pages_per_shard: int,
               sequences: list[formats.Sequence]) -> list[dict[str, Any]]:
    """Work items of pass 1: ``{"shard", "windows"}``; windows (the annotated ``sequences``, read and checked
    by :func:`reid.stages.label.config.read_label_sequences`) are listed only with ``--sequences``."""
    if not cfg.sequences:
        return [{"shard": s, "windows": []} for s in sorted(crops.committed())]
    by_shard: dict[str, list[str]] = defaultdict(list)
    for seq in sequences:
        first = seq.panels[0]
        by_shard[shard_id(first.series, first.page, pages_per_shard)].append(seq.seq_id)
    if not by_shard:
        raise DataFormatError(cfg.sequences, "no sequence to label")
    return [{"shard": s, "windows": sorted(w)} for s, w in sorted(by_shard.items())]


@dataclass
class ShardInput:
    """The crops a work unit needs: ok crops (CROP_SCHEMA rows) and crop errors, of the window panels."""

    crops: pa.Table
    crop_errors: pa.Table
    windows: list[str]


def read_shard_input(crops_root: str, item: dict[str, Any], pages_per_shard: int, window_size: int,
                     stride: int) -> ShardInput:
    """Crops of a work unit: its own crops shard (sliding windows, computed here), or the shards that the
    panels of its annotated windows lie in."""
    windows = list(item["windows"])
    panels = {p for w in windows for p in window_panels(w)}
    shards = sorted({shard_id(q.series, q.page, pages_per_shard) for q in map(parse_panel_id, panels)}) \
        if windows else [item["shard"]]
    tables, errors = [CROP_SCHEMA.empty_table()], [ERROR_SCHEMA.empty_table()]
    for s in shards:
        table = read_shard_crops(crops_root, s)
        if table is not None:  # else: no instance on these pages
            tables.append(table.cast(CROP_SCHEMA))
            errors.append(read_shard_errors(crops_root, s))
    crops, crop_errors = pa.concat_tables(tables), pa.concat_tables(errors)
    error_panels = [str(parse_instance_id(i).panel_id) for i in crop_errors["id"].to_pylist()]
    if windows:
        crops = crops.filter(pc.is_in(crops["panel_id"], pa.array(sorted(panels), pa.string())))
        crop_errors = crop_errors.filter(pa.array([p in panels for p in error_panels], pa.bool_()))
    else:
        windows = sliding_windows(crops["panel_id"].to_pylist() + error_panels, window_size, stride)
    return ShardInput(crops, crop_errors, windows)
