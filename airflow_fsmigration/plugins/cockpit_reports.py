"""Serve the task reports under ``$FSMIG_REPORTS_DIR`` at ``/fsmig/reports/...``, safely.

Reports are laid out ``<group>/<kind>/<run>.html`` (``plan/...`` for plan-wide ones, GX data
docs under ``<group>/gx/<run>/``) by ``operators._runtime.write_report``. The first path segment
decides who may read: a group's reports need read access to that group's migrate DAG (the same
rule as the cockpit's rows), plan-wide reports need the nightly DAG. A path is served only when
every segment is a plain name and the resolved file (symlinks followed) lies inside the folder,
so no ``..``, absolute path, encoded separator or link can reach anything else.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from airflow_fsmigration.links import REPORTS_ROUTE, URL_PREFIX

PLAN_WIDE = "plan"


class ReportRefused(Exception):
    """The path may not be served: ``status`` is the HTTP answer (404 hides what exists)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServedReport:
    path: Path
    media_type: str


def reports_root() -> Path:
    from airflow_fsmigration.operators._runtime import reports_dir

    return reports_dir()


def _segments(rel: str) -> list[str]:
    if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/"):
        raise ReportRefused(404, "no such report")
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ReportRefused(404, "no such report")
    return parts


def resolve_report(
    rel: str,
    *,
    groups: set[str] | dict[str, object],
    may_read: Callable[[str | None], bool],
    root: Path | None = None,
) -> ServedReport:
    """The file to serve for ``rel`` (the URL path after ``/fsmig/reports/``), or :class:`ReportRefused`.

    :param groups: the plan's group names; any other first segment (but ``plan``) is refused.
    :param may_read: may the user read this group's reports? (``None`` = the plan-wide ones)
    """
    parts = _segments(rel)
    owner = parts[0]
    if owner != PLAN_WIDE and owner not in groups:
        raise ReportRefused(404, "no such report")
    if not may_read(None if owner == PLAN_WIDE else owner):
        raise ReportRefused(403, "you may not read this group's DAGs, so not its reports either")
    base = (root or reports_root()).resolve()
    target = base.joinpath(*PurePosixPath(*parts).parts)
    if target.is_dir():
        target = target / "index.html"
    try:
        real = Path(os.path.realpath(target))
    except OSError:
        raise ReportRefused(404, "no such report") from None
    if not real.is_relative_to(base) or not real.is_file():
        raise ReportRefused(404, "no such report")
    media = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
    return ServedReport(real, media)


def newest_report(group: str, kind: str = "shadow", root: Path | None = None) -> str | None:
    """The plugin URL of the group's newest report of ``kind``, for the cockpit (or None)."""
    from airflow_fsmigration.links import served_url

    folder = (root or reports_root()) / group / kind
    try:
        files = [p for p in folder.glob("*.html") if p.is_file()]
    except OSError:
        return None
    if not files:
        return None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    return served_url(newest, root or reports_root()) or None


ROUTE = f"{URL_PREFIX}{REPORTS_ROUTE}"
