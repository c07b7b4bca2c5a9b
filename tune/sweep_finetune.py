"""Ray Tune sweep of fine-tuning: contrastive pos/neg margins and learning rate, maximising val MAP@R.

    python tune/sweep_finetune.py --ssl-checkpoint runs/train/pretrain/final/model.pt --crops CROPS \
        --sequences CORPUS/data/comics_seq --samples 16 --workers 2
Every finetune flag sets the trials' base config; --workers is per trial. Re-running the same command (same
--name and --storage) resumes an interrupted sweep. Then: python jobs/finetune.py --config <best.yaml>
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.sweeps.finetune import FinetuneSweepConfig, run_finetune_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(FinetuneSweepConfig, argv, description=__doc__)
    out = run_finetune_sweep(cfg)
    print(f"{out.summary['table']}\nbest trial {out.best['trial']}: score {out.best['score']:.4f}, model "
          f"{out.best['model']}\nbest config: {out.best_config}\nsummary: {out.summary['md']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
