"""Training snapshots of a backfill run: the output table's rows of that run, and Parquet files.

A model's training code reads these files, so their schema is a contract with the plan: the
column names are the plan's features, each typed by its plan dtype (``int64``, ``float64``,
``string``, ``bool``, ``timestamp`` in UTC), plus the time column (``as_of`` for a snapshot
grid, ``label_ts`` for a spine) and the entity key. Before anything is written we check the
table's SQL types against the plan (a ``numeric`` for a ``float64`` feature is widened; a
``text`` for an ``int64`` or a time-zone-less ``timestamp`` is an error) and the null handling
(a feature whose ``null_policy`` is ``nulls_never_match`` must have no null in a snapshot grid).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.backfill.replay import BackfillRun, _ident, definition_columns, load_run

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.backfill")

# SQL types (format_type) each plan dtype accepts, and the cast that makes the Arrow type exact
_ACCEPTS = {
    "int64": {"bigint", "integer", "smallint"},
    "float64": {"double precision", "real", "numeric", "bigint", "integer", "smallint"},
    "string": {"text", "character varying", "character", "name"},
    "bool": {"boolean"},
    "timestamp": {"timestamp with time zone"},
}
_CAST = {
    "int64": "bigint",
    "float64": "double precision",
    "string": "text",
    "bool": "boolean",
    "timestamp": "timestamptz",
}


class SnapshotSchemaError(ValueError):
    """A run's table does not have the schema the plan (and so the models) expect."""


@dataclass(frozen=True)
class SnapshotExport:
    run_id: str
    group: str
    table: str
    where: str
    rows: int
    files: list[str] = field(default_factory=list)
    manifest: str | None = None
    schema: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expected_schema(plan: MigrationPlan, group: str, mode: str) -> pa.Schema:
    """The Arrow schema of a run's training snapshot, from the plan."""
    import pyarrow as pa

    from airflow_fsmigration.stores.frames import arrow_type

    g = plan.groups[group]
    time_col = "as_of" if mode == "grid" else "label_ts"
    fields = [
        pa.field(time_col, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(g.entity_key, arrow_type(g.entity_dtype), nullable=False),
    ]
    fields += [pa.field(f.name, arrow_type(f.dtype)) for f in g.features]
    if "source_ts" in definition_columns(plan, group):
        fields.append(pa.field("source_ts", pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def check_schema(conn: Any, plan: MigrationPlan, run: BackfillRun) -> list[str]:
    """Problems with a run's table against the plan (empty when it is fit to train on)."""
    from psycopg import sql

    g = plan.groups[run.group]
    types = dict(
        conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (_ident(run.output_table).as_string(None),),
        ).fetchall()
    )
    if not types:
        return [f"table {run.output_table} does not exist"]
    problems = []
    wanted = [(g.entity_key, str(g.entity_dtype))] + [(f.name, str(f.dtype)) for f in g.features]
    for column, dtype in wanted:
        if column not in types:
            problems.append(f"{run.output_table} has no column {column!r} (plan feature of group '{g.name}')")
            continue
        sql_type = types[column].split("(")[0]
        if dtype == "string" and column == g.entity_key:
            continue  # any key type is rendered as text, as the frames do
        if sql_type not in _ACCEPTS[dtype]:
            problems.append(
                f"{column}: the plan says {dtype} but the definition produces {types[column]}"
                + (
                    " (a timestamp without time zone is ambiguous: cast it to timestamptz)"
                    if dtype == "timestamp"
                    else ""
                )
            )
    never_null = [f.name for f in g.features if str(f.null_policy) == "nulls_never_match" and f.name in types]
    if never_null and run.mode == "grid":
        counts = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE run_id = %s").format(
                sql.SQL(", ").join(
                    sql.SQL("count(*) FILTER (WHERE {} IS NULL)").format(sql.Identifier(c))
                    for c in never_null
                ),
                _ident(run.output_table),
            ),
            (run.run_id,),
        ).fetchone()
        for column, n in zip(never_null, counts, strict=True):
            if n:
                problems.append(f"{column}: null_policy nulls_never_match, but {n} snapshot rows are null")
    return problems


def export_snapshots(
    plan: MigrationPlan,
    run_id: str,
    store_conn: Any,
    registry_conn: Any,
    out_dir: str | Path,
    *,
    rows_per_file: int = 1_000_000,
    batch_rows: int = 100_000,
) -> SnapshotExport:
    """Write a finished run's rows to Parquet (typed by the plan) with a JSON manifest beside them.

    Files go to ``out_dir/<group>/<run_id>/part-NNNNN.parquet``; the manifest records the run,
    the row count and checksum, the schema and the plan features. Raises
    :class:`SnapshotSchemaError` when the table does not match the plan.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from psycopg import sql

    run = load_run(registry_conn, run_id)
    if run is None:
        raise SnapshotSchemaError(f"no backfill run {run_id!r} in the registry")
    if any(c.status != "done" for c in run.chunks):
        left = sum(c.status != "done" for c in run.chunks)
        raise SnapshotSchemaError(
            f"run {run_id!r} of group '{run.group}' has {left} unfinished chunk(s): resume it before exporting"
        )
    problems = check_schema(store_conn, plan, run)
    if problems:
        raise SnapshotSchemaError(
            f"run {run_id!r} of group '{run.group}' does not have the schema the plan expects:\n  "
            + "\n  ".join(problems)
        )
    g = plan.groups[run.group]
    schema = expected_schema(plan, run.group, run.mode)
    time_col = schema[0].name
    select = [sql.SQL("{c}").format(c=sql.Identifier(time_col))]
    dtypes = {
        g.entity_key: str(g.entity_dtype),
        **{f.name: str(f.dtype) for f in g.features},
        "source_ts": "timestamp",
    }
    for f in schema:
        if f.name == time_col:
            continue
        select.append(
            sql.SQL("CAST({c} AS {t}) AS {c}").format(
                c=sql.Identifier(f.name), t=sql.SQL(_CAST[dtypes[f.name]])
            )
        )
    query = sql.SQL("SELECT {} FROM {} WHERE run_id = %s ORDER BY {}, {}").format(
        sql.SQL(", ").join(select),
        _ident(run.output_table),
        sql.Identifier(time_col),
        sql.Identifier(g.entity_key),
    )
    target = Path(out_dir) / run.group / run.run_id
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("part-*.parquet"):
        old.unlink()  # idempotent: a re-export replaces the files
    files: list[str] = []
    rows = 0
    writer: Any = None
    in_file = 0
    with store_conn.transaction(), store_conn.cursor(name="fsmig_snapshot_export") as cur:
        store_conn.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute(query, (run.run_id,))
        while True:
            room = (
                rows_per_file - in_file if writer is not None and in_file < rows_per_file else rows_per_file
            )
            batch = cur.fetchmany(min(batch_rows, room))
            if not batch:
                break
            columns = list(zip(*batch, strict=True))
            table = pa.Table.from_arrays(
                [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
            )
            if writer is None or in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                path = target / f"part-{len(files):05d}.parquet"
                files.append(str(path))
                writer = pq.ParquetWriter(path, schema)
                in_file = 0
            writer.write_table(table)
            in_file += table.num_rows
            rows += table.num_rows
    if writer is not None:
        writer.close()
    chunk_rows = sum(c.rows or 0 for c in run.chunks)
    if rows != chunk_rows:
        raise SnapshotSchemaError(
            f"run {run_id!r}: the table holds {rows} rows but the checkpoints recorded {chunk_rows}; "
            "the table was changed after the run: re-run the backfill"
        )
    manifest = target / "_manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "run_id": run.run_id,
                "group": run.group,
                "mode": run.mode,
                "table": run.output_table,
                "rows": rows,
                "checksum": str(sum(c.checksum or 0 for c in run.chunks)),
                "params": run.params,
                "schema": {f.name: str(f.type) for f in schema},
                "features": [
                    {"name": f.name, "dtype": str(f.dtype), "null_policy": str(f.null_policy)}
                    for f in g.features
                ],
                "files": [Path(f).name for f in files],
            },
            indent=2,
        )
    )
    log.info("snapshots of run %s: %d rows in %d Parquet file(s) under %s", run_id, rows, len(files), target)
    return SnapshotExport(
        run_id=run.run_id,
        group=run.group,
        table=run.output_table,
        where=f"run_id = '{run.run_id}'",
        rows=rows,
        files=files,
        manifest=str(manifest),
        schema={f.name: str(f.type) for f in schema},
    )


def read_snapshots(path: str | Path, plan: MigrationPlan, group: str) -> pa.Table:
    """Read exported Parquet files back, checking the schema against the plan (what a trainer should do)."""
    import pyarrow.parquet as pq

    manifest = json.loads((Path(path) / "_manifest.json").read_text())
    table = pq.read_table([str(Path(path) / f) for f in manifest["files"]]) if manifest["files"] else None
    expected = expected_schema(plan, group, manifest["mode"])
    if table is None:
        return expected.empty_table()
    if not table.schema.equals(expected):
        raise SnapshotSchemaError(f"snapshots under {path} do not match the plan's schema of group '{group}'")
    return table
