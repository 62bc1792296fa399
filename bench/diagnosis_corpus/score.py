"""Score the product's diagnosis of one scenario against its ground truth.

Per feature: the product's counts (``mismatched + lagging``, ``missing_in_new``,
``missing_in_old``) against the truth's (must be exact); the **main cause** (the cause that
explains most of the feature's values) against the truth's dominant kind; the **right share**
(values attributed to a cause of a right kind, each kind capped at the values the truth gives it,
over the feature's changed values); **false extra causes** (values attributed to kinds the truth
does not have, in total and the biggest one, as shares of the changed values); whether the main
cause's **rewrite** (``cause.rewrite.kind``) is the injected one. Per scenario: the verdict, and
for a clean scenario, that no cause at all is reported.

Causes come from ``result.causes`` (the root-cause contract, /work/notes/ROOTCAUSE_API.md); while
the product has no ``causes`` yet, its per-feature ``result.explanations`` are scored instead,
their kinds mapped onto the contract's (:func:`causes_of`; ``source`` says which was scored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.diagnosis_corpus.scenarios import DEFECTS, FEATURES, REWRITABLE, Scenario
from bench.diagnosis_corpus.truth import Truth

CAUSE_KINDS = (
    "time_zone", "window_bound", "deduplication", "null_handling", "rounding", "unit_scale", "lag",
    "late_events", "missing_in_new", "missing_in_old", "transient", "unexplained",
)  # fmt: skip

#: explanation kind (compare/model.py Kind) -> cause kind, for the fallback
EXPLANATION_KINDS = {
    "timezone_shift": "time_zone",
    "off_by_one": "window_bound",
    "duplicate_inflation": "deduplication",
    "duplicate_ids": "deduplication",
    "null_vs_zero": "null_handling",
    "null_vs_value": "null_handling",
    "precision": "rounding",
    "scale_factor": "unit_scale",
    "streaming_lag": "lag",
    "missing_in_new": "missing_in_new",
    "missing_in_old": "missing_in_old",
    "noise": "transient",
    "lag_wrong_direction": "unexplained",
    "undecodable": "unexplained",
    "string_format": "unexplained",
    "unexplained": "unexplained",
}


@dataclass
class Cause:
    """What the scorer needs of a cause, from either source."""

    kind: str
    features: dict[str, int]
    rewrite: str | None = None
    proven: bool = False


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _constant_offset_kind(params: dict[str, Any]) -> str:
    """A constant offset on a timestamp: whole days -> late_events, a real zone offset -> time_zone."""
    try:
        seconds = abs(float(params.get("offset", 0)))
    except (TypeError, ValueError):
        return "unexplained"
    if seconds and seconds % 86400 == 0:
        return "late_events"
    if seconds and seconds % 900 == 0 and seconds <= 14 * 3600:
        return "time_zone"
    return "unexplained"


def causes_of(result: Any) -> tuple[list[Cause], str]:
    """The result's causes and which source they came from (``causes`` or ``explanations``)."""
    raw = _get(result, "causes")
    if raw is None and hasattr(result, "to_dict"):
        raw = result.to_dict().get("causes")
    if raw is not None:
        out = []
        for c in raw:
            rw = _get(c, "rewrite")
            out.append(
                Cause(
                    kind=str(_get(c, "kind")),
                    features={str(k): int(v) for k, v in (_get(c, "features") or {}).items()},
                    rewrite=str(_get(rw, "kind")) if rw is not None else None,
                    proven=bool(_get(c, "proven", False)),
                )
            )
        return out, "causes"
    out = []
    features = list(_get(result, "features", {}) or FEATURES)
    for e in _get(result, "explanations", []) or []:
        kind = str(_get(e, "kind"))
        mapped = (
            _constant_offset_kind(_get(e, "params", {}) or {})
            if kind == "constant_offset"
            else EXPLANATION_KINDS.get(kind, "unexplained")
        )
        feature, rows = _get(e, "feature"), int(_get(e, "rows", 0))
        # a group-level explanation (missing keys) is a missing value of every feature
        out.append(Cause(mapped, {feature: rows} if feature else {f: rows for f in features}))
    return out, "explanations"


@dataclass
class FeatureScore:
    feature: str
    truth: dict[str, int]
    product: dict[str, int]
    exact: bool
    expected: list[str]  # the truth's dominant kind(s)
    main: str | None = None
    main_right: bool | None = None
    right_share: float | None = None
    extra_share: float | None = None
    worst_extra: str | None = None
    worst_extra_share: float | None = None
    rewrite: str | None = None
    rewrite_expected: bool = False
    rewrite_right: bool | None = None
    kinds_expected: list[str] = field(default_factory=list)  # kinds alone changing >= 10% of the values
    kinds_named: list[str] = field(default_factory=list)  # ... that a cause of that kind names here

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ScenarioScore:
    scenario: str
    defects: list[str]
    kinds: list[str]
    verdict_truth: str
    verdict_product: str
    source: str
    causes: list[dict[str, Any]]
    features: list[FeatureScore] = field(default_factory=list)
    clean_ok: bool | None = None
    seconds_product: float = 0.0

    @property
    def verdict_ok(self) -> bool:
        return self.verdict_truth == self.verdict_product

    @property
    def counts_exact(self) -> bool:
        return all(f.exact for f in self.features)

    @property
    def affected(self) -> list[FeatureScore]:
        return [f for f in self.features if f.truth["total"]]

    def summary(self) -> dict[str, Any]:
        aff = self.affected
        shares = [f.right_share for f in aff if f.right_share is not None]
        extras = [f.worst_extra_share for f in aff if f.worst_extra_share is not None]
        rewritable = [f for f in aff if f.rewrite_expected]
        pairs = sum(len(f.kinds_expected) for f in aff)
        pairs_named = sum(len(f.kinds_named) for f in aff)
        named = {c["kind"] for c in self.causes}
        return {
            "scenario": self.scenario,
            "injected": self.kinds,
            "verdict": f"{self.verdict_truth}/{self.verdict_product}",
            "verdict_ok": self.verdict_ok,
            "counts_exact": self.counts_exact,
            "affected_features": len(aff),
            "main_right": sum(1 for f in aff if f.main_right),
            "right_share_mean": sum(shares) / len(shares) if shares else None,
            "right_share_min": min(shares) if shares else None,
            "worst_extra_share": max(extras) if extras else None,
            "kinds_named": sorted(set(self.kinds) & named),
            "rewrite_right": sum(1 for f in rewritable if f.rewrite_right),
            "rewrite_expected": len(rewritable),
            "kinds_on_features": f"{pairs_named}/{pairs}",
            "clean_ok": self.clean_ok,
            "source": self.source,
            "causes": len(self.causes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "defects": self.defects,
            "seconds_product": self.seconds_product,
            "cause_list": self.causes,
            "features": [f.to_dict() for f in self.features],
        }


def _product_counts(stats: Any) -> dict[str, int]:
    differ = int(_get(stats, "mismatched", 0)) + int(_get(stats, "lagging", 0))
    out = {
        "differ": differ,
        "lagging": int(_get(stats, "lagging", 0)),
        "missing_in_new": int(_get(stats, "missing_in_new", 0)),
        "missing_in_old": int(_get(stats, "missing_in_old", 0)),
    }
    out["total"] = out["differ"] + out["missing_in_new"] + out["missing_in_old"]
    return out


def score(scenario: Scenario, truth: Truth, result: Any, seconds_product: float = 0.0) -> ScenarioScore:
    causes, source = causes_of(result)
    rewrite_kinds = {DEFECTS[d][0] for d in scenario.defects if d in REWRITABLE}
    verdict = str(_get(result, "verdict"))
    s = ScenarioScore(
        scenario=scenario.name,
        defects=list(scenario.defects),
        kinds=list(scenario.kinds),
        verdict_truth=truth.verdict,
        verdict_product=verdict,
        source=source,
        causes=[
            {"kind": c.kind, "features": c.features, "rewrite": c.rewrite, "proven": c.proven} for c in causes
        ],
        seconds_product=seconds_product,
    )
    if scenario.clean:
        s.clean_ok = verdict == "pass" and not causes
    stats = _get(result, "features", {})
    for f in FEATURES:
        ft = truth.features[f]
        t_counts = {"differ": ft.differ, "missing_in_new": ft.missing_in_new,
                    "missing_in_old": ft.missing_in_old, "total": ft.total}  # fmt: skip
        p_counts = _product_counts(stats[f]) if f in stats else {"differ": 0, "lagging": 0,
                   "missing_in_new": 0, "missing_in_old": 0, "total": 0}  # fmt: skip
        exact = all(t_counts[k] == p_counts[k] for k in ("differ", "missing_in_new", "missing_in_old"))
        fs = FeatureScore(f, t_counts, p_counts, exact, ft.dominant)
        on_f = sorted((c for c in causes if c.features.get(f)), key=lambda c: -c.features[f])
        if ft.total:
            right = sum(min(sum(c.features[f] for c in on_f if c.kind == k), n) for k, n in ft.kinds.items())
            fs.right_share = min(right, ft.total) / ft.total
            extra: dict[str, int] = {}
            for c in on_f:
                if c.kind not in ft.kinds:
                    extra[c.kind] = extra.get(c.kind, 0) + c.features[f]
            fs.extra_share = sum(extra.values()) / ft.total
            if extra:
                fs.worst_extra = max(extra, key=lambda k: extra[k])
                fs.worst_extra_share = extra[fs.worst_extra] / ft.total
            else:
                fs.worst_extra_share = 0.0
            fs.rewrite_expected = bool(set(ft.dominant) & rewrite_kinds)
            fs.kinds_expected = sorted(k for k, n in ft.only.items() if n >= 0.1 * ft.total)
            fs.kinds_named = [k for k in fs.kinds_expected if any(c.kind == k for c in on_f)]
            if on_f:
                fs.main = on_f[0].kind
                fs.main_right = fs.main in ft.dominant
                fs.rewrite = on_f[0].rewrite
                fs.rewrite_right = fs.main_right and fs.rewrite == fs.main if fs.rewrite_expected else None
            else:
                fs.main_right = False
                fs.rewrite_right = False if fs.rewrite_expected else None
        s.features.append(fs)
    return s
