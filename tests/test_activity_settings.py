"""hubpilot_activity's check interval comes from ``HUBPILOT_ACTIVITY_CHECK_SECONDS`` in the user
image. A value it cannot use must never take the user's server down, nor pass unnoticed: the
server says so at load, naming the variable and the value, and checks every 60 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.realhub import PROJECT_ROOT, free_port

SERVER = Path(sys.executable).parent / "jupyter-server"


def _server_log(tmp_path: Path, value: str) -> str:
    """Start a real jupyter_server with the extension enabled (what `jupyter server extension
    enable hubpilot_activity` writes) and the variable set; its log once the extension loaded."""
    conf_d = tmp_path / "config" / "jupyter_server_config.d"
    conf_d.mkdir(parents=True)
    (conf_d / "hubpilot_activity.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"hubpilot_activity": True}}}))
    env = {**os.environ, "HUBPILOT_ACTIVITY_CHECK_SECONDS": value, "JUPYTER_CONFIG_PATH": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(SERVER), "--no-browser", "--allow-root", f"--port={free_port()}", "--ServerApp.port_retries=0",
             "--IdentityProvider.token=t", f"--ServerApp.root_dir={tmp_path}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if "is running at" in text or proc.poll() is not None:
                return text
            time.sleep(0.2)
        raise TimeoutError(f"jupyter_server did not start:\n{log_path.read_text(errors='replace')}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("value", ["30s", "0", "-5", "inf", "nan"])
def test_an_unusable_check_interval_is_a_warning_at_load_and_60_s(tmp_path: Path, value: str) -> None:
    """"30s", 0 or a negative value fell back to 60 s with nothing said; ``inf`` was taken as it
    is: the check never ran (busy kernels never counted, a long computation could be culled)
    while the server logged "checked every inf s"."""
    log = _server_log(tmp_path, value)
    assert "is running at" in log  # the user's server runs
    assert f"HUBPILOT_ACTIVITY_CHECK_SECONDS={value!r}" in log
    assert "busy kernels count as activity (checked every 60 s)" in log


@pytest.mark.parametrize(("value", "said"), [("30", "30"), ("0.5", "0.5"), ("2.25", "2.25")])
def test_a_usable_check_interval_is_used_without_a_warning(tmp_path: Path, value: str, said: str) -> None:
    """The log says the interval in use: "0.5" (the docs' own example) was logged as "checked
    every 0 s", which reads as a check that never runs, or as the invalid 0."""
    log = _server_log(tmp_path, value)
    assert f"busy kernels count as activity (checked every {said} s)" in log
    assert "HUBPILOT_ACTIVITY_CHECK_SECONDS" not in log


@pytest.mark.parametrize(("value", "said"), [("1e-6", "0.1"), ("0.001", "0.1"), ("7200", "3600"), ("1e12", "3600")])
def test_a_check_interval_out_of_range_is_a_warning_at_load_and_brought_within_it(
        tmp_path: Path, value: str, said: str) -> None:
    """1e-6 was taken as it is: the check ran without pause and kept the user's idle server on
    the CPU (much of a core, with no kernel at all); 7200 was taken too, though hubpilot's
    cull.activity_check_seconds cannot say more than 3600, so hubpilot's settings could not
    describe the image and its timeout check reckoned with a lag shorter than the real one. The
    server still runs; the log names the value and the bound used instead."""
    log = _server_log(tmp_path, value)
    assert "is running at" in log
    assert f"HUBPILOT_ACTIVITY_CHECK_SECONDS={value!r}" in log
    assert f"busy kernels count as activity (checked every {said} s)" in log


def test_the_check_interval_cap_is_hubpilots_own() -> None:
    """The extension's upper bound is the largest cull.activity_check_seconds hubpilot accepts."""
    import hubpilot_activity
    from hubpilot.config.cull import CullSettings

    CullSettings(activity_check_seconds=hubpilot_activity.MAX_CHECK_SECONDS, inactivity_timeout=0)
    with pytest.raises(ValueError, match="activity_check_seconds"):
        CullSettings(activity_check_seconds=hubpilot_activity.MAX_CHECK_SECONDS + 1, inactivity_timeout=0)
