"""Reports over HTTP: the extra link's URL, the plugin route, its permissions and path safety."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_fsmigration.plugins.cockpit_reports import ReportRefused, resolve_report

GROUPS = {"user_txn_stats", "merchant_stats"}


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    root = tmp_path / "reports"
    (root / "user_txn_stats" / "shadow").mkdir(parents=True)
    (root / "user_txn_stats" / "shadow" / "run_1.html").write_text("<h1>txn shadow</h1>")
    (root / "user_txn_stats" / "gx" / "run_1").mkdir(parents=True)
    (root / "user_txn_stats" / "gx" / "run_1" / "index.html").write_text("gx docs")
    (root / "merchant_stats" / "shadow").mkdir(parents=True)
    (root / "merchant_stats" / "shadow" / "run_1.html").write_text("<h1>merchant</h1>")
    (root / "plan" / "assess").mkdir(parents=True)
    (root / "plan" / "assess" / "a.html").write_text("assessment")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "user_txn_stats" / "shadow" / "link.html").symlink_to(tmp_path / "secret.txt")
    return root


def _everyone(_group: str | None) -> bool:
    return True


@pytest.mark.unit
def test_report_path_is_resolved_inside_the_folder_only(reports: Path) -> None:
    ok = resolve_report("user_txn_stats/shadow/run_1.html", groups=GROUPS, may_read=_everyone, root=reports)
    assert ok.path.read_text() == "<h1>txn shadow</h1>" and ok.media_type == "text/html"
    docs = resolve_report("user_txn_stats/gx/run_1", groups=GROUPS, may_read=_everyone, root=reports)
    assert docs.path.name == "index.html"
    for bad in (
        "../secret.txt",
        "user_txn_stats/../../secret.txt",
        "user_txn_stats/shadow/../../../secret.txt",
        "/etc/passwd",
        "user_txn_stats//etc/passwd",
        "user_txn_stats/shadow/link.html",  # a symlink out of the folder
        "user_txn_stats\\..\\..\\secret.txt",
        "user_txn_stats/.hidden",
        "unknown_group/shadow/run_1.html",
        "user_txn_stats/shadow/missing.html",
        "",
    ):
        with pytest.raises(ReportRefused) as info:
            resolve_report(bad, groups=GROUPS, may_read=_everyone, root=reports)
        assert info.value.status == 404, bad


@pytest.mark.unit
def test_a_user_who_may_not_read_a_groups_dags_may_not_read_its_reports(reports: Path) -> None:
    def only_txn(group: str | None) -> bool:
        return group == "user_txn_stats"

    assert resolve_report("user_txn_stats/shadow/run_1.html", groups=GROUPS, may_read=only_txn, root=reports)
    for denied in ("merchant_stats/shadow/run_1.html", "plan/assess/a.html"):
        with pytest.raises(ReportRefused) as info:
            resolve_report(denied, groups=GROUPS, may_read=only_txn, root=reports)
        assert info.value.status == 403


@pytest.mark.unit
def test_report_link_points_at_the_plugin_route(reports: Path, monkeypatch) -> None:
    from airflow_fsmigration.links import ReportLink, report_href

    monkeypatch.setenv("FSMIG_REPORTS_DIR", str(reports))
    page = reports / "user_txn_stats" / "shadow" / "run 1+x.html"
    assert report_href(page.as_uri()) == "/fsmig/reports/user_txn_stats/shadow/run%201%2Bx.html"
    assert report_href("https://reports.example/x.html") == "https://reports.example/x.html"
    assert report_href((reports.parent / "secret.txt").as_uri()) == ""  # not served: no link
    assert report_href(None) == "" and report_href("javascript:alert(1)") == ""

    class Op:
        report_url = (reports / "merchant_stats" / "shadow" / "run_1.html").as_uri()

    assert ReportLink().get_link(Op(), ti_key=None) == "/fsmig/reports/merchant_stats/shadow/run_1.html"  # type: ignore[arg-type]


@pytest.fixture
def client(reports: Path, monkeypatch):
    """The plugin app in process with the demo plan; vera may read only user_txn_stats's DAGs."""
    import airflow.api_fastapi.app as api_app
    from fastapi.testclient import TestClient

    from airflow_fsmigration.plugins.cockpit import create_app

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("FSMIG_PLAN", str(repo / "include" / "demo_plan"))
    monkeypatch.setenv("FSMIG_REPORTS_DIR", str(reports))

    class Auth:
        def is_authorized_dag(self, *, method, details, user):
            return user == "admin" or details.id == "fsmig__user_txn_stats__migrate"

        def get_url_login(self, **kw):
            return f"/auth/login?next={kw.get('next_url')}"

    monkeypatch.setattr(api_app, "get_auth_manager", lambda: Auth())
    with TestClient(create_app()) as c:
        yield c


@pytest.mark.unit
def test_route_serves_redirects_and_refuses(client, monkeypatch) -> None:
    import airflow.api_fastapi.core_api.security as security

    # Anonymous: sent to Airflow's login page, with the report as the page to come back to.
    anon = client.get("/reports/user_txn_stats/shadow/run_1.html", follow_redirects=False)
    assert anon.status_code == 303 and anon.headers["location"].startswith("/auth/login?next=")
    assert "reports/user_txn_stats/shadow/run_1.html" in anon.headers["location"]
    cockpit = client.get("/cockpit", follow_redirects=False)
    assert cockpit.status_code == 303 and "/auth/login" in cockpit.headers["location"]
    assert client.get("/cockpit.json").status_code == 401  # scripts get an answer, not a page

    async def vera(token):
        return "vera"

    monkeypatch.setattr(security, "resolve_user_from_token", vera)
    ok = client.get("/reports/user_txn_stats/shadow/run_1.html", cookies={"_token": "t"})
    assert ok.status_code == 200 and ok.text == "<h1>txn shadow</h1>"
    assert (
        ok.headers["content-type"].startswith("text/html")
        and ok.headers["x-content-type-options"] == "nosniff"
    )
    csp = ok.headers["content-security-policy"]
    assert csp.startswith("sandbox ") and "allow-same-origin" not in csp  # an opaque origin
    assert client.get("/reports/merchant_stats/shadow/run_1.html", cookies={"_token": "t"}).status_code == 403
    assert client.get("/reports/plan/assess/a.html", cookies={"_token": "t"}).status_code == 403
    for bad in (
        "user_txn_stats/%2e%2e/%2e%2e/secret.txt",
        "user_txn_stats/shadow/link.html",
        "..%2fsecret.txt",
    ):
        r = client.get(f"/reports/{bad}", cookies={"_token": "t"})
        assert r.status_code == 404 and "outside" not in r.text, bad
