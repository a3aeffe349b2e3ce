"""Timer triggers for sync, cull and scale, and the queue trigger that executes API-started runs.

Schedules are app settings read by the Functions host through binding expressions
(``%HUBPILOT_SYNC_SCHEDULE%``): the same NCRONTAB values hubpilot's settings validate and
``hubpilot serve`` fires in-process. The names are flat (``hubpilot.settings.TIMER_SCHEDULE_ENV``):
the host resolves ``%NAME%`` in its configuration, where ``__`` in an app setting's name is the
section delimiter, so ``%HUBPILOT_SYNC__SCHEDULE%`` would resolve to nothing and the function
would not load. A round that finds the lock held is skipped; a refused or paused run is an
outcome, never an error.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions import get_context

log = logging.getLogger("hubpilot.functions")

bp = func.Blueprint()

# hubpilot.settings.TIMER_SCHEDULE_ENV (not imported: keeps cold start cheap)
SCHEDULE_SETTINGS = {
    "sync": "HUBPILOT_SYNC_SCHEDULE",
    "cull": "HUBPILOT_CULL_SCHEDULE",
    "scale": "HUBPILOT_SCALE_SCHEDULE",
}

RUN_QUEUE = "hubpilot-runs"  # hubpilot.api.runs.QUEUE_NAME (not imported: keeps cold start cheap)
RUN_QUEUE_CONNECTION = "AzureWebJobsStorage"  # hubpilot.api.runs.QUEUE_CONNECTION_SETTING


async def run_timer(operation: str, timer: func.TimerRequest | None = None) -> str:
    """One scheduled round; returns the outcome ('skipped' when the lock was held)."""
    from hubpilot.api.scheduling import run_scheduled

    if timer is not None and timer.past_due:
        log.info("%s timer is past due", operation)
    record = await run_scheduled(get_context(), operation)
    return "skipped" if record is None else str(record.outcome)


@bp.function_name("sync_timer")
@bp.timer_trigger(arg_name="timer", schedule=f"%{SCHEDULE_SETTINGS['sync']}%", use_monitor=True)
async def sync_timer(timer: func.TimerRequest) -> None:
    await run_timer("sync", timer)


@bp.function_name("cull_timer")
@bp.timer_trigger(arg_name="timer", schedule=f"%{SCHEDULE_SETTINGS['cull']}%", use_monitor=True)
async def cull_timer(timer: func.TimerRequest) -> None:
    await run_timer("cull", timer)


@bp.function_name("scale_timer")
@bp.timer_trigger(arg_name="timer", schedule=f"%{SCHEDULE_SETTINGS['scale']}%", use_monitor=True)
async def scale_timer(timer: func.TimerRequest) -> None:
    await run_timer("scale", timer)


async def execute_message(body: bytes | str) -> str:
    """Run the run request a queue message carries; returns the outcome, or 'rejected'. Raises
    (the host delivers the message again) when the run neither started nor could be recorded."""
    from hubpilot.api.runs import execute_queued, parse_queue_message

    try:
        req = parse_queue_message(body)
    except ValueError as exc:
        # A malformed request is dropped, not retried: retrying cannot make it valid.
        log.error("dropped a run request: %s", exc)
        return "rejected"
    record = await execute_queued(get_context(), req)
    return "failed" if record is None else str(record.outcome)


@bp.function_name("run_queue")
@bp.queue_trigger(arg_name="msg", queue_name=RUN_QUEUE, connection=RUN_QUEUE_CONNECTION)
async def run_queue(msg: func.QueueMessage) -> None:
    await execute_message(msg.get_body())
