"""What one tiny pretraining run costs whatever its epochs: ``run_pretrain`` of 1 epoch, three times in one
driver on one local Ray (2 CPUs), the tiny test model and corpus. The first run starts everything cold (as every
submitted job does); the next two find the driver's imports and Ray's worker processes warm. Prints each run's
wall time and the cold/warm ratio (the baseline is the warm runs of the same process).

    python tests/bench/bench_train_startup.py [--out runs/bench-train-startup] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reid.core.config import replace  # noqa: E402
from reid.core.data.synthetic import generate_corpus, preset_config  # noqa: E402
from reid.runtime.raycluster import init_ray  # noqa: E402
from reid.stages.crop import CropConfig, run_crop  # noqa: E402
from reid.stages.train.pretrain import PretrainConfig, run_pretrain  # noqa: E402

TINY = {"arch": "slim_resnet10", "face_size": 32, "body_size": 48, "batch_size": 16, "workers": 2,
        "cpus_per_worker": 0.5, "data_cpus": 0.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-train-startup", help="working folder (emptied first)")
    parser.add_argument("--runs", type=int, default=3, help="pretraining runs in this driver (>= 2)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    generate_corpus(str(out / "corpus"), preset_config("tiny", pages=5, seed=2))
    init_ray(num_cpus=2)
    mlflow_uri = f"sqlite:///{out}/mlflow.db"
    run_crop(CropConfig(comics_root=str(out / "corpus"), out=str(out / "crops"), pages_per_shard=2,
                        mlflow_uri=mlflow_uri, name="crop"))
    cfg = PretrainConfig(crops=str(out / "crops"), storage=str(out / "train"), epochs=1, mlflow_uri=mlflow_uri,
                         **TINY)
    walls = []
    for k in range(max(2, args.runs)):
        started = time.monotonic()
        run_pretrain(replace(cfg, name=f"pt{k}"))
        walls.append(time.monotonic() - started)
        print(f"run {k + 1}: {walls[-1]:.1f} s", flush=True)
    warm = sum(walls[1:]) / len(walls[1:])
    print(f"cold {walls[0]:.1f} s, warm {warm:.1f} s (mean of {len(walls) - 1}): cold/warm {walls[0] / warm:.2f}x")


if __name__ == "__main__":
    main()
