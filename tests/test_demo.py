"""The README's first command: ``hubpilot demo`` on a real hub, file and LDAP directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest


@pytest.mark.parametrize("flags", [[], ["--ldap"]], ids=["file", "ldap"])
def test_demo_syncs_a_real_hub_and_stops_everything(tmp_path: Path, flags: list[str]) -> None:
    before = {p.pid for p in psutil.process_iter()}
    done = subprocess.run(
        [sys.executable, "-m", "hubpilot.cli", "demo", "--no-wait", "--port", "0", *flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "planned (dry-run)" in out
    assert "6 create_user" in out and "2 create_group" in out
    assert "done: add_to_group dir-analysts (user=dan)" in out  # dan is an analyst through a nested group
    assert "done: stop_servers bob (servers=['']) — no longer in any synced directory group [default: stopped]" in out
    assert "done: deprovision bob" in out
    assert "JupyterHub:      http://127.0.0.1:" in out
    left = [p for p in psutil.process_iter(["pid", "cmdline"])
            if p.pid not in before and any(k in " ".join(p.info["cmdline"] or [])
                                           for k in ("jupyterhub", "configurable-http-proxy", "slapd"))]
    assert left == [], "the demo left processes running"
