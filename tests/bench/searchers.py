"""Searchers on the same trial budget: Optuna's TPE against random search, for the fine-tuning sweep.

For each searcher and sweep seed, one fine-tuning sweep (``reid.stages.sweeps.finetune``, ASHA early stopping on both)
of ``--samples`` trials over the default search space (margins, learning rate), from the same SSL checkpoint and
crops. Reported per searcher: the best published validation MAP@R after the first k trials (k = 2, 4, ...,
samples; trials in creation order, a trial stopped early counts only when no finished trial is better), mean ±
sd over the sweep seeds, and the ratio TPE / random on the full budget.

    python tests/bench/searchers.py --crops RUN/crops --sequences RUN/corpus/data/comics_seq \
        --ssl-checkpoint RUN/train/demo-pretrain/final/model.pt --samples 8 --seeds 0 1 2

Every sweep's result is appended to ``<out>/searchers.jsonl`` as it finishes; a re-run skips finished sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def trial_order(sweep_folder: Path, trial_ids: list[str]) -> dict[str, int]:
    """Each trial's creation index, from Tune's trial folder names (``run_trial_<id>_<index>_<params>_<date>``):
    random search numbers its trial ids in order, Optuna's are random hex."""
    order = {}
    for trial in trial_ids:
        for path in (sweep_folder / "tune").glob(f"run_trial_{trial}_*"):
            index = path.name[len(f"run_trial_{trial}_"):].split("_", 1)[0]
            if index.isdigit():
                order[trial] = int(index)
    return order


def best_after(rows: list[dict], k: int) -> float:
    """The sweep's pick among its first ``k`` trials (the same rule as the sweep: finished trials first)."""
    from reid.stages.sweeps.trials import best_row

    first = sorted(rows, key=lambda r: (r.get("order", 0), r["trial"]))[:k]
    best = best_row(first, "max")
    return best["score"] if best else float("nan")


def run_one(args, search: str, seed: int) -> dict:
    from reid.core.config import parse_config
    from reid.stages.sweeps.finetune import FinetuneSweepConfig, run_finetune_sweep

    name = f"{search}-seed{seed}"
    cfg = parse_config(FinetuneSweepConfig, [
        "--crops", args.crops, "--sequences", args.sequences, "--ssl-checkpoint", args.ssl_checkpoint,
        "--storage", str(Path(args.out) / "sweeps"), "--name", name, "--samples", str(args.samples),
        "--search", search, "--search-seed", str(seed), "--epochs", str(args.epochs), "--workers", "2",
        "--cpus-per-worker", "0.5", "--face-size", str(args.face_size), "--body-size", str(args.body_size),
        "--sequences-per-batch", "8", "--ray-num-cpus", "2", "--mlflow-uri",
        f"sqlite:///{Path(args.out).resolve()}/mlflow.db", "--max-concurrent-trials", "1"])
    start = time.time()
    result = run_finetune_sweep(cfg)
    order = trial_order(Path(result.folder), [r["trial"] for r in result.rows])
    rows = [{**{k: r[k] for k in ("trial", "status", "score", "epochs", "pos_margin", "neg_margin", "lr")},
             "order": order.get(r["trial"], 0)} for r in result.rows]
    return {"search": search, "seed": seed, "samples": args.samples, "epochs": args.epochs,
            "wall_s": round(time.time() - start, 1), "rows": rows}


def table(done: list[dict], samples: int) -> str:
    ks = sorted({*range(2, samples + 1, 2), samples})
    lines = ["| searcher | sweeps | " + " | ".join(f"best after {k}" for k in ks) + " | wall min |",
             "| --- | --- | " + " | ".join("---" for _ in ks) + " | --- |"]
    finals = {}
    for search in ("random", "optuna"):
        runs = [d for d in done if d["search"] == search]
        if not runs:
            continue
        cells = []
        for k in ks:
            values = [best_after(d["rows"], k) for d in runs]
            values = [v for v in values if math.isfinite(v)]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "")
            if k == samples and values:
                finals[search] = statistics.mean(values)
        wall = statistics.mean(d["wall_s"] for d in runs) / 60
        lines.append(f"| {search} | {len(runs)} | " + " | ".join(cells) + f" | {wall:.1f} |")
    if len(finals) == 2:
        lines.append(f"\nratio optuna / random, best after {samples}: {finals['optuna'] / finals['random']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", required=True)
    parser.add_argument("--sequences", required=True)
    parser.add_argument("--ssl-checkpoint", required=True)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs per trial")
    parser.add_argument("--face-size", type=int, default=48)
    parser.add_argument("--body-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--searchers", nargs="+", default=["random", "optuna"], choices=["random", "optuna"])
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-searchers"))
    args = parser.parse_args()
    results = Path(args.out) / "searchers.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = [d for d in done if d["samples"] == args.samples and d["epochs"] == args.epochs]
    for d in done:  # results written before the creation order was recorded
        order = trial_order(Path(args.out) / "sweeps" / f"{d['search']}-seed{d['seed']}",
                            [r["trial"] for r in d["rows"]])
        for r in d["rows"]:
            r.setdefault("order", order.get(r["trial"], 0))
    for seed in args.seeds:
        for search in args.searchers:
            if any(d["search"] == search and d["seed"] == seed for d in done):
                continue
            done.append(run_one(args, search, seed))
            with results.open("a") as f:
                f.write(json.dumps(done[-1]) + "\n")
            print(json.dumps({k: done[-1][k] for k in ("search", "seed", "wall_s")}), flush=True)
    print(f"\nfine-tuning sweep, {args.samples} trials of {args.epochs} epochs, seeds {args.seeds} ({results})\n")
    print(table([d for d in done if d["seed"] in args.seeds], args.samples))


if __name__ == "__main__":
    main()
