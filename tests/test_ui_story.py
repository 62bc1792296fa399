"""The buggy group's story as a user sees it in the real Airflow UI (headless chromium, selenium).

The demo world is generated small (300 users, the planted time-zone bug), the buggy group's
migrate DAG runs for real under ``dag.test()`` in this process, and ``airflow api-server`` (with
the provider's plugin, simple auth) serves the same metadata database meanwhile. Then a browser:
an anonymous visit lands on Airflow's login page; after logging in, the cockpit shows the failed
run, the failed task and the root cause; the failed task's "Report" extra link opens the shadow
report; the rollback form states its rules. Screenshots go to ``docs/screenshots/`` (README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from fsmig_dev.devservices import free_port

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "docs" / "screenshots"
BUGGY = "user_session_stats"
MIGRATE = f"fsmig__{BUGGY}__migrate"
ROLLBACK = f"fsmig__{BUGGY}__rollback"
BACKFILL = f"fsmig__{BUGGY}__backfill"


def _start_api_server(env: dict[str, str], home: Path) -> tuple[subprocess.Popen, str, object]:
    from airflow import settings
    from airflow.configuration import AIRFLOW_HOME

    port = free_port()
    (home / "passwords.json").write_text(json.dumps({"admin": "admin-pw", "vera": "vera-pw"}))
    env = {
        **env,
        # the metadata DB this process migrated and dag.test() writes to, whatever an earlier test
        # left in os.environ (the demo's configure_airflow points it at its own sqlite file)
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": str(settings.SQL_ALCHEMY_CONN),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,vera:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "ui-story-secret-" + "y" * 48,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    log = open(home / "api-server.log", "w")  # noqa: SIM115 - closed by the caller
    airflow = str(Path(sys.executable).with_name("airflow"))
    proc = subprocess.Popen(
        [airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    proc.fsmig_log = str(home / "api-server.log")  # type: ignore[attr-defined]
    return proc, f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def story(postgres, redis_server, demo_plan, airflow_db, tmp_path_factory):
    """The buggy group's migrate run (failed) and an api-server on the same metadata DB."""
    import redis

    from airflow_fsmigration.dag_factory import build_dags
    from fsmig_dev.demo.data import generate_demo

    work = tmp_path_factory.mktemp("ui_story")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    url = postgres.create_database(f"t_ui_{uuid.uuid4().hex[:8]}")
    env = generate_demo(
        url,
        url,
        url,
        redis_server.url,
        demo_plan,
        entities=300,
        days=70,
        history_entities=40,
        plan_dir=work / "plan",
        inject_bug=True,
    )
    mp = pytest.MonkeyPatch()
    extra = {
        **env.conn_env,
        "FSMIG_REPORTS_DIR": str(work / "reports"),
        "FSMIG_CACHE_DIR": str(work / "cache"),
        "FSMIG_PLAN": str(env.plan_dir),
    }
    for k, v in extra.items():
        mp.setenv(k, v)
    plan = env.load_plan()
    home = Path(tempfile.mkdtemp(prefix="fsmig_ui_story_"))
    proc, base, log = _start_api_server(dict(os.environ), home)
    try:
        dag = build_dags(plan, str(env.plan_dir), only=MIGRATE)[MIGRATE]
        rollback = build_dags(plan, str(env.plan_dir), only=ROLLBACK)[ROLLBACK]
        backfill = build_dags(plan, str(env.plan_dir), only=BACKFILL)[BACKFILL]
        _serialize([dag, rollback, backfill])
        started = time.monotonic()
        run = dag.test()
        took = time.monotonic() - started
        _wait_http(f"{base}/api/v2/monitor/health", proc)
        yield {"base": base, "run": run, "took": took, "reports": work / "reports"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()  # type: ignore[attr-defined]
        mp.undo()
        shutil.rmtree(home, ignore_errors=True)


def _serialize(dags: list) -> None:
    """Put DAGs into the metadata DB as the DAG processor would (``dag.test()`` and the UI need it)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder",
            None,
            [LazyDeserializedDAG.from_dag(d) for d in dags],
            {},
            None,
            set(),
            session=session,
        )


def _server_log_tail(proc: subprocess.Popen) -> str:
    """The end of the api-server's log (its stdout is a file; the path is kept on the process)."""
    path = getattr(proc, "fsmig_log", None)
    if path is None or not Path(path).exists():
        return "(no log)"
    return Path(path).read_text(errors="replace")[-3000:]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"api-server exited with {proc.returncode}: {_server_log_tail(proc)}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
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
    driver.set_window_size(1400, 1100)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    driver.save_screenshot(str(path))
    return path


def _login(driver, base: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=username]"))
    driver.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys(user)
    driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda d: any(c["name"] == "_token" for c in d.get_cookies()))


@pytest.mark.airflow
@pytest.mark.integration
def test_failed_group_in_cockpit_report_link_and_rollback_form(story, browser) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, run = story["base"], story["run"]
    assert run.state == "failed"

    # Anonymous: the cockpit sends the browser to Airflow's login page, and back after it.
    browser.get(f"{base}/fsmig/cockpit")
    WebDriverWait(browser, 60).until(lambda d: "/auth/login" in d.current_url)
    assert "user_session_stats" not in browser.page_source
    _login(browser, base, "admin", "admin-pw")
    browser.get(f"{base}/fsmig/cockpit")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "summary"))
    rows = {
        r.find_elements(By.TAG_NAME, "td")[1].text: r.text
        for r in browser.find_elements(By.CSS_SELECTOR, "#summary tr")
        if r.find_elements(By.TAG_NAME, "td")
    }
    bug = rows[BUGGY]
    assert "failed" in bug and "shadow_compare" in bug and "deploy the definition" not in bug
    assert "Why the shadow comparison fails" in browser.page_source
    assert "time zone on" in browser.page_source and "proven by replay" in browser.page_source
    assert "could not read" not in browser.page_source
    _shot(browser, "cockpit_summary.png")
    browser.execute_script("document.getElementById(arguments[0]).scrollIntoView()", f"g-{BUGGY}")
    _shot(browser, "cockpit_failed_group.png")

    # The failed task's page in Airflow's UI shows the "Report" extra link; it opens the report.
    # (Airflow 3.3 lists extra links on the task instance's Details tab.)
    browser.get(f"{base}/dags/{MIGRATE}/runs/{run.run_id}/tasks/shadow_compare/details")

    def report_link(d):
        return next((a for a in d.find_elements(By.TAG_NAME, "a") if a.text.strip() == "Report"), None)

    href = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: (report_link(d) or None) and report_link(d).get_attribute("href")
    )
    assert href.startswith(f"{base}/fsmig/reports/{BUGGY}/shadow/")
    _shot(browser, "task_report_link.png")
    WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: report_link(d).click() or True
    )
    WebDriverWait(browser, 60).until(lambda d: "/fsmig/reports/" in d.current_url)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.TAG_NAME, "h1"))
    assert "Not authenticated" not in browser.page_source and BUGGY in browser.page_source
    # one click from the task: what is wrong (one root cause), on which features, and the fix
    page = browser.page_source
    assert "Root causes" in page and "time zone" in page and "proven by replay" in page
    assert "last_click_ts" in page and "AT TIME ZONE" in page
    _shot(browser, "report_from_task_link.png")

    # The rollback form states the reason's rule where it is typed; an empty reason is flagged by
    # the form itself, and Trigger refuses a short one before any run exists.
    browser.get(f"{base}/dags/{ROLLBACK}")

    def button(d, label: str):
        return next(
            (b for b in reversed(d.find_elements(By.TAG_NAME, "button")) if b.text.strip() == label), None
        )

    def click(label: str, timeout: float = 60) -> None:
        """Click the button once it exists; a re-render (stale element) just means look again."""

        def attempt(d) -> bool:
            b = button(d, label)
            if b is None:
                return False
            b.click()
            return True

        WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(attempt)

    click("Trigger")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "element_reason"))
    WebDriverWait(browser, 10).until(lambda d: "At least 10 characters" in d.page_source)
    assert "This field is required" in browser.page_source
    browser.find_element(By.ID, "element_reason").send_keys("too short")
    assert browser.execute_script("return document.getElementById('element_reason').validity.tooShort")
    _shot(browser, "rollback_form.png")
    click("Trigger", 30)
    WebDriverWait(browser, 30).until(lambda d: "is too short" in d.page_source)
    from airflow.models.dagrun import DagRun

    assert DagRun.find(dag_id=ROLLBACK) == []

    # The backfill form's cadence dropdown: every choice labelled, the empty one too (no "null").
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(f"{base}/dags/{BACKFILL}")
    click("Trigger")
    click("What to compute", 30)  # a collapsed section
    cadence = WebDriverWait(browser, 30).until(
        lambda d: next((e for e in d.find_elements(By.ID, "element_cadence") if e.size["height"]), None)
    )
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cadence)
    ActionChains(browser).move_to_element(cadence).click().perform()
    options = WebDriverWait(browser, 10).until(
        lambda d: [o.text for o in d.find_elements(By.CSS_SELECTOR, "[id*=option]") if o.text.strip()]
    )
    assert options[0].startswith("none:") and "1d: every day" in options
    assert not any(o.strip().lower() == "null" for o in options)
    _shot(browser, "backfill_form.png")
