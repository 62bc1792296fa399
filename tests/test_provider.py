"""Provider registration: Airflow finds the provider and ``import airflow`` still works with it installed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from airflow_fsmigration.get_provider_info import get_provider_info


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    # conftest already points AIRFLOW_HOME and the DB at a throwaway home; pass that env on.
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


@pytest.mark.airflow
def test_airflow_providers_list_shows_the_provider():
    proc = _run(sys.executable, "-m", "airflow", "providers", "list", "-o", "plain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("airflow-fsmigration")]
    assert len(lines) == 1, proc.stdout
    assert "0.1.0" in lines[0]


@pytest.mark.unit
def test_import_airflow_works_and_provider_info_imports_no_airflow():
    code = (
        "import sys\n"
        "from airflow_fsmigration.get_provider_info import get_provider_info\n"
        "info = get_provider_info()\n"
        "assert not [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')], 'provider info imported airflow'\n"
        "import airflow\n"
        "print(info['package-name'], airflow.__version__)\n"
    )
    proc = _run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "airflow-fsmigration"
    assert proc.stdout.split()[1].startswith("3.")


@pytest.mark.unit
def test_provider_info_lists_importable_modules_and_links():
    info = get_provider_info()
    assert info["package-name"] == "airflow-fsmigration"
    modules = [
        m
        for key in ("hooks", "operators", "sensors", "triggers")
        for e in info[key]
        for m in e["python-modules"]
    ]
    assert len(modules) == 8
    for name in modules:
        importlib.import_module(name)
    for path in info["extra-links"]:
        module, _, cls = path.rpartition(".")
        link = getattr(importlib.import_module(module), cls)()
        assert link.name == "Report"
