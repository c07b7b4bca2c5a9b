"""GPU check of the pretraining step (bf16 autocast, channels_last, optional torch.compile): samples/s and MFU.

Runs without Ray (the lent GPU machine cannot receive Ray: its wheel is over the transfer limit), on the same
code path the Ray Train loop uses per step: ``FaceBodyEmbedder`` + ``IdentityAwareSSLLoss`` over SSL views made
by ``SSLViews`` from a synthetic corpus cropped with ``reid.stages.crop.crop_shard``. One epoch over the corpus's
character instances (views pre-computed on CPU workers), then throughput and MFU (FLOPs counted by torch).

    python tests/bench/gpu_pretrain_check.py --series 4 --pages 60 --arch resnet50 --batch-size 320
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reid.core.contracts.crops import committed_crop_files, pair_rows  # noqa: E402
from reid.core.contracts.manifest import ShardedOutput  # noqa: E402
from reid.core.data.synthetic import generate_corpus, preset_config  # noqa: E402
from reid.core.losses import IdentityAwareSSLLoss  # noqa: E402
from reid.core.models import ModelConfig, SSLNet  # noqa: E402
from reid.runtime.ray_datasets import SSLViews  # noqa: E402
from reid.stages.crop import CropConfig, crop_shard, plan_shards  # noqa: E402
from reid.stages.train.device import autocast  # noqa: E402
from reid.stages.train.flops import peak_flops, train_flops_per_sample  # noqa: E402
from reid.stages.train.pretrain import FaceBodyEmbedder, PretrainConfig, _split_views  # noqa: E402

_VIEWS: SSLViews | None = None


def _views(args: tuple[list[dict], int, int]) -> dict[str, np.ndarray]:
    global _VIEWS
    rows, face, body = args
    if _VIEWS is None:
        torch.set_num_threads(1)
        _VIEWS = SSLViews(face, body)
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in ("key", "face", "body")}
    return _VIEWS(batch)


def prepare(out: Path, series: int, pages: int, cfg: PretrainConfig, procs: int) -> list[dict[str, torch.Tensor]]:
    corpus = out / "corpus"
    if not (corpus / "summary.json").exists():
        generate_corpus(str(corpus), preset_config("bench", series=series, pages=pages), workers=procs)
    crop_cfg = CropConfig(comics_root=str(corpus), out=str(out / "crops"), pages_per_shard=8, write_files=False)
    shards, rows, _pages = plan_shards(crop_cfg)
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.starmap(crop_shard, [(crop_cfg, s) for s in shards])
    ShardedOutput(crop_cfg.out, "instance_id").finalize(shards, rows)
    import pyarrow.parquet as pq

    instances = [r for f in committed_crop_files(crop_cfg.out) for r in pair_rows(pq.read_table(f))]
    chunks = [instances[i:i + cfg.batch_size] for i in range(0, len(instances) - cfg.batch_size + 1, cfg.batch_size)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        batches = pool.map(_views, [(c, cfg.face_size, cfg.body_size) for c in chunks])
    return [{k: torch.as_tensor(v) for k, v in b.items()} for b in batches]


def run_epoch(net, loss_fn, batches, cfg, device, optimizer) -> tuple[float, float]:
    torch.cuda.synchronize() if device.type == "cuda" else None
    start, samples, last = time.perf_counter(), 0, 0.0
    for batch in batches:
        faces, bodies, nf, nb, _ = _split_views(batch, cfg, device)
        if cfg.channels_last and device.type == "cuda":
            faces, bodies = faces.contiguous(memory_format=torch.channels_last), bodies.contiguous(
                memory_format=torch.channels_last)
        with autocast(device, cfg.bf16):
            z_face, z_body = net(faces, bodies)
        total, _ = loss_fn(z_face.float()[:nf], z_face.float()[nf:2 * nf], z_body.float()[:nb],
                           z_body.float()[nb:2 * nb], z_face.float()[2 * nf:], z_body.float()[2 * nb:])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        samples += batch["has_face"].shape[0]
        last = total.item()
    torch.cuda.synchronize() if device.type == "cuda" else None
    return samples / (time.perf_counter() - start), last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/gpu-check")
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--pages", type=int, default=60)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--face-size", type=int, default=96)
    p.add_argument("--body-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=320)
    p.add_argument("--procs", type=int, default=max(1, multiprocessing.cpu_count() - 2))
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = PretrainConfig(arch=args.arch, face_size=args.face_size, body_size=args.body_size,
                         batch_size=args.batch_size, workers=1)
    t0 = time.perf_counter()
    batches = prepare(Path(args.out), args.series, args.pages, cfg, args.procs)
    prep_s = time.perf_counter() - t0
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "arch": args.arch, "face_size": args.face_size, "body_size": args.body_size,
              "batch_size": args.batch_size, "batches_per_epoch": len(batches), "prep_s": round(prep_s, 1)}
    for compiled in ([False, True] if args.compile else [False]):
        torch.manual_seed(0)
        model = SSLNet(ModelConfig(arch=args.arch, face_size=args.face_size, body_size=args.body_size))
        net = FaceBodyEmbedder(model).to(device)
        if cfg.channels_last and device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        flops = train_flops_per_sample(net, tuple(_split_views(batches[0], cfg, device)[:2]),
                                       samples=batches[0]["has_face"].shape[0])
        runner = torch.compile(net) if compiled else net
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = IdentityAwareSSLLoss(cfg.temperature)
        warm_rate, _ = run_epoch(runner, loss_fn, batches[:2], cfg, device, optimizer)  # warm-up / compile
        rate, loss = run_epoch(runner, loss_fn, batches, cfg, device, optimizer)
        peak = peak_flops(device)
        key = "compiled" if compiled else "eager"
        report[key] = {"samples_per_s": round(rate, 1), "train_gflops_per_sample": round(flops / 1e9, 2),
                       "mfu": round(flops * rate / peak, 4) if peak else None, "last_loss": round(loss, 3),
                       "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                       if device.type == "cuda" else None}
        print(json.dumps({key: report[key]}), flush=True)
    print(json.dumps(report, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
