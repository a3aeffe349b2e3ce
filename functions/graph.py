"""Graph triggers: the queue of notification hints and the subscription manager timer.

The webhook (``POST /api/v1/graph/notifications``) acknowledges Graph within its 3 seconds and
leaves a hint on the Storage queue ``hubpilot-graph``; ``graph_hints`` runs the delta sync for
it. A hint whose change a finished sync run already saw is dropped; when another sync holds the
lock the function raises, so the Functions host retries the message after host.json's
``visibilityTimeout`` (its default, zero, would spend every attempt within a second, while the
other sync still runs) and after ``maxDequeueCount`` attempts moves it to the poison queue — the
scheduled sync is the safety net. A lifecycle event whose manager round failed (a Graph 5xx) is
retried the same way: Graph pauses delivery until the subscription is reauthorized, and the timer
renews a subscription only when it nears its expiry. ``graph_subscriptions`` keeps one subscription per configured
group, hourly: the manager is idempotent and costs one ``GET /subscriptions`` when nothing is due.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions import get_context

log = logging.getLogger("hubpilot.functions.graph")

bp = func.Blueprint()

HINT_QUEUE = "hubpilot-graph"  # directory.entra.queue_name's default
HINT_QUEUE_CONNECTION = "AzureWebJobsStorage"
SUBSCRIPTION_SCHEDULE = "0 5 * * * *"


async def handle_hint_message(body: bytes | str) -> str:
    """Process one queued hint; returns the outcome ('rejected', 'covered' or the run's)."""
    import json

    from hubpilot.entra.notifications import Hint, NotificationError
    from hubpilot.wiring.entra import process_hint

    try:
        hint = Hint.from_json(json.loads(body))
    except (ValueError, NotificationError, TypeError, AttributeError) as exc:
        log.error("dropped a malformed Graph hint: %s", exc)
        return "rejected"
    # LockHeld, and RoundFailed (a lifecycle event's manager round failed), propagate: the host
    # delivers the message again (host.json queues.maxDequeueCount, then the poison queue)
    record = await process_hint(get_context(), hint)
    return "covered" if record is None else str(record.outcome)


@bp.function_name("graph_hints")
@bp.queue_trigger(arg_name="msg", queue_name=HINT_QUEUE, connection=HINT_QUEUE_CONNECTION)
async def graph_hints(msg: func.QueueMessage) -> None:
    outcome = await handle_hint_message(msg.get_body())
    if outcome == "covered":  # a run says how it ended in its own line (loop.log_outcome)
        log.info("graph hint %s: covered, no run", msg.id)


async def subscriptions_round() -> str:
    from hubpilot.wiring.entra import run_subscription_manager

    ctx = get_context()
    d = ctx.settings.directory
    if d is None or d.kind != "entra" or d.entra is None or not d.entra.notifications:
        return "off"
    record = await run_subscription_manager(ctx)
    return "skipped" if record is None else str(record.outcome)


@bp.function_name("graph_subscriptions")
@bp.timer_trigger(arg_name="timer", schedule=SUBSCRIPTION_SCHEDULE, run_on_startup=False, use_monitor=True)
async def graph_subscriptions(timer: func.TimerRequest) -> None:
    if await subscriptions_round() == "off":  # a round says how it ended in its own line (loop.log_outcome)
        log.info("graph subscriptions: off (directory.entra.notifications)")
