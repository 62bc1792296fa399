"""Run every benchmark in ``bench/`` one after another and collect their result fragments.

Each benchmark writes ``bench/results/<name>.md`` (machine, date, medians, ratios); this
runner concatenates them into ``bench/results/ALL.md`` for copying into BENCHMARKS.md.
Pass benchmark names to run a subset, e.g. ``python -m bench bench_readers bench_parse``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("bench_*.py"))
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent)
        print(f"== {name}: exit {proc.returncode} in {time.monotonic() - started:.0f} s", flush=True)
        if proc.returncode:
            failed.append(name)
    results = sorted((HERE / "results").glob("bench_*.md"))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ALL.md").write_text("\n\n".join(p.read_text() for p in results))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
