"""Azure Functions blueprints of hubpilot (registered on the one FunctionApp in function_app.py).

Importing this package is cheap: the settings, the state store and the SDKs are loaded on the
first invocation, and the process keeps one :class:`hubpilot.wiring.Context` for every trigger.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubpilot.settings import Settings
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
        _check_queue_accounts(settings, SettingsError)
        _context = _on_this_host(build_context(settings))
    return _context


def _queue_account(url: str | None) -> str | None:
    """The storage account a queue service URL names: ``https://<account>.queue.<suffix>``, or the
    path-style ``http://127.0.0.1:10001/<account>`` (Azurite); None when it names none."""
    from urllib.parse import urlsplit

    if not url:
        return None
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if ".queue." in host:
        return host.split(".", 1)[0] or None
    return parts.path.strip("/").split("/", 1)[0].lower() or None


def _connection_account(connection_string: str) -> str | None:
    from azure.storage.queue import QueueServiceClient

    try:  # parses the string only: no request is made
        return _queue_account(QueueServiceClient.from_connection_string(connection_string).url)
    except ValueError:
        return None


def _check_queue_accounts(settings: Settings, error: type[Exception]) -> None:
    """The run_queue and graph_hints triggers read their queues through the host's storage
    (AzureWebJobsStorage, or its identity-based form): a run request or a Graph hint put on a
    queue of another storage account would never be read. Refused naming the setting; skipped
    when either account is not known from the settings."""
    env = os.environ
    if env.get("AzureWebJobsStorage"):
        host = _connection_account(env["AzureWebJobsStorage"])
    elif env.get("AzureWebJobsStorage__queueServiceUri"):
        host = _queue_account(env["AzureWebJobsStorage__queueServiceUri"])
    else:
        host = (env.get("AzureWebJobsStorage__accountName") or "").strip().lower() or None
    if host is None:
        return
    given: list[tuple[str, str | None, str]] = []
    if settings.api.queue_connection_string is not None:
        given.append(("HUBPILOT_API__QUEUE_CONNECTION_STRING",
                      _connection_account(settings.api.queue_connection_string.get_secret_value()),
                      "run requests (hubpilot-runs, which run_queue reads)"))
    d = settings.directory
    if d is not None and d.kind == "entra" and d.entra is not None and d.entra.notifications \
            and d.entra.queue == "azure":
        e = d.entra
        if e.queue_connection_string is not None:  # taken before queue_account_url
            given.append(("HUBPILOT_DIRECTORY__ENTRA__QUEUE_CONNECTION_STRING",
                          _connection_account(e.queue_connection_string.get_secret_value()),
                          "Graph hints (hubpilot-graph, which graph_hints reads)"))
        else:
            given.append(("HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL", _queue_account(e.queue_account_url),
                          "Graph hints (hubpilot-graph, which graph_hints reads)"))
    wrong = [(name, f"{name} puts {what} in the storage account {account!r}") for name, account, what in given
             if account is not None and account != host]
    if wrong:
        api = any(n == "HUBPILOT_API__QUEUE_CONNECTION_STRING" for n, _ in wrong)
        unset = (" (or leave HUBPILOT_API__QUEUE_CONNECTION_STRING unset: run requests then go to "
                 "AzureWebJobsStorage's)") if api else ""
        raise error(
            "; ".join(w for _, w in wrong) + f", but the queue triggers read the host's storage account {host!r} "
            f"(AzureWebJobsStorage): what is put elsewhere is never read; point it at that account{unset}")


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
    ctx.host_disabled = disabled_timers(os.environ)
    return ctx


TIMERS = {"sync": "sync_timer", "cull": "cull_timer", "scale": "scale_timer",
          "directory.entra.subscription_schedule": "graph_subscriptions"}
"""Each schedule's timer function (functions/timers.py, functions/graph.py)."""


def disabled_timers(environ: Mapping[str, str]) -> dict[str, str]:
    """The schedules whose timer the host does not fire: switched off with the app setting
    ``AzureWebJobs.<function>.Disabled`` (what the portal's Disable button sets) read as the host
    reads it, schedule name → why (GET /status). The host looks the setting up in its .NET
    configuration: its name in any case, and as ``AzureWebJobs_<function>_Disabled`` too (Linux
    passes app settings as environment variables, a dot as '_'); ``__`` there means ':' (another
    name, which the host does not read). It takes "true" or "1" in any case, as given (no spaces)."""
    names = {name.lower(): name for name in environ}
    out = {}
    for schedule, fn in TIMERS.items():
        for key in (f"AzureWebJobs.{fn}.Disabled", f"AzureWebJobs_{fn}_Disabled"):
            name = names.get(key.lower())
            if name is not None and environ[name].lower() in ("true", "1"):
                out[schedule] = (f"the Functions host does not fire its timer {fn}: the app setting {name} is "
                                 f"{environ[name]!r} (the portal's Disable button sets it); remove it or set "
                                 "it to false to enable the timer")
                break
    return out
