"""The ablation table of docs/RESULTS.md: test-split retrieval quality of six training variants, over seeds.

(a) random init, (b) SSL faces only, (c) SSL bodies only, (d) SSL face+body without the identity term,
(e) identity-aware SSL, (f) (e) + fine-tuning. (a)-(e) are evaluated on the frozen fused feature (sum of the
L2-normalised face and body features of the present modalities, as the Re-ID net fuses them, before its Linear);
(f) on the fine-tuned Re-ID embedding. Metrics: precision@1, MAP@R and AMI per test sequence (averaged), with
pytorch-metric-learning's AccuracyCalculator (``reid.core.eval.metrics.retrieval_metrics``).

Defaults are ``make demo``'s recipe and sizes (demo corpus; ResNet-18 at 48/64 px; SSL batch 64 for 6 epochs
with the default augmentations; fine-tuning 15 epochs, SSL layers trained, the last epoch kept). As in
tests/bench/quality.py the corpus is the demo's (corpus seed 0) and each seed is the seed of training. Every finished (seed, variant) is appended
to ``<out>/results.jsonl`` and skipped on a re-run; the table prints mean ± sd over the seeds.

    python tests/bench/results_table.py --seeds 0 1 2 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reid.core.data import formats  # noqa: E402
from reid.core.data.synthetic import generate_corpus, preset_config  # noqa: E402
from reid.core.embedding import collate_sequences, normalize_uint8  # noqa: E402
from reid.core.eval.metrics import retrieval_metrics  # noqa: E402
from reid.core.models import ModelConfig, ReIDNet, reid_net_from_ssl_checkpoint  # noqa: E402
from reid.runtime.ray_datasets import sequence_dataset  # noqa: E402
from reid.runtime.raycluster import init_ray  # noqa: E402
from reid.stages.crop import CropConfig, run_crop  # noqa: E402
from reid.stages.train.finetune import FinetuneConfig, run_finetune  # noqa: E402
from reid.stages.train.pretrain import PretrainConfig, run_pretrain  # noqa: E402

VARIANTS = {
    "b": ("SSL, faces only", {"use_bodies": False}),
    "c": ("SSL, bodies only", {"use_faces": False}),
    "d": ("SSL, face+body, no identity term", {"identity_weight": 0.0}),
    "e": ("identity-aware SSL", {}),
}
LABELS = {"a": "random init", **{k: v[0] for k, v in VARIANTS.items()}, "f": "identity-aware SSL + fine-tuning"}
KEYS = ("precision_at_1", "mean_average_precision_at_r", "AMI")


@torch.no_grad()
def frozen_feature_metrics(model: ReIDNet, test_ds) -> dict[str, float]:
    model.eval()
    embs, labels, seqs, next_label, next_seq = [], [], [], 0, 0
    for raw in test_ds.iter_batches(batch_size=8, batch_format="numpy"):
        b = collate_sequences(raw, first_label=next_label)
        if not b:
            continue
        fused = (model.modality_features(normalize_uint8(b["face"]), b["face_mask"])
                 + model.modality_features(normalize_uint8(b["body"]), b["body_mask"]))
        embs.append(F.normalize(fused, dim=1))
        labels.append(b["labels"])
        seqs.append(b["sequence"] + next_seq)
        next_label, next_seq = int(b["labels"].max()) + 1, next_seq + int(b["sequence"].max()) + 1
    return retrieval_metrics(torch.cat(embs).numpy(), torch.cat(labels).numpy(), torch.cat(seqs).numpy())


def run_seed(args: argparse.Namespace, seed: int, out: Path, done: set[str], record) -> None:
    corpus, crops, uri = out / "corpus", out / "crops", f"sqlite:///{out}/mlflow.db"
    if not (corpus / "summary.json").exists():
        sizes = {k: v for k, v in (("series", args.series), ("pages", args.pages)) if v is not None}
        generate_corpus(str(corpus), preset_config("demo", **sizes, seed=0))
    if not (crops / "_SUCCESS").exists():
        run_crop(CropConfig(comics_root=str(corpus), out=str(crops), pages_per_shard=4, mlflow_uri=uri))
    sequences = str(corpus / "data/comics_seq")
    test_ds = sequence_dataset(str(crops), formats.read_split(sequences, "test"), args.face_size, args.body_size,
                               False, 0.25)
    common = {"crops": str(crops), "storage": str(out / "train"), "arch": args.arch, "face_size": args.face_size,
              "body_size": args.body_size, "epochs": args.epochs, "batch_size": args.batch_size, "workers": 2,
              "cpus_per_worker": 0.5, "data_cpus": 0.5, "mlflow_uri": uri, "seed": seed}
    if "a" not in done:
        torch.manual_seed(seed)
        start = time.time()
        record("a", frozen_feature_metrics(
            ReIDNet(ModelConfig(arch=args.arch, face_size=args.face_size, body_size=args.body_size)), test_ds), start)
    for key, (_, change) in VARIANTS.items():
        if key in done and (key != "e" or "f" in done):
            continue
        start = time.time()
        _, ssl_model = run_pretrain(PretrainConfig(name=f"results-{key}", **common, **change))
        if key not in done:
            record(key, frozen_feature_metrics(reid_net_from_ssl_checkpoint(ssl_model), test_ds), start)
        if key == "e" and "f" not in done:
            start = time.time()
            tuned = run_finetune(FinetuneConfig(
                crops=str(crops), sequences=sequences, ssl_checkpoint=ssl_model, storage=str(out / "train"),
                name="results-f", face_size=args.face_size, body_size=args.body_size, epochs=args.finetune_epochs,
                sequences_per_batch=8, workers=2, cpus_per_worker=0.5, data_cpus=0.5, val_every=3,
                mlflow_uri=uri, seed=seed, register_as="", log_model=False))
            record("f", {k.removeprefix("test_"): v for k, v in tuned["test"].items()}, start)


def table(results: list[dict]) -> str:
    lines = ["| variant | seeds | precision@1 | MAP@R | AMI | wall s |", "| --- | --- | --- | --- | --- | --- |"]
    for key, label in LABELS.items():
        rows = [r for r in results if r["variant"] == key]
        if not rows:
            continue
        cells = []
        for k in (*KEYS, "wall_s"):
            v = np.array([r[k] for r in rows], dtype=float)
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}")
        lines.append(f"| ({key}) {label} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--series", type=int, default=None, help="override the demo preset's series")
    p.add_argument("--pages", type=int, default=None, help="override the demo preset's pages per series")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--face-size", type=int, default=48)
    p.add_argument("--body-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6, help="SSL epochs")
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64, help="SSL batch")
    args = p.parse_args()
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "results.jsonl"
    results = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    init_ray(num_cpus=2)
    for seed in args.seeds:
        done = {r["variant"] for r in results if r["seed"] == seed}
        if done >= set(LABELS):
            continue

        def record(key: str, metrics: dict, start: float, seed=seed) -> None:
            row = {"seed": seed, "variant": key, **{k: float(metrics[k]) for k in KEYS},
                   "num_sequences": int(metrics.get("num_sequences", -1)), "wall_s": time.time() - start}
            results.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"seed {seed} ({key}) {LABELS[key]}: " + ", ".join(f"{k} {row[k]:.3f}" for k in KEYS), flush=True)

        run_seed(args, seed, root / f"seed{seed}", done, record)
    text = table([r for r in results if r["seed"] in args.seeds])
    print(text)
    (root / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
