"""A simulated reviewer: answers the review app's queue from the ground truth, through the app's HTTP API, and
prints series B-cubed F1 and AMI after 0, 5, 10, 20 and 50 actions per book; the same budget spent on random
pairs of identities is the baseline (the queue's order is the lever). With ``--relabel`` the labels are then
re-made with ``jobs/label.py --corrections`` (same model) and scored again; with ``--finetune-round RUN`` the review
then becomes training sequences, the model is fine-tuned again with them and the corpus labelled once more.

    python tests/bench/review_sim.py                       # the make demo run under runs/demo
    python tests/bench/review_sim.py --labels L --crops C --ground-truth corpus/ground_truth.csv --relabel
    python tests/bench/review_sim.py --relabel --finetune-round runs/demo         # the whole loop
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from reid.core.eval.metrics import clustering_scores  # noqa: E402
from reid.stages.review.config import ReviewConfig  # noqa: E402
from reid.stages.review.serve import RunningApp, start_in_background  # noqa: E402


def read_truth(path: str) -> dict[str, str]:
    import csv

    with open(path, newline="") as f:
        return {r["instance_id"]: r["identity"] for r in csv.DictReader(f) if r["identity"]}


class Reviewer:
    """Answers questions from the ground truth; talks to the app over HTTP only."""

    def __init__(self, app: RunningApp, truth: dict[str, str]) -> None:
        self.app, self.truth = app, truth

    def call(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.app.base + path, data=data, headers={
            "X-Review-Token": self.app.token, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def majority(self, members: list[str]) -> str | None:
        corpus = self.app.corpus
        votes = Counter(self.truth.get(corpus.members[m].face_id) or self.truth.get(corpus.members[m].body_id)
                        for m in members)
        votes.pop(None, None)
        return votes.most_common(1)[0][0] if votes else None

    def of_identity(self, series: int, identity: int) -> str | None:
        return self.majority(sorted(self.app.corpus.state.ids.get((series, identity), ())))

    def answer(self, q: dict) -> None:
        series = q["series"]
        if q["type"] == "same":
            same = self.of_identity(series, q["a"]) == self.of_identity(series, q["b"]) is not None
            payload = {"series": series, "a": q["a"], "b": q["b"], "answer": "yes" if same else "no"}
            self.call("/api/actions", {"kind": "same", "payload": payload})
            return
        unit = self.majority(self.app.corpus.state.unit_members[q["unit"]])
        own = self.of_identity(series, q["identity"])
        # "no": the reviewer knows the character, so moves it onto the identity that is that character (the one
        # proposed, or any other of the book, as the identity page allows), else into a new identity
        where = [q["other"]] + sorted(i for s, i in self.app.corpus.state.ids if s == series)
        target = next((i for i in where if i != q["identity"] and self.of_identity(series, i) == unit), None)
        answer = {"answer": "yes"} if unit == own else {"answer": "no", "other": target}
        self.call("/api/actions", {"kind": "belongs", "payload": {"series": series, "unit": q["unit"],
                                                                  "identity": q["identity"], **answer}})

    def random_pair(self, series: int, rng: random.Random, asked: set) -> bool:
        ids = sorted(i for s, i in self.app.corpus.state.ids if s == series)
        pairs = [(a, b) for a in ids for b in ids if a < b and (series, a, b) not in asked]
        if not pairs:
            return False
        a, b = rng.choice(pairs)
        asked.add((series, a, b))
        self.answer({"type": "same", "series": series, "a": a, "b": b})
        return True


def quality(app: RunningApp, truth: dict[str, str]) -> dict[str, float]:
    """Series B-cubed F1 and AMI of the reviewed identities (one item per character instance)."""
    corpus, items = app.corpus, {}
    for m, member in corpus.members.items():
        label = truth.get(member.face_id) or truth.get(member.body_id)
        key = m.split("@", 1)[0]
        if label is not None and key not in items:
            items[key] = (corpus.state.book[m], label, member.series)
    values = list(items.values())
    scores = clustering_scores([p for p, _, _ in values], [y for _, y, _ in values], [s for _, _, s in values])
    books = {s for s, _ in corpus.state.ids}
    return {"bcubed_f1": scores["bcubed_f1"], "AMI": scores["AMI"], "identities": len(corpus.state.ids) / len(books)}


def simulate(labels: str, crops: str, truth: dict[str, str], policy: str, budgets: list[int], seed: int
             ) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        app = start_in_background(ReviewConfig(labels=labels, crops=crops, port=0, db=f"{tmp}/review.db"))
        try:
            reviewer, rng, asked = Reviewer(app, truth), random.Random(seed), set()
            books = sorted({s for s, _ in app.corpus.state.ids})
            rows, done = [], 0
            for budget in budgets:
                for _ in range(budget - done):
                    for series in books:
                        if policy == "queue":
                            items = reviewer.call(f"/api/queue?limit=1&series={series}")["items"]
                            if items:
                                reviewer.answer(items[0])
                        else:
                            reviewer.random_pair(series, rng, asked)
                done = budget
                rows.append({"policy": policy, "actions_per_book": budget, **quality(app, truth),
                             "actions": app.corpus.state.applied})
            return rows
        finally:
            app.stop()


def relabel(labels: str, crops: str, ground_truth: str, budget: int, truth: dict[str, str], out: str) -> dict:
    """Review with the queue for ``budget`` actions per book, then jobs/label.py --corrections; its scores."""
    Path(out).mkdir(parents=True, exist_ok=True)
    db = f"{out}/review.db"
    app = start_in_background(ReviewConfig(labels=labels, crops=crops, port=0, db=db))
    try:
        reviewer = Reviewer(app, truth)
        for _ in range(budget):
            for series in sorted({s for s, _ in app.corpus.state.ids}):
                items = reviewer.call(f"/api/queue?limit=1&series={series}")["items"]
                if items:
                    reviewer.answer(items[0])
    finally:
        app.stop()
    params = json.loads(Path(labels, "_job.json").read_text())
    metrics = json.loads(Path(labels, "metrics.json").read_text())
    model = subprocess.run([sys.executable, "-c", "import pyarrow.parquet as pq, sys; t = pq.read_table(sys.argv[1], "
                            "columns=['model']); print(t['model'][0])", f"{labels}/data"], capture_output=True,
                           text=True, check=True).stdout.strip()
    command = [sys.executable, str(REPO / "jobs" / "label.py"), "--model", model, "--crops", crops, "--out",
               f"{out}/relabelled", "--ground-truth", ground_truth, "--corrections", db, "--report-windows", "0",
               "--threshold", str(metrics.get("threshold", params["threshold"])),
               "--link-threshold", str(metrics.get("link_threshold", params["link_threshold"])),
               "--name", "review-sim-relabel", "--mlflow-uri", f"sqlite:///{out}/mlflow.db"]
    subprocess.run(command, check=True, cwd=REPO)
    after = json.loads(Path(out, "relabelled", "metrics.json").read_text())
    return {"policy": "queue + relabel", "actions_per_book": budget, "bcubed_f1": after["gt_series_bcubed_f1"],
            "AMI": after["gt_series_AMI"], "identities": after["gt_series_identities"],
            "groups_kept": f"{after.get('corrections_groups_kept')}/{after.get('corrections_groups')}"}


def finetune_round(run: str, db: str, out: str, ground_truth: str) -> dict:
    """The review's second use: its identities as sequences (``jobs/review.py export-sequences``, windows and
    sequences joining two windows of one character), fine-tuning again from the run's SSL model with them added
    (``--extra-sequences``, the demo recipe of ``reid.stages.pipeline``), then labelling with the new model and the same
    corrections. ``run`` is a pipeline output folder (``make demo``'s runs/demo, a quality.py run)."""
    from reid.stages.pipeline import PipelineConfig, paths, stage_commands

    cfg = PipelineConfig(out=run, ray_num_cpus=2, mlflow_uri=f"sqlite:///{out}/mlflow.db")
    commands, p = stage_commands(cfg), paths(cfg)
    sequences = f"{out}/reviewed-sequences"
    subprocess.run([sys.executable, str(REPO / "jobs" / "review.py"), "export-sequences", "--labels", p["labels"],
                    "--db", db, "--out", sequences], check=True, cwd=REPO)
    name = f"{cfg.name_prefix}-finetune-reviewed"
    finetune = [name if a == f"{cfg.name_prefix}-finetune" else a for a in commands["finetune"]]
    finetune += ["--extra-sequences", sequences, "--register-as", ""]
    subprocess.run([sys.executable, *finetune], check=True, cwd=REPO)
    model = f"{p['train']}/{name}/final/model.pt"
    label = [model if a == p["reid_model"] else f"{out}/labels-reviewed-model" if a == p["labels"] else a
             for a in commands["label"]]
    label += ["--corrections", db, "--report-windows", "0", "--name", "review-sim-finetuned"]
    subprocess.run([sys.executable, *label], check=True, cwd=REPO)
    after = json.loads(Path(out, "labels-reviewed-model", "metrics.json").read_text())
    return {"policy": "+ fine-tune", "actions_per_book": 20, "bcubed_f1": after["gt_series_bcubed_f1"],
            "AMI": after["gt_series_AMI"], "identities": after["gt_series_identities"],
            "groups_kept": f"{after.get('corrections_groups_kept')}/{after.get('corrections_groups')}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default=str(REPO / "runs/demo/labels"), help="output of jobs/label.py")
    parser.add_argument("--crops", default=str(REPO / "runs/demo/crops"), help="output of jobs/crop.py")
    parser.add_argument("--ground-truth", default=str(REPO / "runs/demo/corpus/ground_truth.csv"),
                        help="instance_id,identity CSV of the synthetic corpus")
    parser.add_argument("--budgets", default="0,5,10,20,50", help="actions per book at which to score")
    parser.add_argument("--seed", type=int, default=0, help="the random-pairs baseline's seed")
    parser.add_argument("--relabel", action="store_true", help="then re-label with --corrections (20 actions per "
                                                               "book) and score the new labels")
    parser.add_argument("--out", default="", help="where --relabel writes (default: a temporary folder)")
    parser.add_argument("--finetune-round", default="", metavar="RUN",
                        help="with --relabel: then export the review as sequences, fine-tune again with them "
                             "(the pipeline output folder RUN: its SSL model, crops, sequences) and label")
    args = parser.parse_args()
    truth = read_truth(args.ground_truth)
    budgets = sorted({int(b) for b in args.budgets.split(",")})
    start = time.time()
    rows = [r for policy in ("queue", "random") for r in simulate(args.labels, args.crops, truth, policy, budgets,
                                                                 args.seed)]
    if args.relabel:
        out = args.out or tempfile.mkdtemp(prefix="review-sim-")
        rows.append(relabel(args.labels, args.crops, args.ground_truth, 20, truth, out))
        if args.finetune_round:
            rows.append(finetune_round(str(Path(args.finetune_round).resolve()), f"{out}/review.db", out,
                                       args.ground_truth))
    print(f"\nsimulated review of {args.labels} ({time.time() - start:.0f} s)")
    print(f"{'policy':<18}{'actions/book':>13}{'series B3F1':>13}{'series AMI':>12}{'ids/book':>10}")
    for r in rows:
        kept = f"   reviewed identities kept: {r['groups_kept']}" if "groups_kept" in r else ""
        print(f"{r['policy']:<18}{r['actions_per_book']:>13}{r['bcubed_f1']:>13.3f}{r['AMI']:>12.3f}"
              f"{r['identities']:>10.2f}{kept}")


if __name__ == "__main__":
    main()
