"""Connection ids resolve without Airflow, and a missing one says how to set it."""

from __future__ import annotations

import json

import psycopg
import pytest
import redis

from airflow_fsmigration.connections import (
    ConnectionNotFound,
    StoreUnavailable,
    connect_postgres,
    connect_redis,
    parse_airflow_conn,
    resolve,
)
from fsmig_dev.devservices import airflow_conn_env, free_port


@pytest.mark.unit
def test_uri_and_json_forms() -> None:
    info = parse_airflow_conn("pg", "postgresql://u:s%40cret@db.example:6543/feat?sslmode=require")
    assert (info.conn_type, info.host, info.port, info.login, info.password, info.schema) == (
        "postgres",
        "db.example",
        6543,
        "u",
        "s@cret",
        "feat",
    )
    assert info.postgres_url() == "postgresql://u:s%40cret@db.example:6543/feat?sslmode=require"
    sock = parse_airflow_conn(
        "pg", json.dumps({"conn_type": "postgres", "host": "/tmp/sock", "login": "postgres", "schema": "x"})
    )
    assert sock.postgres_url() == "postgresql://postgres@/x?host=%2Ftmp%2Fsock"
    rd = parse_airflow_conn(
        "r", json.dumps({"conn_type": "redis", "host": "h", "port": 7000, "extra": {"db": 3}})
    )
    assert rd.redis_url() == "redis://h:7000/3"
    assert parse_airflow_conn("r", "redis://h:6379?db=2").redis_url() == "redis://h:6379/2"


@pytest.mark.unit
def test_missing_connection_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(ConnectionNotFound, match="set AIRFLOW_CONN_NOPE"):
        resolve("nope")


@pytest.mark.integration
def test_embedded_servers_round_trip(pg_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for conn_id, url in (("fsmig_pg", pg_url), ("fsmig_redis", redis_url)):
        for key, value in airflow_conn_env(conn_id, url).items():
            monkeypatch.setenv(key, value)
    with connect_postgres("fsmig_pg") as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    client = connect_redis("fsmig_redis")
    client.set("k", "v")
    assert redis.Redis.from_url(redis_url).get("k") == b"v"


@pytest.mark.integration
def test_unreachable_store_names_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_PG", f"postgresql://postgres@127.0.0.1:{port}/x")
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_REDIS", f"redis://127.0.0.1:{port}")
    with pytest.raises(StoreUnavailable, match="connection 'dead_pg' \\(Postgres\\) did not answer") as exc:
        connect_postgres("dead_pg")
    assert isinstance(exc.value.__cause__, psycopg.OperationalError)
    with pytest.raises(StoreUnavailable, match="AIRFLOW_CONN_DEAD_REDIS"):
        connect_redis("dead_redis")


# --- URLs passed through faithfully (issue 13): each form against a real server where one exists.


def _socket_dir(url: str) -> str | None:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query)).get("host")


def _db(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path.lstrip("/")


@pytest.mark.integration
def test_postgres_options_with_spaces_and_socket_dir_reach_the_server(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-c search_path=x`` was re-encoded as '+' and refused; now the server applies it."""
    sock = _socket_dir(pg_url)
    if sock is None:
        pytest.skip("the test Postgres is not on a Unix socket")
    db = _db(pg_url)
    extra = {
        "options": "-c search_path=fsmig_x,public",
        "application_name": "fsmig h2 test",
        "sslmode": "disable",
    }
    conn = {"conn_type": "postgres", "host": sock, "login": "postgres", "schema": db, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_PG_JSON", json.dumps(conn))
    # The URI form: socket directory and options in the query, '%20' for the space.
    monkeypatch.setenv(
        "AIRFLOW_CONN_PG_URI",
        f"postgresql://postgres@/{db}?host={sock}&options=-c%20search_path%3Dfsmig_y&application_name=a%20b",
    )
    with connect_postgres("pg_json") as c:
        assert c.execute("SHOW search_path").fetchone() == ("fsmig_x,public",)
        assert c.execute("SELECT current_setting('application_name')").fetchone() == ("fsmig h2 test",)
    with connect_postgres("pg_uri") as c:
        assert c.execute("SHOW search_path").fetchone() == ("fsmig_y",)
        assert c.execute("SELECT current_setting('application_name')").fetchone() == ("a b",)
    assert parse_airflow_conn("x", f"postgresql://u@/d?host={sock}&port=5433").postgres_url() == (
        f"postgresql://u@/d?host={sock.replace('/', '%2F')}&port=5433"
    )


@pytest.mark.integration
def test_postgres_sslmode_is_passed_through(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """sslmode reaches libpq: the live connection reports the mode it was opened with."""
    sock = _socket_dir(pg_url)
    if sock is None:
        pytest.skip("the test Postgres is not on a Unix socket")
    # libpq applies no TLS on a Unix socket, so both modes connect to the embedded server.
    for mode in ("disable", "require"):
        conn = {"conn_type": "postgres", "host": sock, "login": "postgres", "schema": _db(pg_url),
                "extra": {"sslmode": mode, "connect_timeout": 7}}  # fmt: skip
        monkeypatch.setenv(f"AIRFLOW_CONN_PG_{mode.upper()}", json.dumps(conn))
        with connect_postgres(f"pg_{mode}") as c:
            params = c.info.get_parameters()
            assert (params.get("sslmode"), c.execute("SELECT 1").fetchone()) == (mode, (1,))
            assert params.get("host") == sock


@pytest.fixture
def redis_socket(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server listening only on a Unix socket (TCP off), started and stopped here."""
    import subprocess
    import time

    from fsmig_dev.devservices import redis_server_binary

    folder = tmp_path_factory.mktemp("redis_sock")
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--requirepass", "s/cr t"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield sock
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.integration
def test_redis_unix_socket_is_not_rewritten_to_localhost(
    redis_socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``unix:///path/redis.sock`` was silently read as 127.0.0.1:6379; now it is that socket."""
    monkeypatch.setenv("AIRFLOW_CONN_R_URI", f"unix://:s%2Fcr%20t@{redis_socket}?db=2")
    monkeypatch.setenv(
        "AIRFLOW_CONN_R_JSON",
        json.dumps(
            {"conn_type": "redis", "host": str(redis_socket), "password": "s/cr t", "extra": {"db": 3}}
        ),
    )
    assert resolve("r_uri").redis_url() == f"unix://:s%2Fcr%20t@{redis_socket}?db=2"
    connect_redis("r_uri").set("k", "via uri")
    connect_redis("r_json").set("k", "via json")
    direct = redis.Redis(unix_socket_path=str(redis_socket), password="s/cr t", db=2)
    assert direct.get("k") == b"via uri"
    assert redis.Redis(unix_socket_path=str(redis_socket), password="s/cr t", db=3).get("k") == b"via json"


@pytest.mark.integration
def test_rediss_means_tls_and_never_falls_back_to_plaintext(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``rediss://`` (or ``ssl: true``) connection speaks TLS: to a plaintext server it fails."""
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    tls_url = f"rediss://{host_port}/1?ssl_cert_reqs=none&ssl_ca_certs=%2Fetc%2Fca.pem"
    info = parse_airflow_conn("t", tls_url)
    assert info.redis_url() == tls_url
    pool = redis.Redis.from_url(info.redis_url()).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    airflow_form = {"conn_type": "redis", "host": "h", "port": 6380, "extra": {"ssl": True, "db": 4}}
    assert parse_airflow_conn("t", json.dumps(airflow_form)).redis_url() == "rediss://h:6380/4"
    monkeypatch.setenv("AIRFLOW_CONN_TLS_REDIS", f"rediss://{host_port}/0?ssl_cert_reqs=none")
    with pytest.raises(StoreUnavailable, match="connection 'tls_redis' \\(Redis\\)"):
        connect_redis("tls_redis")
    # The same server in plaintext answers, so the failure above is the TLS handshake.
    monkeypatch.setenv("AIRFLOW_CONN_PLAIN_REDIS", f"redis://{host_port}/0")
    assert connect_redis("plain_redis").ping()


@pytest.mark.unit
def test_urls_keep_case_quoting_and_bad_values_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_fsmigration.connections import ConnectionInvalid

    info = parse_airflow_conn("pg", "postgresql://u:p%2Fw%20x@%2Fvar%2Frun%2FPG/My%20DB?cursor=dict")
    # socket directory keeps its case, '/' and ' ' in the password are escaped, non-libpq extras dropped
    assert info.postgres_url() == "postgresql://u:p%2Fw%20x@/My%20DB?host=%2Fvar%2Frun%2FPG"
    assert parse_airflow_conn("r", "redis://h:6379/2").redis_url() == "redis://h:6379/2"
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN", "postgresql://u@h:notaport/db")
    with pytest.raises(ConnectionInvalid, match="connection 'broken' cannot be read"):
        resolve("broken")
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN", "{not json")
    with pytest.raises(ConnectionInvalid, match="fix AIRFLOW_CONN_BROKEN"):
        resolve("broken")
