"""Training data per model: which path the data allows, and whether the model must be retrained.

Models were trained on snapshots of the old store. After a migration the features are computed by
the new logic, so each model needs one of three paths:

- ``recompute``: the raw events still cover a training window for every group the model reads:
  replay the new definitions over it and retrain.
- ``transition``: they do not, but the old snapshots exist: keep training on them for a while,
  knowing the model is trained on old logic and served new logic (the training-serving gap), until
  enough new events have accumulated (``ready_at``).
- ``freeze``: neither: keep the current model unchanged until ``ready_at``.

The retraining verdict comes later, from shadow or point-in-time comparisons: if every feature the
model reads matched, no retraining is needed; otherwise it names the features and how far off they
are. A feature with no comparison makes the verdict inconclusive, never "no retraining".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.backfill.retention import RetentionReport, audit_retention, human_duration, iso_utc

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan


class TrainingPath(StrEnum):
    RECOMPUTE = "recompute"
    TRANSITION = "transition"
    FREEZE = "freeze"
    UNAFFECTED = "unaffected"  # no migrated group feeds the model
    UNKNOWN = "unknown"  # the event log was not audited (no connection): say so, do not guess


class RetrainVerdict(StrEnum):
    NO_RETRAINING_NEEDED = "no_retraining_needed"
    RETRAIN = "retrain"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class DatasetInfo:
    location: str
    format: str
    cutoff: str
    rows: int | None
    age_days: int


@dataclass(frozen=True)
class ModelTrainingPlan:
    """The path one model's training data can take after the migration."""

    model: str
    groups: tuple[str, ...]
    path: TrainingPath
    reason: str
    training_window: timedelta
    datasets: tuple[DatasetInfo, ...] = ()
    gaps: tuple[str, ...] = ()
    ready_at: datetime | None = None
    training_serving_gap: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = self.path.value
        data["training_window_seconds"] = self.training_window.total_seconds()
        del data["training_window"]
        data["ready_at"] = iso_utc(self.ready_at) if self.ready_at else None
        data["datasets"] = [asdict(d) for d in self.datasets]
        return data


@dataclass(frozen=True)
class FeatureAgreement:
    """How one feature of one group agreed between old and new in a shadow or point-in-time run."""

    group: str
    feature: str
    compared: int
    mismatched: int
    max_abs_delta: float | None = None
    mean_abs_delta: float | None = None
    explanation: str | None = None

    @property
    def match_rate(self) -> float | None:
        return None if self.compared == 0 else 1.0 - self.mismatched / self.compared

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "match_rate": self.match_rate}


@dataclass(frozen=True)
class ModelRetrainVerdict:
    model: str
    verdict: RetrainVerdict
    reason: str
    features_checked: int
    differing: tuple[FeatureAgreement, ...] = ()
    unchecked: tuple[str, ...] = ()  # "group.feature" with no comparison

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "features_checked": self.features_checked,
            "differing": [d.to_dict() for d in self.differing],
            "unchecked": list(self.unchecked),
        }


def model_groups(plan: MigrationPlan) -> dict[str, tuple[str, ...]]:
    """Model name -> the groups that declare it as a consumer (every model of the plan is a key)."""
    result: dict[str, list[str]] = {m: [] for m in plan.models}
    for name, g in plan.groups.items():
        for m in g.models:
            result.setdefault(m, []).append(name)
    return {m: tuple(sorted(gs)) for m, gs in result.items()}


def plan_training_paths(
    plan: MigrationPlan,
    conn: Any | None = None,
    *,
    now: datetime | None = None,
    retention: Iterable[RetentionReport] | None = None,
    training_window: timedelta | None = None,
) -> list[ModelTrainingPlan]:
    """The training path of every model in the plan.

    The training window of a model is ``training_window`` or else the longest ``backfill_window``
    of the groups it reads, ending ``now``. Coverage comes from ``retention`` reports when given
    (e.g. the assessment's :func:`audit_plan_retention`, which use each group's own window), else
    from auditing ``conn`` (the event log); with neither the path is ``unknown``.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    given = {r.group: r for r in retention} if retention is not None else None
    cache: dict[tuple[str, timedelta], RetentionReport] = {}
    plans = []
    for model, groups in sorted(model_groups(plan).items()):
        spec = plan.models.get(model)
        datasets = tuple(
            DatasetInfo(
                location=d.location,
                format=d.format,
                cutoff=d.cutoff.isoformat(),
                rows=d.rows,
                age_days=(now.date() - d.cutoff).days,
            )
            for d in (spec.training_datasets if spec else ())
        )
        window = training_window or max(
            (plan.groups[g].backfill_window for g in groups), default=timedelta(days=30)
        )
        if not groups:
            plans.append(
                ModelTrainingPlan(
                    model,
                    groups,
                    TrainingPath.UNAFFECTED,
                    "no feature group of this plan feeds it",
                    window,
                    datasets,
                )
            )
            continue
        reports: list[RetentionReport] = []
        for g in groups:
            if given is not None and g in given:
                reports.append(given[g])
            elif conn is not None:
                key = (g, window)
                if key not in cache:
                    cache[key] = audit_retention(plan, g, conn, start=now - window, end=now, now=now)
                reports.append(cache[key])
        if len(reports) < len(groups):
            plans.append(
                ModelTrainingPlan(
                    model,
                    groups,
                    TrainingPath.UNKNOWN,
                    "the event log was not audited (no event_log connection): cannot tell whether the "
                    "raw events allow recomputing; run the assessment with the event log reachable",
                    window,
                    datasets,
                )
            )
            continue
        plans.append(_decide(model, groups, window, datasets, reports, now))
    return plans


def _decide(
    model: str,
    groups: tuple[str, ...],
    window: timedelta,
    datasets: tuple[DatasetInfo, ...],
    reports: list[RetentionReport],
    now: datetime,
) -> ModelTrainingPlan:
    gaps = tuple(f"{r.group}: {gap}" for r in reports for gap in r.gaps)
    if not gaps:
        return ModelTrainingPlan(
            model,
            groups,
            TrainingPath.RECOMPUTE,
            f"raw events cover a {human_duration(window)} training window for every group it reads "
            f"({', '.join(groups)}): backfill with the new definitions and retrain",
            window,
            datasets,
        )
    ready_at = _ready_at(reports)
    when = f"until {iso_utc(ready_at)}" if ready_at else "until the event log holds the window (date unknown)"
    if datasets:
        newest = max(datasets, key=lambda d: d.cutoff)
        gap = (
            f"trained on old-store features (newest snapshot cut off {newest.cutoff}, {newest.age_days} days ago) "
            f"but served new-store features for {', '.join(groups)}: any logic difference the shadow and "
            f"point-in-time checks find is skew between training and serving {when}"
        )
        return ModelTrainingPlan(
            model,
            groups,
            TrainingPath.TRANSITION,
            f"raw events do not cover the training window; keep the {len(datasets)} old snapshot(s) "
            f"for a transition period {when}",
            window,
            datasets,
            gaps,
            ready_at,
            gap,
        )
    return ModelTrainingPlan(
        model,
        groups,
        TrainingPath.FREEZE,
        f"raw events do not cover the training window and no old snapshot is listed: freeze the model {when}",
        window,
        datasets,
        gaps,
        ready_at,
    )


def _ready_at(reports: list[RetentionReport]) -> datetime | None:
    """When the window will be covered if the event log keeps everything from its oldest event on."""
    latest: datetime | None = None
    for r in reports:
        for s in r.sources:
            if s.covered:
                continue
            if s.oldest is None:
                return None
            at = s.oldest + (s.required_end - s.required_start)
            latest = at if latest is None or at > latest else latest
    return latest


def retraining_verdicts(
    plan: MigrationPlan,
    agreements: Iterable[FeatureAgreement],
    *,
    models: Iterable[str] | None = None,
) -> list[ModelRetrainVerdict]:
    """Per model: no retraining when every feature it reads matched, else which differ and by how much.

    ``agreements`` come from shadow or point-in-time results (see :func:`agreements_from_result`);
    several for the same feature are summed. A feature read by the model with no agreement, or one
    compared on zero rows, makes the verdict inconclusive.
    """
    merged: dict[tuple[str, str], FeatureAgreement] = {}
    for a in agreements:
        key = (a.group, a.feature)
        merged[key] = _merge(merged[key], a) if key in merged else a
    wanted = set(models) if models is not None else None
    verdicts = []
    for model, groups in sorted(model_groups(plan).items()):
        if wanted is not None and model not in wanted:
            continue
        features = [(g, f.name) for g in groups for f in plan.groups[g].features]
        checked = [merged[k] for k in features if k in merged and merged[k].compared > 0]
        unchecked = tuple(
            f"{g}.{f}" for g, f in features if (g, f) not in merged or merged[(g, f)].compared == 0
        )
        differing = tuple(
            sorted(
                (a for a in checked if a.mismatched > 0),
                key=lambda a: (a.match_rate or 0.0, a.group, a.feature),
            )
        )
        if not features:
            verdict, reason = RetrainVerdict.NO_RETRAINING_NEEDED, "no migrated feature feeds it"
        elif differing:
            worst = differing[0]
            verdict = RetrainVerdict.RETRAIN
            reason = (
                f"{len(differing)} of {len(features)} features differ between old and new; worst "
                f"{worst.group}.{worst.feature}: {worst.mismatched} of {worst.compared} values "
                f"({(1 - (worst.match_rate or 0)) * 100:.2f}%)"
                + (f", max |delta| {worst.max_abs_delta:g}" if worst.max_abs_delta is not None else "")
                + (f": {worst.explanation}" if worst.explanation else "")
            )
        elif unchecked:
            verdict = RetrainVerdict.INCONCLUSIVE
            reason = f"{len(unchecked)} of {len(features)} features were never compared: {', '.join(unchecked[:5])}"
        else:
            verdict = RetrainVerdict.NO_RETRAINING_NEEDED
            reason = f"all {len(features)} features it reads matched on every compared value"
        verdicts.append(ModelRetrainVerdict(model, verdict, reason, len(checked), differing, unchecked))
    return verdicts


def _merge(a: FeatureAgreement, b: FeatureAgreement) -> FeatureAgreement:
    def mx(x: float | None, y: float | None) -> float | None:
        vals = [v for v in (x, y) if v is not None]
        return max(vals) if vals else None

    mean = None
    if a.mean_abs_delta is not None and b.mean_abs_delta is not None and a.compared + b.compared:
        mean = (a.mean_abs_delta * a.compared + b.mean_abs_delta * b.compared) / (a.compared + b.compared)
    return FeatureAgreement(
        a.group,
        a.feature,
        a.compared + b.compared,
        a.mismatched + b.mismatched,
        mx(a.max_abs_delta, b.max_abs_delta),
        mean if mean is not None else (a.mean_abs_delta or b.mean_abs_delta),
        a.explanation or b.explanation,
    )


def agreements_from_result(group: str, result: Any) -> list[FeatureAgreement]:
    """Per-feature agreements from a comparison result (a ``ComparisonResult`` or its ``to_dict()``).

    Values missing on either side count as differing (a training row would lack them); the
    largest |delta| comes from the result's worst deltas (or its delta sample), and the
    explanation from the first one naming the feature, as ``kind: evidence``.
    """
    data: Mapping[str, Any] = result if isinstance(result, Mapping) else result.to_dict()
    features = data.get("features") or {}
    if isinstance(features, list):
        features = {f.get("feature") or f.get("name"): f for f in features}
    explanations: dict[str, str] = {}
    for e in data.get("explanations") or []:
        e = e if isinstance(e, Mapping) else e.to_dict()
        name = e.get("feature")
        if name and name not in explanations:
            kind, evidence = e.get("kind"), e.get("evidence") or e.get("summary")
            explanations[name] = ": ".join(str(x) for x in (kind, evidence) if x)
    out = []
    for name, f in features.items():
        f = f if isinstance(f, Mapping) else f.to_dict()
        missing = int(f.get("missing_in_new", 0) or 0) + int(f.get("missing_in_old", 0) or 0)
        compared = int(f.get("compared", 0) or 0) + missing
        if "mismatched" in f:
            mismatched = int(f["mismatched"] or 0) + missing
        else:
            mismatched = compared - int(f.get("matched", compared) or 0) - int(f.get("lagging", 0) or 0)
        deltas = [abs(w["delta"]) for w in f.get("worst") or [] if w.get("delta") is not None]
        sample = [abs(x) for x in f.get("deltas") or [] if x is not None]
        out.append(
            FeatureAgreement(
                group=group,
                feature=str(name),
                compared=compared,
                mismatched=mismatched,
                max_abs_delta=_float(f.get("max_abs_delta"))
                if "max_abs_delta" in f
                else (max(deltas) if deltas else None),
                mean_abs_delta=_float(f.get("mean_abs_delta"))
                if "mean_abs_delta" in f
                else (sum(sample) / len(sample) if sample else None),
                explanation=explanations.get(str(name)),
            )
        )
    return out


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


__all__ = [
    "DatasetInfo",
    "FeatureAgreement",
    "ModelRetrainVerdict",
    "ModelTrainingPlan",
    "RetrainVerdict",
    "TrainingPath",
    "agreements_from_result",
    "model_groups",
    "plan_training_paths",
    "retraining_verdicts",
]
