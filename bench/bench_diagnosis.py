"""What the root-cause diagnosis costs on a large group, against the comparison it explains.

One command: ``python -m bench.bench_diagnosis`` (default 100,000 users; ``--entities``,
``--scenario``, ``--repeat``). It builds the diagnosis corpus's event log (bench.diagnosis_corpus:
about 2.1M purchases for 100k users), deploys a defective definition, runs the shadow comparison
once without diagnosis (the baseline, measured in the same run), then times ``diagnose()``:

- **staged**: the product's path, the sample's raw events copied once into temporary tables and
  every rewrite replayed on them;
- **unstaged**: the same diagnosis replaying every rewrite on the full raw tables (the entity
  filter pushed into the definition), the path taken when staging is not possible.

Both must name the same causes with the same counts (checked, printed). Reported: medians of
``--repeat`` runs, CPU-seconds of this process, replay queries, and the ratios. The re-read delay
is set to 0 here (it is a configurable sleep, 1 s by default).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class _Store:
    """The new store as the diagnosis sees it, counting replays; ``staging=False`` hides ``stage``."""

    def __init__(self, store: Any, *, staging: bool) -> None:
        self._store, self._staging, self.replays = store, staging, 0

    def replay(self, *args: Any, **kwargs: Any) -> Any:
        self.replays += 1
        return self._store.replay(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "stage" and not self._staging:
            raise AttributeError(name)
        return getattr(self._store, name)


def _timed(fn: Any) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _signature(causes: list[Any]) -> list[tuple[str, tuple[tuple[str, int], ...]]]:
    return [(c.kind, tuple(sorted(c.features.items()))) for c in causes]


def run(args: argparse.Namespace) -> str:
    from airflow_fsmigration.compare.diagnose import diagnose
    from airflow_fsmigration.compare.shadow import run_shadow
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import NewStore
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource
    from bench.diagnosis_corpus import report, runner
    from bench.diagnosis_corpus.scenarios import BY_NAME, GROUP, write_plan
    from fsmig_dev.devservices import start_postgres, start_redis

    workdir = Path(tempfile.mkdtemp(prefix="fsmig_bench_diag_"))
    pg = start_postgres(workdir / "pg")
    rd = start_redis()
    lines: list[str] = []
    try:
        pg_url = pg.create_database("fsmig_bench_diagnosis", drop=True)
        corpus = runner.prepare(pg_url, rd.url, entities=args.entities, seed=7, workdir=workdir / "plans")
        print(f"corpus: {corpus.event_log.summary()} ({corpus.seconds:.0f} s to build)", flush=True)
        lines += [
            f"## bench_diagnosis: root-cause diagnosis of a {args.entities:,}-user group",
            "",
            f"Date: {report.now()}. Machine: {report.machine()}. Product: {report.product_version()}.",
            f"Command: `python -m bench.bench_diagnosis --entities {args.entities} --repeat {args.repeat}`. "
            f"Event log: {corpus.event_log.summary()}. Medians of {args.repeat} runs; CPU is this process's.",
            "",
            "| scenario | comparison, no diagnosis (s) | diagnosis staged (s) | CPU (s) | queries | "
            "diagnosis unstaged (s) | staged / unstaged | staged / comparison | same causes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in args.scenario:
            scenario = BY_NAME[name]
            plan = load_plan(write_plan(workdir / "plans" / name, scenario, f"bench_{name}"))
            new = NewStore(pg_url, plan, "diag_new")
            old = RedisOnlineSource(rd.url, plan, "diag_redis")
            try:
                new.deploy_all()
                cmp_s, _, result = _timed(
                    partial(run_shadow, plan, GROUP, old, new, sample_size=0, diagnose=False)
                )
                g = plan.groups[GROUP]
                staged, unstaged = [], []
                sig_staged = sig_unstaged = None
                queries = 0
                for _ in range(args.repeat):
                    with_stage = _Store(new, staging=True)
                    wall, cpu, causes = _timed(partial(diagnose, plan, g, result, old, with_stage))
                    staged.append((wall, cpu))
                    sig_staged, queries = _signature(causes), with_stage.replays
                    wall, cpu, causes = _timed(
                        partial(diagnose, plan, g, result, old, _Store(new, staging=False))
                    )
                    unstaged.append((wall, cpu))
                    sig_unstaged = _signature(causes)
                s_wall = statistics.median(w for w, _ in staged)
                s_cpu = statistics.median(c for _, c in staged)
                u_wall = statistics.median(w for w, _ in unstaged)
                top = ", ".join(f"{k} ({sum(dict(f).values())} values)" for k, f in (sig_staged or []))
                lines.append(
                    f"| {name} | {cmp_s:.2f} | {s_wall:.2f} | {s_cpu:.2f} | {queries or '-'} | {u_wall:.2f} | "
                    f"{s_wall / u_wall:.2f}x | {s_wall / cmp_s:.2f}x | {'yes' if sig_staged == sig_unstaged else 'NO'} |"
                )
                lines.append(f"|  | causes: {top} | | | | | | | |")
                print(lines[-2], flush=True)
            finally:
                new.close()
                old.close()
    finally:
        rd.stop()
        pg.stop()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_diagnosis", description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument(
        "--scenario", action="append", default=None, help="a diagnosis_corpus scenario (repeatable)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_diagnosis.md"))
    args = ap.parse_args(argv)
    args.scenario = args.scenario or ["window_bound", "tz_new_york", "mix_tz_cents"]
    logging.basicConfig(level=logging.WARNING)
    text = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
