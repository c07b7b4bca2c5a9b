"""The whole corpus: series ids, splits, charIds, sequence and char-map files, CSVs, ground truth, summary."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reid.core import io
from reid.core.config import to_dict
from reid.core.data.synthetic.config import (
    BODY_CROP_PREFIX,
    CHAR_MAP_SPLIT_NAMES,
    FACE_CROP_PREFIX,
    FILTERED_CSV_COLUMNS,
    INSTANCE_CSV_COLUMNS,
    MIN_FILTERED_SIDE,
    SPLITS,
    SyntheticConfig,
)
from reid.core.data.synthetic.faults import _inject_faults
from reid.core.data.synthetic.series import _generate_series, _SeriesTask
from reid.core.errors import ConfigError


@dataclass(frozen=True)
class CorpusSummary:
    """What :func:`generate_corpus` wrote: counts, file paths and injected faults."""

    out_dir: str
    series_ids: tuple[int, ...]
    panels: int
    instances: int
    faces: int
    bodies: int
    sequences: dict[str, int]
    split_by: str
    paths: dict[str, str]
    faults: dict[str, list[dict[str, Any]]]
    seconds: float = 0.0

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else float("nan")


def _series_ids(cfg: SyntheticConfig) -> list[int]:
    rng = np.random.default_rng([cfg.seed, 0x5E])
    return sorted(int(v) + 1000 for v in rng.choice(9000, cfg.series, replace=False))


def _split_counts(n: int, fractions: tuple[float, ...]) -> tuple[int, int, int]:
    """(train, validation, test) counts of ``n`` items; each split gets one item when n >= 3."""
    val, test = (int(round(f * n)) for f in fractions[1:])
    if n >= 3:
        val, test = max(val, 1 if fractions[1] > 0 else 0), max(test, 1 if fractions[2] > 0 else 0)
    val, test = min(val, n), min(test, max(0, n - val))
    return n - val - test, val, test


def _assign_splits(cfg: SyntheticConfig, series_ids: list[int]) -> dict[int, tuple[str, ...]]:
    """Split of every page, by series or by page (no page is in two splits; see ``docs/DATA.md``)."""
    rng = np.random.default_rng([cfg.seed, 0x5B])
    labels = lambda n: np.repeat(np.array(SPLITS), _split_counts(n, cfg.split_fractions))  # noqa: E731
    if cfg.effective_split_by == "series":
        per_series = labels(len(series_ids))[rng.permutation(len(series_ids))]
        return {sid: (str(per_series[i]),) * cfg.pages for i, sid in enumerate(series_ids)}
    return {sid: tuple(str(s) for s in labels(cfg.pages)[rng.permutation(cfg.pages)]) for sid in series_ids}


def _char_id(seed: int, seq_id: str, identity: str, used: set[str]) -> str:
    salt = 0
    while True:
        text = f"{seed}|{seq_id}|{identity}|{salt}"
        char_id = hashlib.blake2b(text.encode(), digest_size=5).hexdigest()
        if char_id not in used:
            used.add(char_id)
            return char_id
        salt += 1


def corpus_paths(out_dir: str) -> dict[str, str]:
    """Where :func:`generate_corpus` writes each file (keys are stable names)."""
    ssl, seq = io.join(out_dir, "data", "ssl"), io.join(out_dir, "data", "comics_seq")
    paths = {"panels": io.join(out_dir, "raw_panel_images"), "ssl": ssl, "comics_seq": seq,
             "instances": io.join(ssl, "merged_face_body.csv"),
             "filtered_face": io.join(ssl, "filtered_all_face.csv"),
             "filtered_body": io.join(ssl, "filtered_all_body.csv"),
             "ground_truth": io.join(out_dir, "ground_truth.csv"),
             "ground_truth_charids": io.join(out_dir, "ground_truth_charids.csv"),
             "cast": io.join(out_dir, "cast.json"), "faults": io.join(out_dir, "faults.json"),
             "summary": io.join(out_dir, "summary.json")}
    for split in SPLITS:
        short = CHAR_MAP_SPLIT_NAMES[split]
        paths[f"{split}_sequences"] = io.join(seq, f"{split}_sequences.json")
        paths[f"{split}_char_faces"] = io.join(seq, f"{short}_char_faces.json")
        paths[f"{split}_char_bodies"] = io.join(seq, f"{short}_char_bodies.json")
    return paths


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def _write_sequences(cfg: SyntheticConfig, results: list[dict[str, Any]], paths: dict[str, str]
                     ) -> tuple[dict[str, int], list[dict[str, Any]]]:
    per_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    charid_rows: list[dict[str, Any]] = []
    used: dict[str, set[str]] = {s: set() for s in SPLITS}
    for result in results:
        for split, seq_id, characters in result["windows"]:
            annotations = []
            for identity, entries in characters:
                char_id = _char_id(cfg.seed, seq_id, identity, used[split])
                annotations.append({"charId": char_id, "charInstances": entries})
                charid_rows.append({"split": split, "seq_id": seq_id, "charId": char_id, "identity": identity,
                                    "series_id": result["series_id"]})
            annotations.sort(key=lambda a: a["charId"])  # the order must not reveal the cast
            per_split[split].append({"seq_id": seq_id, "annotations": annotations})
    for split, sequences in per_split.items():
        faces = {a["charId"]: [e["face"] for e in a["charInstances"] if "face" in e]
                 for s in sequences for a in s["annotations"]}
        bodies = {a["charId"]: [e["body"] for e in a["charInstances"] if "body" in e]
                  for s in sequences for a in s["annotations"]}
        io.write_text_atomic(paths[f"{split}_sequences"], _dumps(sequences))
        io.write_text_atomic(paths[f"{split}_char_faces"], _dumps({k: v for k, v in faces.items() if v}))
        io.write_text_atomic(paths[f"{split}_char_bodies"], _dumps({k: v for k, v in bodies.items() if v}))
    return {s: len(v) for s, v in per_split.items()}, charid_rows


def _filtered(instances: pd.DataFrame, type_: str) -> pd.DataFrame:
    rows = instances[(instances["type"] == type_) & (
        np.minimum(instances["x1"] - instances["x_0"], instances["y_1"] - instances["y_0"])
        >= MIN_FILTERED_SIDE[type_])]
    prefix, sub = (FACE_CROP_PREFIX, "") if type_ == "face" else (BODY_CROP_PREFIX, "bodies/")
    img_path = (prefix + "/" + rows["series_id"].astype(str) + "/" + rows["page_id"] + "/" + sub
                + rows["index"].astype(str) + ".jpg")
    return pd.DataFrame({"img_path": img_path, **{c: rows[c] for c in FILTERED_CSV_COLUMNS[1:]}})


def generate_corpus(out_dir: str, cfg: SyntheticConfig, workers: int = 1) -> CorpusSummary:
    """Write a synthetic corpus under ``out_dir`` (local path or pyarrow-filesystem URI); see the package doc.

    ``workers`` > 1 draws series in a process pool; the bytes written do not depend on it. Files already
    in ``out_dir`` with the same names are replaced; others are left alone, so use a fresh folder.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    paths = corpus_paths(out_dir)
    series_ids = _series_ids(cfg)
    splits = _assign_splits(cfg, series_ids)
    tasks = [_SeriesTask(cfg, out_dir, sid, splits[sid]) for sid in series_ids]
    if workers == 1 or len(tasks) == 1:
        results = [_generate_series(t) for t in tasks]
    else:
        context = multiprocessing.get_context("spawn")  # the parent may hold Ray/torch threads: no fork
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            results = list(pool.map(_generate_series, tasks))
    instances = pd.DataFrame([row for r in results for row in r["instances"]],
                             columns=list(INSTANCE_CSV_COLUMNS))
    truth = pd.DataFrame([row for r in results for row in r["truth"]])
    panels = [(r["series_id"], *p) for r in results for p in r["panels"]]
    filtered = {t: _filtered(instances, t) for t in ("face", "body")}
    faults = _inject_faults(cfg, instances, truth, panels, out_dir)
    io.write_text_atomic(paths["instances"], instances.to_csv(index=False))
    for type_, frame in filtered.items():
        io.write_text_atomic(paths[f"filtered_{type_}"], frame.to_csv(index=False))
    n_sequences, charid_rows = _write_sequences(cfg, results, paths)
    io.write_text_atomic(paths["ground_truth"], truth.to_csv(index=False))
    io.write_text_atomic(paths["ground_truth_charids"], pd.DataFrame(
        charid_rows, columns=["split", "seq_id", "charId", "identity", "series_id"]).to_csv(index=False))
    casts = {str(r["series_id"]): r["cast"] for r in results}
    io.write_text_atomic(paths["cast"], json.dumps(casts, indent=1))
    io.write_text_atomic(paths["faults"], json.dumps(faults, indent=1))
    n_faces = int((instances["type"] == "face").sum())
    summary = CorpusSummary(
        out_dir=str(out_dir), series_ids=tuple(series_ids), panels=len(panels), instances=len(instances),
        faces=n_faces, bodies=len(instances) - n_faces, sequences=n_sequences,
        split_by=cfg.effective_split_by,
        paths=paths, faults=faults)
    # no timings or paths: the same config must give the same bytes
    record = {k: v for k, v in dataclasses.asdict(summary).items()
              if k not in ("seconds", "out_dir", "paths")}
    record["config"] = to_dict(cfg)
    if cfg.style == "color":  # a coloured corpus's summary stays as it was before styles existed
        for name in ("style", "extras_rate"):
            record["config"].pop(name)
    io.write_text_atomic(paths["summary"], json.dumps(record, indent=1))
    return dataclasses.replace(summary, seconds=time.perf_counter() - started)
