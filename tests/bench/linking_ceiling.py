"""Where book-level identity is lost: window clustering or series linking (needs ground truth and embeddings).

    python tests/bench/linking_ceiling.py --labels RUN/labels --ground-truth RUN/corpus/ground_truth.csv

The labels output must hold its embeddings (``jobs/label.py --save-embeddings``; ``quality.py --relabel`` keeps
them). Per labels output, series AMI and B-cubed F1 (means over series, named characters only) of:

- ``product``: the series identities as labelled;
- ``oracle linking``: the product's window identities, each linked to the true character most of its crops show.
  The best series identity any linking of these window identities can reach: what window clustering loses;
- ``oracle windows``: true window identities (each window's crops grouped by character), linked by the product's
  linker at its link threshold and options on their centres. What linking loses when windows are perfect;
- ``oracle windows, best threshold``: the same at the best of a grid of link thresholds (the linker's ceiling
  whatever the calibration);
- ``product windows, best threshold``: the product's own window identities relinked at the best threshold of the
  grid: how much a better link threshold alone could give.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def load(labels: str, ground_truth: str) -> dict:
    import pandas as pd

    from reid.core.contracts.labels import iter_labels, read_embeddings

    truth = pd.read_csv(ground_truth, keep_default_na=False)
    identity = dict(zip(truth["instance_id"], truth["identity"], strict=True))
    items: dict[tuple[str, str], dict] = {}
    for shard, rows in iter_labels(labels, ["instance_id", "window_id", "char_key", "series_id", "panel_id",
                                            "identity", "series_identity"], include_unassigned=False):
        embeddings = read_embeddings(labels, shard)
        for r in rows.to_pylist():
            true = identity.get(r["instance_id"], "")
            if not true:
                continue  # an unnamed extra
            items.setdefault((r["window_id"], r["char_key"]), {**r, "true": true,
                                                                "embedding": embeddings[r["char_key"]]})
    return {"items": list(items.values()), "metrics": json.loads(Path(labels, "metrics.json").read_text())}


def series_scores(items: list[dict], predicted: list) -> dict[str, float]:
    from reid.core.eval.metrics import clustering_scores

    scores = clustering_scores(predicted, [i["true"] for i in items], [i["series_id"] for i in items])
    per_series = defaultdict(set)
    for item, p in zip(items, predicted, strict=True):
        per_series[item["series_id"]].add(p)
    return {"series_AMI": scores["AMI"], "series_bcubed_f1": scores["bcubed_f1"],
            "ids_per_series": float(np.mean([len(v) for v in per_series.values()]))}


def oracle_linking(items: list[dict]) -> list:
    votes: dict[tuple, Counter] = defaultdict(Counter)
    for i in items:
        votes[(i["window_id"], i["identity"])][i["true"]] += 1
    return [f'{i["series_id"]}|{votes[(i["window_id"], i["identity"])].most_common(1)[0][0]}' for i in items]


def relink(items: list[dict], threshold: float, distance: str, constraint: str, oracle: bool = True) -> list:
    """Series identities from linking window identities at ``threshold``: the true ones (``oracle``) or the
    product's."""
    from reid.core.assign import link_windows

    truth_codes = {t: k for k, t in enumerate(sorted({i["true"] for i in items}))}
    points = np.stack([i["embedding"] for i in items])
    window_labels = [truth_codes[i["true"]] for i in items] if oracle else [i["identity"] for i in items]
    linked = link_windows(points, np.asarray(window_labels),
                          np.asarray([i["window_id"] for i in items], object),
                          np.asarray([i["series_id"] for i in items]), threshold,
                          members=[{i["panel_id"]: i["char_key"]} for i in items], distance=distance,
                          constraint=constraint)
    return list(linked)


def ceiling(labels: str, ground_truth: str) -> dict[str, dict[str, float]]:
    data = load(labels, ground_truth)
    items, metrics = data["items"], data["metrics"]
    distance, constraint = metrics.get("link_distance", "centroid"), metrics.get("link_constraint", "hard")
    out = {"product": series_scores(items, [i["series_identity"] for i in items]),
           "oracle linking": series_scores(items, oracle_linking(items)),
           "oracle windows": series_scores(items, relink(items, metrics["link_threshold"], distance, constraint))}
    grid = [round(0.5 + 0.1 * k, 2) for k in range(15)]
    for name, oracle in (("product windows", False), ("oracle windows", True)):
        sweep = [(t, series_scores(items, relink(items, t, distance, constraint, oracle))) for t in grid]
        best = max(sweep, key=lambda ts: ts[1]["series_AMI"])
        out[f"{name}, best threshold"] = {**best[1], "threshold": best[0]}
        out[f"{name}, sweep"] = {f"AMI@{t}": round(s["series_AMI"], 3) for t, s in sweep}
    out["product"]["threshold"] = out["oracle windows"]["threshold"] = metrics["link_threshold"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", nargs="+", required=True, help="labels outputs (with their embeddings)")
    parser.add_argument("--ground-truth", nargs="+", required=True, help="ground_truth.csv of each, in order")
    args = parser.parse_args()
    if len(args.labels) != len(args.ground_truth):
        parser.error("give one --ground-truth per --labels")
    rows = defaultdict(list)
    for labels, truth in zip(args.labels, args.ground_truth, strict=True):
        for name, scores in ceiling(labels, truth).items():
            rows[name].append(scores)
            print(json.dumps({"labels": labels, "row": name, **scores}), flush=True)
    print("\n| row | series AMI | series B³F1 | ids/series | link threshold |\n| --- | --- | --- | --- | --- |")
    for name, runs in rows.items():
        if name.endswith("sweep"):
            print(f"| {name} | " + ", ".join(f"{k} {v}" for k, v in runs[0].items()) + " | | | |")
            continue
        cells = []
        for key in ("series_AMI", "series_bcubed_f1", "ids_per_series", "threshold"):
            values = np.array([r[key] for r in runs if key in r], float)
            cells.append("–" if not len(values) else f"{values.mean():.3g}" if len(values) == 1
                         else f"{values.mean():.3g} ± {values.std(ddof=1):.2g}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
