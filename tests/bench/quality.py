"""Quality benchmark: the product path end to end (corpus → crop → pretrain → finetune → label), over seeds.

    python tests/bench/quality.py                                  # demo preset, 3 seeds, every row
    python tests/bench/quality.py --preset demo --pages 60 --seeds 0 1 2 --rows product supervised
    python tests/bench/quality.py --out runs/quality --rows product --seeds 0   # one quick row
    python tests/bench/quality.py --style inked                    # the black-and-white corpus (preset inked)

Rows (each a real run of the jobs, on an embedded local Ray, with the demo's sizes and budget):
- ``product``: ``make demo``'s pipeline with its defaults;
- ``paper``: the same with the paper's recipe (``--recipe paper``: SimCLR colour augmentations, frozen SSL);
- ``random``: a randomly initialised Re-ID net (no training), thresholds calibrated on validation as fine-tuning
  does, then the label job;
- ``colour``: no model at all: colour histograms of each instance's face and body crops
  (:mod:`reid.core.eval.baselines`); test retrieval metrics only. What colour alone gives away on a corpus;
- ``supervised``: a diagnostic upper bound, never part of the product: the same network trained directly on the
  synthetic corpus's ground-truth identities of the train pages (tests/bench/recipe_probe.py's loop), then
  calibrated and labelled like the others.

Per row and seed: test precision@1 and MAP@R (within sequence), the label job's window and series AMI and
B-cubed F1 against the ground truth, predicted vs true identities per series, wall time. The table prints
mean ± sd over seeds; every run also appends a JSON line to ``<out>/results.jsonl`` as it finishes (a long
study can be stopped and resumed: finished (row, seed) pairs are skipped).

``--relabel`` trains nothing: for every finished (row, seed) of ``<out>`` it re-calibrates that run's model on its
validation sequences with the current calibration code
(:func:`reid.stages.train.finetune_publish.calibrate_model`, as
fine-tuning does) and re-runs the label job into ``<run>/labels-relabel``; test metrics and training wall time
are the run's own. Results go to ``<out>/results-relabel.jsonl``. It measures a change to the calibration or
the assigner on the same models, in minutes instead of a retraining. With ``--model-set FIELD=VALUE`` it first
changes an inference field of each model's config (e.g. ``flip_average=false``: the same weights without the
test-time flip) and recomputes the test metrics too, into ``<out>/results-relabel-FIELD=VALUE.jsonl``: a
comparison paired on the same trained weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "bench"))

ROWS = ("product", "paper", "random", "colour", "supervised")
STYLE_PRESETS = {"color": "demo", "inked": "inked"}
COLUMNS = [("test_precision_at_1", "test p@1"), ("test_mean_average_precision_at_r", "test MAP@R"),
           ("gt_window_AMI", "window AMI"), ("gt_window_bcubed_f1", "window B³F1"),
           ("gt_series_AMI", "series AMI"), ("gt_series_bcubed_f1", "series B³F1"),
           ("gt_series_identities", "ids/series"), ("gt_series_true_identities", "true ids/series"),
           ("wall_s", "wall s")]


def _pipeline_row(row: str, out: Path, args, seed: int) -> dict:
    from reid.stages.pipeline import PipelineConfig, paths, run_pipeline

    cfg = PipelineConfig(out=str(out), preset=args.preset, pages=args.pages, series=args.series,
                         train_seed=seed, recipe="paper" if row == "paper" else "default", ray_num_cpus=2,
                         **args.pipeline_set)
    run_pipeline(cfg)
    return _scores(paths(cfg)["reid_model"], paths(cfg), cfg)


def _scores(model_path: str, p: dict, cfg) -> dict:
    """Test retrieval metrics of a model and the label job's metrics.json."""
    import torch

    from reid.core.data import formats
    from reid.core.models.checkpoint import load_model_checkpoint
    from reid.runtime.ray_datasets import sequence_dataset
    from reid.stages.train.finetune import evaluate

    model, _, _ = load_model_checkpoint(model_path, expected_kind="reid")
    test = formats.read_split(f"{p['corpus']}/data/comics_seq", "test")
    ds = sequence_dataset(p["crops"], test, model.config.face_size, model.config.body_size, False, 0.5,
                          transform=model.config.transform)
    metrics = evaluate(model, ds.iter_batches(batch_size=8, batch_format="numpy"), torch.device("cpu"), "test")
    metrics.update(json.loads(Path(p["labels"], "metrics.json").read_text()))
    metrics["test_sequences"] = metrics.get("test_num_sequences")
    return metrics


def _calibrate_and_label(model, out: Path, p: dict, cfg, linking: dict | None = None) -> dict:
    """A model made outside the product (random, supervised): calibrated on validation like fine-tuning does,
    then labelled by the label job."""
    from reid.core.data import formats
    from reid.core.models.checkpoint import save_model_checkpoint
    from reid.stages.label import LabelConfig, run_label
    from reid.stages.train.finetune import FinetuneConfig
    from reid.stages.train.finetune_publish import calibrate_model

    path = str(out / "model.pt")
    ft = FinetuneConfig(crops=p["crops"], sequences=f"{p['corpus']}/data/comics_seq", name=out.name,
                        face_size=model.config.face_size, body_size=model.config.body_size, **(linking or {}))
    calibration, _ = calibrate_model(model, ft, formats.read_split(ft.sequences, "validation"))
    save_model_checkpoint(model, path, extra={"calibration": calibration})
    run_label(LabelConfig(model=path, crops=p["crops"], out=p["labels"], ground_truth=f"{p['corpus']}/ground_truth.csv",
                          comics_root=p["corpus"], report_windows=0, mlflow_uri=f"sqlite:///{out}/mlflow.db",
                          save_embeddings=True,  # for tests/bench/linking_ceiling.py
                          name=f"{out.name}-label"))
    return _scores(path, p, cfg)


def _reference_row(row: str, out: Path, args, seed: int) -> dict:
    import recipe_probe
    import torch

    from reid.core.models import ModelConfig, ReIDNet
    from reid.stages.pipeline import PipelineConfig, paths, run_pipeline

    cfg = PipelineConfig(out=str(out), preset=args.preset, pages=args.pages, series=args.series, train_seed=seed,
                         stages="corpus,crop", ray_num_cpus=2)
    run_pipeline(cfg)
    p = {**paths(cfg), "labels": str(out / "labels")}
    torch.manual_seed(seed)
    if row == "random":
        model = ReIDNet(ModelConfig(arch=cfg.arch, face_size=cfg.face_size, body_size=cfg.body_size))
    else:
        data = recipe_probe.load(p["corpus"], p["crops"])
        variant = replace(recipe_probe.VARIANTS["supervised"], arch=cfg.arch, face_size=cfg.face_size,
                          body_size=cfg.body_size, sup_epochs=args.supervised_epochs)
        model = recipe_probe.finetune(variant, recipe_probe.pretrain(variant, data, seed), data, seed)
    return _calibrate_and_label(model.eval(), out, p, cfg)


def _colour_row(out: Path, args, seed: int) -> dict:
    """Colour histograms of the test sequences' crops (no model): what colour alone gives away."""
    from reid.stages.pipeline import PipelineConfig, paths, run_pipeline
    from tests.helpers.corpus_items import colour_metrics, sequence_items

    cfg = PipelineConfig(out=str(out), preset=args.preset, pages=args.pages, series=args.series, train_seed=seed,
                         stages="corpus", ray_num_cpus=2)
    run_pipeline(cfg)
    return {f"test_{k}": v for k, v in colour_metrics(sequence_items(paths(cfg)["corpus"], "test")).items()}


def run_row(row: str, args, seed: int) -> dict:
    out = Path(args.out).resolve() / f"{args.tag}-{row}-seed{seed}"
    start = time.time()
    if row == "colour":
        scores = _colour_row(out, args, seed)
    elif row in ("product", "paper"):
        scores = _pipeline_row(row, out, args, seed)
    else:
        scores = _reference_row(row, out, args, seed)
    return {"row": row, "seed": seed, "preset": args.tag, "wall_s": round(time.time() - start, 1),
            **{k: v for k, v in scores.items() if isinstance(v, int | float)}}


def relabel_row(previous: dict, args) -> dict:
    import shutil

    from reid.core.models.checkpoint import load_model_checkpoint
    from reid.stages.pipeline import PipelineConfig, paths

    row, seed = previous["row"], previous["seed"]
    out = Path(args.out).resolve() / f"{args.tag}-{row}-seed{seed}"
    cfg = PipelineConfig(out=str(out), preset=args.preset, pages=args.pages, series=args.series, train_seed=seed,
                         ray_num_cpus=2)
    p = {**paths(cfg), "labels": str(out / f"labels-relabel{_suffix(args)}")}
    shutil.rmtree(p["labels"], ignore_errors=True)  # the label job resumes: a fresh folder, not old shards
    source = p["reid_model"] if row in ("product", "paper") else str(out / "model.pt")
    model, _, _ = load_model_checkpoint(source)
    if args.model_set:
        model.config = replace(model.config, **args.model_set)
    start = time.time()
    relabel_dir = out / ("relabel" + _suffix(args))
    relabel_dir.mkdir(exist_ok=True)
    scores = _calibrate_and_label(model.eval(), relabel_dir, p, cfg, args.linking)
    keep_test = bool(args.model_set)  # the model's inference changed: its test metrics are recomputed
    return {**previous, **{k: v for k, v in scores.items()
                           if isinstance(v, int | float) and (keep_test or not k.startswith("test_"))},
            "relabel_wall_s": round(time.time() - start, 1), "model_set": args.model_set}


def _suffix(args) -> str:
    return "".join(f"-{k}={v}" for k, v in sorted({**args.model_set, **args.linking}.items()))


def _model_set(items: list[str]) -> dict:
    from reid.core.models import ModelConfig

    fields = {f: v for f, v in ModelConfig().to_dict().items()}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields or not isinstance(fields[key], bool):
            raise SystemExit(f"--model-set {item}: only boolean ModelConfig fields, e.g. flip_average=false")
        if value.lower() not in ("true", "false"):
            raise SystemExit(f"--model-set {item}: expected true or false")
        out[key] = value.lower() == "true"
    return out


def _pipeline_set(items: list[str]) -> dict:
    """``FIELD=INT`` overrides of the pipeline's integer settings (sizes, epochs): a lever measured as a variant."""
    from dataclasses import fields

    from reid.stages.pipeline import PipelineConfig

    ints = {f.name for f in fields(PipelineConfig) if f.type in (int, "int")}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in ints or not value.isdigit():
            raise SystemExit(f"--pipeline-set {item}: expected FIELD=INT with FIELD one of {sorted(ints)}")
        out[key] = int(value)
    return out


def table(results: list[dict]) -> str:
    lines = ["| row | seeds | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for row in ROWS:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        cells = []
        for key, _ in COLUMNS:
            values = np.array([r[key] for r in runs if key in r], float)
            if len(values) == 0:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3g}")
            else:
                cells.append(f"{values.mean():.3g} ± {values.std(ddof=1):.2g}")
        lines.append(f"| {row} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from reid.core.linking import LINK_CONSTRAINTS, LINK_DISTANCES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", choices=sorted(STYLE_PRESETS), default="color",
                        help="corpus style: color (preset demo) or inked (preset inked: black-and-white, >= 50 test "
                             "sequences); --preset overrides the preset")
    parser.add_argument("--preset", default=None, help="synthetic corpus preset (default: the style's)")
    parser.add_argument("--series", type=int, default=None, help="override the preset's series")
    parser.add_argument("--pages", type=int, default=None, help="override the preset's pages per series")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--supervised-epochs", type=int, default=15)
    parser.add_argument("--out", default=str(REPO / "runs" / "quality"))
    parser.add_argument("--relabel", action="store_true", help="re-calibrate and re-label the finished runs of "
                                                               "--out with the current code (no training)")
    parser.add_argument("--model-set", action="append", default=[], metavar="FIELD=true|false",
                        help="with --relabel: change a boolean inference field of each model first, e.g. "
                             "flip_average=false (test metrics are recomputed)")
    parser.add_argument("--link-distance", choices=LINK_DISTANCES, default=None,
                        help="with --relabel: calibrate and link with this distance between window identities")
    parser.add_argument("--link-constraint", choices=LINK_CONSTRAINTS, default=None,
                        help="with --relabel: calibrate and link with this cannot-link")
    parser.add_argument("--pipeline-set", action="append", default=[], metavar="FIELD=INT",
                        help="product and paper rows: override an integer pipeline setting, e.g. face_size=96 "
                             "(repeatable); the variant is tagged in the results and run folders")
    args = parser.parse_args()
    args.preset = args.preset or STYLE_PRESETS[args.style]
    args.model_set = _model_set(args.model_set)
    args.linking = {k: v for k, v in (("link_distance", args.link_distance),
                                      ("link_constraint", args.link_constraint)) if v}
    if args.linking and not args.relabel:
        parser.error("--link-distance and --link-constraint need --relabel")
    if args.model_set and not args.relabel:
        parser.error("--model-set needs --relabel")
    args.tag = args.preset + (f"-s{args.series}" if args.series else "") + (f"-p{args.pages}" if args.pages else "")
    args.pipeline_set = _pipeline_set(args.pipeline_set)
    if args.pipeline_set and (args.relabel or set(args.rows) - {"product", "paper"}):
        parser.error("--pipeline-set applies to training the product and paper rows only")
    args.tag += "".join(f"-{k}={v}" for k, v in sorted(args.pipeline_set.items()))
    results_path = Path(args.out) / "results.jsonl"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    done = [r for r in done if r.get("preset") == args.tag]
    if args.relabel:
        relabel_path = Path(args.out) / f"results-relabel{_suffix(args)}.jsonl"
        relabelled = []
        for previous in done:
            if previous["seed"] in args.seeds and previous["row"] in args.rows and previous["row"] != "colour":
                relabelled.append(relabel_row(previous, args))
                with relabel_path.open("a") as f:
                    f.write(json.dumps(relabelled[-1]) + "\n")
                print(json.dumps({k: relabelled[-1].get(k) for k in ("row", "seed", *[c[0] for c in COLUMNS])}),
                      flush=True)
        print(f"\nrelabelled on {args.tag} (mean ± sd over seeds {args.seeds}; {relabel_path})\n")
        print(table(relabelled))
        return
    for seed in args.seeds:
        for row in args.rows:
            if any(r["row"] == row and r["seed"] == seed for r in done):
                continue
            result = run_row(row, args, seed)
            done.append(result)
            with results_path.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps({k: result.get(k) for k in ("row", "seed", *[c[0] for c in COLUMNS])}), flush=True)
    print(f"\nquality on {args.tag} (mean ± sd over seeds {args.seeds}; {results_path})\n")
    print(table([r for r in done if r["seed"] in args.seeds and r["row"] in args.rows]))


if __name__ == "__main__":
    main()
