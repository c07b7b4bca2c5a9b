"""Run the whole pipeline (synthetic corpus → crop → pretrain → finetune → label + report).

    python jobs/pipeline.py                      # embedded local Ray, outputs in runs/demo (what `make demo` runs)
    python jobs/pipeline.py --submit             # each stage via `ray job submit` to $RAY_ADDRESS
Re-running resumes: finished crop/label shards and training checkpoints are kept.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.pipeline import PipelineConfig, run_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PipelineConfig, argv, description=__doc__)
    p = run_pipeline(cfg)
    print("\npipeline finished.")
    print(f"  labels:  {p['labels']}  (Parquet, one row per instance and window)")
    print(f"  report:  {p['labels']}/report/index.html  (open it in a browser; works offline)")
    print(f"  model:   {p['reid_model']}")
    if not cfg.submit:
        print(f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{p['mlflow_db']} --host 127.0.0.1, then "
              "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the model-training view)")


if __name__ == "__main__":
    sys.exit(run_main(main))
