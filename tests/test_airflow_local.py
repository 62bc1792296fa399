"""``make airflow``: Airflow with the project's DAGs on the embedded demo stores, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fsmig_dev.demo.airflow_local import (
    admin_password,
    airflow_env,
    main,
    metadata_url,
    parse_args,
    port_free,
    start_demo_servers,
)
from fsmig_dev.devservices import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_metadata_url_keeps_the_socket_directory() -> None:
    url = metadata_url("postgresql://postgres:@/postgres?host=/tmp/x/pg")
    assert url == "postgresql+psycopg://postgres:@/airflow?host=/tmp/x/pg"
    assert (
        metadata_url("postgresql://u:p@db:5433/postgres", "meta") == "postgresql+psycopg://u:p@db:5433/meta"
    )


@pytest.mark.unit
def test_admin_password_is_generated_once_and_kept(tmp_path: Path) -> None:
    first, path = admin_password(tmp_path)
    again, _ = admin_password(tmp_path)
    assert first == again and len(first) >= 12
    assert json.loads(path.read_text()) == {"admin": first}
    assert path.stat().st_mode & 0o077 == 0  # readable by the owner only


@pytest.mark.unit
def test_airflow_env_points_every_component_at_the_same_place(tmp_path: Path) -> None:
    env = airflow_env(
        home=tmp_path,
        dags_folder=REPO / "dags",
        plan_dir=tmp_path / "plan",
        conn_env={"AIRFLOW_CONN_FS_REGISTRY": "{}"},
        sql_alchemy_conn="postgresql+psycopg://postgres:@/airflow?host=/s",
        host="127.0.0.1",
        port=18123,
        base={"PATH": "/usr/bin", "AIRFLOW__CORE__PARALLELISM": "64"},
    )
    assert env["AIRFLOW__API__BASE_URL"] == "http://localhost:18123"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:18123/execution/"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(tmp_path / "passwords.json")
    assert env["FSMIG_PLAN"] == str(tmp_path / "plan") and env["AIRFLOW_CONN_FS_REGISTRY"] == "{}"
    assert env["PATH"].startswith(str(Path(sys.executable).parent))
    # the same JWT secret on every run, so tokens signed by the scheduler verify in the api-server
    again = airflow_env(
        home=tmp_path,
        dags_folder=REPO / "dags",
        plan_dir=tmp_path / "plan",
        conn_env={},
        sql_alchemy_conn="x",
        host="127.0.0.1",
        port=1,
        base={},
    )
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    assert again["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]


@pytest.mark.unit
def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path, caplog) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        code = main(
            ["--port", str(port), "--home", str(tmp_path / "home"), "--data-dir", str(tmp_path / "d")]
        )
    assert code == 1
    assert f"port {port} on 127.0.0.1 is in use" in caplog.text
    assert not (tmp_path / "d").exists()  # no server was started
    assert port_free("127.0.0.1", port)


# --- the whole thing, as `make airflow` runs it ---------------------------------------------------


def _api(base: str, path: str, token: str | None = None, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _trigger(base: str, token: str, dag: str) -> str:
    """Unpause ``dag`` and start a run of it now; its run id."""
    req = urllib.request.Request(
        f"{base}/api/v2/dags/{dag}",
        data=json.dumps({"is_paused": False}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="PATCH",
    )
    urllib.request.urlopen(req, timeout=60).close()
    return _api(base, f"/api/v2/dags/{dag}/dagRuns", token, body={"logical_date": None})["dag_run_id"]


def _wait_runs(
    base: str, token: str, runs: dict[str, str], proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> dict[str, dict[str, Any]]:
    """Wait until every migrate run of ``runs`` (group -> run id) ended; run and task states."""
    done: dict[str, dict[str, Any]] = {}

    def ended() -> bool:
        for group, run_id in runs.items():
            dag = f"fsmig__{group}__migrate"
            run = _api(base, f"/api/v2/dags/{dag}/dagRuns/{run_id}", token)
            if run["state"] in ("success", "failed"):
                tis = _api(base, f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances", token)
                done[group] = {
                    "run": run["state"],
                    "tasks": {t["task_id"]: t["state"] for t in tis["task_instances"]},
                }
        return len(done) == len(runs)

    _wait_for(ended, proc, log, timeout)
    return done


def _wait_for(predicate: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"airflow_local exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not up within {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(1.0)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _shrink_png(path: Path, colors: int = 96) -> None:
    """A palette PNG: a UI screenshot has few colours, so this keeps it sharp at a third of the size."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def take_screenshots(base: str, password: str, out_dir: Path) -> list[Path]:
    """The Airflow DAG list and the cockpit, logged in as admin, for the README (headless Chromium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        driver.set_page_load_timeout(60)
        driver.set_window_size(1400, 900)
        driver.get(f"{base}/auth/login")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=username]"))
        driver.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys("admin")
        driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: any(c["name"] == "_token" for c in d.get_cookies()))
        driver.set_window_size(1400, 860)
        driver.get(f"{base}/dags?tags=migrate")  # one migrate DAG per group, with their latest runs
        WebDriverWait(driver, 90).until(
            lambda d: "fsmig__" in d.page_source or "merchant_stats" in d.page_source
        )
        for button in driver.find_elements(By.CSS_SELECTOR, "[aria-label='Show table view']"):
            button.click()  # the denser table view shows more of the 25 DAGs
        time.sleep(3)  # let the list finish rendering
        dags = out_dir / "airflow_dags.png"
        driver.save_screenshot(str(dags))
        driver.get(f"{base}/fsmig/cockpit")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table"))
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(max(int(height) + 160, 600), 2400))
        time.sleep(1)
        cockpit = out_dir / "cockpit.png"
        driver.save_screenshot(str(cockpit))
        for path in (dags, cockpit):
            _shrink_png(path)
        return [dags, cockpit]
    finally:
        driver.quit()


@pytest.mark.airflow
@pytest.mark.integration
def test_make_airflow_seconds_scale_migrates_a_group_rolls_back_the_breach_and_stops_everything_on_ctrl_c() -> (
    None
):
    import psutil

    from airflow_fsmigration.dag_factory import dag_ids
    from airflow_fsmigration.plan import load_plan

    work = Path(tempfile.mkdtemp(prefix="fsmig_airflow_local_"))
    # What `make demo` leaves behind, at a tiny size: servers stopped, data and stamp on disk.
    made = start_demo_servers(
        parse_args(
            [
                "--data-dir",
                str(work / "demo"),
                "--entities",
                "200",
                "--days",
                "10",
                "--history-entities",
                "30",
            ]
        )
    )
    made.stop()
    assert made.env.entities["user_id"] == 200 and (work / "demo" / "env.json").exists()
    port = free_port()
    log = work / "out.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    cmd = [
        sys.executable,
        "-m",
        "fsmig_dev.demo.airflow_local",
        "--data-dir",
        str(work / "demo"),
        "--home",
        str(work / "home"),
        "--port",
        str(port),
        "--parallelism",
        "2",
        "--scale",
        "seconds",
    ]  # no sizes: it must reuse whatever data is there, as after `make demo`
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://localhost:{port}"
    try:
        _wait_for(lambda: "== Airflow is up ==" in log.read_text(), proc, log, timeout=100)
        text = log.read_text()
        assert "reusing the demo data" in text and "(200 users" in text and "generating" not in text
        assert f"UI:              {base}/" in text and f"cockpit:         {base}/fsmig/cockpit" in text
        password = json.loads((work / "home" / "passwords.json").read_text())["admin"]
        assert f"user 'admin', password '{password}'" in text

        token = _api(base, "/auth/token", body={"username": "admin", "password": password})["access_token"]
        plan = load_plan(work / "demo" / "plan")
        expected = set(dag_ids(plan))
        assert len(expected) == 3 * len(plan.groups) + 1  # migrate, rollback, backfill per group + nightly

        def listed() -> set[str]:
            return {d["dag_id"] for d in _api(base, "/api/v2/dags?limit=100", token)["dags"]}

        _wait_for(lambda: listed() == expected, proc, log, timeout=30)
        assert _api(base, "/api/v2/importErrors", token)["total_entries"] == 0

        # The seconds scale: a healthy group goes all the way, the injected breach rolls back.
        assert "time scale:      seconds" in text and "trigger fsmig__user_txn_stats__migrate" in text
        runs = {
            g: _trigger(base, token, f"fsmig__{g}__migrate") for g in ("user_txn_stats", "merchant_stats")
        }
        states = _wait_runs(base, token, runs, proc, log, timeout=360)
        healthy = states["user_txn_stats"]
        assert healthy["run"] == "success", healthy
        assert (
            healthy["tasks"]["ready_to_decommission"] == "success"
            and healthy["tasks"]["rollback"] == "skipped"
        )
        breached = states["merchant_stats"]
        assert breached["run"] == "failed", breached
        assert breached["tasks"]["bake_50"] == "failed" and breached["tasks"]["rollback"] == "success", (
            breached
        )
        assert breached["tasks"]["ramp_100"] == "upstream_failed", breached
        assert "merchant_stats is rolled back: its models' AUC recovers" in log.read_text()
        if shots := os.environ.get("FSMIG_SCREENSHOTS_DIR"):
            take_screenshots(base, password, Path(shots))

        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        postmaster = int((work / "demo" / "pg" / "postmaster.pid").read_text().split()[0])
        assert len(children) >= 5  # four Airflow components and redis-server, at least
        assert _alive(postmaster)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=45) == 0  # bounded: at most 100 + 30 + 45 s in all
        assert [pid for pid in children if _alive(pid)] == []
        assert not _alive(postmaster)
        assert not (work / "demo" / "pg" / "postmaster.pid").exists()
        assert "stopping Airflow and the embedded servers" in log.read_text()
    finally:
        if proc.poll() is None:  # a failed assertion above: still stop everything it started
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
