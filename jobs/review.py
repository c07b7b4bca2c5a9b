"""Review and correct a labels output in the browser; export what the review decided.

    python jobs/review.py --labels LABELS --crops CROPS [--comics-root COMICS]     # the app (prints its URL)
    python jobs/review.py export --labels LABELS --out FILE                         # FILE.parquet + FILE.csv
    python jobs/review.py export-sequences --labels LABELS --out DIR                # DIR/train_sequences.json

Every action goes to LABELS/review.db (append-only; --db elsewhere); the labels are never rewritten. The next
label run keeps the corrections: python jobs/label.py ... --corrections LABELS/review.db
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo (or its --working-dir copy)

from reid.core.cli import run_main  # noqa: E402
from reid.core.config import parse_config  # noqa: E402
from reid.stages.review import ExportConfig, ExportSequencesConfig, ReviewConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and args[0] in ("export", "export-sequences", "serve") else "serve"
    if command == "export":
        from reid.stages.review import export_labels

        cfg = parse_config(ExportConfig, args, description=__doc__)
        for path in export_labels(cfg.labels, cfg.out, cfg.db):
            print(f"effective labels: {path}")
    elif command == "export-sequences":
        from reid.stages.review import export_sequences

        cfg = parse_config(ExportSequencesConfig, args, description=__doc__)
        out = export_sequences(cfg.labels, cfg.out, cfg.db, cfg.split, cfg.window_size, cfg.min_characters,
                               cfg.across_windows)
        print(f"reviewed sequences: {out['sequences']} ({out['book_sequences']} joining two windows of one "
              f"character), {out['instances']} character instances in {out['path']}")
    else:
        from reid.stages.review.serve import serve

        serve(parse_config(ReviewConfig, args, description=__doc__))


if __name__ == "__main__":
    sys.exit(run_main(main))
