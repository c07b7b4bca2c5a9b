"""Training throughput: one Ray Train worker (Ray Data ingest, DDP wrapper, reporting) vs a bare PyTorch loop.

Same model (SSLNet), same batch, same torch threads, same crops; the bare loop decodes and augments in-process
with the same UDF, the Ray worker gets its batches from Ray Data. Steady state on both sides: the bare loop after
two warm-up steps, the Ray worker over its second epoch after that epoch's first step (``steady_samples_per_s``;
the first step of an epoch waits for Ray Data to start). The whole-epoch ratio is printed too. Target >= 0.9.

    python tests/bench/bench_train.py [--arch resnet18 --face-size 64 --body-size 96 --batch-size 32]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reid.core.losses import IdentityAwareSSLLoss  # noqa: E402
from reid.core.models import ModelConfig, SSLNet  # noqa: E402
from reid.runtime.ray_datasets import SSLViews, character_instances  # noqa: E402
from reid.runtime.raycluster import init_ray  # noqa: E402
from reid.stages.crop import CropConfig, run_crop  # noqa: E402
from reid.stages.train.pretrain import FaceBodyEmbedder, PretrainConfig, _split_views, run_pretrain  # noqa: E402
from tests.bench.common import BENCH_ROOT, corpus  # noqa: E402


def bare_loop(cfg: PretrainConfig, rows: list[dict], steps: int) -> float:
    """Samples/s of plain PyTorch: decode+augment (same UDF) + forward/backward/step, one process."""
    torch.set_num_threads(int(cfg.cpus_per_worker))
    model = FaceBodyEmbedder(SSLNet(ModelConfig(arch=cfg.arch, face_size=cfg.face_size, body_size=cfg.body_size)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = IdentityAwareSSLLoss(cfg.temperature)
    views = SSLViews(cfg.face_size, cfg.body_size)
    device = torch.device("cpu")
    samples, start = 0, None
    for step in range(steps + 2):
        if step == 2:  # warm-up done
            start, samples = time.perf_counter(), 0
        chunk = [rows[(step * cfg.batch_size + i) % len(rows)] for i in range(cfg.batch_size)]
        batch = {k: np.asarray([r[k] for r in chunk], dtype=object) for k in ("key", "face", "body")}
        batch = {k: torch.as_tensor(v) for k, v in views(batch).items()}
        faces, bodies, nf, nb, _ = _split_views(batch, cfg, device)
        z_face, z_body = model(faces, bodies)
        total, _ = loss_fn(z_face[:nf], z_face[nf:2 * nf], z_body[:nb], z_body[nb:2 * nb], z_face[2 * nf:],
                           z_body[2 * nb:])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        samples += cfg.batch_size
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--face-size", type=int, default=64)
    parser.add_argument("--body-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    root = corpus(2, 20)
    out = BENCH_ROOT / "train-out"
    init_ray(num_cpus=2)
    crops = out / "crops"
    if not (crops / "_SUCCESS").exists():
        shutil.rmtree(crops, ignore_errors=True)
        run_crop(CropConfig(comics_root=str(root), out=str(crops), pages_per_shard=4,
                            mlflow_uri=f"sqlite:///{out}/mlflow.db"))
    shutil.rmtree(out / "train", ignore_errors=True)
    cfg = PretrainConfig(crops=str(crops), storage=str(out / "train"), name="bench", arch=args.arch,
                         face_size=args.face_size, body_size=args.body_size, batch_size=args.batch_size,
                         epochs=2, workers=1, cpus_per_worker=1.0, data_cpus=0.5, mlflow_uri=f"sqlite:///{out}/mlflow.db")
    rows = character_instances(str(crops)).take(args.batch_size * 4)
    bare = bare_loop(cfg, rows, args.steps)
    result, _ = run_pretrain(cfg)
    epoch_rate, steady_rate = result.metrics["samples_per_s"], result.metrics["steady_samples_per_s"]
    print(f"model {args.arch} face {args.face_size} body {args.body_size} batch {args.batch_size}, 1 thread")
    print(f"  bare PyTorch loop : {bare:7.1f} samples/s (after 2 warm-up steps)")
    print(f"  Ray Train worker  : {steady_rate:7.1f} samples/s steady (epoch 2 after its first step), "
          f"{epoch_rate:.1f} over the whole epoch ({result.metrics['batches']} batches)")
    print(f"ratio ray/bare = {steady_rate / bare:.2f} steady (target >= 0.9); {epoch_rate / bare:.2f} whole epoch")


if __name__ == "__main__":
    main()
