"""One hook per plan: the six connections a migration touches, resolved through Airflow.

A plan names its connections by role (``legacy_online``, ``legacy_offline``, ``event_log``,
``new_store``, ``registry``, ``model_metrics``). Operators ask this hook for a role and get the
URL or client the core takes; the hook remembers every password it handed out so operators can
redact them from anything they log, push to XCom or write into a report.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_fsmigration.connections import redact

if TYPE_CHECKING:
    from airflow_fsmigration.hooks.stores import FsMigrationPostgresHook, FsMigrationRedisHook
    from airflow_fsmigration.plan import MigrationPlan

POSTGRES_ROLES = ("legacy_offline", "event_log", "new_store", "registry", "model_metrics")
REDIS_ROLES = ("legacy_online", "routing_mirror")


class MigrationHook(BaseHook):
    """Resolve a plan's connection roles to Postgres and Redis hooks, lazily and once each.

    :param plan: the loaded migration plan (its ``connections`` section names the conn ids).
    """

    hook_name = "Feature store migration"

    def __init__(self, plan: MigrationPlan, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self._pg: dict[str, FsMigrationPostgresHook] = {}
        self._redis: dict[str, FsMigrationRedisHook] = {}

    def conn_id(self, role: str) -> str:
        if role not in (*POSTGRES_ROLES, *REDIS_ROLES):
            raise ValueError(f"unknown connection role {role!r}: use one of {POSTGRES_ROLES + REDIS_ROLES}")
        return self.plan.connections.conn_id(role)

    def postgres(self, role: str) -> FsMigrationPostgresHook:
        from airflow_fsmigration.hooks.stores import FsMigrationPostgresHook

        if role not in POSTGRES_ROLES:
            raise ValueError(f"connection role {role!r} is not a Postgres-wire store")
        if role not in self._pg:
            self._pg[role] = FsMigrationPostgresHook(postgres_conn_id=self.conn_id(role))
        return self._pg[role]

    def redis(self, role: str = "legacy_online") -> FsMigrationRedisHook:
        """The Redis of ``legacy_online`` (features) or ``routing_mirror`` (routing control plane)."""
        from airflow_fsmigration.hooks.stores import FsMigrationRedisHook

        if role not in REDIS_ROLES:
            raise ValueError(f"connection role {role!r} is not a Redis store")
        if role not in self._redis:
            self._redis[role] = FsMigrationRedisHook(redis_conn_id=self.conn_id(role))
        return self._redis[role]

    def postgres_url(self, role: str) -> str:
        return self.postgres(role).libpq_url()

    def connect(self, role: str, **kwargs: Any) -> Any:
        """A psycopg connection for a Postgres role (autocommit unless told otherwise)."""
        return self.postgres(role).connect(**kwargs)

    def redis_url(self, role: str = "legacy_online") -> str:
        return self.redis(role).redis_url()

    def redis_client(self, role: str = "legacy_online") -> Any:
        return self.redis(role).client()

    @cached_property
    def registry_conn(self) -> Any:
        """One autocommit connection to the registry Postgres, shared by the calls of a task."""
        return self.connect("registry")

    def secrets(self) -> list[str]:
        """Every password resolved so far (to redact from logs, XCom and reports)."""
        found = [s for h in self._pg.values() for s in h.secrets]
        for hook in self._redis.values():
            found += hook.secrets
        return found

    def redact(self, text: str) -> str:
        return redact(text, *self.secrets())

    def close(self) -> None:
        conn = self.__dict__.pop("registry_conn", None)
        if conn is not None:
            conn.close()

    def get_conn(self) -> Any:
        return self.registry_conn
