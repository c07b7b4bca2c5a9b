"""Ray Tune sweep of identity-aware SSL pretraining: temperature (log-uniform), ASHA on val face→body P@1.

    python tune/sweep_pretrain.py --crops CROPS --samples 16 --workers 2
    ray job submit --working-dir . -- python tune/sweep_pretrain.py --crops CROPS --samples 16 --gpu
Every pretrain flag sets the trials' base config; --workers is per trial. Re-running the same command (same
--name and --storage) resumes an interrupted sweep. Then: python jobs/pretrain.py --config <best.yaml>
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.sweeps.pretrain import PretrainSweepConfig, run_pretrain_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PretrainSweepConfig, argv, description=__doc__)
    out = run_pretrain_sweep(cfg)
    print(f"{out.summary['table']}\nbest trial {out.best['trial']}: score {out.best['score']:.4f}, model "
          f"{out.best['model']}\nbest config: {out.best_config}\nsummary: {out.summary['md']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
