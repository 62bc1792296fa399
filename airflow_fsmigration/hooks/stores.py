"""Hooks that turn an Airflow connection id into what the plain core takes: a URL or a client.

The core (stores, comparison, registry) never imports Airflow; it takes libpq URLs, psycopg
connections and redis clients. These hooks are the only place an Airflow ``Connection`` becomes
one of those, so secrets stay inside the returned objects and never reach a log line.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.providers.redis.hooks.redis import RedisHook

from airflow_fsmigration.connections import ConnInfo

if TYPE_CHECKING:
    from airflow.sdk import Connection


def conn_info(conn: Connection) -> ConnInfo:
    """Convert an Airflow ``Connection`` to the core's :class:`ConnInfo` (password kept out of repr).

    A Unix-socket host may arrive as the host itself (``/tmp/pg``) or, from a URI such as
    ``postgresql://u@/db?host=/tmp/pg``, as ``extra["host"]``; both become the libpq ``host``.
    """
    extra = dict(conn.extra_dejson or {})
    host = conn.host or extra.pop("host", None)
    extra.pop("host", None)
    return ConnInfo(
        conn_id=conn.conn_id,
        conn_type=conn.conn_type or "",
        host=host or None,
        port=int(conn.port) if conn.port else None,
        login=conn.login or None,
        password=conn.password or None,
        schema=conn.schema or None,
        extra=extra,
    )


class FsMigrationPostgresHook(PostgresHook):
    """A Postgres-wire store (new store, legacy offline store, event log, registry, model metrics).

    Adds :meth:`libpq_url` and :meth:`connect` on top of :class:`PostgresHook`, for the core.

    :param postgres_conn_id: the Airflow connection id.
    """

    hook_name = "Feature store migration: Postgres wire"

    @cached_property
    def info(self) -> ConnInfo:
        return conn_info(self.connection)

    def libpq_url(self) -> str:
        """A ``postgresql://`` URL libpq and psycopg accept; Unix-socket hosts become ``?host=``."""
        return self.info.postgres_url()

    def connect(self, *, autocommit: bool = True, **kwargs: Any) -> Any:
        """A psycopg connection; an unreachable server raises :class:`StoreUnavailable` naming the conn id."""
        from airflow_fsmigration.connections import connect_postgres

        return connect_postgres(self.info.conn_id, self.libpq_url(), autocommit=autocommit, **kwargs)

    @property
    def secrets(self) -> list[str]:
        return [self.info.password] if self.info.password else []


class FsMigrationRedisHook(RedisHook):
    """The legacy online store (and the routing mirror): a Redis client or URL for the core.

    :param redis_conn_id: the Airflow connection id.
    """

    hook_name = "Feature store migration: Redis"

    @cached_property
    def info(self) -> ConnInfo:
        return conn_info(self.get_connection(self.redis_conn_id))

    def redis_url(self) -> str:
        return self.info.redis_url()

    def client(self) -> Any:
        """A pinged ``redis.Redis``; an unreachable server raises :class:`StoreUnavailable`."""
        from airflow_fsmigration.connections import connect_redis

        return connect_redis(self.info.conn_id, self.redis_url())

    @property
    def secrets(self) -> list[str]:
        return [self.info.password] if self.info.password else []
