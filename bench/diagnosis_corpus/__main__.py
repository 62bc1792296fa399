"""``python -m bench.diagnosis_corpus``: build the corpus on embedded servers, run and score every scenario.

Options: ``--scenario NAME`` (repeatable; default all), ``--entities N`` (default 2,000),
``--seed``, ``--json OUT``, ``--markdown OUT``, ``--pg-url`` / ``--redis-url`` to use running
servers instead of embedded ones (the database is recreated; Redis keys ``diag:user_txn:*`` are
replaced). Exit 0 when it ran (the scores are the output, not a pass/fail), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from bench.diagnosis_corpus import report, runner
from bench.diagnosis_corpus.scenarios import BY_NAME, SCENARIOS
from bench.diagnosis_corpus.score import score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.diagnosis_corpus", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", action="append", default=[], metavar="NAME",
                    help=f"one of: {', '.join(BY_NAME)} (repeatable; default all)")  # fmt: skip
    ap.add_argument("--entities", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--markdown", metavar="OUT")
    ap.add_argument("--pg-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--quiet", action="store_true", help="no per-feature table on the terminal")
    args = ap.parse_args(argv)
    unknown = [n for n in args.scenario if n not in BY_NAME]
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    if args.entities < 10:
        print("--entities must be at least 10", file=sys.stderr)
        return 2
    chosen = [BY_NAME[n] for n in args.scenario] if args.scenario else list(SCENARIOS)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from fsmig_dev.devservices import Postgres, start_postgres, start_redis

    workdir = Path(tempfile.mkdtemp(prefix="fsmig_diag_"))
    pg = Postgres(url=args.pg_url) if args.pg_url else start_postgres(workdir / "pg")
    rd = None if args.redis_url else start_redis()
    redis_url = args.redis_url or (rd.url if rd else "")
    try:
        pg_url = pg.create_database("fsmig_diagnosis_corpus", drop=True)
        corpus = runner.prepare(
            pg_url,
            redis_url,
            entities=args.entities,
            seed=args.seed,
            workdir=workdir / "plans",
        )
        print(f"corpus: {corpus.event_log.summary()}; {len(corpus.correct):,} entities in the legacy store "
              f"({corpus.seconds:.1f} s)", flush=True)  # fmt: skip
        scores, truths = [], {}
        for scenario in chosen:
            run = runner.run_scenario(corpus, scenario)
            s = score(scenario, run.truth, run.result, run.seconds_product)
            scores.append(s)
            truths[scenario.name] = run.truth.to_dict()
            m = s.summary()
            print(f"{scenario.name}: verdict {m['verdict']}, counts exact {m['counts_exact']}, "
                  f"main cause right {m['main_right']}/{m['affected_features']} "
                  f"({run.seconds_product:.2f} s)", flush=True)  # fmt: skip
        names = " ".join(f"--scenario {s.name}" for s in chosen) if args.scenario else ""
        meta = {
            "date": report.now(),
            "machine": report.machine(),
            "product": report.product_version(),
            "command": " ".join(
                p for p in ("python -m bench.diagnosis_corpus", f"--entities {args.entities}", names) if p
            ),
            "entities": args.entities,
            "seed": args.seed,
            "event_log": corpus.event_log.summary(),
        }
        print()
        print(report.terminal(scores))
        if not args.quiet:
            print("\n".join(report.feature_rows(scores)))
        if args.markdown:
            Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(args.markdown).write_text(report.markdown(scores, meta))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(
                json.dumps(report.as_json(scores, meta, truths), indent=2, default=str)
            )
    finally:
        if rd is not None:
            rd.stop()
        if not args.pg_url:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
