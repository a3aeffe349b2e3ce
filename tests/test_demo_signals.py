"""``hubpilot demo`` stopped by SIGTERM (``kill``, a supervisor) or SIGHUP (a closed terminal) part-way:
everything it started is stopped, slapd included, as after Ctrl-C. Killed outright (SIGKILL, the
OOM killer), it cleans nothing up itself: the hub and slapd then stop because their parent died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = str(Path(__file__).resolve().parents[1])  # this checkout's hubpilot, in the demo's process


@pytest.mark.parametrize(("flags", "sig"), [([], signal.SIGTERM), (["--ldap"], signal.SIGTERM),
                                           (["--ldap"], signal.SIGHUP), (["--ldap"], signal.SIGKILL)],
                         ids=["file-term", "ldap-term", "ldap-hup", "ldap-kill"])
def test_a_signal_mid_demo_stops_everything_it_started(tmp_path: Path, flags: list[str], sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubpilot.cli", "demo", "--no-wait", "--port", "0", *flags],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen: dict[int, psutil.Process] = {}
    cmds: dict[int, str] = {}
    out = b""
    sent = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:  # every process the demo started, while it runs (theirs only, not the machine's)
            for child in psutil.Process(proc.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
                cmds[child.pid] = " ".join(_cmd(child)) or cmds.get(child.pid, "?")  # after exec too
        except psutil.Error:
            pass
        out += proc.stdout.read() or b""
        if not sent and b"starts a notebook server" in out:  # mid-way: hub, servers (and slapd) up
            proc.send_signal(sig)
            sent = True
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    out += proc.stdout.read() or b""
    assert sent, out.decode(errors="replace")
    assert not flags or any("slapd" in c for c in cmds.values()), cmds
    deadline = time.monotonic() + 20  # the hub stops its proxy and servers on its own way out
    while time.monotonic() < deadline and any(_alive(p) for p in seen.values()):
        time.sleep(0.1)
    left = [cmds[pid] for pid, p in seen.items() if _alive(p)]
    for p in seen.values():  # do not leave them to the next test
        if _alive(p):
            p.kill()
    assert left == [], f"still running after the demo stopped: {left}\n{out.decode(errors='replace')}"


def _cmd(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
