"""Run every benchmark in tests/bench (make bench). Each prints its own ratios against a same-run baseline, or
mean ± sd over seeds (quality.py, results_table.py)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = []
    # speed benchmarks first (minutes each), then the quality benchmark (about an hour on 2 cores) and the
    # ablation table (about half an hour)
    for script in [*sorted(HERE.glob("bench_*.py")), HERE / "quality.py", HERE / "results_table.py"]:
        print(f"\n===== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parents[1]).returncode != 0:
            failed.append(script.name)
    if failed:
        sys.exit(f"failed: {failed}")
