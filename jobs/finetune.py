"""Fine-tune the Re-ID net on labelled sequences on Ray Train; evaluate on test; export the best model.

    python jobs/finetune.py --ssl-checkpoint runs/train/pretrain/final/model.pt --crops CROPS \
        --sequences CORPUS/data/comics_seq
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.train.finetune import FinetuneConfig, run_finetune  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(FinetuneConfig, argv, description=__doc__)
    out = run_finetune(cfg)
    test = {k: round(v, 4) for k, v in out["test"].items()}
    print(f"finetune: test metrics {test}\nbest model: {out['best_model']}\nexported: {out['exported']}\n"
          f"bad sequences left out: {out['bad_sequences']}, each with its reason in {out['bad_sequences_file']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
