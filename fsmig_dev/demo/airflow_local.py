"""``make airflow``: the project's DAGs in a local Airflow, wired to the embedded demo stores.

Starts (or reuses) the embedded Postgres and Redis of ``make demo`` with its data under
``.fsmig/demo`` (generated here at a modest size when the demo has not made it yet), then runs
Airflow's api-server, scheduler, dag-processor and triggerer as child processes with
``AIRFLOW_HOME=.fsmig/airflow``, the repository's ``dags/`` folder, ``FSMIG_PLAN`` set to the demo's
plan copy (the one with the planted bug) and every connection of the plan as ``AIRFLOW_CONN_*``.
Airflow's metadata lives in a database ``airflow`` of the same embedded Postgres, so the
LocalExecutor runs tasks in parallel without SQLite's locking.

We run the four components ourselves rather than ``airflow standalone`` so that each sits in its
own process group: Ctrl-C (or SIGTERM) stops every Airflow process and its workers, then the
servers, and nothing is left running. Login is Airflow's simple auth manager: user ``admin``
with a generated password kept in ``.fsmig/airflow/passwords.json`` and printed at startup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("fsmig_dev.demo.airflow")

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
METADATA_DB = "airflow"
ADMIN = "admin"
# Sizes used when the demo data does not exist yet: big enough to look real, quick to make.
DEFAULT_ENTITIES = 10_000
DEFAULT_DAYS = 90
DEFAULT_HISTORY = 500


class Stop(Exception):
    """Raised in the main thread by SIGTERM (SIGINT raises KeyboardInterrupt): shut down cleanly."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fsmig_dev.demo.airflow_local", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--data-dir", type=Path, default=Path(".fsmig/demo"), help="demo server data (shared with make demo)"
    )
    p.add_argument("--home", type=Path, default=Path(".fsmig/airflow"), help="AIRFLOW_HOME")
    p.add_argument("--dags-folder", type=Path, default=REPO / "dags", help="DAGs folder (default: dags/)")
    p.add_argument("--host", default="127.0.0.1", help="api-server bind address (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("FSMIG_AIRFLOW_PORT") or 8080),
        help="api-server port (default $FSMIG_AIRFLOW_PORT or 8080)",
    )
    p.add_argument(
        "--entities",
        type=int,
        default=None,
        help="users of the demo data; default: reuse whatever make demo generated, "
        f"else generate {DEFAULT_ENTITIES:,}",
    )
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of raw events when generating")
    p.add_argument(
        "--history-entities",
        type=int,
        default=DEFAULT_HISTORY,
        help="users in the legacy offline history when generating",
    )
    p.add_argument("--regenerate", action="store_true", help="regenerate the demo data")
    p.add_argument("--no-bug", action="store_true", help="generate without the planted bug")
    p.add_argument(
        "--parallelism", type=int, default=4, help="LocalExecutor task slots (default 4; 2-core friendly)"
    )
    p.add_argument(
        "--scale",
        choices=("production", "seconds"),
        default=os.environ.get("FSMIG_AIRFLOW_SCALE") or "production",
        help="time scale of the plan: production (the plan as written: 14-day soak, 48 h bakes) or "
        "seconds (make demo's scale, with a serving feed, to watch a whole migration in minutes); "
        "default $FSMIG_AIRFLOW_SCALE or production",
    )
    p.add_argument(
        "--inject-breach",
        default="merchant_stats",
        help="at the seconds scale, the group whose models lose AUC at 50%% ('none': no breach)",
    )
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for Airflow to be up")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


# --- demo data -----------------------------------------------------------------------------------


@dataclass
class DemoServers:
    """The embedded servers with the demo data, and the environment that reaches them."""

    pg: Any
    redis: Any
    env: Any  # demo.data.DemoEnvironment

    def stop(self) -> None:
        self.redis.stop()
        self.pg.stop()


def start_demo_servers(args: argparse.Namespace) -> DemoServers:
    """Start Postgres and Redis on ``args.data_dir`` and reuse its demo data, or generate it.

    With no ``--entities``, any intact data that ``make demo`` (or an earlier run) left is reused,
    whatever its size; with ``--entities`` the data is reused only when it was made with the same
    sizes, as ``make demo`` does.
    """
    from airflow_fsmigration.plan import load_plan
    from fsmig_dev.demo import __main__ as demo
    from fsmig_dev.demo.data import DemoEnvironment, generate_demo
    from fsmig_dev.devservices import start_redis

    data_dir = args.data_dir.resolve()
    demo_args = demo.parse_args(
        [
            "--entities",
            str(args.entities or DEFAULT_ENTITIES),
            "--days",
            str(args.days),
            "--history-entities",
            str(args.history_entities),
            "--data-dir",
            str(data_dir),
            *(["--no-bug"] if args.no_bug else []),
        ]
    )
    stamp_path = data_dir / "env.json"
    fingerprint = demo._fingerprint(demo_args)
    if args.entities is None and not args.regenerate and stamp_path.exists():
        with contextlib.suppress(ValueError, KeyError):
            fingerprint = json.loads(stamp_path.read_text())["fingerprint"]  # whatever the demo made

    log.info("starting embedded Postgres (%s) and Redis", data_dir / "pg")
    pg = demo._start_postgres(data_dir / "pg")
    try:
        rd = start_redis(data_dir=data_dir / "redis")
    except BaseException:
        pg.stop()
        raise
    try:
        urls = {role: pg.database_url(name) for role, name in demo.DATABASES.items()}
        existing = demo._existing_databases(pg.url)
        have_all = all(name in existing for name in demo.DATABASES.values())
        stamp = (
            None if args.regenerate or not have_all else demo._reusable(stamp_path, fingerprint, urls, rd.url)
        )
        if stamp is not None:
            env = demo._env_from_stamp(stamp["env"], urls, rd.url, DemoEnvironment)
            log.info(
                "reusing the demo data in %s (%s users, as of %s; --regenerate to rebuild)",
                data_dir,
                f"{env.entities.get('user_id', 0):,}",
                env.now.isoformat(),
            )
            return DemoServers(pg, rd, env)
        stamp_path.unlink(missing_ok=True)
        for role, name in demo.DATABASES.items():
            urls[role] = pg.create_database(name, drop=name in existing)
        log.info(
            "generating the demo feature store: %s users, %d days of events, history for %s users "
            "(--entities to change; make demo uses 100,000)",
            f"{demo_args.entities:,}",
            demo_args.days,
            f"{demo_args.history_entities:,}",
        )
        t0 = time.perf_counter()
        env = generate_demo(
            urls["events"],
            urls["legacy"],
            urls["registry"],
            rd.url,
            load_plan(demo_args.plan),
            entities=demo_args.entities,
            days=demo_args.days,
            seed=demo_args.seed,
            history_entities=demo_args.history_entities,
            plan_dir=data_dir / "plan",
            inject_bug=not demo_args.no_bug,
        )
        if demo._save_redis(rd.url):
            stamp_path.write_text(
                json.dumps({"fingerprint": demo._fingerprint(demo_args), "env": env.to_dict()}, indent=2)
            )
        log.info("demo data ready in %.0f s", time.perf_counter() - t0)
        return DemoServers(pg, rd, env)
    except BaseException:
        rd.stop()
        pg.stop()
        raise


# --- Airflow configuration -----------------------------------------------------------------------


def metadata_url(pg_url: str, database: str = METADATA_DB) -> str:
    """SQLAlchemy URL (psycopg 3) for ``database`` on the embedded Postgres, which listens on a socket."""
    parts = urlsplit(pg_url)
    host = parse_qs(parts.query).get("host", [""])[0]
    user = parts.username or "postgres"
    netloc = f"{user}:{parts.password or ''}@{parts.hostname or ''}" + (
        f":{parts.port}" if parts.port else ""
    )
    query = f"?host={host}" if host else ""
    return f"postgresql+psycopg://{netloc}/{database}{query}"


def admin_password(home: Path) -> tuple[str, Path]:
    """The ``admin`` password from ``home/passwords.json``, generated on first use."""
    path = home / "passwords.json"
    passwords: dict[str, str] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            passwords = json.loads(path.read_text() or "{}")
    if not passwords.get(ADMIN):
        passwords[ADMIN] = secrets.token_urlsafe(12)
        path.write_text(json.dumps(passwords) + "\n")
        path.chmod(0o600)
    return passwords[ADMIN], path


def _jwt_secret(home: Path) -> str:
    """One secret for every component (tokens signed by one must verify in another), kept across runs."""
    path = home / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_env(
    *,
    home: Path,
    dags_folder: Path,
    plan_dir: Path,
    conn_env: dict[str, str],
    sql_alchemy_conn: str,
    host: str,
    port: int,
    parallelism: int = 4,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every Airflow process: paths, metadata DB, auth, ports and connections."""
    base_url = f"http://{'localhost' if host in ('0.0.0.0', '127.0.0.1') else host}:{port}"
    _, passwords = admin_password(home)
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
            "AIRFLOW__API__HOST": host,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(home),
            "FSMIG_PLAN": str(plan_dir),
            **conn_env,
        }
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# --- the Airflow processes -----------------------------------------------------------------------


@dataclass
class AirflowProcesses:
    """Airflow's components as child processes, each in its own process group (so its workers stop too)."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def airflow(self) -> str:
        return str(Path(sys.executable).with_name("airflow"))

    def migrate(self) -> None:
        """``airflow db migrate`` (fast when the metadata DB is current)."""
        t0 = time.perf_counter()
        log.info("migrating the Airflow metadata database")
        out = subprocess.run(
            [self.airflow, "db", "migrate"], env=self.env, capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"airflow db migrate failed (exit {out.returncode}):\n{out.stdout}{out.stderr}"
            )
        log.info("metadata database ready in %.0f s", time.perf_counter() - t0)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in COMPONENTS:
            logfile = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
            try:
                self.procs[name] = subprocess.Popen(
                    [self.airflow, name],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own group: the terminal's Ctrl-C reaches only us
                    preexec_fn=_die_with_parent,
                )
            finally:
                logfile.close()
            log.info("started airflow %s (pid %d, log %s)", name, self.procs[name].pid, logfile.name)

    def exited(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def pids(self) -> list[int]:
        """Every live process of ours: the components and all their descendants."""
        import psutil

        found: list[int] = []
        for p in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(p.pid)
                found.append(parent.pid)
                found.extend(c.pid for c in parent.children(recursive=True))
        return found

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each component's process group, wait, then SIGKILL whatever is left (also strays)."""
        import psutil

        tracked = []
        for pid in self.pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                tracked.append(psutil.Process(pid))
        for name, p in self.procs.items():
            if p.poll() is None:
                log.info("stopping airflow %s", name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(tracked, timeout=timeout)
        for proc in alive:
            log.warning("airflow process %d did not stop in %.0f s: killing it", proc.pid, timeout)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # anything that re-parented out of sight
            p.wait()
        psutil.wait_procs(alive, timeout=5)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if we die without cleaning up (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (the api-server would fail later, less clearly)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _health(base_url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{base_url}/api/v2/monitor/health", timeout=3) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, ValueError):
        return None


def wait_ready(base_url: str, procs: AirflowProcesses, timeout: float) -> None:
    """Until the API server answers and reports the scheduler, triggerer and dag-processor healthy."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        dead = procs.exited()
        if dead:
            name, code = next(iter(dead.items()))
            raise RuntimeError(f"airflow {name} exited with {code}; its log ends:\n{procs.tail(name)}")
        health = _health(base_url)
        state = (
            "api-server not answering yet"
            if health is None
            else ", ".join(f"{k} {v.get('status')}" for k, v in sorted(health.items()) if isinstance(v, dict))
        )
        if health and all(
            (health.get(k) or {}).get("status") == "healthy"
            for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        ):
            return
        if state != last:
            log.info("waiting for Airflow: %s", state)
            last = state
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Airflow was not ready within {timeout:.0f} s ({state}); logs in {procs.log_dir}"
            )
        time.sleep(1.0)


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C: raise in the main thread so the ``finally`` blocks run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal was closed
    previous = {sig: signal.getsignal(sig) for sig in caught}
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


def _banner(
    base_url: str,
    password: str,
    passwords_file: Path,
    servers: DemoServers,
    home: Path,
    plan_dir: Path,
    extra: list[str] | None = None,
) -> str:
    env = servers.env
    lines = [
        "",
        "== Airflow is up ==",
        f"  UI:              {base_url}/",
        f"  cockpit:         {base_url}/fsmig/cockpit",
        f"  login:           user '{ADMIN}', password '{password}'",
        f"                   (kept in {passwords_file})",
        f"  plan:            {plan_dir}",
        f"  logs:            {home / 'logs'}",
    ]
    if env.bug is not None:
        lines.append(
            f"  planted bug:     in group '{env.bug.group}': trigger its migrate DAG and watch its "
            "shadow comparison fail with the root cause and its fix (task log, Report link, cockpit)"
        )
    lines += extra or []
    lines += ["  stop:            Ctrl-C (stops Airflow and the embedded servers)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fsmig_dev.demo.__main__ import configure_logging

    configure_logging(verbose=args.verbose)

    started = time.perf_counter()
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    servers: DemoServers | None = None
    procs: AirflowProcesses | None = None
    feed: Any = None
    with _signals_stop():
        try:
            if not port_free(args.host, args.port):
                raise RuntimeError(
                    f"port {args.port} on {args.host} is in use (another Airflow?): stop it or use "
                    "another port (--port N, or FSMIG_AIRFLOW_PORT=N make airflow)"
                )
            servers = start_demo_servers(args)
            servers.pg.create_database(METADATA_DB)
            plan_dir, extra = servers.env.plan_dir, []
            if args.scale == "seconds":
                from fsmig_dev.demo.airflow_feed import banner_lines, prepare_seconds_scale

                inject = None if args.inject_breach.lower() == "none" else (args.inject_breach, 50.0)
                seconds = prepare_seconds_scale(servers.env, home, inject=inject)
                plan_dir, feed = seconds.plan_dir, seconds.feed
                bug = servers.env.bug
                extra = banner_lines(seconds, bug.group if bug is not None else None)
            env = airflow_env(
                home=home,
                dags_folder=args.dags_folder.resolve(),
                plan_dir=plan_dir,
                conn_env=servers.env.conn_env,
                sql_alchemy_conn=metadata_url(servers.pg.url),
                host=args.host,
                port=args.port,
                parallelism=args.parallelism,
            )
            base_url = env["AIRFLOW__API__BASE_URL"]
            procs = AirflowProcesses(env=env, log_dir=home / "logs")
            procs.migrate()
            procs.start()
            wait_ready(base_url, procs, args.ready_timeout)
            log.info("Airflow ready %.0f s after start", time.perf_counter() - started)
            if feed is not None:
                feed.__enter__()
            password, passwords_file = admin_password(home)
            print(_banner(base_url, password, passwords_file, servers, home, plan_dir, extra), flush=True)
            while not (dead := procs.exited()):
                time.sleep(1.0)
            name, code = next(iter(dead.items()))
            log.error("airflow %s exited with %s; its log ends:\n%s", name, code, procs.tail(name))
            return 1
        except (KeyboardInterrupt, Stop):
            print("\nstopping Airflow and the embedded servers ...", flush=True)
            return 0
        except (RuntimeError, TimeoutError) as exc:
            log.error("%s", exc)
            return 1
        finally:
            # A second Ctrl-C must not cut the shutdown short (it is bounded: SIGKILL after 30 s).
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            if feed is not None:
                feed.__exit__(None, None, None)
            if procs is not None:
                procs.stop()
            if servers is not None:
                servers.stop()
            log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
