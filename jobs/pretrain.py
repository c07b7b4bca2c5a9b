"""Identity-aware SSL pretraining on Ray Train (DDP; gloo on CPU, NCCL with --gpu).

    python jobs/pretrain.py --crops CROPS --workers 2
    ray job submit --working-dir . -- python jobs/pretrain.py --crops CROPS --workers 4 --gpu
Re-running with the same --name and --storage resumes from the latest checkpoint.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.train.pretrain import PretrainConfig, run_pretrain  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PretrainConfig, argv, description=__doc__)
    result, model_path = run_pretrain(cfg)
    print(f"pretrain: finished epoch {result.metrics.get('epoch')}, loss {result.metrics.get('loss'):.4f}; "
          f"SSL model: {model_path}")


if __name__ == "__main__":
    sys.exit(run_main(main))
