"""Resolve the plan's connection ids without Airflow, so the CLI works when Airflow is down.

Reads ``AIRFLOW_CONN_<ID>`` (a URI or Airflow's JSON form), the same variables Airflow reads,
so one environment serves both. Inside Airflow the hooks resolve connections instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit


class ConnectionNotFound(LookupError):
    """A connection id of the plan is not configured."""


class StoreUnavailable(ConnectionError):
    """A store did not answer; names the connection so the on-call engineer knows where to look."""

    def __init__(self, conn_id: str, what: str, cause: BaseException | None = None) -> None:
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        super().__init__(
            f"connection '{conn_id}' ({what}) did not answer{detail}. "
            f"Check that the server is up and that AIRFLOW_CONN_{conn_id.upper()} (or the Airflow connection) is right."
        )
        self.conn_id = conn_id


@dataclass(frozen=True)
class ConnInfo:
    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def postgres_url(self) -> str:
        """A libpq URL; a host starting with '/' is a Unix socket directory."""
        user = quote(self.login or "postgres")
        auth = f"{user}:{quote(self.password)}@" if self.password else f"{user}@"
        db = self.schema or "postgres"
        params = {k: str(v) for k, v in self.extra.items() if k in ("sslmode", "options", "application_name")}
        if self.host and self.host.startswith("/"):
            params["host"] = self.host
            if self.port:
                params["port"] = str(self.port)
            return f"postgresql://{auth}/{db}?{urlencode(params)}"
        host = self.host or "localhost"
        port = f":{self.port}" if self.port else ""
        query = f"?{urlencode(params)}" if params else ""
        return f"postgresql://{auth}{host}{port}/{db}{query}"

    def redis_url(self) -> str:
        db = int(self.extra.get("db", 0) or 0)
        auth = (
            f":{quote(self.password)}@"
            if self.password and self.password.lower() not in ("none", "false")
            else ""
        )
        return f"redis://{auth}{self.host or '127.0.0.1'}:{self.port or 6379}/{db}"


def parse_airflow_conn(conn_id: str, value: str) -> ConnInfo:
    """Parse the value of an ``AIRFLOW_CONN_*`` variable (JSON or URI)."""
    value = value.strip()
    if value.startswith("{"):
        data = json.loads(value)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        return ConnInfo(
            conn_id=conn_id,
            conn_type=data.get("conn_type", ""),
            host=data.get("host"),
            port=int(data["port"]) if data.get("port") else None,
            login=data.get("login"),
            password=data.get("password"),
            schema=data.get("schema"),
            extra=extra,
        )
    parts = urlsplit(value)
    scheme = parts.scheme.replace("-", "_")
    conn_type = {"postgresql": "postgres", "postgres": "postgres", "redis": "redis"}.get(scheme, scheme)
    query: dict[str, Any] = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or parts.hostname
    return ConnInfo(
        conn_id=conn_id,
        conn_type=conn_type,
        host=host,
        port=parts.port,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        schema=unquote(parts.path.lstrip("/")) or None,
        extra=query,
    )


def resolve(conn_id: str) -> ConnInfo:
    """The connection ``conn_id`` from the environment, or a clear error saying how to set it."""
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not value:
        raise ConnectionNotFound(
            f"connection '{conn_id}' is not configured: set AIRFLOW_CONN_{conn_id.upper()} to a URI "
            f"(postgresql://user:pass@host:5432/db or redis://host:6379?db=0) or to Airflow's JSON form"
        )
    return parse_airflow_conn(conn_id, value)


def postgres_url(conn_id: str) -> str:
    return resolve(conn_id).postgres_url()


def redis_url(conn_id: str) -> str:
    return resolve(conn_id).redis_url()


def connect_postgres(conn_id: str, url: str | None = None, **kwargs: Any) -> Any:
    """Open a psycopg connection, turning failures into :class:`StoreUnavailable`."""
    import psycopg

    try:
        return psycopg.connect(url or postgres_url(conn_id), connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(conn_id, "Postgres", exc) from exc


def connect_redis(conn_id: str, url: str | None = None) -> Any:
    """Open a Redis client and ping it, turning failures into :class:`StoreUnavailable`."""
    import redis

    client = redis.Redis.from_url(url or redis_url(conn_id), socket_connect_timeout=5, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StoreUnavailable(conn_id, "Redis", exc) from exc
    return client


def redact(text: str, *secrets: str | None) -> str:
    """Remove passwords from a message before it reaches a log, XCom or report."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
