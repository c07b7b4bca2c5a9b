"""The command line: ``python -m reid.core.data.synthetic --out DIR [--preset ...] [flags]``."""

from __future__ import annotations

import dataclasses
from typing import Any

from reid.core.config import build_parser, from_dict, load_yaml
from reid.core.data.synthetic.config import PRESETS, SyntheticConfig
from reid.core.data.synthetic.corpus import CorpusSummary, generate_corpus


def parse_args(argv: list[str] | None = None) -> tuple[str, SyntheticConfig, int]:
    """CLI → (out_dir, config, workers). Precedence: defaults < --preset < --config YAML < flags."""
    parser = build_parser(SyntheticConfig, "Write a synthetic corpus in the COMICS / seed data formats.")
    parser.prog = "python -m reid.core.data.synthetic"
    parser.add_argument("--out", required=True, help="output folder (local path or URI)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="tiny (test fixture) | demo | bench (~100k instances); flags override it")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing series in parallel")
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    if args.config:
        values.update(load_yaml(args.config))
    for f in dataclasses.fields(SyntheticConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    return args.out, from_dict(SyntheticConfig, values, source=args.config or "command line"), args.workers


def main(argv: list[str] | None = None) -> CorpusSummary:
    """CLI entry point: generate the corpus and print its counts and rate (instances/s)."""
    out_dir, cfg, workers = parse_args(argv)
    summary = generate_corpus(out_dir, cfg, workers=workers)
    faults = {k: len(v) for k, v in summary.faults.items() if v}
    print(f"wrote {summary.instances} instances ({summary.faces} faces, {summary.bodies} bodies) in "
          f"{summary.panels} panels of {len(summary.series_ids)} series to {out_dir} "
          f"in {summary.seconds:.1f} s "
          f"({summary.instances_per_second:.0f} instances/s); sequences {summary.sequences} "
          f"(split by {summary.split_by}){'; faults ' + str(faults) if faults else ''}")
    return summary
