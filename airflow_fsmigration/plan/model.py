"""The migration plan as typed, frozen objects.

Pydantic does the strict field checks (unknown keys, wrong types, ranges); the loader maps its
error locations back to file and line. Cross-field rules (upstream groups exist, SQL files exist,
no cycles) live in :mod:`airflow_fsmigration.plan.loader`, which sees the whole plan at once.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from airflow_fsmigration.plan.durations import format_duration, parse_duration
from airflow_fsmigration.plan.feast_layout import FeastOfflineFields, FeastOnlineFields
from airflow_fsmigration.plan.names import (
    Column,
    ConnId,
    GroupName,
    Name,
    Relation,
    _redis_text,
)

# YAML dates arrive as ISO text after the JSON round trip the loader uses for strict validation.
Day = Annotated[date, Strict(False)]


def _between(low: timedelta, high: timedelta) -> AfterValidator:
    """A duration field's sane range, so a typo (``0s`` bake, ``9999d`` load test) is refused."""

    def check(value: timedelta) -> timedelta:
        if not low <= value <= high:
            raise ValueError(
                f"must be between {format_duration(low)} and {format_duration(high)}, "
                f"got {format_duration(value)}"
            )
        return value

    return AfterValidator(check)


_SECOND, _DAY, _YEAR = timedelta(seconds=1), timedelta(days=1), timedelta(days=366)
_CENTURY = timedelta(days=36_600)
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Soak = Annotated[timedelta, BeforeValidator(parse_duration), _between(_SECOND, _YEAR)]
LoadDuration = Annotated[timedelta, BeforeValidator(parse_duration), _between(_SECOND, _DAY)]
KeepWarm = Annotated[timedelta, BeforeValidator(parse_duration), _between(timedelta(0), 10 * _YEAR)]
Span = Annotated[timedelta, BeforeValidator(parse_duration), _between(timedelta(0), _CENTURY)]
PositiveSpan = Annotated[timedelta, BeforeValidator(parse_duration), _between(_SECOND, _CENTURY)]
# Rates, counts and latencies: finite (the model refuses inf/nan) and below absurd values.
_QPS_MAX, _MS_MAX, _COUNT_MAX = 1e9, 3_600_000.0, 10**15


def _schedule(value: str) -> str:
    """A cron expression or preset as Airflow's scheduler reads it (croniter comes with Airflow)."""
    if value in ("@once", "@continuous"):
        return value
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - croniter is an Airflow dependency
        return value
    if len(value) > 200 or not croniter.is_valid(value):
        raise ValueError(
            f"{value[:200]!r} is not a cron expression: use five fields such as '0 2 * * *' or a preset "
            "such as '@daily'"
        )
    return value


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite tolerance or rate is a typo that would pass every check.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, populate_by_name=True, allow_inf_nan=False
    )


class DType(StrEnum):
    INT64 = "int64"
    FLOAT64 = "float64"
    STRING = "string"
    BOOL = "bool"
    TIMESTAMP = "timestamp"


class NullPolicy(StrEnum):
    """How a null on either side is judged.

    ``null_equals_null``: null = null matches, null vs a value does not (the default).
    ``null_equals_zero``: a null on one side and 0 / "" / False on the other also match.
    ``nulls_never_match``: any null is a mismatch, for features that must always be present.
    """

    NULL_EQUALS_NULL = "null_equals_null"
    NULL_EQUALS_ZERO = "null_equals_zero"
    NULLS_NEVER_MATCH = "nulls_never_match"


class Criticality(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Criticality).index(self)


class ValueEncoding(StrEnum):
    STRING = "string"
    JSON = "json"


class Dialect(StrEnum):
    POSTGRES = "postgres"
    RISINGWAVE = "risingwave"


class RampApproval(StrEnum):
    """Which groups wait for a person before each ramp step (Airflow's human-in-the-loop)."""

    OFF = "off"
    CRITICAL = "critical"  # groups whose criticality is ``critical``
    ALL = "all"


class RollbackTriggers(_Strict):
    """Breach conditions written down before the ramp; any one breach rolls the group back."""

    auc_drop_pct: float = Field(
        0.5, ge=0, le=100, description="relative AUC drop vs the pre-ramp baseline, in %"
    )
    precision_drop_pct: float | None = Field(None, ge=0, le=100)
    p99_latency_increase_ms: float = Field(20.0, ge=0, le=_MS_MAX)
    error_rate_pct: float = Field(0.1, ge=0, le=100)


class Settings(_Strict):
    """Playbook defaults; every field can be overridden per group."""

    consistency_threshold: float = Field(0.995, gt=0.5, le=1.0)
    shadow_soak: Soak = timedelta(days=14)
    shadow_sample_size: int = Field(
        100_000, ge=0, le=_COUNT_MAX, description="entities per shadow run; 0 compares all"
    )
    ramp_steps: tuple[int, ...] = (5, 50, 100)
    bake: Soak = timedelta(hours=48)
    rollback_triggers: RollbackTriggers = RollbackTriggers()
    load_test_multiplier: float = Field(2.0, ge=1.0, le=20.0)
    load_test_duration: LoadDuration = timedelta(minutes=5)
    high_traffic_qps: float = Field(
        1000.0, ge=0, le=_QPS_MAX, description="peak QPS from which a group is load-tested"
    )
    keep_warm: KeepWarm = timedelta(days=30)
    ramp_approval: RampApproval = RampApproval.OFF
    approval_timeout: Soak = Field(
        timedelta(hours=24), description="nobody answered a ramp approval in time: the group freezes"
    )

    @field_validator("ramp_steps", mode="before")
    @classmethod
    def _steps_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("ramp_steps")
    @classmethod
    def _steps_ascend_to_100(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if not steps:
            raise ValueError("ramp_steps must not be empty")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError(f"ramp steps are percentages in 1..100, got {list(steps)}")
        if list(steps) != sorted(set(steps)):
            raise ValueError(f"ramp steps must strictly increase, got {list(steps)}")
        if steps[-1] != 100:
            raise ValueError(f"the last ramp step must be 100, got {list(steps)}")
        return steps


class SettingsOverride(_Strict):
    """A group's deviations from the plan defaults (only the fields it sets)."""

    consistency_threshold: float | None = Field(None, gt=0.5, le=1.0)
    shadow_soak: Soak | None = None
    shadow_sample_size: int | None = Field(None, ge=0, le=_COUNT_MAX)
    ramp_steps: tuple[int, ...] | None = None
    bake: Soak | None = None
    rollback_triggers: RollbackTriggers | None = None
    load_test_multiplier: float | None = Field(None, ge=1.0, le=20.0)
    load_test_duration: LoadDuration | None = None
    high_traffic_qps: float | None = Field(None, ge=0, le=_QPS_MAX)
    keep_warm: KeepWarm | None = None
    ramp_approval: RampApproval | None = None
    approval_timeout: Soak | None = None

    @field_validator("ramp_steps", mode="before")
    @classmethod
    def _steps_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class Connections(_Strict):
    """Airflow connection ids; the CLI resolves them from ``AIRFLOW_CONN_<ID>`` when Airflow is down."""

    legacy_online: ConnId
    legacy_offline: ConnId
    event_log: ConnId
    new_store: ConnId
    registry: ConnId
    model_metrics: ConnId
    #: Redis for the routing control plane (the routing mirror, routers' reports, breaker trips
    #: and serving stats). Default: the ``legacy_online`` Redis. A Redis of its own keeps ramps
    #: and rollbacks reaching routers while the legacy store is down.
    routing_mirror: ConnId | None = None

    @property
    def mirror(self) -> str:
        """The connection id of the routing mirror (``routing_mirror``, else ``legacy_online``)."""
        return self.routing_mirror or self.legacy_online

    def conn_id(self, role: str) -> str:
        """The connection id of a role; ``routing_mirror`` falls back to ``legacy_online``."""
        return self.mirror if role == "routing_mirror" else str(getattr(self, role))


class NewStore(_Strict):
    dialect: Dialect = Dialect.POSTGRES
    schema_name: Name = Field("features", alias="schema")


class TrainingDataset(_Strict):
    location: str
    format: str = "parquet"
    cutoff: Day
    rows: int | None = Field(None, ge=0, le=_COUNT_MAX)


class Model(_Strict):
    owner: str | None = None
    description: str | None = None
    training_datasets: tuple[TrainingDataset, ...] = ()

    @field_validator("training_datasets", mode="before")
    @classmethod
    def _tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class Feature(_Strict):
    name: Name
    dtype: DType
    atol: float = Field(0.0, ge=0)
    rtol: float = Field(0.0, ge=0)
    null_policy: NullPolicy = NullPolicy.NULL_EQUALS_NULL
    last_used: Day | None = None
    description: str | None = None


class LegacyOnline(FeastOnlineFields, _Strict):
    """Where the old online store keeps a group: one Redis hash per entity (or Feast's layout)."""

    key_template: str
    encoding: ValueEncoding = ValueEncoding.STRING
    timestamp_field: str | None = Field(
        None, description="hash field holding the source event time (epoch s or ISO)"
    )

    @field_validator("timestamp_field")
    @classmethod
    def _field_name(cls, value: str | None) -> str | None:
        return None if value is None else _redis_text(value, "hash field", 256)

    @field_validator("key_template")
    @classmethod
    def _has_entity(cls, value: str) -> str:
        from airflow_fsmigration.semantics import key_affixes  # the one meaning of a template

        _redis_text(value, "key template", 1024)

        try:
            key_affixes(value)
        except ValueError as exc:
            raise ValueError(f"{exc}, e.g. 'user_stats:{{entity}}'") from None
        return value


class LegacyOffline(FeastOfflineFields, _Strict):
    """The old offline store: a history table of (entity, event time, features), or a Feast source."""

    table: Relation
    event_time_column: Column = "event_ts"
    entity_column: Column | None = None


class EventSource(_Strict):
    table: Relation
    time_column: Column = "event_ts"
    retention: PositiveSpan
    longest_window: Span = timedelta(0)
    # the column that identifies one event (re-deliveries share it); lets the diagnosis test dedup
    id_column: str | None = None


class Sla(_Strict):
    p99_ms: float = Field(gt=0, le=_MS_MAX)
    max_staleness: Span


class Qps(_Strict):
    peak: float = Field(ge=0, le=_QPS_MAX)
    average: float = Field(ge=0, le=_QPS_MAX)

    @model_validator(mode="after")
    def _average_below_peak(self) -> Qps:
        if self.average > self.peak:
            raise ValueError(f"average QPS {self.average} is above peak QPS {self.peak}")
        return self


class FeatureGroup(_Strict):
    name: GroupName
    description: str | None = None
    owner: str | None = None
    entity_key: Name
    entity_dtype: DType = DType.STRING
    definition: str
    features: tuple[Feature, ...]
    legacy_online: LegacyOnline
    legacy_offline: LegacyOffline
    event_sources: tuple[EventSource, ...] = ()
    backfill_window: PositiveSpan = timedelta(days=30)
    ttl: PositiveSpan | None = None  # a value older than this is no value (Feast's view TTL; none: kept)
    models: tuple[Name, ...] = ()
    sla: Sla
    qps: Qps
    criticality: Criticality = Criticality.MEDIUM
    depends_on: tuple[Name, ...] = ()
    overrides: SettingsOverride = SettingsOverride()

    @field_validator("definition")
    @classmethod
    def _sql_file(cls, value: str) -> str:
        if not value.strip() or len(value) > 1024 or re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError(
                "definition must be the path of a .sql file relative to the plan, "
                "without control characters (at most 1024 characters)"
            )
        return value

    @field_validator("features", "event_sources", "models", "depends_on", mode="before")
    @classmethod
    def _tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("features")
    @classmethod
    def _some_features(cls, value: tuple[Feature, ...]) -> tuple[Feature, ...]:
        if not value:
            raise ValueError("a feature group needs at least one feature")
        return value

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"group {self.name!r} has no feature {name!r}")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


class MigrationPlan(_Strict):
    """A whole migration: defaults, connections, models and feature groups.

    ``source_dir`` is where the plan file (or folder) lives; SQL paths are relative to it.
    """

    version: int = 1
    name: Name
    description: str | None = None
    nightly_schedule: Annotated[str, AfterValidator(_schedule)] = "0 2 * * *"
    new_store: NewStore = NewStore()
    connections: Connections
    defaults: Settings = Settings()
    models: dict[Name, Model] = Field(default_factory=dict)
    groups: dict[GroupName, FeatureGroup]
    source_dir: Path = Path(".")

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"this fsmigrate reads plan version 1, got version {value}: write 'version: 1'")
        return value

    def settings_for(self, group: str | FeatureGroup) -> Settings:
        """The effective settings of a group: plan defaults with its overrides applied."""
        g = self.groups[group] if isinstance(group, str) else group
        changes = {k: v for k, v in g.overrides.model_dump(exclude_none=True).items()}
        if not changes:
            return self.defaults
        return Settings.model_validate({**self.defaults.model_dump(), **changes}, strict=False)

    def approves_ramps(self, group: str | FeatureGroup) -> bool:
        """Whether each ramp step of ``group`` waits for a person (``ramp_approval``)."""
        g = self.groups[group] if isinstance(group, str) else group
        policy = self.settings_for(g).ramp_approval
        return policy == RampApproval.ALL or (
            policy == RampApproval.CRITICAL and g.criticality == Criticality.CRITICAL
        )

    def definition_path(self, group: str | FeatureGroup) -> Path:
        g = self.groups[group] if isinstance(group, str) else group
        return (self.source_dir / g.definition).resolve()

    def definition_sql(self, group: str | FeatureGroup) -> str:
        return self.definition_path(group).read_text()

    def view_name(self, group: str) -> str:
        """The new store's relation for a group, as ``schema.group``."""
        return f"{self.new_store.schema_name}.{group}"

    def is_high_traffic(self, group: str | FeatureGroup) -> bool:
        g = self.groups[group] if isinstance(group, str) else group
        return g.qps.peak >= self.settings_for(g).high_traffic_qps
