"""Recipe probe: the training levers of issue 17 measured quickly, in one process, without Ray.

The product path (Ray Data + Ray Train + the labeling job) is what ``tests/bench/quality.py`` measures; this
script answers "which recipe learns?" in minutes per variant by running the same library pieces (SSLNet,
IdentityAwareSSLLoss, ReIDNet, SequencePairLoss, the augment pipelines, the assigner and the metrics) in a
plain loop on pre-decoded crops, so that many variants fit in the time one pipeline run takes.

    python tests/bench/recipe_probe.py --corpus runs/q0/corpus --crops runs/q0/crops \
        --variant paper --variant colour --out runs/probe/results.jsonl

Each variant prints and appends one JSON line: test precision@1 / MAP@R (within sequence), window AMI /
B-cubed F1 at the threshold chosen on validation (and at 0.82), and wall time. ``--list`` shows the variants.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torchvision.transforms import v2

from reid.core.assign import assign_window
from reid.core.contracts.crops import pair_rows
from reid.core.data import augment, formats
from reid.core.embedding import decode_rgb
from reid.core.eval.metrics import clustering_scores, retrieval_metrics
from reid.core.losses import IdentityAwareSSLLoss, SequencePairLoss
from reid.core.models import ModelConfig, ReIDNet, SSLNet


@dataclass(frozen=True)
class Variant:
    name: str
    arch: str = "resnet18"
    face_size: int = 48
    body_size: int = 64
    ssl_epochs: int = 6
    ssl_batch: int = 64
    ssl_lr: float = 5e-4
    temperature: float = 0.07
    hue: float = 0.1
    grayscale: float = 0.2
    colour_strength: float = 0.5
    min_scale: float = 0.08
    identity_weight: float = 1.0
    ft_epochs: int = 6
    ft_seqs: int = 8
    ft_lr: float = 7.5e-4
    freeze: bool = True
    backbone_lr_scale: float = 1.0
    other_series: bool = True
    supervised: bool = False  # diagnostic upper bound: ground-truth identities, no SSL
    sup_epochs: int = 0
    swa_epochs: int = 0  # average the weights (and BatchNorm buffers) over the last N fine-tuning epochs
    notes: dict[str, Any] = field(default_factory=dict)


BASE = Variant("paper")
VARIANTS: dict[str, Variant] = {
    "random": replace(BASE, name="random", ssl_epochs=0, ft_epochs=0),
    "paper": BASE,
    "paper_ssl_only": replace(BASE, name="paper_ssl_only", ft_epochs=0),
    "colour": replace(BASE, name="colour", hue=0.0, grayscale=0.0),
    "colour_ssl_only": replace(BASE, name="colour_ssl_only", hue=0.0, grayscale=0.0, ft_epochs=0),
    "colour_weak": replace(BASE, name="colour_weak", hue=0.0, grayscale=0.0, colour_strength=0.2),
    "unfreeze": replace(BASE, name="unfreeze", freeze=False, ft_lr=3e-4),
    "colour_unfreeze": replace(BASE, name="colour_unfreeze", hue=0.0, grayscale=0.0, freeze=False, ft_lr=3e-4),
    "colour_unfreeze_long": replace(BASE, name="colour_unfreeze_long", hue=0.0, grayscale=0.0, freeze=False,
                                    ft_lr=3e-4, ft_epochs=15),
    "colour_unfreeze_ssl12": replace(BASE, name="colour_unfreeze_ssl12", hue=0.0, grayscale=0.0, freeze=False,
                                     ft_lr=3e-4, ssl_epochs=12),
    "ft_only": replace(BASE, name="ft_only", ssl_epochs=0, freeze=False, ft_lr=3e-4, ft_epochs=15),
    "supervised": replace(BASE, name="supervised", ssl_epochs=0, ft_epochs=0, supervised=True, sup_epochs=15,
                          freeze=False),
}


def strong_view(size: int, kind: str, v: Variant) -> v2.Compose:
    s = v.colour_strength
    geometry = [] if kind == "face" else [augment.ResizePadSquare(size)]
    return v2.Compose([v2.ToImage(), v2.RGB(), *geometry,
                       v2.RandomResizedCrop(size, scale=(v.min_scale, 1.0), antialias=True),
                       v2.RandomHorizontalFlip(),
                       v2.RandomApply([v2.ColorJitter(s, s, s, v.hue)], p=0.8),
                       v2.RandomGrayscale(p=v.grayscale),
                       v2.RandomApply([augment._blur(size)], p=0.5),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(augment.MEAN, augment.STD)])


def load(corpus: str, crops: str) -> dict[str, Any]:
    import glob

    rows = []
    for path in sorted(glob.glob(f"{crops}/data/*.parquet")):
        rows += pair_rows(pq.read_table(path))
    truth = pd.read_csv(f"{corpus}/ground_truth.csv", keep_default_na=False)
    identity = dict(zip(truth["instance_id"], truth["identity"], strict=True))
    split_of = dict(zip(truth["instance_id"], truth["split"], strict=True))
    instances = []
    for r in rows:
        iid = r["face_id"] or r["body_id"]
        if not identity[iid]:  # an unnamed extra (inked style): no identity to train on
            continue
        instances.append({"key": r["key"], "series": r["series_id"], "panel": r["panel_id"],
                          "face": decode_rgb(r["face"]) if r["face"] else None,
                          "body": decode_rgb(r["body"]) if r["body"] else None,
                          "face_id": r["face_id"], "body_id": r["body_id"],
                          "identity": identity[iid], "split": split_of[iid]})
    by_id = {}
    for inst in instances:
        for k in ("face_id", "body_id"):
            if inst[k]:
                by_id[inst[k]] = inst
    seq_root = f"{corpus}/data/comics_seq"
    splits = {s: formats.read_split(seq_root, s) for s in ("train", "validation", "test")}
    return {"instances": instances, "by_id": by_id, "splits": splits}


def sequence_items(data: dict[str, Any], split: str) -> list[list[tuple[dict[str, Any], int]]]:
    out = []
    for seq in data["splits"][split]:
        items = []
        for label, ch in enumerate(seq.characters):
            for ci in ch.instances:
                inst = data["by_id"].get(ci.face or "") or data["by_id"].get(ci.body or "")
                if inst is not None:
                    items.append((inst, label))
        if items:
            out.append(items)
    return out


def stack(images, transform, size) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.tensor([im is not None for im in images])
    x = torch.stack([transform(im) if im is not None else torch.zeros(3, size, size) for im in images])
    return x, mask


def pretrain(v: Variant, data: dict[str, Any], seed: int) -> SSLNet:
    torch.manual_seed(seed)
    net = SSLNet(ModelConfig(arch=v.arch, face_size=v.face_size, body_size=v.body_size))
    if v.ssl_epochs == 0:
        return net
    train = [i for i in data["instances"] if i["split"] == "train" or True]  # SSL sees the whole corpus, unlabelled
    sf, sb = strong_view(v.face_size, "face", v), strong_view(v.body_size, "body", v)
    wf, wb = augment.weak_face(v.face_size), augment.weak_body(v.body_size)
    loss_fn = IdentityAwareSSLLoss(v.temperature, 1.0, 1.0, v.identity_weight)
    steps = v.ssl_epochs * max(1, len(train) // v.ssl_batch)
    opt = torch.optim.AdamW(net.parameters(), lr=v.ssl_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(seed)
    for _ in range(v.ssl_epochs):
        net.train()
        order = rng.permutation(len(train))
        for b in range(len(train) // v.ssl_batch):
            batch = [train[j] for j in order[b * v.ssl_batch:(b + 1) * v.ssl_batch]]
            faces = [i["face"] for i in batch if i["face"] is not None]
            bodies = [i["body"] for i in batch if i["body"] is not None]
            pairs = [i for i in batch if i["face"] is not None and i["body"] is not None]
            fa = torch.stack([sf(x) for x in faces] + [sf(x) for x in faces] + [wf(i["face"]) for i in pairs])
            ba = torch.stack([sb(x) for x in bodies] + [sb(x) for x in bodies] + [wb(i["body"]) for i in pairs])
            zf, zb = net(fa), net(ba)
            nf, nb = len(faces), len(bodies)
            total, _ = loss_fn(zf[:nf], zf[nf:2 * nf], zb[:nb], zb[nb:2 * nb], zf[2 * nf:], zb[2 * nb:])
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()
            sched.step()
    return net


def embed(model: ReIDNet, items: list[tuple[dict[str, Any], int]], v: Variant, flip: bool = False) -> np.ndarray:
    """Embeddings of items; flip=True averages them with those of the mirrored crops (test-time flip)."""
    ef, eb = augment.eval_transform(v.face_size, "face"), augment.eval_transform(v.body_size, "body")
    model.eval()
    with torch.no_grad():
        f, fm = stack([i["face"] for i, _ in items], ef, v.face_size)
        b, bm = stack([i["body"] for i, _ in items], eb, v.body_size)
        out = model(f, b, fm, bm)
        if flip:
            out = torch.nn.functional.normalize(out + model(f.flip(3), b.flip(3), fm, bm), dim=1)
        return out.numpy()


def finetune(v: Variant, net: SSLNet, data: dict[str, Any], seed: int) -> ReIDNet:
    torch.manual_seed(seed)
    cfg = replace(net.config, freeze_ssl=v.freeze)
    model = ReIDNet(cfg, net)
    epochs = v.sup_epochs if v.supervised else v.ft_epochs
    if epochs == 0:
        return model
    wf, wb = augment.weak_face(v.face_size), augment.weak_body(v.body_size)
    head = list(model.embed.parameters())
    body_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("embed.")]
    groups = [{"params": head, "lr": v.ft_lr}]
    if body_params:
        groups.append({"params": body_params, "lr": v.ft_lr * v.backbone_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.95)
    loss_fn = SequencePairLoss()
    rng = np.random.default_rng(seed)
    averaged = torch.optim.swa_utils.AveragedModel(model, use_buffers=True) if v.swa_epochs else None
    if v.supervised:
        train = [i for i in data["instances"] if i["split"] == "train"]
        ident = {k: n for n, k in enumerate(sorted({i["identity"] for i in train}))}
        for _ in range(epochs):
            model.train()
            order = rng.permutation(len(train))
            for b in range(len(train) // 64):
                batch = [train[j] for j in order[b * 64:(b + 1) * 64]]
                f, fm = stack([i["face"] for i in batch], wf, v.face_size)
                bb, bm = stack([i["body"] for i in batch], wb, v.body_size)
                emb = model(f, bb, fm, bm)
                labels = torch.tensor([ident[i["identity"]] for i in batch])
                zeros = torch.zeros(len(batch), dtype=torch.long)
                loss = loss_fn(emb, labels, zeros, zeros)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        return model
    seqs = sequence_items(data, "train")
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(seqs))
        for b in range(len(seqs) // v.ft_seqs):
            chosen = [seqs[j] for j in order[b * v.ft_seqs:(b + 1) * v.ft_seqs]]
            items = [it for s in chosen for it in s]
            f, fm = stack([i["face"] for i, _ in items], wf, v.face_size)
            bb, bm = stack([i["body"] for i, _ in items], wb, v.body_size)
            emb = model(f, bb, fm, bm)
            labels = torch.tensor([lab + 100 * s for s, seq in enumerate(chosen) for _, lab in seq])
            seq_ids = torch.tensor([s for s, seq in enumerate(chosen) for _ in seq])
            series = torch.tensor([i["series"] if v.other_series else 0 for i, _ in items])
            loss = loss_fn(emb, labels, seq_ids, series)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if averaged is not None and _ >= epochs - v.swa_epochs:
            averaged.update_parameters(model)
    if averaged is not None:
        model.averaged = averaged.module  # evaluated next to the last epoch's weights
    return model


def evaluate(model: ReIDNet, data: dict[str, Any], v: Variant, flip: bool = False) -> dict[str, float]:
    out: dict[str, float] = {}
    per_split = {}
    for split in ("validation", "test"):
        seqs = sequence_items(data, split)
        items = [it for s in seqs for it in s]
        emb = embed(model, items, v, flip)
        labels = np.array([lab + 100 * s for s, seq in enumerate(seqs) for _, lab in seq])
        seq_ids = np.array([s for s, seq in enumerate(seqs) for _ in seq])
        truth = np.array([i["identity"] for i, _ in items])
        panels = np.array([i["panel"] for i, _ in items], object)
        per_split[split] = (emb, labels, seq_ids, truth, panels)
    emb, labels, seq_ids, truth, _ = per_split["test"]
    r = retrieval_metrics(emb, labels, seq_ids)
    out["test_p1"], out["test_mapr"] = r["precision_at_1"], r["mean_average_precision_at_r"]

    def window_scores(split, threshold, constrained=True):
        e, _, s, t, p = per_split[split]
        pred = np.zeros(len(t), dtype=np.int64)
        for g in np.unique(s):
            rows = np.flatnonzero(s == g)
            pred[rows] = assign_window(e[rows], threshold, panels=p[rows] if constrained else None)
        return clustering_scores(pred, t, s)

    grid = np.round(np.arange(0.1, 1.41, 0.05), 3)
    val = [(window_scores("validation", t)["AMI"], t) for t in grid]
    best_t = max(val)[1]
    chosen = window_scores("test", best_t)
    at_paper = window_scores("test", 0.82)
    free = window_scores("test", max((window_scores("validation", t, False)["AMI"], t) for t in grid)[1], False)
    curve = [(window_scores("test", t)["AMI"], t) for t in grid]
    out.update(oracle_threshold=float(max(curve)[1]), oracle_window_ami=float(max(curve)[0]),
               val_curve={str(t): round(a, 3) for a, t in val}, test_curve={str(t): round(a, 3) for a, t in curve})
    out.update(threshold=float(best_t), window_ami=chosen["AMI"], window_bcubed_f1=chosen["bcubed_f1"],
               window_ami_082=at_paper["AMI"], window_ami_unconstrained=free["AMI"])
    return out


def run(v: Variant, data: dict[str, Any], seed: int) -> dict[str, Any]:
    start = time.time()
    net = pretrain(v, data, seed)
    t_ssl = time.time() - start
    model = finetune(v, net, data, seed)
    wall = time.time() - start
    result = {"variant": v.name, "seed": seed, **evaluate(model, data, v), "ssl_s": round(t_ssl, 1),
              "wall_s": round(wall, 1)}
    # paired comparisons on the same trained weights: test-time flip, and the weight average when kept
    keys = ("test_p1", "test_mapr", "window_ami", "threshold")
    flipped = evaluate(model, data, v, flip=True)
    result.update({f"flip_{k}": flipped[k] for k in keys})
    if getattr(model, "averaged", None) is not None:
        avg = evaluate(model.averaged, data, v)
        result.update({f"swa_{k}": avg[k] for k in keys})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="runs/q0/corpus")
    parser.add_argument("--crops", default="runs/q0/crops")
    parser.add_argument("--variant", action="append", help="variant name (repeatable); see --list")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/probe/results.jsonl")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of every variant run (repeatable), e.g. --set min_scale=0.3")
    parser.add_argument("--tag", default="", help="suffix of the variant names in the output (with --set)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, v in VARIANTS.items():
            print(name, v)
        return
    torch.set_num_threads(args.threads)
    data = load(args.corpus, args.crops)
    import os

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        kind = type(getattr(BASE, key))
        overrides[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    for name in args.variant or ["paper"]:
        variant = replace(VARIANTS[name], **overrides)
        if overrides:
            variant = replace(variant, name=f"{name}{args.tag or '+' + ','.join(args.set)}")
        for seed in args.seeds:
            result = run(variant, data, seed)
            line = json.dumps({k: (round(x, 4) if isinstance(x, float) else x) for k, x in result.items()})
            print(line, flush=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
