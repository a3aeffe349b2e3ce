"""``hubpilot demo`` run on its own (the README's CLI lists it), before ``./scripts/setup`` has
installed the Node tools, or with ``--ldap`` where slapd is missing: one line saying what is
missing and how to install it, exit code 2, nothing started. It was 45 lines of the hub's log
ending in a Python traceback (configurable-http-proxy), or a hub started and stopped again for a
``FileNotFoundError`` (slapd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _demo(project: Path, where: Path, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    return subprocess.run([sys.executable, "-m", "hubpilot.cli", "demo", "--no-wait", "--port", "0", *flags],
                          cwd=where, capture_output=True, text=True, timeout=120,
                          env={**base, "PYTHONPATH": str(project), **env})


def test_without_the_node_tools_the_demo_says_to_run_the_setup(tmp_path: Path) -> None:
    project = tmp_path / "project"  # the code, without node_modules
    for package in ("hubpilot", "hubpilot_hub"):
        shutil.copytree(ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "deploy" / "demo", project / "deploy" / "demo")
    where = tmp_path / "run"
    where.mkdir()
    done = _demo(project, where)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "configurable-http-proxy" in done.stderr and "scripts/setup" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert not (where / ".hubpilot-demo" / "hub").exists()  # no hub was started


def test_ldap_without_slapd_says_so_before_starting_anything(tmp_path: Path) -> None:
    done = _demo(ROOT, tmp_path, "--ldap", HUBPILOT_SLAPD=str(tmp_path / "no-slapd"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "slapd" in done.stderr and "apt-get install" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / ".hubpilot-demo" / "hub").exists()  # no hub was started
