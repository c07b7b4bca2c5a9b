"""Calibrate the assigner: distance threshold × linkage maximising validation AMI (or ARI) of window clustering.

    python tune/sweep_threshold.py --model runs/train/finetune/final/model.pt --crops CROPS \
        --sequences CORPUS/data/comics_seq
Embeddings are computed once; the grid is cheap. Writes best.yaml (for jobs/label.py --config), the summary
and distances.png (positive/negative pair distance histograms with the chosen threshold).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.cli import run_main  # noqa: E402
from reid.config import parse_config  # noqa: E402
from reid.sweeps.threshold import ThresholdSweepConfig, run_threshold_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ThresholdSweepConfig, argv, description=__doc__)
    out = run_threshold_sweep(cfg)
    best = out["best"]
    print(f"best per linkage ({cfg.objective}):\n{out['best_per_linkage']}\nchosen: {best['linkage']} linkage, "
          f"threshold {best['threshold']:.4g} ({cfg.objective} {best[cfg.objective]:.4f})\n"
          f"best config: {out['best_config']}\nhistogram: {out['histogram']}\nsummary: {out['summary']['md']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
