"""Helpers shared by the benchmarks: a cached synthetic corpus and a timer."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

BENCH_ROOT = Path(os.environ.get("REID_BENCH_DIR", Path(__file__).resolve().parents[2] / "runs" / "bench"))


def corpus(series: int, pages: int, seed: int = 0, workers: int = 2) -> Path:
    """A synthetic corpus under runs/bench, generated once and reused (generation is deterministic)."""
    from reid.core.data.synthetic import generate_corpus, preset_config

    out = BENCH_ROOT / f"corpus-s{series}-p{pages}-seed{seed}"
    if not (out / "summary.json").exists():
        generate_corpus(str(out), preset_config("bench", series=series, pages=pages, seed=seed), workers=workers)
    return out


@contextmanager
def timed(results: dict, key: str):
    start = time.perf_counter()
    yield
    results[key] = time.perf_counter() - start
