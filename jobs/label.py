"""Label every character instance of a cropped corpus with window and series identities, on Ray Data.

    python jobs/label.py --model CKPT --crops CROPS --out LABELS [--sequences test_sequences.json]
    ray job submit --working-dir . -- python jobs/label.py --model CKPT --crops CROPS --out LABELS
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.core.contracts.manifest import error_rows_line  # noqa: E402
from reid.stages.label import LabelConfig, run_label  # noqa: E402
from reid.stages.report import write_report  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(LabelConfig, argv, description=__doc__)
    out = run_label(cfg, report_writer=write_report)
    totals = out["totals"]
    print(f"labels: {totals['rows']} labelled, {totals['error_rows']} unassigned, {totals['input_error_rows']} "
          f"bad sequences left out, output in {cfg.out}")
    print(error_rows_line(cfg.out, "unassigned boxes and bad sequences"))
    if out["report"]:
        print(f"report: {out['report']}")
    print(f"MLflow run {out['run_id']}: {out['mlflow_ui']}")


if __name__ == "__main__":
    sys.exit(run_main(main))
