"""Crop every face and body box of a COMICS-format corpus on Ray Data.

    python jobs/crop.py --comics-root R --out CROPS
    ray job submit --working-dir . -- python jobs/crop.py --comics-root R --out CROPS
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.core.contracts.manifest import error_rows_line  # noqa: E402
from reid.stages.crop import CropConfig, run_crop  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(CropConfig, argv, description=__doc__)
    totals = run_crop(cfg)
    print(f"crops: {totals['rows']} written, {totals['error_rows']} boxes not cropped, "
          f"{totals['input_error_rows']} bad input rows left out, output in {cfg.out}")
    print(error_rows_line(cfg.out, "boxes not cropped and bad input rows"))


if __name__ == "__main__":
    sys.exit(run_main(main))
