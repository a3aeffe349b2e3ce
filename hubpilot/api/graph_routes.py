"""Microsoft Graph webhook endpoints of the admin API (owned by the Entra work).

``POST /api/v1/graph/notifications`` and ``POST /api/v1/graph/lifecycle`` carry no credentials:
Graph cannot send any. They are verified by content instead: the ``clientState`` secret in each
notification (and the tenant, when configured). The validation handshake (``?validationToken=``)
is echoed as ``text/plain`` before anything else is touched — the same answer the cheap front
(:mod:`hubpilot.api.front`) gives on the Functions host. Valid notifications are acknowledged
with 202 after a hint is queued; the sync itself runs asynchronously. A notification with a
wrong ``clientState`` changes nothing and is audited (a post with no valid one is answered 403, one
with a valid one 202, so Graph does not retry the valid ones): one entry per minute at
most across every instance that shares the state store, which counts the refused posts it stands
for (``refused_posts``, the posts one instance refused since its entry at ``since``), so a flood of
forgeries cannot fill the state store.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from hubpilot.api.deps import get_context
from hubpilot.entra.notifications import NotificationError, check, hints_for, parse_body
from hubpilot.loop import AuditThrottle
from hubpilot.ports.store import StateStore

log = logging.getLogger(__name__)

router = APIRouter()

QUEUE_SECONDS = 5.0
"""How long a notification's hints may take to reach the queue before Graph is answered 503 (its
limit is 10 s: slower answers get the endpoint marked slow, then its notifications dropped)."""
_DETAIL = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}}
WEBHOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Graph's validation handshake: the validationToken echoed back",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    202: {"description": "Accepted; the delta sync runs asynchronously"},
    400: {"description": "The body is not a Graph notification", "content": _DETAIL},
    403: {"description": "clientState or tenant wrong (audited, at most once a minute with a count)",
          "content": _DETAIL},
    404: {"description": "Graph notifications are off", "content": _DETAIL},
    503: {"description": "The notification queue is unavailable; Graph retries", "content": _DETAIL},
}

MAX_VALIDATION_TOKEN = 4096
# The echoed token is the caller's text: never let a browser sniff it as HTML, never cache it
# (the same headers as the front's answer; a query key the front does not recognise reaches here).
HANDSHAKE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
AUDIT_OPERATION = "graph-notifications"
MAX_REFUSALS_SHOWN = 10
"""Refusals named in the audit entry, the log line and the answer; the rest are counted. The
endpoint is anonymous: what a forger sends must not be multiplied into storage."""


REFUSAL_AUDIT_INTERVAL = timedelta(minutes=1)
"""At most one audit entry of refused posts per interval, across the instances that share the state
store (:class:`hubpilot.loop.AuditThrottle`); each entry counts the posts it stands for. Each entry
is bounded, but the number of posts is the forger's."""


def _refusal_audit(request: Request, store: StateStore) -> AuditThrottle:
    """This process's counter (one per app; the claim on each interval is shared in the store)."""
    state = request.app.state
    audit: AuditThrottle | None = getattr(state, "graph_refusal_audit", None)
    if audit is None:
        audit = state.graph_refusal_audit = AuditThrottle(store, AUDIT_OPERATION, REFUSAL_AUDIT_INTERVAL)
    return audit


def _refusals(rejected: tuple[str, ...]) -> list[str]:
    shown = list(rejected[:MAX_REFUSALS_SHOWN])
    if len(rejected) > MAX_REFUSALS_SHOWN:
        shown.append(f"and {len(rejected) - MAX_REFUSALS_SHOWN} more")
    return shown


async def _receive(request: Request, *, lifecycle: bool) -> Response:
    token = request.query_params.get("validationToken")
    if token is not None and len(token) <= MAX_VALIDATION_TOKEN:
        return PlainTextResponse(token, status_code=200, headers=HANDSHAKE_HEADERS)
    raw = await request.body()
    try:
        items = parse_body(raw)
    except NotificationError as exc:
        return JSONResponse({"detail": f"not a Graph notification: {exc}"}, status_code=400)
    except RecursionError:  # the parser's stack, not a fault of ours: the caller is anonymous
        return JSONResponse({"detail": "not a Graph notification: the body's JSON nests too deeply"},
                            status_code=400)
    ctx = get_context(request)
    d = ctx.settings.directory
    entra = d.entra if d is not None and d.kind == "entra" else None
    if entra is None or not entra.notifications:
        return JSONResponse({"detail": "Graph notifications are off (directory.entra.notifications)"},
                            status_code=404)
    secret = entra.client_state.get_secret_value() if entra.client_state else ""
    verdict = check(items, client_state=secret, tenant_id=entra.tenant_id, lifecycle=lifecycle)
    now = ctx.clock()
    refusals = _refusals(verdict.rejected)
    if verdict.rejected:
        log.warning("refused %d Graph notification(s): %s", len(verdict.rejected), "; ".join(refusals))
        await _refusal_audit(request, ctx.store).record({
            "at": now.isoformat(), "operation": AUDIT_OPERATION,
            "kind": "lifecycle" if lifecycle else "notification",
            "trigger": "webhook", "actor": "graph", "outcome": "refused", "refusal": refusals,
            "client": request.client.host if request.client else None,
        }, now)
    if verdict.status != 202:
        return JSONResponse({"detail": "notification refused: " + "; ".join(refusals)},
                            status_code=verdict.status)
    from hubpilot.wiring.entra import notification_queue

    queue = notification_queue(ctx)

    async def push_all() -> None:
        for hint in hints_for(verdict, now):
            await queue.push(hint)

    try:
        # Graph retries an unacknowledged notification for hours if some answer comes within 10 s;
        # answers slower than that get the endpoint marked slow and then its notifications dropped
        await asyncio.wait_for(push_all(), QUEUE_SECONDS)
    except TimeoutError:
        log.error("could not queue a Graph notification: the notification queue did not answer within %g s "
                  "(Graph retries it)", QUEUE_SECONDS)
        return JSONResponse({"detail": "the notification queue is unavailable; retry"}, status_code=503)
    except Exception as exc:  # Graph retries a notification that was not acknowledged
        from hubpilot.adapters.store_azure import redacted  # the queue's URL can carry a signature

        log.error("could not queue a Graph notification: %s", redacted(str(exc)))
        return JSONResponse({"detail": "the notification queue is unavailable; retry"}, status_code=503)
    return Response(status_code=202)


@router.post("/graph/notifications", include_in_schema=True, status_code=202, responses=WEBHOOK_RESPONSES,
             summary="Microsoft Graph change notifications (verified by clientState)")
async def graph_notifications(request: Request) -> Response:
    return await _receive(request, lifecycle=False)


@router.post("/graph/lifecycle", include_in_schema=True, status_code=202, responses=WEBHOOK_RESPONSES,
             summary="Microsoft Graph lifecycle notifications (verified by clientState)")
async def graph_lifecycle(request: Request) -> Response:
    return await _receive(request, lifecycle=True)
