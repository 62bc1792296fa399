"""The correct definition, the defects that can be injected into it, and the scenarios.

:func:`definition_sql` writes the group's Postgres SQL with any set of defects applied, each the
way a port really goes wrong; a scenario is a name, its defects and what a user should be told.
Every defect maps to one root-cause kind of the diagnosis contract (``CAUSE_KINDS``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GROUP = "user_txn"
KEY_TEMPLATE = "diag:user_txn:{entity}"
LAG = "15 minutes"  # the lag defect; the group's staleness SLA is 5 minutes

INTS = ("txn_count_1h", "txn_count_24h", "txn_count_7d", "distinct_merchants_24h", "distinct_merchants_7d")
FLOATS = (
    "amount_sum_1h",
    "amount_sum_24h",
    "amount_sum_7d",
    "amount_avg_24h",
    "amount_avg_7d",
    "tip_avg_7d",
    "tip_ratio_7d",
)
TIMESTAMPS = ("last_txn_ts", "last_charge_ts")
FEATURES = (*INTS, *FLOATS, *TIMESTAMPS)
ATOL, RTOL = 1e-6, 1e-9  # tight: a 2-digit rounding (up to 0.005) is a real mismatch

#: defect -> (root-cause kind of the contract, what it does)
DEFECTS: dict[str, tuple[str, str]] = {
    "window_bound": ("window_bound", "window starts inclusive (>=) instead of exclusive (>)"),
    "no_dedup": ("deduplication", "re-delivered purchases not deduplicated by event_id"),
    "tz_new_york": (
        "time_zone",
        "transactions.event_ts read as America/New_York wall-clock: (ts AT TIME ZONE 'America/New_York') "
        "AT TIME ZONE 'UTC' (-5 h)",
    ),
    "tz_kolkata": (
        "time_zone",
        "transactions.event_ts read as Asia/Kolkata wall-clock (+5 h 30 min, a half-hour zone)",
    ),
    "null_as_zero": ("null_handling", "NULL tips coalesced to 0 inside avg(tip) and sum(tip)"),
    "rounding": ("rounding", "every float feature rounded to 2 digits"),
    "cents": ("unit_scale", "amount_cents read where amount (currency units) is meant (x100)"),
    "lag": ("lag", f"window end moved back by {LAG} (the new store has not seen the newest events)"),
    "daily_not_loaded": (
        "late_events",
        "today's daily charges not loaded yet (charges before today's midnight only): last_charge_ts a day behind",
    ),
    "late_dropped": (
        "late_events",
        "purchases ingested more than 1 h after their event time dropped (a streaming watermark)",
    ),
}

#: defects whose fix is one of the replay's rewrites (issue 11: bound, dedup, zone, nulls, rounding,
#: unit/scale, lag); a rewrite is only expected for these
REWRITABLE = {
    "window_bound",
    "no_dedup",
    "tz_new_york",
    "tz_kolkata",
    "null_as_zero",
    "rounding",
    "cents",
    "lag",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    defects: tuple[str, ...] = ()
    variant: str = "exact"  # "exact" or "float_noise" (clean variants)
    note: str = ""
    kinds: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(sorted({DEFECTS[d][0] for d in self.defects})))

    @property
    def clean(self) -> bool:
        return not self.defects


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("clean_exact", note="the correct definition as ported: every value identical"),
    Scenario(
        "clean_float_noise",
        variant="float_noise",
        note="sums and averages over integer cents / 100: float noise ~1e-12, far below atol 1e-6",
    ),
    Scenario("window_bound", ("window_bound",)),
    Scenario("dedup_missing", ("no_dedup",)),
    Scenario("tz_new_york", ("tz_new_york",)),
    Scenario("tz_kolkata", ("tz_kolkata",)),
    Scenario("null_as_zero", ("null_as_zero",)),
    Scenario("rounding", ("rounding",)),
    Scenario("cents_units", ("cents",)),
    Scenario("lag_15m", ("lag",)),
    Scenario("daily_not_loaded", ("daily_not_loaded",)),
    Scenario("late_dropped", ("late_dropped",)),
    Scenario("mix_dedup_rounding", ("no_dedup", "rounding")),
    Scenario("mix_tz_cents", ("tz_new_york", "cents")),
    Scenario("mix_bound_nulls", ("window_bound", "null_as_zero")),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def definition_sql(defects: tuple[str, ...] | frozenset[str] = (), variant: str = "exact") -> str:
    """The group's definition with ``defects`` injected (``()`` = the correct one)."""
    d = set(defects)
    unknown = d - set(DEFECTS)
    if unknown:
        raise ValueError(f"unknown defect(s) {sorted(unknown)}; known: {', '.join(DEFECTS)}")
    ts = "t.event_ts"
    if "tz_new_york" in d:
        ts = "((t.event_ts AT TIME ZONE 'America/New_York') AT TIME ZONE 'UTC')"
    if "tz_kolkata" in d:
        ts = "((t.event_ts AT TIME ZONE 'Asia/Kolkata') AT TIME ZONE 'UTC')"
    gt = ">=" if "window_bound" in d else ">"
    end = f":as_of - interval '{LAG}'" if "lag" in d else ":as_of"
    amount = "CAST(t.amount_cents AS double precision)" if "cents" in d else "t.amount"
    c_amount = "CAST(c.amount_cents AS double precision)" if "cents" in d else "c.amount"
    distinct = "" if "no_dedup" in d else "DISTINCT ON (t.event_id) "
    order = "" if "no_dedup" in d else "\n    ORDER BY t.event_id, t.ingested_at"
    late = "\n      AND t.ingested_at <= t.event_ts + interval '1 hour'" if "late_dropped" in d else ""
    daily = "\n      AND c.charged_at < date_trunc('day', :as_of, 'UTC')" if "daily_not_loaded" in d else ""
    tip = "coalesce(e.tip, 0)" if "null_as_zero" in d else "e.tip"

    def w(hours: int) -> str:
        return f"e.event_ts {gt} :as_of - interval '{hours} hours'"

    if variant == "float_noise":
        sums = {h: f"coalesce(sum(e.amount_cents) FILTER (WHERE {w(h)}), 0) / 100.0" for h in (1, 24)}
        sum7 = "sum(e.amount_cents) / 100.0"
        avg24 = f"avg(e.amount_cents) FILTER (WHERE {w(24)}) / 100.0"
        avg7 = "avg(e.amount_cents) / 100.0"
        ratio = f"sum({tip}) / nullif(sum(e.amount_cents), 0) * 100"
    elif variant == "exact":
        sums = {h: f"coalesce(sum(e.amount) FILTER (WHERE {w(h)}), 0)" for h in (1, 24)}
        sum7 = "sum(e.amount)"
        avg24 = f"avg(e.amount) FILTER (WHERE {w(24)})"
        avg7 = "avg(e.amount)"
        ratio = f"sum({tip}) / nullif(sum(e.amount), 0)"
    else:
        raise ValueError(f"unknown variant {variant!r}: exact or float_noise")

    def num(expr: str) -> str:
        if "rounding" in d:
            return f"CAST(round(CAST({expr} AS numeric), 2) AS double precision)"
        return f"CAST({expr} AS double precision)"

    return f"""-- Card activity per user over windows ending at :as_of (exclusive start, inclusive end).
-- Purchases are deduplicated by event_id (re-deliveries share it); daily charges join them.
WITH purchases AS (
    SELECT {distinct}t.event_id, t.user_id, t.merchant_id, {ts} AS event_ts,
           {amount} AS amount, t.amount_cents, t.tip
    FROM raw.transactions AS t
    WHERE {ts} {gt} :as_of - interval '7 days'
      AND {ts} <= {end}{late}{order}
),
charges AS (
    SELECT c.user_id, c.merchant_id, c.charged_at AS event_ts, {c_amount} AS amount, c.amount_cents
    FROM raw.charges AS c
    WHERE c.charged_at {gt} :as_of - interval '7 days'
      AND c.charged_at <= {end}{daily}
),
events AS (
    SELECT p.user_id, p.merchant_id, p.event_ts, p.amount, p.amount_cents, p.tip, false AS is_charge
    FROM purchases AS p
    UNION ALL
    SELECT c.user_id, c.merchant_id, c.event_ts, c.amount, c.amount_cents,
           CAST(NULL AS double precision) AS tip, true AS is_charge
    FROM charges AS c
)
SELECT
    e.user_id,
    count(*) FILTER (WHERE {w(1)})                      AS txn_count_1h,
    count(*) FILTER (WHERE {w(24)})                     AS txn_count_24h,
    count(*)                                            AS txn_count_7d,
    {num(sums[1])} AS amount_sum_1h,
    {num(sums[24])} AS amount_sum_24h,
    {num(sum7)} AS amount_sum_7d,
    {num(avg24)} AS amount_avg_24h,
    {num(avg7)} AS amount_avg_7d,
    count(DISTINCT e.merchant_id) FILTER (WHERE {w(24)}) AS distinct_merchants_24h,
    count(DISTINCT e.merchant_id)                       AS distinct_merchants_7d,
    max(e.event_ts) FILTER (WHERE NOT e.is_charge)      AS last_txn_ts,
    max(e.event_ts) FILTER (WHERE e.is_charge)          AS last_charge_ts,
    {num(f"avg({tip})")} AS tip_avg_7d,
    {num(ratio)} AS tip_ratio_7d,
    max(e.event_ts)                                     AS source_ts
FROM events AS e
GROUP BY e.user_id
"""


def plan_dict(scenario: Scenario, schema: str) -> dict:
    """A one-group plan whose new store (schema ``schema``) holds the scenario's definition."""
    features: list[dict[str, object]] = [{"name": f, "dtype": "int64"} for f in INTS]
    features += [{"name": f, "dtype": "float64", "atol": ATOL, "rtol": RTOL} for f in FLOATS]
    features += [{"name": f, "dtype": "timestamp"} for f in TIMESTAMPS]
    return {
        "version": 1,
        "name": "diagnosis_corpus",
        "description": f"diagnosis corpus scenario {scenario.name}",
        "new_store": {"dialect": "postgres", "schema": schema},
        "connections": {
            "legacy_online": "diag_redis",
            "legacy_offline": "diag_offline",
            "event_log": "diag_events",
            "new_store": "diag_new",
            "registry": "diag_registry",
            "model_metrics": "diag_metrics",
        },
        "defaults": {"shadow_sample_size": 0, "consistency_threshold": 1.0},
        "groups": {
            GROUP: {
                "entity_key": "user_id",
                "definition": f"sql/{GROUP}.sql",
                "features": features,
                "legacy_online": {
                    "key_template": KEY_TEMPLATE,
                    "encoding": "string",
                    "timestamp_field": "_ts",
                },
                "legacy_offline": {"table": "legacy.user_txn_history"},
                "event_sources": [
                    {
                        "table": "raw.transactions",
                        "time_column": "event_ts",
                        "id_column": "event_id",
                        "retention": "90d",
                        "longest_window": "7d",
                    },
                    {
                        "table": "raw.charges",
                        "time_column": "charged_at",
                        "id_column": "charge_id",
                        "retention": "90d",
                        "longest_window": "7d",
                    },
                ],
                "sla": {"p99_ms": 10, "max_staleness": "5m"},
                "qps": {"peak": 100, "average": 10},
            }
        },
    }


def write_plan(folder: Path, scenario: Scenario, schema: str) -> Path:
    """The scenario's plan folder: ``plan.yaml`` and ``sql/user_txn.sql`` (its defective definition)."""
    (folder / "sql").mkdir(parents=True, exist_ok=True)
    (folder / "sql" / f"{GROUP}.sql").write_text(definition_sql(scenario.defects, scenario.variant))
    path = folder / "plan.yaml"
    path.write_text(json.dumps(plan_dict(scenario, schema), indent=2))
    return path
