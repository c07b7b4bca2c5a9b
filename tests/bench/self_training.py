"""Self-training round on finished product runs: does the model's own confident cross-window links, fed back as
book-level training sequences, move whole-book identity?

    python tests/bench/self_training.py --runs runs/quality-inked/inked-demo-product-seed0 [...] \\
        [--max-distance 0.35]

For each run (a ``tests/bench/quality.py`` product run, or ``make demo``'s runs/demo): the pseudo sequences of
its labels (:mod:`reid.stages.label.pseudo`, validation and test panels left out), their pair precision against the
corpus's ground truth (instances of one pseudo sequence that are truly one named character), fine-tuning again
from the run's SSL model with them added (``--extra-sequences``, the pipeline's own command line and seed), and
the label job with the new model. Prints the run's figures before and after; appends one JSON line per run to
``<run's parent>/results-selftrain.jsonl``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "bench"))

KEYS = ("test_precision_at_1", "gt_window_AMI", "gt_series_AMI", "gt_series_bcubed_f1", "gt_series_identities")


def pair_precision(sequences: list[dict], ground_truth: str) -> float:
    """Fraction of instance pairs inside the pseudo sequences that are one named character."""
    import pandas as pd

    truth = pd.read_csv(ground_truth, keep_default_na=False)
    identity = dict(zip(truth["instance_id"], truth["identity"], strict=True))
    pairs = good = 0
    for s in sequences:
        ids = [identity.get(next(iter(i.values())), "") for i in s["annotations"][0]["charInstances"]]
        for x, y in itertools.combinations(ids, 2):
            pairs += 1
            good += x == y != ""
    return good / max(pairs, 1)


def one_run(run: Path, max_distance: float, tag: str) -> dict:
    import quality

    from reid.stages.label.pseudo import write_pseudo_sequences
    from reid.stages.pipeline import PipelineConfig, paths, stage_commands

    seed = int(re.search(r"seed(\d+)$", run.name).group(1)) if re.search(r"seed(\d+)$", run.name) else 0
    work = run / tag
    cfg = PipelineConfig(out=str(run), train_seed=seed, ray_num_cpus=2, mlflow_uri=f"sqlite:///{work}/mlflow.db")
    p, commands = paths(cfg), stage_commands(cfg)
    work.mkdir(exist_ok=True)
    start = time.time()
    pseudo = write_pseudo_sequences(p["labels"], f"{p['corpus']}/data/comics_seq", str(work / "pseudo"), max_distance)
    pseudo["pair_precision"] = pair_precision(json.loads(Path(pseudo["path"]).read_text()),
                                              f"{p['corpus']}/ground_truth.csv")
    print(json.dumps({"run": str(run), **pseudo}), flush=True)
    name = f"{cfg.name_prefix}-finetune-{tag}"
    finetune = [name if a == f"{cfg.name_prefix}-finetune" else a for a in commands["finetune"]]
    subprocess.run([sys.executable, *finetune, "--extra-sequences", str(work / "pseudo"), "--register-as", ""],
                   check=True, cwd=REPO)
    model, labels = f"{p['train']}/{name}/final/model.pt", str(work / "labels")
    shutil.rmtree(labels, ignore_errors=True)
    label = [model if a == p["reid_model"] else labels if a == p["labels"] else a for a in commands["label"]]
    subprocess.run([sys.executable, *label, "--report-windows", "0", "--name", f"{tag}-label"], check=True, cwd=REPO)
    before = quality._scores(p["reid_model"], p, cfg)
    after = quality._scores(model, {**p, "labels": labels}, cfg)
    return {"run": str(run), "seed": seed, "max_distance": max_distance, "wall_s": round(time.time() - start, 1),
            "pseudo_sequences": pseudo["sequences"], "pair_precision": pseudo["pair_precision"],
            **{f"before_{k}": before.get(k) for k in KEYS}, **{k: after.get(k) for k in KEYS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="finished product runs (pipeline output folders)")
    parser.add_argument("--max-distance", type=float, default=0.35, help="confident link distance (unit vectors)")
    parser.add_argument("--tag", default="selftrain", help="sub-folder of each run and the results file's suffix")
    args = parser.parse_args()
    rows = []
    for run in (Path(r).resolve() for r in args.runs):
        row = one_run(run, args.max_distance, args.tag)
        rows.append(row)
        with open(run.parent / f"results-{args.tag}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print("\n| run | pseudo seqs (pair precision) | " + " | ".join(KEYS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in KEYS) + " |")
    for r in rows:
        cells = [f"{r[f'before_{k}']:.3f} → {r[k]:.3f}" for k in KEYS]
        print(f"| {Path(r['run']).name} | {r['pseudo_sequences']} ({r['pair_precision']:.2f}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
