"""hubpilot_activity: a jupyter_server extension that reports the server as active while a
kernel is busy, so the hub's ``last_activity`` stays right and hubpilot's culler (which reads
only the hub) keeps servers running a long, silent computation.

Why: jupyter_server's activity is the latest of its ``*_last_activity`` settings, API requests
and kernel messages. A cell that computes for hours without output sends no message after its
``busy`` status, so the server looks idle and would be culled mid-computation. This extension
sets ``web_app.settings["hubpilot_busy_last_activity"]`` to "now" every ``interval`` seconds
while any kernel's ``execution_state`` is ``busy`` or a terminal runs a command in the
foreground (a silent ``python train.py`` in a terminal is as busy as a cell); jupyterhub-singleuser then sends it to the
hub on its next activity report (``JUPYTERHUB_ACTIVITY_URL``, every
``JUPYTERHUB_ACTIVITY_INTERVAL`` seconds). Nothing probes the server from outside, so a
server that is really idle stays idle.

Install in the user image next to jupyterhub-singleuser and enable with
``jupyter server extension enable hubpilot_activity`` (or
``c.ServerApp.jpserver_extensions = {"hubpilot_activity": True}``). The check interval comes
from ``HUBPILOT_ACTIVITY_CHECK_SECONDS`` (default 60; keep it below the hub activity interval).
Standard library and jupyter_server only.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

SETTING = "hubpilot_busy_last_activity"
DEFAULT_CHECK_SECONDS = 60.0


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "hubpilot_activity"}]


def busy_kernels(kernel_manager: Any) -> list[str]:
    """Ids of the kernels whose last status message said ``busy``."""
    busy = []
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        try:
            kernel = kernel_manager.get_kernel(kernel_id)
        except KeyError:  # shut down meanwhile
            continue
        if getattr(kernel, "execution_state", None) == "busy":
            busy.append(kernel_id)
    return busy


def busy_terminals(terminal_manager: Any) -> list[str]:
    """Names of the terminals running a command in the foreground: the terminal's foreground
    process group is not its shell's (the shell at its prompt is its own foreground group)."""
    busy = []
    for name, term in list(getattr(terminal_manager, "terminals", {}).items()):
        try:
            proc = term.ptyproc
            if os.tcgetpgrp(proc.fd) != os.getpgid(proc.pid):
                busy.append(name)
        except (AttributeError, OSError):  # closed meanwhile, or not a pty terminal
            continue
    return busy


def mark_if_busy(web_app: Any, now: datetime | None = None) -> bool:
    """Record activity "now" when a kernel is busy or a terminal runs a command; True if it did."""
    if not busy_kernels(web_app.settings["kernel_manager"]) and not busy_terminals(
        web_app.settings.get("terminal_manager")
    ):
        return False
    web_app.settings[SETTING] = now or datetime.now(timezone.utc)  # noqa: UP017 (any Python 3)
    return True


def check_seconds() -> float:
    raw = os.environ.get("HUBPILOT_ACTIVITY_CHECK_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_CHECK_SECONDS
    except ValueError:
        value = DEFAULT_CHECK_SECONDS
    return value if value > 0 else DEFAULT_CHECK_SECONDS


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from tornado.ioloop import PeriodicCallback

    web_app = serverapp.web_app
    interval = check_seconds()

    def tick() -> None:
        try:
            mark_if_busy(web_app)
        except Exception:  # never take the server down over activity bookkeeping
            serverapp.log.exception("hubpilot_activity: busy-kernel check failed")

    callback = PeriodicCallback(tick, interval * 1000)
    callback.start()
    web_app.settings["hubpilot_activity_callback"] = callback
    serverapp.log.info("hubpilot_activity: busy kernels count as activity (checked every %.0f s)", interval)


load_jupyter_server_extension = _load_jupyter_server_extension
