"""The Feast layout of a group's legacy stores, as plan fields (``legacy_online.layout: feast``).

A plan drafted by ``fsmigrate import-feast`` says in the plan itself that its legacy stores are
Feast's, and carries what the direct readers need to find the data: the project (the suffix of
every Redis key), the entity key serialization version, the view (the prefix of every hash field)
and, offline, the batch source's query, tie-break column and renamed columns. Before, this lived
in a ``*.feast.json`` beside the plan; a plan copied without it read plain Redis keys that do not
exist and returned no rows without an error.

The fields are mixed into :class:`~airflow_fsmigration.plan.model.LegacyOnline` and
:class:`~airflow_fsmigration.plan.model.LegacyOffline` (kept here so the plan model stays one
readable module). This module imports nothing of the package: the plan model imports it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The entity key serialization the readers implement (Feast's only supported one since 0.38).
FEAST_KEY_VERSION = 3
_NAME = re.compile(r"^[A-Za-z0-9_\-.]{1,255}$")
_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True, allow_inf_nan=False)


def _feast_name(value: str | None, what: str) -> str | None:
    if value is not None and not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not a Feast name (letters, digits, '_', '-', '.')")
    return value


class FeastOnlineFields(BaseModel):
    """``legacy_online`` fields of Feast's Redis layout (unused by the plain layout)."""

    model_config = _CONFIG

    layout: Literal["plain", "feast"] = Field(
        "plain", description="plain: one hash per key_template key; feast: Feast's Redis online store"
    )
    project: str | None = Field(None, description="Feast project (the suffix of every Redis key)")
    view: str | None = Field(None, description="Feast feature view (default: the group name)")
    entity_key_serialization_version: int | None = Field(None, description="Feast's; only 3 is read")
    join_key: str | None = Field(None, description="Feast join key (default: the group's entity_key)")
    join_key_type: Literal["INT64", "INT32", "STRING"] | None = Field(
        None, description="Feast value type of the join key (default: from entity_dtype)"
    )
    feature_names: dict[str, str] = Field(
        default_factory=dict, description="plan feature -> Feast feature, where the names differ"
    )

    @model_validator(mode="before")
    @classmethod
    def _feast_key_template(cls, data: Any) -> Any:
        # A Feast layout has no key template of its own: a descriptive one keeps the field's meaning.
        if isinstance(data, dict) and data.get("layout") == "feast" and "key_template" not in data:
            view = data.get("view") or "view"
            data = {**data, "key_template": f"feast:{data.get('project') or 'project'}:{view}:{{entity}}"}
        return data

    @field_validator("project", "view", "join_key")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _feast_name(value, "Feast name")

    @model_validator(mode="after")
    def _feast_complete(self) -> Any:
        if self.layout != "feast":
            extra = [
                n
                for n in ("project", "view", "entity_key_serialization_version", "join_key", "join_key_type")
                if getattr(self, n) is not None
            ]
            if extra or self.feature_names:
                raise ValueError(
                    f"{', '.join(extra or ['feature_names'])}: only for a Feast store; add layout: feast"
                )
            return self
        if not self.project:
            raise ValueError("layout: feast needs the Feast project (project: <name> in feature_store.yaml)")
        version = self.entity_key_serialization_version
        if version is not None and version != FEAST_KEY_VERSION:
            raise ValueError(
                f"entity_key_serialization_version {version}: the Feast readers implement "
                f"v{FEAST_KEY_VERSION} (Feast's only supported version since 0.38)"
            )
        return self


class FeastOfflineFields(BaseModel):
    """``legacy_offline`` fields of a Feast batch source (unused by the plain layout)."""

    model_config = _CONFIG

    layout: Literal["plain", "feast"] = Field(
        "plain", description="plain: a history table; feast: a Feast view's batch source, read as Feast does"
    )
    query: str | None = Field(
        None, description="the batch source's SELECT when it is a query source (table: feast_query:<name>)"
    )
    created_timestamp_column: str | None = Field(
        None, description="Feast's tie-break on equal event times (newest created wins)"
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="plan feature -> source column, where they differ"
    )

    @field_validator("query")
    @classmethod
    def _one_select(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value or len(value) > 65536):
            raise ValueError("query must be the batch source's SELECT (at most 64 KiB, no NUL)")
        return value

    @model_validator(mode="after")
    def _feast_only(self) -> Any:
        if self.layout != "feast" and (self.query or self.created_timestamp_column or self.columns):
            raise ValueError(
                "query, created_timestamp_column and columns are for a Feast source; add layout: feast"
            )
        if (
            self.layout == "feast"
            and str(getattr(self, "table", "")).startswith("feast_query:")
            and not self.query
        ):
            raise ValueError("a Feast query source (table: feast_query:<name>) needs its query: the SELECT")
        return self
