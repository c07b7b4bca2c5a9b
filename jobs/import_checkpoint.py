"""Import one of the paper's published Lightning checkpoints (SSL or Re-ID) as our checkpoint; no code in it runs.

    python jobs/import_checkpoint.py --from PAPER.ckpt --out runs/paper/reid.pt [--kind ssl|reid]
Then: jobs/label.py --model runs/paper/reid.pt ...  or  jobs/finetune.py --ssl-checkpoint runs/paper/ssl.pt ...
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.import_checkpoint import ImportConfig, run_import  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ImportConfig, argv, description=__doc__)
    out = run_import(cfg)
    report = out["report"]
    foreign = ", ".join(report.foreign_globals) or "none"
    print(f"import: {report.module} -> {report.out} ({report.model_config['arch']}, {len(report.mapped)} tensors; "
          f"sha256 {report.out_sha256[:12]})\nforeign objects left inert: {foreign}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"report: {out['report_path']}\nMLflow run {out['run_id']}: mlflow ui --backend-store-uri "
          f"{out['tracking_uri']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
