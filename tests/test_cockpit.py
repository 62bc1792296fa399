"""The migration cockpit: rows from registry state and shadow series, and the page behind Airflow's login."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_fsmigration.reports.cockpit import gather, render
from fsmig_dev.devservices import airflow_conn_env, free_port


@dataclass
class _State:
    phase: str
    ramp_pct: float
    version: int = 3
    updated_at: datetime = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.mark.unit
def test_rows_follow_waves_and_say_the_next_gate(demo_plan) -> None:
    states = {"user_txn_stats": _State("ramping", 5.0), "merchant_stats": _State("rolled_back", 0.0)}
    runs = {
        "user_txn_stats": [{"match_rate": 0.991, "verdict": "fail"}, {"match_rate": 0.998, "verdict": "pass"}]
    }
    audit = {"merchant_stats": [{"reason": "bake breach: p99 +31 ms"}]}
    rows = gather(
        demo_plan,
        plan_path="include/demo_plan",
        states=states,
        series=lambda g: runs.get(g, []),
        audit=lambda g: audit.get(g, []),
        dag_ids=lambda g: {"migrate": f"{g}_migrate", "rollback": f"{g}_rollback"},
    )
    assert [r.group for r in rows][:1] == ["merchant_stats"] and rows[-1].group == "fraud_decision_features"
    by = {r.group: r for r in rows}
    txn = by["user_txn_stats"]
    assert (txn.phase, txn.ramp_pct, txn.latest_match_rate, txn.trend, txn.latest_verdict) == (
        "ramping",
        5.0,
        0.998,
        "up",
        "pass",
    )
    assert txn.next_gate == "bake 2d at 5% within rollback triggers, then ramp to 50%"
    assert by["merchant_stats"].last_reason == "bake breach: p99 +31 ms"
    assert by["user_profile"].phase == "planned"  # not registered yet: shown as planned, never as migrated
    assert by["user_profile"].next_gate.startswith("deploy the definition")
    fraud = by["fraud_decision_features"]
    assert (
        fraud.rollback_command
        == "fsmigrate rollback include/demo_plan fraud_decision_features --reason '...'"
    )

    page = render(demo_plan, rows)
    assert page.count("<tr>") >= len(demo_plan.groups)
    assert "99.800%" in page and 'href="/dags/user_txn_stats_rollback"' in page
    assert "bake breach: p99 +31 ms" in page


# --- the cockpit reflects reality: runs, audit reasons, the objective chart ---------------------


def _audit(group: str, *moves: tuple[str | None, float, str, float, str]) -> list:
    from airflow_fsmigration.registry.model import AuditEntry, Phase

    at = datetime(2026, 11, 20, tzinfo=UTC)
    return [
        AuditEntry(
            id=i,
            group=group,
            version=i + 1,
            at=at + timedelta(hours=i),
            actor="airflow:x.y",
            reason=reason,
            from_phase=Phase(src) if src else None,
            from_pct=src_pct,
            to_phase=Phase(dst),
            to_pct=dst_pct,
            dag_id=f"fsmig__{group}__migrate",
            run_id=f"manual__{i}",
            evidence=None,
        )
        for i, (src, src_pct, dst, dst_pct, reason) in enumerate(moves)
    ]


@dataclass
class _Run:
    match_rate: float
    verdict: str
    recorded_at: datetime
    explanations: list


def _failed_run(group: str, task: str, at: datetime):
    from airflow_fsmigration.plugins.cockpit_runs import RunInfo, TaskRef

    return RunInfo(
        dag_id=f"fsmig__{group}__migrate",
        run_id="manual__1",
        state="failed",
        started=at - timedelta(minutes=3),
        ended=at + timedelta(minutes=1),
        run_after=at - timedelta(minutes=3),
        failed=(TaskRef(task, "failed", at), TaskRef("shadow_soak", "upstream_failed", at)),
    )


@pytest.mark.unit
def test_a_failed_run_is_what_the_cockpit_says_with_cause_reasons_and_chart(demo_plan) -> None:
    import re

    from airflow_fsmigration.plugins.cockpit_view import GroupView, render

    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    cause = {
        "kind": "timezone_shift",
        "feature": "last_session_ts",
        "rows": 117,
        "share": 0.57,
        "evidence": "new store is +5h on 117 rows",
        "fix": "use AT TIME ZONE 'UTC' in the definition",
    }
    series = [_Run(0.86, "fail", now - timedelta(minutes=5), [cause])]
    rows = gather(
        demo_plan,
        plan_path="p",
        states={},
        series=lambda g: series if g == "user_session_stats" else [],
        dag_ids=lambda g: {"migrate": f"fsmig__{g}__migrate", "rollback": f"fsmig__{g}__rollback"},
    )
    views = {r.group: GroupView(status=r) for r in rows}
    bug = views["user_session_stats"]
    bug.series = series
    bug.runs = {"migrate": [_failed_run("user_session_stats", "shadow_compare", now - timedelta(minutes=4))]}
    gate = bug.next_gate(now)
    assert "deploy the definition" not in gate and "failed at task shadow_compare 4m ago" in gate
    assert "last_session_ts" in gate and "AT TIME ZONE" in gate
    # running: the registry's gate and what the run is doing now, since when
    from airflow_fsmigration.plugins.cockpit_runs import RunInfo, TaskRef

    soaking = views["item_popularity"]
    soaking.runs = {
        "migrate": [
            RunInfo(
                dag_id="fsmig__item_popularity__migrate",
                run_id="manual__2",
                state="running",
                started=now - timedelta(hours=2),
                ended=None,
                run_after=now - timedelta(hours=2),
                active=(TaskRef("shadow_soak", "deferred", now - timedelta(hours=1)),),
            )
        ]
    }
    assert soaking.next_gate(now).endswith(
        "Now: shadow_soak (deferred since 1h ago); the migrate run running since 2h ago"
    )
    # never ran: says to trigger the migrate DAG, not "no runs yet"
    assert views["user_profile"].next_gate(now).startswith("trigger the migrate DAG")

    ms = views["merchant_stats"]
    ms.audit = _audit(
        "merchant_stats",
        (None, 0, "planned", 0, "registered by plan"),
        ("planned", 0, "shadow", 0, "definition deployed, schema parity passed"),
        ("shadow", 0, "ramping", 5, "soak green for 14d"),
        ("ramping", 5, "rolled_back", 0, "automatic rollback: bake_50: AUC -2.1%"),
    )
    ms.series = [_Run(0.999 - i * 0.0001, "pass", now - timedelta(days=13 - i), []) for i in range(10)]
    page = render(demo_plan, list(views.values()), now=now)
    for reason in ("registered by plan", "schema parity passed", "soak green for 14d", "bake_50: AUC -2.1%"):
        assert reason in page
    assert "new store is +5h on 117 rows" in page and "shadow_compare" in page
    assert 'href="/dags/fsmig__user_session_stats__migrate/runs/manual__1/tasks/shadow_compare"' in page
    links = re.findall(r"<a [^>]*>", page)
    assert links and all('target="_top"' in a for a in links if 'href="#' not in a)
    assert page.count('<svg class="soak"') == 2  # the groups with comparisons
    assert "99.5%" in page and "error budget" in page
    assert "<script" not in page and "cdn" not in page.lower()


@pytest.mark.airflow
@pytest.mark.integration
def test_latest_runs_read_from_the_metadata_db(run_dag) -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    from airflow_fsmigration.plugins.cockpit_runs import latest_runs

    def boom() -> None:
        raise RuntimeError("planted")

    with DAG("fsmig__t_cockpit__migrate", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)) as dag:
        ok = EmptyOperator(task_id="ok")
        bad = PythonOperator(task_id="shadow_compare", python_callable=boom)
        after = EmptyOperator(task_id="shadow_soak")
        ok >> bad >> after
    dr = run_dag(dag)
    assert dr.state == "failed"
    runs = latest_runs(["fsmig__t_cockpit__migrate", "fsmig__nobody__migrate"])
    assert list(runs) == ["fsmig__t_cockpit__migrate"]
    run = runs["fsmig__t_cockpit__migrate"][0]
    assert (run.run_id, run.state) == (dr.run_id, "failed")
    assert run.first_failed is not None and run.first_failed.task_id == "shadow_compare"
    assert {t.task_id: t.state for t in run.failed} == {
        "shadow_compare": "failed",
        "shadow_soak": "upstream_failed",
    }
    assert run.since is not None and run.to_dict()["failed_task"] == "shadow_compare"


# --- the page in a real browser, against a running Airflow API server -------------------------


REPO = Path(__file__).resolve().parent.parent


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"api-server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:  # not up yet
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture
def api_server(pg_url, demo_plan):
    """``airflow api-server`` with the provider's plugin, simple auth (admin, vera the viewer) and a
    registry in which two demo groups have moved."""
    from airflow_fsmigration.registry import Registry

    registry = Registry(pg_url, plan=demo_plan)
    registry.ensure_schema()
    registry.register_plan(demo_plan, actor="test")
    registry.transition("merchant_stats", "shadow", actor="test", reason="shadow started")
    registry.transition(
        "merchant_stats", "ramping", ramp_pct=5, actor="test", reason="soak green", soak_passed=True
    )
    registry.transition("item_popularity", "shadow", actor="test", reason="shadow started")
    registry.close()

    home = Path(tempfile.mkdtemp(prefix="fsmig_api_home_"))
    (home / "dags").mkdir()
    (home / "passwords.json").write_text(json.dumps({"admin": "admin-pw", "vera": "vera-pw"}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,vera:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API_AUTH__JWT_SECRET": "cockpit-test-secret-" + "x" * 48,
            "FSMIG_PLAN": str(REPO / "include" / "demo_plan"),
            **airflow_conn_env(demo_plan.connections.registry, pg_url),
        }
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    log = open(home / "api-server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    driver.set_page_load_timeout(60)
    driver.set_window_size(1400, 1000)
    yield driver
    driver.quit()


@pytest.mark.airflow
@pytest.mark.integration
def test_cockpit_in_browser_requires_login(api_server: str, browser, demo_plan) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Anonymous: sent to Airflow's login page, and nothing of the plan leaks.
    browser.get(f"{api_server}/fsmig/cockpit")
    WebDriverWait(browser, 60).until(lambda d: "/auth/login" in d.current_url)
    assert "merchant_stats" not in browser.page_source

    # Log in through Airflow's own login page as a viewer.
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=username]"))
    browser.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys("vera")
    browser.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys("vera-pw")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: any(c["name"] == "_token" for c in d.get_cookies()))

    browser.get(f"{api_server}/fsmig/cockpit")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#summary table"))
    assert browser.title == "Migration cockpit: fraud_recs_platform"
    rows = {
        r.find_elements(By.TAG_NAME, "td")[1].text: r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "#summary tr")
        if r.find_elements(By.TAG_NAME, "td")
    }
    assert set(rows) == set(demo_plan.groups)
    assert "ramping" in rows["merchant_stats"] and "5%" in rows["merchant_stats"]
    assert "shadow" in rows["item_popularity"]
    assert "planned" in rows["fraud_decision_features"]
    assert "could not read" not in browser.page_source
    assert "soak green" in browser.page_source  # the transition's reason, from the audit log
    shots = REPO / ".fsmig"
    shots.mkdir(exist_ok=True)
    browser.save_screenshot(str(shots / "cockpit.png"))  # for the README; .fsmig is gitignored


@pytest.mark.unit
def test_failing_shadow_is_the_next_gate(demo_plan) -> None:
    runs = [{"match_rate": 0.8598, "verdict": "fail"}]
    rows = gather(
        demo_plan, plan_path="p", states={}, series=lambda g: runs if g == "user_session_stats" else []
    )
    row = next(r for r in rows if r.group == "user_session_stats")
    assert row.next_gate.startswith("shadow comparison failing (85.98% < 99.5%)")
    assert next(r for r in rows if r.group == "user_profile").next_gate.startswith("deploy the definition")


# --- hygiene: escaping, connections, plan cache, configuration ----------------------------------


SCRIPT = "<script>alert('x')</script>"


@pytest.mark.unit
def test_everything_put_into_the_page_is_escaped(demo_plan) -> None:
    states = {"merchant_stats": _State("rolled_back", 0.0)}
    audit = {"merchant_stats": [{"reason": f"bake breach {SCRIPT}"}]}
    rows = gather(demo_plan, plan_path="p", states=states, audit=lambda g: audit.get(g, []))
    page = render(demo_plan, rows, errors=[f"registry (fsmig_registry): OperationalError: {SCRIPT}"])
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") == 2
    assert "could not read registry (fsmig_registry): OperationalError: &lt;script&gt;" in page


@pytest.fixture
def cockpit_env(pg_url, demo_plan, tmp_path, monkeypatch, airflow_db):
    """A registry with two groups moved, the plan (a copy, so its files can be touched) configured
    the way the DAG file reads it, and a private plan cache."""
    from airflow_fsmigration.registry.routing import Registry

    with Registry(pg_url, plan=demo_plan) as registry:
        registry.ensure_schema()
        registry.register_plan(demo_plan, actor="test")
        registry.transition("merchant_stats", "shadow", actor="test", reason="shadow started")
    plan_dir = tmp_path / "plan"
    shutil.copytree(REPO / "include" / "demo_plan", plan_dir)
    monkeypatch.setenv("FSMIG_PLAN", str(plan_dir))
    monkeypatch.setenv("FSMIG_CACHE_DIR", str(tmp_path / "cache"))
    for k, v in airflow_conn_env(demo_plan.connections.registry, pg_url).items():
        monkeypatch.setenv(k, v)
    return plan_dir


def _backends(pg_url: str) -> int:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def _everyone(_dag_id: str) -> bool:
    return True


@contextlib.contextmanager
def _no_connection_left_open(pg_url: str):
    """Same number of server backends after as before, and no connection closed only by the GC
    (psycopg warns when it finalizes an open one: CPython's refcounting would otherwise hide a
    connection that is never closed from the backend count)."""
    before = _backends(pg_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaked = [str(w.message) for w in caught if "deleted while still open" in str(w.message)]
    assert leaked == []
    assert _backends(pg_url) == before


@pytest.mark.integration
def test_cockpit_closes_every_connection_it_opens(cockpit_env, pg_url) -> None:
    from airflow_fsmigration.plugins.cockpit import cockpit_page

    with _no_connection_left_open(pg_url):
        for _ in range(3):
            status, page = cockpit_page(None, authorized=_everyone)
            assert status == 200 and "merchant_stats" in page and "could not read" not in page


@pytest.mark.integration
def test_exception_text_from_the_registry_is_escaped(cockpit_env, pg_url, monkeypatch) -> None:
    from airflow_fsmigration.plugins.cockpit import cockpit_page
    from airflow_fsmigration.registry.routing import Registry

    def broken(self, plan_name=None):
        raise RuntimeError(f"registry exploded: {SCRIPT}")

    monkeypatch.setattr(Registry, "states", broken)
    with _no_connection_left_open(pg_url):
        status, page = cockpit_page(None, authorized=_everyone)
    assert status == 200
    assert "<script>" not in page and "registry exploded: &lt;script&gt;" in page


@pytest.mark.integration
def test_plan_is_loaded_once_until_its_files_change(cockpit_env, monkeypatch) -> None:
    from airflow_fsmigration.plan import loader
    from airflow_fsmigration.plugins.cockpit import cockpit_page

    loads: list[str] = []
    real = loader.load_plan

    def counting(path, *a, **k):
        loads.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(loader, "load_plan", counting)
    for _ in range(3):
        assert cockpit_page(None, authorized=_everyone)[0] == 200
    assert len(loads) == 1
    plan_file = cockpit_env / "plan.yaml"
    st = plan_file.stat()
    os.utime(plan_file, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cockpit_page(None, authorized=_everyone)[0] == 200
    assert cockpit_page(None, authorized=_everyone)[0] == 200
    assert len(loads) == 2


@pytest.mark.unit
def test_unconfigured_plan_path_says_so(monkeypatch) -> None:
    from airflow_fsmigration.plugins.cockpit import cockpit_page

    monkeypatch.delenv("FSMIG_PLAN", raising=False)
    status, page = cockpit_page(None, authorized=_everyone)
    assert status == 503
    assert "FSMIG_PLAN" in page and "no plan" in page


@pytest.fixture
def cockpit_client(monkeypatch):
    """The plugin's FastAPI app in process: every user may read every DAG."""
    import airflow.api_fastapi.app as api_app
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from airflow_fsmigration.plugins.cockpit import browser_user, create_app

    class _Everyone:
        def is_authorized_dag(self, **_kw):
            return True

    monkeypatch.setattr(api_app, "get_auth_manager", lambda: _Everyone())
    app = create_app()
    app.dependency_overrides[get_user] = lambda: "tester"
    app.dependency_overrides[browser_user] = lambda: "tester"
    with TestClient(app) as client:
        yield client


@pytest.mark.integration
def test_cockpit_route_escapes_closes_and_caches(cockpit_env, cockpit_client, pg_url, monkeypatch) -> None:
    from airflow_fsmigration.plan import loader
    from airflow_fsmigration.registry.routing import Registry

    loads: list[str] = []
    real = loader.load_plan
    monkeypatch.setattr(
        loader, "load_plan", lambda path, *a, **k: loads.append(str(path)) or real(path, *a, **k)
    )
    with _no_connection_left_open(pg_url):
        for _ in range(2):
            ok = cockpit_client.get("/cockpit")
            assert ok.status_code == 200 and "merchant_stats" in ok.text
        assert cockpit_client.get("/cockpit.json").json()["errors"] == []
    assert len(loads) == 1

    def broken(self, plan_name=None):
        raise RuntimeError(f"registry exploded: {SCRIPT}")

    monkeypatch.setattr(Registry, "states", broken)
    with _no_connection_left_open(pg_url):
        bad = cockpit_client.get("/cockpit")
    assert bad.status_code == 200
    assert "<script>" not in bad.text and "registry exploded: &lt;script&gt;" in bad.text
    monkeypatch.delenv("FSMIG_PLAN")
    assert cockpit_client.get("/cockpit").status_code == 503
    assert "FSMIG_PLAN" in cockpit_client.get("/cockpit.json").json()["detail"]


@pytest.mark.integration
def test_cockpit_links_reports_it_serves(cockpit_env, tmp_path, monkeypatch) -> None:
    """The newest shadow report per group and the plan's assessment, as the plugin's URLs."""
    from airflow_fsmigration.plugins.cockpit import cockpit_page

    reports = tmp_path / "reports"
    for rel in ("merchant_stats/shadow/old.html", "merchant_stats/shadow/new.html", "plan/assess/a.html"):
        (reports / rel).parent.mkdir(parents=True, exist_ok=True)
        (reports / rel).write_text("x")
    old = reports / "merchant_stats/shadow/old.html"
    os.utime(old, (old.stat().st_atime - 60, old.stat().st_mtime - 60))
    monkeypatch.setenv("FSMIG_REPORTS_DIR", str(reports))
    status, page = cockpit_page(None, authorized=_everyone)
    assert status == 200
    assert 'href="/fsmig/reports/merchant_stats/shadow/new.html" target="_top"' in page
    assert 'href="/fsmig/reports/plan/assess/a.html" target="_top"' in page
    status, page = cockpit_page(None, authorized=lambda d: d.endswith("__migrate"))
    assert status == 200 and "plan/assess" not in page  # the plan-wide report needs the nightly DAG
