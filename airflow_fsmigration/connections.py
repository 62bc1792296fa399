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


class ConnectionInvalid(ConnectionNotFound):
    """A connection's value cannot be parsed (bad JSON, a port that is not a number)."""


class StoreUnavailable(ConnectionError):
    """A store did not answer; names the connection so the on-call engineer knows where to look."""

    def __init__(self, conn_id: str, what: str, cause: BaseException | None = None) -> None:
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        super().__init__(
            f"connection '{conn_id}' ({what}) did not answer{detail}. "
            f"Check that the server is up and that AIRFLOW_CONN_{conn_id.upper()} (or the Airflow connection) is right."
        )
        self.conn_id = conn_id


# libpq connection parameters that may ride in a URL's query or a connection's extra; other
# extras (Airflow's cursor, iam, ...) mean nothing to libpq and would make it refuse the URL.
LIBPQ_PARAMS = frozenset(
    [
        "application_name",
        "channel_binding",
        "client_encoding",
        "connect_timeout",
        "fallback_application_name",
        "gssencmode",
        "gsslib",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "krbsrvname",
        "load_balance_hosts",
        "options",
        "passfile",
        "replication",
        "require_auth",
        "requirepeer",
        "service",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "sslcert",
        "sslcertmode",
        "sslcompression",
        "sslcrl",
        "sslcrldir",
        "sslkey",
        "sslmode",
        "sslnegotiation",
        "sslpassword",
        "sslrootcert",
        "sslsni",
        "target_session_attrs",
        "tcp_user_timeout",
    ]
)
# redis-py URL options (TLS files, timeouts); passed through as written.
REDIS_PARAMS = frozenset(
    [
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "ssl_min_version",
        "socket_timeout",
        "socket_connect_timeout",
        "health_check_interval",
        "protocol",
    ]
)
_TRUE = ("1", "true", "yes", "on")


def _q(text: str) -> str:
    """Percent-encode for a URL part; spaces become %20, never '+' (libpq does not decode '+')."""
    return quote(str(text), safe="")


def _query(params: dict[str, Any]) -> str:
    return urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)


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
        """A libpq URL; a host starting with '/' is a Unix socket directory.

        ``options`` (``-c search_path=x``), ``sslmode`` and every other libpq parameter in the
        extra pass through unchanged, percent-encoded the way libpq decodes them.
        """
        user = _q(self.login or "postgres")
        auth = f"{user}:{_q(self.password)}@" if self.password else f"{user}@"
        db = _q(self.schema or "postgres")
        params = {k: v for k, v in self.extra.items() if k in LIBPQ_PARAMS and v is not None}
        if self.host and self.host.startswith("/"):
            params = {"host": self.host, **({"port": self.port} if self.port else {}), **params}
            return f"postgresql://{auth}/{db}?{_query(params)}"
        host = self.host or "localhost"
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        port = f":{self.port}" if self.port else ""
        query = f"?{_query(params)}" if params else ""
        return f"postgresql://{auth}{host}{port}/{db}{query}"

    def redis_url(self) -> str:
        """A redis-py URL: ``unix://`` for a socket path, ``rediss://`` for TLS, else ``redis://``.

        A host starting with '/' (or a ``unix://`` connection) is the socket file; TLS comes from
        a ``rediss://`` URI or ``ssl: true`` in the extra (Airflow's Redis connection field).
        """
        db = int(self.extra.get("db", 0) or 0)
        password = self.password if self.password and self.password.lower() not in ("none", "false") else None
        user = _q(self.login) if self.login else ""
        # A user name without a password would make redis-py send AUTH with an empty password.
        auth = f"{user}:{_q(password)}@" if password else ""
        params: dict[str, Any] = {k: v for k, v in self.extra.items() if k in REDIS_PARAMS and v is not None}
        if self.host and self.host.startswith("/"):
            query = _query({"db": db, **params})
            return f"unix://{auth}{quote(self.host)}?{query}"
        tls = str(self.extra.get("ssl", "")).lower() in _TRUE
        host = self.host or "127.0.0.1"
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        query = f"?{_query(params)}" if params else ""
        return f"{'rediss' if tls else 'redis'}://{auth}{host}:{self.port or 6379}/{db}{query}"


def _raw_host(netloc: str) -> str | None:
    """The host part of a URL as written (``urlsplit`` lower-cases it, which breaks socket paths)."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[1 : host.find("]")] or None
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return unquote(host) or None


def parse_airflow_conn(conn_id: str, value: str) -> ConnInfo:
    """Parse the value of an ``AIRFLOW_CONN_*`` variable (JSON or URI).

    Redis: ``redis://``, ``rediss://`` (TLS) and ``unix:///path/redis.sock`` are kept apart, so
    the product reads the server that is configured and no other; the database comes from the
    path (``/2``) or ``?db=2``. Postgres: a socket directory may be the host or ``?host=``.
    """
    value = value.strip()
    if value.startswith("{"):
        data = json.loads(value)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        return ConnInfo(
            conn_id=conn_id,
            conn_type=data.get("conn_type", ""),
            host=data.get("host") or extra.pop("host", None),
            port=int(data["port"]) if data.get("port") else None,
            login=data.get("login"),
            password=data.get("password"),
            schema=data.get("schema"),
            extra=extra,
        )
    parts = urlsplit(value)
    scheme = parts.scheme.replace("-", "_")
    conn_type = {"postgresql": "postgres", "postgres": "postgres", "redis": "redis", "unix": "redis"}.get(
        scheme, scheme
    )
    query: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    port = parts.port or (int(query.pop("port")) if str(query.get("port", "")).isdigit() else None)
    if scheme == "rediss":
        conn_type, query["ssl"] = "redis", "true"
    path = unquote(parts.path)
    host = query.pop("host", None) or _raw_host(parts.netloc)
    schema = path.lstrip("/") or None
    if scheme == "unix":
        host, schema = path or None, None
    if conn_type == "redis":
        if schema and schema.isdigit():
            query.setdefault("db", schema)
        schema = None
    return ConnInfo(
        conn_id=conn_id,
        conn_type=conn_type,
        host=host,
        port=port,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        schema=schema,
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
    try:
        return parse_airflow_conn(conn_id, value)
    except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise ConnectionInvalid(
            f"connection '{conn_id}' cannot be read ({type(exc).__name__}: {exc}): fix "
            f"AIRFLOW_CONN_{conn_id.upper()} (a URI such as postgresql://user@host:5432/db, or Airflow's JSON form)"
        ) from None


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
