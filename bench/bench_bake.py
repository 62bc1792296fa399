"""Measured error rates of the bake gate: simulated bakes with known truth (issue 16).

``python -m bench.bench_bake [--bakes 1000] [--seed 1]``

Each simulated bake is 48 hourly checks. Every hour brings labelled predictions of the ramped
cohort (``--pos`` positives and ``--neg`` negatives): its score on the new store's features and
the paired shadow score on the old store's (binormal, correlation ``--corr``), AUC 0.90 on the
old store. The truth is one of:

- ``none``: the new store's features are as good (AUC drop 0);
- ``drift``: no regression, but a diurnal swing (+-1 AUC point, 24 h period) and a slow decline
  (-1 AUC point over the 48 h) that hit both cohorts alike, as traffic and fraud patterns do;
- ``margin``: the new store costs exactly the margin (0.5% of 0.90 = 0.0045 AUC);
- ``2x margin``: it costs twice the margin.

Two gates judge the same streams at every check:

- **before/after** (the rule before issue 16): the mean of the ramped cohort's hourly AUC over
  the bake so far against the mean hourly AUC of the 48 h pre-ramp baseline; a relative drop
  over 0.5% rolls back;
- **concurrent** (:mod:`airflow_fsmigration.gates.stats_gate`): paired DeLong on all labels so
  far, confidence-sequence interval against the margin, minimum positives from the margin; a
  confident breach rolls back, a pass counts only at 48 h, anything else does not promote.

Then the keep-warm drift test (``--keepwarm`` runs, see :func:`keepwarm`).

Reported per scenario: rollback rate (false rollback under ``none``/``drift``, detection under
a regression), median hours to a rollback, and for the concurrent gate how often the bake ends
promoted or undecided (inconclusive: a person looks; never a promotion).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from airflow_fsmigration.gates.metrics import RAMPED, CohortScores
from airflow_fsmigration.gates.stats import Decision, auc_min_positives
from airflow_fsmigration.gates.stats_gate import auc_check

HOURS = 48
BASE_AUC = 0.90
LIMIT_PCT = 0.5
MARGIN = LIMIT_PCT / 100 * BASE_AUC


@dataclass(frozen=True)
class Scenario:
    name: str
    drop: float  # true AUC drop of the new store
    drift: bool = False


SCENARIOS = (
    Scenario("none", 0.0),
    Scenario("drift (common to both cohorts)", 0.0, drift=True),
    Scenario("margin", MARGIN),
    Scenario("2x margin", 2 * MARGIN),
)


def _sep(auc: float) -> float:
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def _auc_at(hour: float, drift: bool) -> float:
    """The old store's true AUC at an hour of the bake (negative hours: the baseline)."""
    if not drift:
        return BASE_AUC
    return BASE_AUC + 0.01 * math.sin(2 * math.pi * hour / 24.0) - 0.01 * max(hour, 0.0) / HOURS


def _hour(rng: np.random.Generator, hour: float, sc: Scenario, pos: int, neg: int, corr: float):
    y = np.r_[np.ones(pos), np.zeros(neg)]
    a_old = _auc_at(hour, sc.drift)
    s_old, s_new = _sep(a_old), _sep(a_old - sc.drop)
    e1 = rng.normal(size=pos + neg)
    e2 = corr * e1 + math.sqrt(1 - corr**2) * rng.normal(size=pos + neg)
    return y, s_old * y + e1, s_new * y + e2


def _hourly_auc(y: np.ndarray, s: np.ndarray, pos: int) -> float:
    from airflow_fsmigration.gates.stats import auc

    return auc(y, s)


def simulate(sc: Scenario, rng: np.random.Generator, args: argparse.Namespace) -> dict[str, object]:
    pos, neg, corr = args.pos, args.neg, args.corr
    # before/after's baseline: 48 hourly AUC points of the old store before the ramp
    base_points = [_hourly_auc(*_hour(rng, h - HOURS, sc, pos, neg, corr)[:2], pos) for h in range(HOURS)]
    base_mean = statistics.fmean(base_points)
    min_pos = auc_min_positives(0.97, LIMIT_PCT / 100 * 0.97, neg / pos)
    ba_fail: int | None = None
    gate_fail: int | None = None
    end: Decision = Decision.INCONCLUSIVE
    ys, olds, news, bake_points = [], [], [], []
    for h in range(1, HOURS + 1):
        y, s_old, s_new = _hour(rng, h - 0.5, sc, pos, neg, corr)
        ys.append(y)
        olds.append(s_old)
        news.append(s_new)
        bake_points.append(_hourly_auc(y, s_new, pos))
        if ba_fail is None and (base_mean - statistics.fmean(bake_points)) / base_mean * 100 > LIMIT_PCT:
            ba_fail = h
        # Below the minimum evidence the gate cannot decide; skip the work (a bound on the
        # gate's own minimum: Hanley-McNeil's positives at an AUC of 0.97 are fewer).
        if gate_fail is None and h * pos >= min_pos:
            scores = {RAMPED: CohortScores(np.concatenate(ys), np.concatenate(news), np.concatenate(olds))}
            dec = auc_check("m", scores, LIMIT_PCT)
            assert dec is not None
            if dec.decision is Decision.FAIL:
                gate_fail = h
            elif h == HOURS:
                end = dec.decision
        elif gate_fail is None and h == HOURS:
            end = Decision.INCONCLUSIVE
        if ba_fail is not None and gate_fail is not None:
            break
    return {"ba_fail": ba_fail, "gate_fail": gate_fail, "gate_end": Decision.FAIL if gate_fail else end}


def before_after_one_look(sc: Scenario, rng: np.random.Generator, args: argparse.Namespace) -> bool:
    """Today's rule looked at once, at 48 h: does the bake-window mean fall over 0.5% below the baseline's?"""
    pos, neg, corr = args.pos, args.neg, args.corr
    base = [_hourly_auc(*_hour(rng, h - HOURS, sc, pos, neg, corr)[:2], pos) for h in range(HOURS)]
    bake = []
    for h in range(1, HOURS + 1):
        y, _old, s_new = _hour(rng, h - 0.5, sc, pos, neg, corr)
        bake.append(_hourly_auc(y, s_new, pos))
    b0 = statistics.fmean(base)
    return (b0 - statistics.fmean(bake)) / b0 * 100 > LIMIT_PCT


def keepwarm(runs: int, positives_per_day: int, seed: int) -> list[str]:
    """Slow drift during keep-warm: the new store's false-negative rate rises 3% over 21 days.

    Each day, ``positives_per_day`` labelled frauds are scored on both stores (paired shadow):
    the old store misses 20% of them; the new store misses the same ones except for a 5%
    discordance, and with drift its miss rate grows linearly to 20.6% (3% more false negatives)
    by day 21, then stays. :func:`airflow_fsmigration.gates.keepwarm.drift_check` runs on the
    daily differences every day for 30 days.
    """
    from airflow_fsmigration.gates.keepwarm import drift_check

    rng = np.random.default_rng(seed)
    f0, flip = 0.20, 0.05
    rows = []
    for drift in (False, True):
        days_to: list[int] = []
        for _ in range(runs):
            diffs, variances = [], []
            for day in range(1, 31):
                f = f0 * (1 + 0.03 * min(day / 21, 1.0)) if drift else f0
                b = (f - f0 * (1 - flip)) / (1 - f0)
                old = rng.random(positives_per_day) < f0
                u = rng.random(positives_per_day)
                new = np.where(old, u >= flip, u < b)
                n10 = int(np.sum(new & ~old))
                n01 = int(np.sum(old & ~new))
                n = positives_per_day
                diffs.append((n10 - n01) / n)
                variances.append((n10 + n01 - (n10 - n01) ** 2 / n) / n**2)
            st = drift_check(diffs, variances)
            if st.first_breach_day is not None:
                days_to.append(st.first_breach_day)
        name = "3% more false negatives over 21 days" if drift else "no drift"
        rows.append(f"| {name} | {len(days_to) / runs:.1%} | {_median_days(days_to)} |")
    return rows


def _median_days(days: list[int]) -> str:
    return f"day {statistics.median(days):.0f}" if days else "-"


def _median(hours: list[int]) -> str:
    return f"{statistics.median(hours):.0f} h" if hours else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_bake", description=__doc__.split("\n")[0])
    p.add_argument("--bakes", type=int, default=1000)
    p.add_argument("--pos", type=int, default=100, help="labelled positives per hour in the ramped cohort")
    p.add_argument("--neg", type=int, default=150, help="labelled negatives per hour")
    p.add_argument("--corr", type=float, default=0.98, help="correlation of new and shadow scores")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--one-look", action="store_true", help="also: before/after checked only at 48 h")
    p.add_argument("--keepwarm", type=int, default=1000, help="keep-warm drift runs (0: skip)")
    p.add_argument("--positives-per-day", type=int, default=2000)
    p.add_argument("--scenarios", default="0,1,2,3", help="which truths to run (indices into SCENARIOS)")
    args = p.parse_args(argv)
    print(
        f"{args.bakes} bakes per scenario, {HOURS} hourly checks, {args.pos}+{args.neg} labels/h, "
        f"score correlation {args.corr}, margin {MARGIN:.4f} AUC ({LIMIT_PCT}% of {BASE_AUC})"
    )
    header = (
        "| truth | before/after: rollbacks | median time | concurrent: rollbacks | median time "
        "| concurrent: promoted at 48 h | undecided (no promotion) |"
    )
    print(header)
    print("|" + "---|" * 7)
    if args.one_look:
        print("\nbefore/after looked at once, at 48 h (same streams' model, fresh draws)")
        print("| truth | rollbacks |")
        print("|---|---|")
        for k, sc in enumerate(SCENARIOS):
            rng = np.random.default_rng(args.seed * 2000 + k)
            fails = sum(before_after_one_look(sc, rng, args) for _ in range(args.bakes))
            print(f"| {sc.name} | {fails / args.bakes:.1%} |")
    for k, sc in enumerate(SCENARIOS):
        if str(k) not in args.scenarios.split(","):
            continue
        rng = np.random.default_rng(args.seed * 1000 + k)
        t0 = time.perf_counter()
        runs = [simulate(sc, rng, args) for _ in range(args.bakes)]
        ba = [r["ba_fail"] for r in runs if r["ba_fail"] is not None]
        gt = [r["gate_fail"] for r in runs if r["gate_fail"] is not None]
        promoted = sum(r["gate_end"] is Decision.PASS for r in runs)
        undecided = sum(r["gate_end"] is Decision.INCONCLUSIVE for r in runs)
        n = len(runs)
        print(
            f"| {sc.name} | {len(ba) / n:.1%} | {_median(ba)} | {len(gt) / n:.1%} | {_median(gt)} "  # type: ignore[arg-type]
            f"| {promoted / n:.1%} | {undecided / n:.1%} |"
        )
        print(f"  ({sc.name}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.keepwarm:
        print(
            f"\nkeep-warm drift test, {args.keepwarm} runs of 30 days, "
            f"{args.positives_per_day} paired labelled positives per day"
        )
        print("| truth | rolled back within 30 days | median day |")
        print("|---|---|---|")
        for row in keepwarm(args.keepwarm, args.positives_per_day, args.seed):
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
