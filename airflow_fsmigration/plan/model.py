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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator

from airflow_fsmigration.plan.durations import parse_duration

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
# YAML dates arrive as ISO text after the JSON round trip the loader uses for strict validation.
Day = Annotated[date, Strict(False)]
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _identifier(value: str) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lower-case letters, digits and '_', starting with a letter"
        )
    return value


Name = Annotated[str, BeforeValidator(lambda v: _identifier(v) if isinstance(v, str) else v)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


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


class RollbackTriggers(_Strict):
    """Breach conditions written down before the ramp; any one breach rolls the group back."""

    auc_drop_pct: float = Field(
        0.5, ge=0, le=100, description="relative AUC drop vs the pre-ramp baseline, in %"
    )
    precision_drop_pct: float | None = Field(None, ge=0, le=100)
    p99_latency_increase_ms: float = Field(20.0, ge=0)
    error_rate_pct: float = Field(0.1, ge=0, le=100)


class Settings(_Strict):
    """Playbook defaults; every field can be overridden per group."""

    consistency_threshold: float = Field(0.995, gt=0.5, le=1.0)
    shadow_soak: Duration = timedelta(days=14)
    shadow_sample_size: int = Field(100_000, ge=0, description="entities per shadow run; 0 compares all")
    ramp_steps: tuple[int, ...] = (5, 50, 100)
    bake: Duration = timedelta(hours=48)
    rollback_triggers: RollbackTriggers = RollbackTriggers()
    load_test_multiplier: float = Field(2.0, ge=1.0, le=20.0)
    load_test_duration: Duration = timedelta(minutes=5)
    high_traffic_qps: float = Field(1000.0, ge=0, description="peak QPS from which a group is load-tested")
    keep_warm: Duration = timedelta(days=30)

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
    shadow_soak: Duration | None = None
    shadow_sample_size: int | None = Field(None, ge=0)
    ramp_steps: tuple[int, ...] | None = None
    bake: Duration | None = None
    rollback_triggers: RollbackTriggers | None = None
    load_test_multiplier: float | None = Field(None, ge=1.0, le=20.0)
    load_test_duration: Duration | None = None
    high_traffic_qps: float | None = Field(None, ge=0)
    keep_warm: Duration | None = None

    @field_validator("ramp_steps", mode="before")
    @classmethod
    def _steps_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class Connections(_Strict):
    """Airflow connection ids; the CLI resolves them from ``AIRFLOW_CONN_<ID>`` when Airflow is down."""

    legacy_online: str
    legacy_offline: str
    event_log: str
    new_store: str
    registry: str
    model_metrics: str


class NewStore(_Strict):
    dialect: Dialect = Dialect.POSTGRES
    schema_name: Name = Field("features", alias="schema")


class TrainingDataset(_Strict):
    location: str
    format: str = "parquet"
    cutoff: Day
    rows: int | None = Field(None, ge=0)


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


class LegacyOnline(_Strict):
    """Where the old online store keeps a group: one Redis hash per entity."""

    key_template: str
    encoding: ValueEncoding = ValueEncoding.STRING
    timestamp_field: str | None = Field(
        None, description="hash field holding the source event time (epoch s or ISO)"
    )

    @field_validator("key_template")
    @classmethod
    def _has_entity(cls, value: str) -> str:
        from airflow_fsmigration.semantics import key_affixes  # the one meaning of a template

        try:
            key_affixes(value)
        except ValueError as exc:
            raise ValueError(f"{exc}, e.g. 'user_stats:{{entity}}'") from None
        return value


class LegacyOffline(_Strict):
    """The old offline store: a history table of (entity, event time, features)."""

    table: str
    event_time_column: str = "event_ts"
    entity_column: str | None = None


class EventSource(_Strict):
    table: str
    time_column: str = "event_ts"
    retention: Duration
    longest_window: Duration = timedelta(0)
    # the column that identifies one event (re-deliveries share it); lets the diagnosis test dedup
    id_column: str | None = None


class Sla(_Strict):
    p99_ms: float = Field(gt=0)
    max_staleness: Duration


class Qps(_Strict):
    peak: float = Field(ge=0)
    average: float = Field(ge=0)

    @model_validator(mode="after")
    def _average_below_peak(self) -> Qps:
        if self.average > self.peak:
            raise ValueError(f"average QPS {self.average} is above peak QPS {self.peak}")
        return self


class FeatureGroup(_Strict):
    name: Name
    description: str | None = None
    owner: str | None = None
    entity_key: Name
    entity_dtype: DType = DType.STRING
    definition: str
    features: tuple[Feature, ...]
    legacy_online: LegacyOnline
    legacy_offline: LegacyOffline
    event_sources: tuple[EventSource, ...] = ()
    backfill_window: Duration = timedelta(days=30)
    models: tuple[Name, ...] = ()
    sla: Sla
    qps: Qps
    criticality: Criticality = Criticality.MEDIUM
    depends_on: tuple[Name, ...] = ()
    overrides: SettingsOverride = SettingsOverride()

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

    version: int = Field(1, ge=1, le=1)
    name: Name
    description: str | None = None
    nightly_schedule: str = "0 2 * * *"
    new_store: NewStore = NewStore()
    connections: Connections
    defaults: Settings = Settings()
    models: dict[Name, Model] = Field(default_factory=dict)
    groups: dict[Name, FeatureGroup]
    source_dir: Path = Path(".")

    def settings_for(self, group: str | FeatureGroup) -> Settings:
        """The effective settings of a group: plan defaults with its overrides applied."""
        g = self.groups[group] if isinstance(group, str) else group
        changes = {k: v for k, v in g.overrides.model_dump(exclude_none=True).items()}
        if not changes:
            return self.defaults
        return Settings.model_validate({**self.defaults.model_dump(), **changes}, strict=False)

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
