"""Extra links from task instances to the reports their operators wrote, served by the plugin.

In Airflow 3 a link is computed on the worker right after the task ran, with the same operator
object, and stored in XCom; so operators set ``report_url`` during ``execute`` and the link reads
it back. Airflow 3's UI shows only links on its own origin or with a web scheme, so a report
written under ``$FSMIG_REPORTS_DIR`` is linked as ``/fsmig/reports/<group>/<kind>/<run>.html``,
which the cockpit plugin serves behind Airflow's login and the DAG permissions of the group.
A task that wrote no report gets an empty link (the UI hides it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

URL_PREFIX = "/fsmig"
REPORTS_ROUTE = "/reports"


def base_path() -> str:
    """The path part of Airflow's ``[api] base_url`` (``""`` when Airflow is served at ``/``)."""
    try:
        from airflow.sdk import conf

        base = conf.get("api", "base_url", fallback="") or ""
    except Exception:  # no config (plain scripts): served at the root
        base = ""
    return urlsplit(base).path.rstrip("/")


def served_url(path: str | Path, root: str | Path | None = None) -> str:
    """The plugin's URL of a report file under the reports folder, or ``""`` if it is elsewhere."""
    if root is None:
        from airflow_fsmigration.operators._runtime import reports_dir

        root = reports_dir()
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return ""
    return f"{base_path()}{URL_PREFIX}{REPORTS_ROUTE}/{quote(rel.as_posix())}"


def report_href(url: str | None, root: str | Path | None = None) -> str:
    """A link the Airflow UI shows, for what an operator stored in ``report_url``.

    ``file://`` URLs (the default of ``_runtime.report_url``) become the plugin's HTTP route;
    http(s) URLs (``$FSMIG_REPORTS_BASE_URL``) and paths on Airflow's origin stay as they are.
    """
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return served_url(unquote(parts.path), root)
    if parts.scheme in ("http", "https") or (not parts.scheme and url.startswith("/")):
        return url
    return ""


class ReportLink(BaseOperatorLink):
    """The HTML report of a comparison, validation, load test or backfill."""

    name = "Report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return report_href(str(getattr(operator, "report_url", "") or ""))
