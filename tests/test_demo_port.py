"""``hubpilot demo`` on a port something else holds (the default 8000 often is): a prompt, clear
usage error naming --port, not a minute's wait and the hub's log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def test_a_busy_port_is_a_usage_error_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "hubpilot.cli", "demo", "--no-wait", "--port", str(port)],
                cwd=tmp_path, capture_output=True, text=True, timeout=30,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"the demo waited {time.monotonic() - t0:.0f} s on a busy port") from exc
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port}" in done.stderr and "--port" in done.stderr
    assert not (tmp_path / ".hubpilot-demo" / "hub" / "jupyterhub.log").exists()  # nothing was started
