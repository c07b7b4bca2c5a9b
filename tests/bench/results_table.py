"""The results table of docs/RESULTS.md: test-split retrieval quality of six training variants.

(a) random init, (b) SSL faces only, (c) SSL bodies only, (d) SSL face+body without the identity term,
(e) identity-aware SSL, (f) (e) + fine-tuning. (a)-(e) are evaluated on the frozen fused feature (sum of the
L2-normalised face and body features of the present modalities, as the Re-ID net fuses them, before its Linear);
(f) on the fine-tuned Re-ID embedding. Metrics: precision@1, MAP@R and AMI per test sequence (averaged), with
pytorch-metric-learning's AccuracyCalculator (``reid.eval.metrics.retrieval_metrics``).

    python tests/bench/results_table.py [--series 4 --pages 12 --epochs 8 --out runs/results]
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

from reid.crop import CropConfig, run_crop  # noqa: E402
from reid.data import formats  # noqa: E402
from reid.data.synthetic import generate_corpus, preset_config  # noqa: E402
from reid.datasets import sequence_dataset  # noqa: E402
from reid.embedding import collate_sequences, normalize_uint8  # noqa: E402
from reid.eval.metrics import retrieval_metrics  # noqa: E402
from reid.models import ModelConfig, ReIDNet, reid_net_from_ssl_checkpoint  # noqa: E402
from reid.raycluster import init_ray  # noqa: E402
from reid.train.finetune import FinetuneConfig, run_finetune  # noqa: E402
from reid.train.pretrain import PretrainConfig, run_pretrain  # noqa: E402

VARIANTS = {
    "b": ("SSL, faces only", {"use_bodies": False}),
    "c": ("SSL, bodies only", {"use_faces": False}),
    "d": ("SSL, face+body, no identity term", {"identity_weight": 0.0}),
    "e": ("identity-aware SSL", {}),
}
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/results")
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--pages", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--face-size", type=int, default=32)
    p.add_argument("--body-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out).resolve()
    corpus, crops, uri = out / "corpus", out / "crops", f"sqlite:///{out}/mlflow.db"
    start = time.time()
    if not (corpus / "summary.json").exists():
        generate_corpus(str(corpus), preset_config("demo", series=args.series, pages=args.pages, seed=args.seed))
    init_ray(num_cpus=2)
    if not (crops / "_SUCCESS").exists():
        run_crop(CropConfig(comics_root=str(corpus), out=str(crops), pages_per_shard=4, mlflow_uri=uri))
    sequences = str(corpus / "data/comics_seq")
    test_ds = sequence_dataset(str(crops), formats.read_split(sequences, "test"), args.face_size, args.body_size,
                               False, 0.25)
    common = {"crops": str(crops), "storage": str(out / "train"), "arch": args.arch, "face_size": args.face_size,
              "body_size": args.body_size, "epochs": args.epochs, "batch_size": args.batch_size, "workers": 2,
              "cpus_per_worker": 0.5, "data_cpus": 0.25, "mlflow_uri": uri, "seed": args.seed}
    rows = {}
    torch.manual_seed(args.seed)
    rows["a"] = ("random init", frozen_feature_metrics(
        ReIDNet(ModelConfig(arch=args.arch, face_size=args.face_size, body_size=args.body_size)), test_ds))
    ssl_models = {}
    for key, (label, change) in VARIANTS.items():
        _, ssl_models[key] = run_pretrain(PretrainConfig(name=f"results-{key}", **common, **change))
        rows[key] = (label, frozen_feature_metrics(reid_net_from_ssl_checkpoint(ssl_models[key]), test_ds))
    tuned = run_finetune(FinetuneConfig(
        crops=str(crops), sequences=sequences, ssl_checkpoint=ssl_models["e"], storage=str(out / "train"),
        name="results-f", face_size=args.face_size, body_size=args.body_size, epochs=args.finetune_epochs,
        sequences_per_batch=8, workers=2, cpus_per_worker=0.5, data_cpus=0.25, mlflow_uri=uri, seed=args.seed))
    rows["f"] = ("identity-aware SSL + fine-tuning", {k.removeprefix("test_"): v for k, v in tuned["test"].items()})
    table = ["| variant | precision@1 | MAP@R | AMI |", "| --- | --- | --- | --- |"]
    for key, (label, m) in rows.items():
        table.append(f"| ({key}) {label} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")
    text = "\n".join(table)
    print(text)
    print(f"test sequences: {int(rows['f'][1].get('num_sequences', np.nan))}; wall time {time.time() - start:.0f} s")
    (out / "results.json").write_text(json.dumps({k: {"label": v[0], **v[1]} for k, v in rows.items()}, indent=1))
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
