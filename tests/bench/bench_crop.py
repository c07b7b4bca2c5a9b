"""Crop throughput: the Ray Data job vs (a) one process and (b) multiprocessing.Pool(2), in the same run.

All three do the same work per shard (``reid.stages.crop.crop_shard``: decode each panel once, crop, encode, write the
seed layout and the Parquet shard) after the same planning step; only the orchestration differs. Ray is started
and warmed up before timing (a cluster is long-lived: one small crop job first, so that the worker processes
have imported their modules and the MLflow store exists). The three run in turn, ``--rounds`` times (this machine is shared and
noisy: the kernel time of the file writes alone varies 3x between identical runs), and the ratios are taken per
round; the median round is the figure. Prints crops/s and the ratios.

    python tests/bench/bench_crop.py [--series 8 --pages 140 --rounds 5]     # ~20 k boxes
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reid.runtime.raycluster import init_ray  # noqa: E402
from reid.stages.crop import CropConfig, crop_shard, plan_shards, run_crop  # noqa: E402
from tests.bench.common import BENCH_ROOT, corpus, timed  # noqa: E402


def _baseline(cfg: CropConfig, pool_size: int) -> int:
    shards, _rows, _pages = plan_shards(cfg)
    work = partial(crop_shard, cfg)
    if pool_size == 1:
        summaries = [work(s) for s in shards]
    else:
        with multiprocessing.get_context("spawn").Pool(pool_size) as pool:
            summaries = pool.map(work, shards)
    return sum(s.rows for s in summaries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--pages", type=int, default=140)
    parser.add_argument("--pages-per-shard", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = corpus(args.series, args.pages)
    out = BENCH_ROOT / "crop-out"
    shutil.rmtree(out, ignore_errors=True)
    init_ray(num_cpus=2)
    run_crop(CropConfig(comics_root=str(corpus(2, 20)), out=str(out / "warm-up"), pages_per_shard=1,
                        mlflow_uri=f"sqlite:///{out}/mlflow.db", name="bench-warm-up"))
    rounds = []
    crops: dict[str, int] = {}
    for r in range(args.rounds):
        def cfg(name: str, r: int = r) -> CropConfig:
            return CropConfig(comics_root=str(root), out=str(out / f"{name}-{r}"),
                              pages_per_shard=args.pages_per_shard, mlflow_uri=f"sqlite:///{out}/mlflow.db",
                              name=f"bench-{name}-{r}")

        seconds: dict[str, float] = {}
        with timed(seconds, "single"):
            crops["single"] = _baseline(cfg("single"), 1)
        with timed(seconds, "pool2"):
            crops["pool2"] = _baseline(cfg("pool2"), 2)
        with timed(seconds, "ray"):
            crops["ray"] = run_crop(cfg("ray"))["rows"]
        assert len(set(crops.values())) == 1, crops
        rounds.append(seconds)
        print(f"round {r + 1}: " + "  ".join(f"{k} {v:5.1f} s" for k, v in seconds.items())
              + f"  ray/single {seconds['single'] / seconds['ray']:.2f}  ray/pool2 {seconds['pool2'] / seconds['ray']:.2f}",
              flush=True)
    shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(s[k] for s in rounds) for k in ("single", "pool2", "ray")}
    vs_single = statistics.median(s["single"] / s["ray"] for s in rounds)
    vs_pool = statistics.median(s["pool2"] / s["ray"] for s in rounds)
    print(f"boxes cropped: {crops['ray']} (series {args.series} x pages {args.pages}), {args.rounds} rounds")
    for k in ("single", "pool2", "ray"):
        print(f"  {k:7s} median {med[k]:7.1f} s  {crops[k] / med[k]:8.0f} crops/s")
    print(f"ratio ray/single = {vs_single:.2f}  (median over rounds; target >= 1.8)")
    print(f"ratio ray/pool2  = {vs_pool:.2f}  (median over rounds; target >= 0.9)")


if __name__ == "__main__":
    main()
