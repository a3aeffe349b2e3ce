"""``./scripts/demo`` as a new user runs it: through the venv's ``hubpilot`` console script, from a
shell whose PATH does not hold the venv (nobody told them to activate it), copying what it prints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from tests.test_demo import left_running

ROOT = str(Path(__file__).resolve().parents[1])  # this checkout's hubpilot, in every process below
VENV_BIN = Path(sys.executable).parent
# a shell without the venv: `hubpilot` is not on its PATH (as after ./scripts/setup, unactivated)
PATH = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                       if p and Path(p).resolve() != VENV_BIN.resolve())
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")},
       "PATH": PATH, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def _sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=60)


def test_the_approval_a_refused_demo_run_prints_works_as_printed(tmp_path: Path) -> None:
    """The demo prints its CLI commands with the venv's hubpilot by its path, since ``hubpilot`` is
    on no PATH after the setup; the approval its refused run printed said plain ``hubpilot
    --config ... approve <id>``: copied into such a shell, "hubpilot: command not found"."""
    assert subprocess.run(["bash", "-c", "command -v hubpilot"], env=ENV).returncode != 0, \
        "this test needs a PATH without hubpilot"
    proc = subprocess.Popen([str(VENV_BIN / "hubpilot"), "demo", "--port", "0"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def shows(text: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            found = [line for line in list(lines) if text in line]
            if found:
                return found[0]
            time.sleep(0.2)
        return None

    try:
        assert shows("Ctrl-C stops", 150), "".join(lines)
        path = next(Path(line.split()[2]) for line in list(lines) if line.startswith("directory file:"))
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"].values():  # most people leave at once: the schedule refuses
            group["members"] = [m for m in group.get("members", []) if m == "alice"]
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        hint = shows("an admin can approve it: ", 60)
        assert hint, "".join(lines)
        command = hint.split("an admin can approve it: ", 1)[1].split(", or POST ")[0]
        for _ in range(20):  # the demo's own 30-second sync may hold the lock (exit code 4) a moment
            done = _sh(command, tmp_path)
            if done.returncode != 4:
                break
            time.sleep(0.5)
        assert done.returncode == 0 and ": applied" in done.stdout, f"$ {command}\n{done.stdout}{done.stderr}"
        assert "done: deprovision carol" in done.stdout, done.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for _ in range(100):
            if not left_running("", tmp_path):
                break
            time.sleep(0.1)
