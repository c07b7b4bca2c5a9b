"""Crop throughput: the Ray Data job vs (a) one process and (b) multiprocessing.Pool(2), in the same run.

All three do the same work per shard (``reid.crop.crop_shard``: decode each panel once, crop, encode, write the
seed layout and the Parquet shard) after the same planning step; only the orchestration differs. Ray is started
before timing (a cluster is long-lived). Prints crops/s and the ratios.

    python tests/bench/bench_crop.py [--series 8 --pages 125]     # ~20 k boxes
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reid.crop import CropConfig, crop_shard, plan_shards, run_crop  # noqa: E402
from reid.raycluster import init_ray  # noqa: E402
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
    parser.add_argument("--pages", type=int, default=125)
    parser.add_argument("--pages-per-shard", type=int, default=8)
    args = parser.parse_args()
    root = corpus(args.series, args.pages)
    out = BENCH_ROOT / "crop-out"
    results: dict[str, float] = {}
    crops: dict[str, int] = {}

    def cfg(name: str) -> CropConfig:
        shutil.rmtree(out / name, ignore_errors=True)
        return CropConfig(comics_root=str(root), out=str(out / name), pages_per_shard=args.pages_per_shard,
                          mlflow_uri=f"sqlite:///{out}/mlflow.db", name=f"bench-{name}")

    with timed(results, "single"):
        crops["single"] = _baseline(cfg("single"), 1)
    with timed(results, "pool2"):
        crops["pool2"] = _baseline(cfg("pool2"), 2)
    init_ray(num_cpus=2)
    with timed(results, "ray"):
        crops["ray"] = run_crop(cfg("ray"))["rows"]
    assert len(set(crops.values())) == 1, crops
    rate = {k: crops[k] / v for k, v in results.items()}
    print(f"boxes cropped: {crops['ray']} (series {args.series} x pages {args.pages})")
    for k in ("single", "pool2", "ray"):
        print(f"  {k:7s} {results[k]:7.1f} s  {rate[k]:8.0f} crops/s")
    print(f"ratio ray/single = {rate['ray'] / rate['single']:.2f}  (target >= 1.8)")
    print(f"ratio ray/pool2  = {rate['ray'] / rate['pool2']:.2f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
