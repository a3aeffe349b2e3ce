"""Scale endpoints of the admin API (owned by the scale work).

``POST /api/v1/scale/demand`` (role ``hub``): the hub's pre-spawn hook says a user is starting
a GPU server. The demand is recorded (it counts in every scale run for ``scale.demand_ttl_minutes``)
and a scale run is started at once, so the pool grows within a second instead of at the next
timer. When a scale run is already under way the demand is recorded and, when runs execute in
this process (``api.run_mode = "inprocess"``), one follow-up run starts as soon as the lock is free;
otherwise it counts in the next timer run.

``GET /api/v1/cost`` (roles ``reader``/``admin``): GPU node-hours and cost per day (midnight to
midnight in ``scale.timezone``), what an always-on pool of the peak size (or ``always_on_nodes``)
would have cost, and the hours hubpilot did not observe the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from hubpilot.api.auth import Principal, require_role
from hubpilot.api.deps import get_context
from hubpilot.api.runs import QUEUE_NAME, QueueUnavailable, start_run
from hubpilot.loop import LockHeld
from hubpilot.scale import record_demand
from hubpilot.wiring import Context

log = logging.getLogger(__name__)

router = APIRouter(tags=["scale"])

FOLLOW_UP_POLL_SECONDS = 0.2
_follow_ups: dict[int, asyncio.Task[None]] = {}  # by id(ctx): at most one waiting per process
_follow_up_until: dict[int, datetime] = {}  # by id(ctx): until when it waits (the last demand's wait)
_stopping: set[int] = set()  # id(ctx) of a process whose shutdown has begun: no follow-up run starts
NOT_STARTED = ("hubpilot is stopping: the follow-up scale run that waited for the lock is not started; its demands "
               "are recorded and count in the next scale run")


async def _follow_up(ctx: Context, actor: str, limit: float) -> None:
    """Start one scale run as soon as the running one has released the lock (bounded wait, on the
    context's clock, the one the lock's expiry is told by: up to ``limit`` seconds after the last
    demand it serves)."""
    starting: asyncio.Future[str] | None = None
    try:
        while ctx.clock() < _follow_up_until.get(id(ctx), ctx.clock()):
            await asyncio.sleep(FOLLOW_UP_POLL_SECONDS)
            if id(ctx) not in _stopping and await ctx.store.read_lock("scale", ctx.clock()) is not None:
                continue
            if id(ctx) in _stopping:  # the signal came (uvicorn still answers the requests under way)
                log.info(NOT_STARTED)
                return
            # shielded: a shutdown's cancellation in the midst of its store writes would leave the
            # run's reservation behind with no run to take it (every other start refused until it expires)
            starting = asyncio.ensure_future(start_run(ctx, "scale", trigger="demand", actor=actor))
            try:
                await asyncio.shield(starting)
                return
            except LockHeld:
                continue
        log.warning("a scale run has held the lock for more than %g s (scale.lro_wait_seconds + 60) since the last "
                    "demand signal: no follow-up run is started for it; its demands count in the next scale run", limit)
    except asyncio.CancelledError:
        started: str | None = None
        if starting is not None and not starting.done():  # let it finish: a run started, or nothing left behind
            with contextlib.suppress(Exception):
                started = await starting
        if started:
            log.info("hubpilot is stopping: the follow-up scale run %s for a demand had just started; it has the "
                     "shutdown grace as the runs under way do", started)
        else:
            log.info(NOT_STARTED)
        raise
    except Exception:  # a follow-up is an optimisation: the timer run picks the demand up anyway
        log.exception("follow-up scale run for a demand signal failed")
    finally:
        _follow_ups.pop(id(ctx), None)
        _follow_up_until.pop(id(ctx), None)


def _schedule_follow_up(ctx: Context, actor: str) -> bool:
    if ctx.settings.api.run_mode != "inprocess" or id(ctx) in _stopping:
        return False
    limit = ctx.settings.scale.lro_wait_seconds + 60
    # from now: a demand the waiting follow-up covers gets the whole wait too
    _follow_up_until[id(ctx)] = ctx.clock() + timedelta(seconds=limit)
    if id(ctx) in _follow_ups:
        return True  # the follow-up already waiting covers this demand too
    _follow_ups[id(ctx)] = asyncio.create_task(_follow_up(ctx, actor, limit))
    return True


def stop_taking_follow_ups(ctx: Context) -> None:
    """Shutdown has begun (the signal): from now no follow-up run starts for this context, the one
    waiting for the lock gives up at its next look, and a demand still answered schedules none."""
    if id(ctx) not in _stopping:
        _stopping.add(id(ctx))
        weakref.finalize(ctx, _stopping.discard, id(ctx))


async def stop_follow_up(ctx: Context) -> None:
    """Give up the follow-up waiting for this context's lock (shutdown, once no request is answered
    any more: no new run starts then; a run it has started already is a run like any other, drained
    or cancelled with them). The context takes follow-ups again after it (a context used on)."""
    stop_taking_follow_ups(ctx)
    task = _follow_ups.get(id(ctx))
    try:
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        _stopping.discard(id(ctx))
        if task is not None and _follow_ups.get(id(ctx)) is task:  # cancelled before it ran: its finally did not
            _follow_ups.pop(id(ctx), None)
            _follow_up_until.pop(id(ctx), None)


async def drain_follow_ups() -> None:
    """Wait for pending follow-up runs to be started (tests, shutdown)."""
    while _follow_ups:
        await asyncio.gather(*list(_follow_ups.values()), return_exceptions=True)


class DemandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # no '\': the demand's key holds the names, and no state store can hold a key with one
    user: str = Field(min_length=1, max_length=255, pattern=r"^[^/~\s\\]+$",
                      description="Hub username starting the server (no '/', '~', '\\' or whitespace).")
    server: str = Field("", max_length=255, pattern=r"^[^/~\s\\]*$",
                        description="Server name ('' = default; no '/', '~', '\\' or whitespace).")
    profile: str = Field("", max_length=255, description="Profile slug the user picked.")


class DemandOut(BaseModel):
    recorded: str = Field(description="Key of the recorded demand.")
    run_id: str | None = Field(None, description="The scale run started for it, if one was started.")
    detail: str = ""


@router.post(
    "/scale/demand", response_model=DemandOut, status_code=202,
    summary="A GPU server is starting: record the demand and start a scale run (role hub)",
)
async def post_demand(body: DemandIn, ctx: Context = Depends(get_context),
                      who: Principal = Depends(require_role("hub"))) -> Any:
    s = ctx.settings.scale
    # the hub's part sends only GPU spawns, resolved as KubeSpawner will apply them (a GPU choice
    # of profile_options, a profile whose override asks for the GPU): its word is not second-guessed
    # by scale.gpu_profiles, which names profiles for the hub's pending spawns
    key = await record_demand(ctx.store, user=body.user, server=body.server, profile=body.profile,
                              at=ctx.clock())
    if not s.enabled:  # nothing scales on its own; a manual run still counts the demand
        return DemandOut(recorded=key, detail="scale.enabled is off: the demand is recorded, no scale run started")
    try:
        run_id = await start_run(ctx, "scale", trigger="demand", actor=who.actor)
    except LockHeld:
        follow = _schedule_follow_up(ctx, who.actor)
        detail = "a scale run is in progress; " + (
            "a follow-up run starts when it ends" if follow else "the demand counts in the next run")
        return JSONResponse(DemandOut(recorded=key, detail=detail).model_dump(), status_code=202)
    except QueueUnavailable as exc:  # the demand is recorded: the next timer run counts it
        return DemandOut(recorded=key, detail=f"the demand is recorded and counts in the next scale run; no run "
                         f"was started now: its request could not be put on the {QUEUE_NAME} queue ({exc.problem})")
    return DemandOut(recorded=key, run_id=run_id, detail="scale run started")


@router.get("/cost", summary="GPU node-hours and cost per day vs an always-on pool (reader)")
async def get_cost(
    days: int = Query(7, ge=1, le=366, description="Days back, today included (days in scale.timezone)."),
    always_on_nodes: int | None = Query(None, ge=0, le=1000,
                                        description="Size of the always-on pool to compare (default: peak)."),
    ctx: Context = Depends(get_context),
    who: Principal = Depends(require_role("reader")),
) -> dict[str, Any]:
    from hubpilot.wiring.scale import report

    return (await report(ctx, days=days, always_on_nodes=always_on_nodes)).to_json()
