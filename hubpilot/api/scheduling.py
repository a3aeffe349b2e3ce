"""Schedules both hosts share: the Functions timers and ``hubpilot serve``'s scheduler.

Each operation's schedule is the ``schedule`` setting of its section (``sync.schedule``,
``cull.schedule``, ``scale.schedule``), an NCRONTAB expression. A scheduled round calls the same
``Runner.run`` as the CLI and the API, with trigger ``timer``; a round that finds the lock held
is skipped, and refused or paused runs are outcomes, not errors.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hubpilot.loop import LockHeld, RunRecord, log_outcome, stored_time
from hubpilot.ports.store import ConflictError
from hubpilot.schedule import next_fire
from hubpilot.settings import TIMER_SCHEDULE_ENV, Settings
from hubpilot.wiring import OPERATIONS, Context, NotConfigured

log = logging.getLogger(__name__)

FIRED_KEY = "schedule/{name}"
"""The latest fire time of a schedule that a ``hubpilot serve`` process claimed (and ran)."""


@dataclass(frozen=True)
class Schedule:
    name: str  # the operation, or the dotted setting for schedules that are not operations
    expression: str
    runnable: bool  # an operation the scheduler runs
    setting: str  # dotted path of the setting, e.g. "sync.schedule"

    def app_setting(self) -> str:
        """The app setting / environment variable that carries it: an operation's flat name, which
        its Functions timer reads (``HUBPILOT_SYNC_SCHEDULE``), else ``HUBPILOT_<SECTION>__<KEY>``."""
        if self.runnable:
            return TIMER_SCHEDULE_ENV[self.name]
        return "HUBPILOT_" + "__".join(p.upper() for p in self.setting.split("."))

    def next_fire(self, after: datetime) -> datetime:
        return next_fire(self.expression, after)


def configured_schedules(settings: Settings) -> list[Schedule]:
    """Every schedule the settings hold: each operation's, then any other ``*_schedule`` field."""
    out: list[Schedule] = []
    for op in OPERATIONS:
        expr = getattr(getattr(settings, op, None), "schedule", None)
        if isinstance(expr, str) and expr:
            out.append(Schedule(op, expr, True, f"{op}.schedule"))

    def walk(model: Any, path: tuple[str, ...]) -> None:
        fields = getattr(type(model), "model_fields", None)
        if not fields:
            return
        for fld in fields:
            value = getattr(model, fld)
            loc = (*path, fld)
            if isinstance(value, str) and (fld == "schedule" or fld.endswith("_schedule")):
                if not (len(path) == 1 and path[0] in OPERATIONS and fld == "schedule") and value:
                    dotted = ".".join(loc)
                    out.append(Schedule(dotted, value, False, dotted))
            elif hasattr(type(value), "model_fields"):
                walk(value, loc)

    walk(settings, ())
    return out


ENTRA_SUBSCRIPTIONS = "directory.entra.subscription_schedule"


def subscriptions_off(settings: Settings) -> str | None:
    """Why the Graph subscription manager has nothing to do (its rounds are skipped), or None."""
    d = settings.directory
    if d is None or d.entra is None:
        return "no [directory.entra] section is configured"
    if d.kind != "entra":
        return f"directory.kind is {d.kind!r}, not 'entra'"
    if not d.entra.notifications:
        return "directory.entra.notifications is off (the scheduled sync alone keeps the hub in step)"
    return None


def skip_reason(ctx: Context, schedule: Schedule) -> str | None:
    """Why the settings skip every round of ``schedule`` (naming the setting), None when its rounds
    run: what :func:`run_scheduled` (and serve's job of the schedule) says when it skips one."""
    if schedule.runnable:
        if schedule.name == "scale" and not ctx.settings.scale.enabled:
            return "scale.enabled is off"
        return ctx.unconfigured(schedule.name)
    if schedule.setting == ENTRA_SUBSCRIPTIONS:
        return subscriptions_off(ctx.settings)
    return None


_SAID_ATTR = "_schedule_skips_said"
"""The context's set of skips of unconfigured operations already logged: said once at INFO, then at
DEBUG (a scale schedule on a hub without a pool would otherwise log one line a minute). Kept on the
context itself, so a new context never inherits an old one's (an id() can be reused)."""


def _skipped(ctx: Context, message: str) -> None:
    said: set[str] | None = getattr(ctx, _SAID_ATTR, None)
    if said is None:
        said = set()
        setattr(ctx, _SAID_ATTR, said)
    if message in said:
        log.debug("%s", message)
        return
    said.add(message)
    log.info("%s (said once; the later skips for this reason are logged at DEBUG)", message)


async def run_scheduled(ctx: Context, operation: str, *, trigger: str = "timer",
                        actor: str = "timer") -> RunRecord | None:
    """One scheduled round. None when another run holds the lock or the operation is not
    configured (scale without a pool, or with ``scale.enabled`` off): the round is skipped."""
    reason = skip_reason(ctx, Schedule(operation, "", True, f"{operation}.schedule"))
    if reason is not None:
        _skipped(ctx, f"scheduled {operation} skipped: {reason}")
        return None
    try:
        cap = ctx.capability(operation)
    except NotConfigured as exc:
        _skipped(ctx, f"scheduled {operation} skipped: {exc}")
        return None
    try:
        record = await ctx.runner.run(cap, trigger=trigger, actor=actor)
    except LockHeld as exc:
        log.info("scheduled %s skipped: %s", operation, exc)
        return None
    log_outcome(record)
    return record


async def claim_fire(ctx: Context, name: str, due: datetime, *, force: bool = False) -> bool:
    """Claim the fire time ``due`` of schedule ``name`` for this process; False when another
    process on the same store (a second ``hubpilot serve``) claimed it already.

    The operation's lock alone does not keep two processes from both running one fire time: the
    one whose clock is behind fires after the other's run has ended and released it. Fire times
    are the schedule's own (12:15:00 on every host), so the first claim wins whatever the clocks.
    Only that same time counts: a later one, claimed by a clock that was once far ahead, must not
    silence the schedule until the clock catches up with it. ``force``: claim it even if claimed.
    """
    key = FIRED_KEY.format(name=name)
    for _ in range(3):
        got = await ctx.store.get_with_etag(key)
        etag = ""
        if got is not None:
            doc, etag = got
            try:
                fired = stored_time(doc.get("fired"), f"{key} fired")
            except ValueError as exc:  # a damaged document: overwritten by this claim
                log.warning("%s; it is replaced", exc)
                fired = None
            if fired == due and not force:
                return False
        try:
            await ctx.store.put(key, {"fired": due.isoformat(), "by": f"{socket.gethostname()}:{os.getpid()}",
                                      "at": ctx.clock().isoformat()}, if_match=etag)
            return True
        except ConflictError:  # another process wrote it meanwhile: read it again
            continue
    return False
