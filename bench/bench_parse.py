"""DAG-parse cost of the provider: import overhead and DAG-file parse time for a large plan.

Measures, each in fresh subprocesses (medians of ``--runs``):

1. the baseline: ``import airflow.sdk`` alone (what every DAG file pays);
2. the provider's import overhead: ``import airflow.sdk`` plus the modules the DAG file loads
   (factory, operators, sensors, links, plan model) minus the baseline (goal: <= 50 ms);
3. the DAG file (``dags/fsmigration_dags.py``) executed after ``import airflow.sdk``, for the
   demo plan and a generated plan of ``--groups`` groups (goal: < 1 s for 200 groups), with a
   warm plan cache (the steady state of a DAG processor) and with a cold one (first parse after
   an edit: the plan is validated in a child process);
4. building a single DAG with ``get_parsing_context().dag_id`` set (what a task's worker parses).

Wall time is reported next to process CPU time: on a shared 2-core VM the wall time includes
waiting for a core, and CPU time is what the parse itself costs.

Run: ``python -m bench.bench_parse [--groups 200] [--runs 7]``. Writes ``bench/results/bench_parse.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEMO = REPO / "include" / "demo_plan"
DAG_FILE = REPO / "dags" / "fsmigration_dags.py"
HEAVY = ("pandas", "great_expectations", "polars", "matplotlib", "sqlglot", "pyarrow")

SDK_CLASSES = "from airflow.sdk import DAG, BaseOperator, BaseSensorOperator, Param, Asset"
PROVIDER_IMPORTS = (
    "import airflow_fsmigration.dag_factory, airflow_fsmigration.operators.routing, "
    "airflow_fsmigration.operators.shadow, airflow_fsmigration.operators.store, "
    "airflow_fsmigration.operators.backfill, airflow_fsmigration.sensors.gates, "
    "airflow_fsmigration.plan.cache, airflow_fsmigration.plan.model, airflow_fsmigration.plan.graph"
)


def generate_plan(n_groups: int, dest: Path) -> Path:
    """A valid plan of ``n_groups`` groups: the demo's 8 groups cloned in blocks, deps kept inside a block.

    Uses the demo plan's header (connections, defaults, models) and SQL files, so it passes
    the same validation as the real plan.
    """
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(DEMO / "sql", dest / "sql", dirs_exist_ok=True)
    groups: dict = {}
    for f in sorted(DEMO.glob("*.yaml")):
        doc = yaml.load(f.read_text()) or {}
        groups.update(doc.pop("groups", {}) or {})
        if doc:
            (dest / f.name).write_text(_dump(doc))
    names = list(groups)
    out: dict = {}
    for i in range(n_groups):
        block, base = divmod(i, len(names))
        spec = json.loads(json.dumps(groups[names[base]], default=str))
        name = f"{names[base]}_{block:03d}"
        spec["depends_on"] = [f"{d}_{block:03d}" for d in spec.get("depends_on", [])]
        spec["legacy_online"]["key_template"] = spec["legacy_online"]["key_template"].replace(
            names[base], name
        )
        out[name] = spec
    # every clone's upstreams must exist: drop a trailing partial block's dangling references
    for spec in out.values():
        spec["depends_on"] = [d for d in spec["depends_on"] if d in out]
    (dest / "groups_generated.yaml").write_text(_dump({"groups": out}))
    return dest


def _dump(data: dict) -> str:
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


_PARSE_SNIPPET = r"""
import json, os, sys, time, resource
import airflow.sdk  # the baseline every DAG file pays; not timed
w0, c0 = time.perf_counter(), time.process_time()
ns = {"__file__": %(file)r, "__name__": "fsmig_bench_dagfile"}
exec(compile(open(%(file)r).read(), %(file)r, "exec"), ns)
w1, c1 = time.perf_counter(), time.process_time()
from airflow.sdk import DAG
dags = [v for v in ns.values() if isinstance(v, DAG)]
print(json.dumps({"wall": w1 - w0, "cpu": c1 - c0, "dags": len(dags),
                  "tasks": sum(len(d.tasks) for d in dags),
                  "heavy": [m for m in %(heavy)r if m in sys.modules]}))
"""


def _env(plan: Path, cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FSMIG_PLAN": str(plan), "FSMIG_CACHE_DIR": str(cache), **extra})
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    return env


def time_imports(codes: list[str], runs: int, env: dict[str, str]) -> list[tuple[float, float, float]]:
    """(median wall, median CPU, min CPU) seconds of ``python -c code`` per code, runs interleaved.

    Interleaving (A, B, A, B, ...) exposes every variant to the same background load, which on
    this shared VM moves more than the difference being measured.
    """
    snippet = (
        "import time, resource; w=time.perf_counter()\n"
        "{code}\n"
        "r=resource.getrusage(resource.RUSAGE_SELF); import json\n"
        "print(json.dumps({{'wall': time.perf_counter()-w, 'cpu': r.ru_utime + r.ru_stime}}))"
    )
    samples: list[list[dict]] = [[] for _ in codes]
    for _ in range(runs):
        for i, code in enumerate(codes):
            out = subprocess.run(
                [sys.executable, "-c", snippet.format(code=code)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            samples[i].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return [
        (
            statistics.median(x["wall"] for x in rows),
            statistics.median(x["cpu"] for x in rows),
            min(x["cpu"] for x in rows),
        )
        for rows in samples
    ]


def time_parse(plan: Path, runs: int, cache: Path, *, cold: bool = False, dag_id: str | None = None) -> dict:
    extra = {}
    if dag_id:
        extra = {"_AIRFLOW_PARSING_CONTEXT_DAG_ID": dag_id, "_AIRFLOW_PARSING_CONTEXT_TASK_ID": "deploy"}
    env = _env(plan, cache, **extra)
    code = _PARSE_SNIPPET % {"file": str(DAG_FILE), "heavy": HEAVY}
    results = []
    for _ in range(runs):
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if out.returncode:
            raise RuntimeError(f"parsing {DAG_FILE} with plan {plan} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "wall": statistics.median(r["wall"] for r in results),
        "cpu": statistics.median(r["cpu"] for r in results),
        "cpu_min": min(r["cpu"] for r in results),
        "dags": results[0]["dags"],
        "tasks": results[0]["tasks"],
        "heavy": sorted({m for r in results for m in r["heavy"]}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=200, help="groups in the generated plan")
    parser.add_argument("--runs", type=int, default=7, help="subprocess runs per measurement (median)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_parse.md")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fsmig_bench_parse_"))
    try:
        big = generate_plan(args.groups, work / "plan")
        cache = work / "cache"
        env = _env(DEMO, cache)
        bare, sdk_classes, provider = time_imports(
            [
                "import airflow.sdk",
                f"import airflow.sdk\n{SDK_CLASSES}",
                f"import airflow.sdk\n{PROVIDER_IMPORTS}",
            ],
            args.runs,
            env,
        )
        demo_warm = time_parse(DEMO, 1, cache)  # fills the cache
        demo_warm = time_parse(DEMO, args.runs, cache)
        big_cold = time_parse(big, max(3, args.runs // 2), work / "cache_big", cold=True)
        big_warm = time_parse(big, args.runs, work / "cache_big")
        one = time_parse(big, args.runs, work / "cache_big", dag_id="fsmig__user_risk_profile_000__migrate")
        rows = [
            ("`import airflow.sdk` (baseline)", bare),
            (
                "+ SDK classes every DAG file with a sensor loads (DAG, BaseOperator, BaseSensorOperator, ...)",
                sdk_classes,
            ),
            ("+ provider modules (factory, operators, sensors, links, plan model and cache)", provider),
        ]
        overhead_wall = (provider[0] - bare[0]) * 1000
        overhead_cpu = (provider[1] - bare[1]) * 1000
        parse_rows = [
            ("demo plan (8 groups), warm cache", demo_warm),
            (f"{args.groups}-group plan, warm cache", big_warm),
            (f"{args.groups}-group plan, cold cache (plan validated in a child process)", big_cold),
            (f"{args.groups}-group plan, one DAG (`get_parsing_context().dag_id`)", one),
        ]
        now = datetime.now(UTC)
        lines = [
            "## bench_parse: DAG parse time and provider import overhead",
            "",
            f"Machine: {platform.node() or 'vm'}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}. "
            f"Date: {now:%Y-%m-%d %H:%M} UTC.",
            f"Command: `python -m bench.bench_parse --groups {args.groups} --runs {args.runs}`. "
            f"Medians (and minima) of {args.runs} fresh subprocesses each, the three import variants interleaved "
            f"(cold cache: {max(3, args.runs // 2)} runs; its CPU column excludes the validating child process). "
            "Shared 2-core VM with other work running: wall times include waiting for a core; "
            "CPU time is the parse's own cost.",
            "",
            "| import | wall (median) | CPU (median) | CPU (min) | ratio to baseline (CPU median) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label, (w, c, cmin) in rows:
            lines.append(
                f"| {label} | {w * 1000:.0f} ms | {c * 1000:.0f} ms | {cmin * 1000:.0f} ms | {c / bare[1]:.3f} |"
            )
        overhead_min = (provider[2] - bare[2]) * 1000
        own_cpu = (provider[1] - sdk_classes[1]) * 1000
        lines += [
            f"| **provider overhead** | **{overhead_wall:+.0f} ms** | **{overhead_cpu:+.0f} ms** "
            f"| **{overhead_min:+.0f} ms** | goal <= +50 ms |",
            f"| of which the provider's own modules (over the SDK classes) | | **{own_cpu:+.0f} ms** | | |",
            "",
            "| DAG file parse (after `import airflow.sdk`) | DAGs | tasks | wall (median) | CPU (median) "
            "| CPU (min) | heavy modules imported | goal |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, r in parse_rows:
            goal = "< 1 s" if "warm" in label and str(args.groups) in label else ""
            lines.append(
                f"| {label} | {r['dags']} | {r['tasks']} | {r['wall'] * 1000:.0f} ms | {r['cpu'] * 1000:.0f} ms "
                f"| {r['cpu_min'] * 1000:.0f} ms | {', '.join(r['heavy']) or 'none'} | {goal} |"
            )
        lines.append("")
        text = "\n".join(lines)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
