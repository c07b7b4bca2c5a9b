"""Calibrate the assigner: window threshold × linkage maximising validation AMI (or ARI, B-cubed F1) of window
clustering with cannot-link by panel, and the series-linking threshold: fine-tuning's own calibration, per linkage.

    python tune/sweep_threshold.py --model runs/train/finetune/final/model.pt --crops CROPS \
        --sequences CORPUS/data/comics_seq
Embeddings are computed once; the grid is cheap. Writes best.yaml (then: python jobs/label.py --config
best.yaml ..., which records the sweep as its thresholds' source), the summary and distances.png
(positive/negative pair distance histograms with the chosen threshold).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.sweeps.threshold import ThresholdSweepConfig, run_threshold_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ThresholdSweepConfig, argv, description=__doc__)
    out = run_threshold_sweep(cfg)
    best = out["best"]
    print(f"best per linkage (window {cfg.objective}):\n{out['best_per_linkage']}\nchosen: {best['linkage']} "
          f"linkage, threshold {best['threshold']:.4g} (window {cfg.objective} {best[f'window_{cfg.objective}']:.4f}),"
          f" link threshold {best['link_threshold']:.4g} ({best['link_rule']})\n"
          f"best config: {out['best_config']}\nhistogram: {out['histogram']}\nsummary: {out['summary']['md']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
