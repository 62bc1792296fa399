"""The one shape every store returns: an Arrow table per group, typed by the plan.

Columns: ``entity_id`` (the entity key as text), one column per feature typed by its plan dtype,
and ``_source_ts`` (newest source event time behind the row, nullable). Nulls are Arrow nulls;
an entity a store does not have is an absent row, never a row of nulls, so "missing key" and
"null value" stay distinguishable all the way to the comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.plan.model import FeatureGroup

ENTITY = "entity_id"
SOURCE_TS = "_source_ts"
#: Prefix of the optional boolean column ``_undecodable.<feature>``: true where the old store held
#: a value the reader could not decode (the value itself is then null).
UNDECODABLE_PREFIX = "_undecodable."


def arrow_type(dtype: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }[str(dtype)]


def feature_schema(group: FeatureGroup) -> pa.Schema:
    """The Arrow schema of ``group``'s frames."""
    import pyarrow as pa

    fields = [pa.field(ENTITY, pa.string(), nullable=False)]
    fields += [pa.field(f.name, arrow_type(f.dtype)) for f in group.features]
    fields.append(pa.field(SOURCE_TS, pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def empty_frame(group: FeatureGroup) -> pa.Table:
    return feature_schema(group).empty_table()


def conform(table: Any, group: FeatureGroup) -> pa.Table:
    """Cast a table (Arrow or pandas) to the group's schema; missing feature columns are an error.

    Raises ``ValueError`` naming the group and the columns, since a silently added null column
    would turn a broken read into a wall of "null vs value" mismatches.
    """
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    schema = feature_schema(group)
    missing = [f.name for f in schema if f.name not in table.column_names and f.name != SOURCE_TS]
    if missing:
        raise ValueError(f"group '{group.name}': the store returned no column(s) {', '.join(missing)}")
    columns = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if field.name == ENTITY and col.type != pa.string():
                col = col.cast(pa.string())
            columns.append(col.cast(field.type) if col.type != field.type else col)
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)
