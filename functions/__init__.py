"""Azure Functions blueprints of hubpilot (registered on the one FunctionApp in function_app.py).

Importing this package is cheap: the settings, the state store and the SDKs are loaded on the
first invocation, and the process keeps one :class:`hubpilot.wiring.Context` for every trigger.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubpilot.wiring import Context

_context: Context | None = None


def get_context() -> Context:
    """The process's Context, built from the app settings (``HUBPILOT_...``) on first use.

    Settings that only ``hubpilot serve`` can honour are refused here (SettingsError, which the
    API answers 503 with the reason in the log): serve starts a worker that drains the in-process
    queue of Graph notification hints, the Functions host starts none, so with
    ``directory.entra.queue = "memory"`` each notification would be acknowledged and then lost;
    and with ``api.run_mode = "inprocess"`` a run started over HTTP would be a task of a worker
    the host may stop or scale in once the HTTP invocation has answered. And each timer's
    schedule must be its flat app setting (``HUBPILOT_SYNC_SCHEDULE``): the host resolves the
    binding's ``%HUBPILOT_SYNC_SCHEDULE%`` from the app settings and, when it is unset, does not
    load that timer at all, while the settings would take the default schedule."""
    global _context
    if _context is None:
        from hubpilot.settings import SettingsError, load_settings
        from hubpilot.wiring import build_context

        settings = load_settings()
        d = settings.directory
        if d is not None and d.kind == "entra" and d.entra is not None and d.entra.notifications \
                and d.entra.queue == "memory":
            raise SettingsError(
                "directory.entra.queue (HUBPILOT_DIRECTORY__ENTRA__QUEUE) is 'memory', which only hubpilot serve "
                "drains: in the Functions app a Graph notification would be acknowledged and never synced; set it "
                "to 'azure' with HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL (or _CONNECTION_STRING), the queue "
                "the graph_hints function reads")
        if settings.api.run_mode != "queue":
            raise SettingsError(
                f"api.run_mode (HUBPILOT_API__RUN_MODE) is {settings.api.run_mode!r}: in the Functions app a run "
                "started over HTTP would run in a worker the host may stop once the HTTP invocation has answered, "
                "leaving it half-applied until its lock expires; set it to 'queue' (the hubpilot-runs queue the "
                "run_queue function reads)")
        from functions.timers import SCHEDULE_SETTINGS

        unset = [op for op, name in SCHEDULE_SETTINGS.items() if name not in os.environ]
        if unset:
            raise SettingsError(
                "unset app setting(s) " + ", ".join(f"{SCHEDULE_SETTINGS[op]}='{getattr(settings, op).schedule}'"
                                                    for op in unset)
                + ": the Functions host reads a timer's schedule from it (%HUBPILOT_<OP>_SCHEDULE%) and does not "
                "load a timer whose setting is missing (" + ", ".join(f"{op}_timer" for op in unset) + "), so the "
                "operation would never run on its schedule; set it (the value shown is the schedule the settings "
                "hold: the default, or HUBPILOT_<OP>__SCHEDULE)")
        _context = _on_this_host(build_context(settings))
    return _context


def set_context(ctx: Context | None) -> None:
    """Use this Context for every trigger of the process (tests; None forgets it)."""
    global _context
    _context = _on_this_host(ctx) if ctx is not None else None


def _on_this_host(ctx: Context) -> Context:
    """What only this host knows: the subscription manager's timer runs hourly (its schedule is
    fixed in ``functions/graph.py``), whatever ``directory.entra.subscription_schedule`` says."""
    from functions.graph import SUBSCRIPTION_SCHEDULE
    from hubpilot.api.scheduling import ENTRA_SUBSCRIPTIONS

    ctx.host_schedules = {ENTRA_SUBSCRIPTIONS: SUBSCRIPTION_SCHEDULE}
    ctx.fires_schedules = True  # its timers
    return ctx
