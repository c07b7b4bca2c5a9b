"""Idle Ray workers kept against Ray's default: the same pretraining job (the inked demo's recipe, ResNet-18 at
48/64 px, 2 DDP workers) run twice on one corpus's crops, each in its own process and its own local Ray (2 CPUs):
once with Ray's default idle-worker soft limit (the CPU count, ``RAY_num_workers_soft_limit=2``), once with the
project's (:data:`reid.runtime.raycluster.WORKER_SOFT_LIMIT`). Prints each job's wall time, the worker processes
its Ray started (one ``worker-*.out`` log each), and the default/kept ratio (the baseline is the first job).

    python tests/bench/bench_worker_reuse.py [--out runs/bench-worker-reuse] [--epochs 3] [--preset inked-demo]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _job(out: Path, arm: str, soft_limit: str | None, epochs: int) -> tuple[float, int]:
    """One pretraining job in a fresh process → (wall seconds, worker processes its Ray started)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_num_workers_soft_limit", None)
    if soft_limit is not None:
        env["RAY_num_workers_soft_limit"] = soft_limit
    # a Ray temp dir of its own, so its worker logs are this job's alone (short: Ray's socket paths must fit)
    ray_tmp = Path(tempfile.mkdtemp(prefix=f"rb-{arm[:4]}-", dir="/tmp"))
    env["RAY_TMPDIR"] = str(ray_tmp)
    argv = [sys.executable, "jobs/pretrain.py", "--crops", str(out / "crops"), "--name", arm, "--arch", "resnet18",
            "--face-size", "48", "--body-size", "64", "--epochs", str(epochs), "--batch-size", "64", "--workers", "2",
            "--cpus-per-worker", "0.5", "--data-cpus", "0.5", "--storage", str(out / "train"), "--seed", "0",
            "--mlflow-uri", f"sqlite:///{out}/mlflow.db", "--ray-num-cpus", "2"]
    start = time.perf_counter()
    with open(out / f"{arm}.log", "w") as log:
        subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - start
    workers = len(glob.glob(str(ray_tmp / "ray" / "session_*" / "logs" / "worker-*.out")))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return wall, workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-worker-reuse", help="working folder (emptied first)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--preset", default="inked-demo", help="synthetic corpus preset")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from reid.core.data.synthetic import generate_corpus, preset_config
    from reid.runtime.raycluster import WORKER_SOFT_LIMIT

    generate_corpus(str(out / "corpus"), preset_config(args.preset, seed=0))
    subprocess.run([sys.executable, "jobs/crop.py", "--comics-root", str(out / "corpus"), "--out", str(out / "crops"),
                    "--pages-per-shard", "4", "--mlflow-uri", f"sqlite:///{out}/mlflow.db", "--ray-num-cpus", "2"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    rows = {}
    for arm, limit in (("ray-default", str(os.cpu_count() or 2)), ("kept", None)):
        rows[arm] = _job(out, arm, limit, args.epochs)
        print(f"{arm:12s} soft limit {limit or f'{WORKER_SOFT_LIMIT} (project default)':>28s}: "
              f"{rows[arm][0]:6.1f} s, {rows[arm][1]} worker processes", flush=True)
    (base, base_workers), (kept, kept_workers) = rows["ray-default"], rows["kept"]
    print(f"{args.epochs} epochs of pretraining on {args.preset}: Ray's default / kept workers = "
          f"{base / kept:.2f}x wall, {base_workers} / {kept_workers} worker processes")
    shutil.rmtree(out / "train", ignore_errors=True)  # ResNet-18 checkpoints: ~190 MB each


if __name__ == "__main__":
    main()
