"""The scores as text tables (terminal and markdown) and as JSON."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any

from bench.diagnosis_corpus.score import ScenarioScore


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}" if x in (0.0, 1.0) else f"{x:.1%}"


def _yes(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "NO")


def machine() -> str:
    return (
        f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


SUMMARY_HEAD = (
    "| scenario | injected | verdict truth/product | counts exact | main cause right | right share (mean / min) "
    "| worst false extra | kinds named (on their features) | rewrite right | clean: pass, no cause |"
)


def summary_rows(scores: list[ScenarioScore]) -> list[str]:
    rows = [SUMMARY_HEAD, "|" + "---|" * 10]
    for s in scores:
        m = s.summary()
        rows.append(
            f"| {m['scenario']} | {', '.join(m['injected']) or '-'} | {m['verdict']}"
            f"{'' if m['verdict_ok'] else ' (WRONG)'} | {_yes(m['counts_exact'])} "
            f"| {m['main_right']}/{m['affected_features']} "
            f"| {_pct(m['right_share_mean'])} / {_pct(m['right_share_min'])} | {_pct(m['worst_extra_share'])} "
            f"| {', '.join(m['kinds_named']) or '-'} ({m['kinds_on_features']}) | {m['rewrite_right']}/{m['rewrite_expected']} "
            f"| {_yes(m['clean_ok'])} |"
        )
    return rows


def totals(scores: list[ScenarioScore]) -> dict[str, Any]:
    aff = [f for s in scores for f in s.affected]
    single = [s for s in scores if len(s.defects) == 1]
    single_aff = [f for s in single for f in s.affected]
    return {
        "scenarios": len(scores),
        "verdicts_exact": sum(s.verdict_ok for s in scores),
        "counts_exact": sum(s.counts_exact for s in scores),
        "affected_features": len(aff),
        "main_right": sum(1 for f in aff if f.main_right),
        "single_defect_main_right": f"{sum(1 for f in single_aff if f.main_right)}/{len(single_aff)}",
        "single_defect_share_ge_95": f"{sum(1 for f in single_aff if (f.right_share or 0) >= 0.95)}/{len(single_aff)}",
        "single_defect_extra_le_1": (
            f"{sum(1 for f in single_aff if (f.worst_extra_share or 0) <= 0.01)}/{len(single_aff)}"
        ),
        "rewrite_right": sum(1 for f in aff if f.rewrite_right),
        "rewrite_expected": sum(1 for f in aff if f.rewrite_expected),
        "clean_ok": f"{sum(1 for s in scores if s.clean_ok)}/{sum(1 for s in scores if s.clean_ok is not None)}",
        "source": sorted({s.source for s in scores}),
    }


def feature_rows(scores: list[ScenarioScore]) -> list[str]:
    rows = [
        "| scenario | feature | truth (differ/miss new/miss old) | product (differ/lagging/miss new/miss old) "
        "| exact | expected | main cause | right share | false extra (worst) | rewrite |",
        "|" + "---|" * 10,
    ]
    for s in scores:
        for f in s.affected or []:
            t, p = f.truth, f.product
            worst = (
                f"{_pct(f.extra_share)} ({f.worst_extra} {_pct(f.worst_extra_share)})"
                if f.worst_extra
                else "0%"
            )
            rewrite = f.rewrite or "-"
            if f.rewrite_expected:
                rewrite += " (right)" if f.rewrite_right else " (wrong)"
            rows.append(
                f"| {s.scenario} | {f.feature} | {t['differ']}/{t['missing_in_new']}/{t['missing_in_old']} "
                f"| {p['differ']}/{p['lagging']}/{p['missing_in_new']}/{p['missing_in_old']} | {_yes(f.exact)} "
                f"| {', '.join(f.expected)} | {f.main or '-'}{'' if f.main_right else ' (wrong)'} "
                f"| {_pct(f.right_share)} | {worst} | {rewrite} |"
            )
    return rows


def terminal(scores: list[ScenarioScore]) -> str:
    return "\n".join(summary_rows(scores)) + "\n"


def markdown(scores: list[ScenarioScore], meta: dict[str, Any]) -> str:
    tot = totals(scores)
    lines = [
        f"## Diagnosis corpus: {meta['entities']:,} users, {len(scores)} scenarios",
        "",
        f"Date: {meta['date']}. Machine: {meta['machine']}. Product: {meta.get('product', '?')}.",
        f"Command: `{meta['command']}`. Seed {meta['seed']}; event log: {meta['event_log']}.",
        f"Causes scored from: {', '.join(tot['source'])}"
        + (
            " (the product has no `result.causes` yet: its per-feature explanations, kinds mapped)"
            if tot["source"] == ["explanations"]
            else ""
        )
        + ".",
        "",
        *summary_rows(scores),
        "",
        f"- verdicts exact: {tot['verdicts_exact']}/{tot['scenarios']}; per-feature counts exact: "
        f"{tot['counts_exact']}/{tot['scenarios']} scenarios",
        f"- single-defect scenarios: main cause right on {tot['single_defect_main_right']} affected features; "
        f">= 95% of values to the right cause on {tot['single_defect_share_ge_95']}; no false extra cause "
        f"over 1% on {tot['single_defect_extra_le_1']}",
        f"- proposed rewrite is the injected one: {tot['rewrite_right']}/{tot['rewrite_expected']} affected "
        f"features where a rewrite is expected; clean scenarios pass with no cause: {tot['clean_ok']}",
        "",
        "### Per affected feature",
        "",
        *feature_rows(scores),
        "",
    ]
    return "\n".join(lines)


def as_json(scores: list[ScenarioScore], meta: dict[str, Any], truths: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "totals": totals(scores),
        "scenarios": [{**s.to_dict(), "truth": truths.get(s.scenario)} for s in scores],
    }


def product_version() -> str:
    """The commit scored, and whether the product's working tree had uncommitted changes."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "airflow_fsmigration"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}" + (" + uncommitted changes in airflow_fsmigration/" if dirty else "")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
