"""The README's first command: ``hubpilot demo`` on a real hub, file and LDAP directories."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = str(Path(__file__).resolve().parents[1])  # this checkout's hubpilot, not the venv's installed one


@pytest.mark.parametrize("flags", [[], ["--ldap"]], ids=["file", "ldap"])
def test_demo_syncs_a_real_hub_and_stops_everything(tmp_path: Path, flags: list[str]) -> None:
    mark = uuid.uuid4().hex  # inherited by everything the demo starts, and by nothing else
    done = subprocess.run(
        [sys.executable, "-m", "hubpilot.cli", "demo", "--no-wait", "--port", "0", *flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={**os.environ, "HUBPILOT_TEST_DEMO_MARK": mark,
             "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "planned (dry-run)" in out
    assert "6 create_user" in out and "2 create_group" in out
    assert "done: add_to_group dir-analysts (user=dan)" in out  # dan is an analyst through a nested group
    assert "done: stop_servers bob (servers=['']) — no longer in any synced directory group [default: stopped]" in out
    assert "done: deprovision bob" in out
    assert "JupyterHub:      http://127.0.0.1:" in out
    titles = [line for line in out.splitlines() if line.startswith("── ")]
    ruled = [t for t in titles if t.endswith("───") and t.rstrip("─").endswith(" ")]  # a long title keeps its rule
    assert len(titles) == 4 and ruled == titles, titles
    if not flags:  # the file the user is told to edit still says how it works
        edited = (tmp_path / ".hubpilot-demo" / "directory.yaml").read_text()
        assert "`groups:` inside a group names nested groups" in edited
        assert all("bob" not in g.get("members", []) for g in yaml.safe_load(edited)["groups"].values())
    assert left_running(mark, tmp_path) == [], "the demo left processes running"


def left_running(mark: str, where: Path) -> list[str]:
    """Hub, proxy, slapd and single-user processes this demo started that still run: they carry
    its environment mark, or (single-user servers, whose environment the spawner curates) work in
    its directory. Other hubs on the machine are none of this test's business."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if not any(k in cmd for k in ("jupyterhub", "configurable-http-proxy", "slapd")):
            continue
        try:
            if p.environ().get("HUBPILOT_TEST_DEMO_MARK") == mark or Path(p.cwd()).is_relative_to(where):
                out.append(cmd)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return out
