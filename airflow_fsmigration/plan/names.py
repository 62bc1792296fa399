"""Names the plan may hold: identifiers, Postgres relations and columns, connection ids, Redis text.

Each validator says what is wrong and what to use instead; the loader maps the error to file and line.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
# Postgres truncates names beyond 63 bytes (NAMEDATALEN - 1), so two long names could collide.
PG_NAME_MAX = 63
# A group's name is extended into relation names such as ``<group>_snapshots_run_time_idx``.
GROUP_NAME_MAX = 40
# Names of existing relations and columns: quoted exactly as written, so upper case is allowed,
# but nothing that only quoting makes legal (spaces, quotes, semicolons, dots inside a part).
_SQL_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _identifier(value: str, limit: int = PG_NAME_MAX) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lower-case letters, digits and '_', starting with a letter"
        )
    if len(value) > limit:
        raise ValueError(f"name {value!r} is {len(value)} characters long; the limit is {limit}")
    return value


Name = Annotated[str, BeforeValidator(lambda v: _identifier(v) if isinstance(v, str) else v)]
GroupName = Annotated[
    str, BeforeValidator(lambda v: _identifier(v, GROUP_NAME_MAX) if isinstance(v, str) else v)
]


def _sql_part(part: str, whole: str, what: str) -> None:
    if not _SQL_PART.match(part):
        raise ValueError(
            f"{what} {whole!r} cannot be a Postgres name: use letters, digits, '_' and '$', "
            "starting with a letter or '_'"
        )
    if len(part.encode()) > PG_NAME_MAX:
        raise ValueError(f"{what} {whole!r}: {part!r} is longer than Postgres' {PG_NAME_MAX} bytes")


#: A Feast query source has no table: ``feast_query:<source>`` names the query in the .feast.json.
FEAST_QUERY_PREFIX = "feast_query:"
# A column name a person could have given: quoted everywhere, so spaces and dashes are fine;
# control characters, double quotes and semicolons are not (injection-shaped, never a real column).
_COLUMN_BAD = re.compile(r'[\x00-\x1f\x7f";]')


def relation_name(value: str) -> str:
    if value.startswith(FEAST_QUERY_PREFIX) and len(value) > len(FEAST_QUERY_PREFIX):
        _sql_part(value[len(FEAST_QUERY_PREFIX) :], value, "Feast query source")
        return value
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(f"table {value!r} must be 'table' or 'schema.table'")
    for part in parts:
        _sql_part(part, value, "table")
    return value


def column_name(value: str) -> str:
    if not value.strip() or _COLUMN_BAD.search(value):
        raise ValueError(
            f"column {value!r} cannot be a Postgres name: no control characters, double quotes or ';'"
        )
    if len(value.encode()) > PG_NAME_MAX:
        raise ValueError(f"column {value!r} is longer than Postgres' {PG_NAME_MAX} bytes")
    return value


Relation = Annotated[str, AfterValidator(relation_name)]
Column = Annotated[str, AfterValidator(column_name)]


def _conn_id(value: str) -> str:
    if not _CONN_ID.match(value):
        raise ValueError(
            f"connection id {value!r} is not an Airflow connection id: use letters, digits, '_', '.' "
            "and '-' (at most 250)"
        )
    return value


ConnId = Annotated[str, AfterValidator(_conn_id)]


def _redis_text(value: str, what: str, limit: int) -> str:
    if not value or _CONTROL.search(value):
        raise ValueError(f"{what} {value!r} must be non-empty, without spaces or control characters")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {limit}")
    return value
