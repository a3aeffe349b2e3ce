"""The cull capability: observe (one paged read) → plan → guard → apply (parallel stops)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from hubpilot.config.cull import CullSettings
from hubpilot.cull.plan import (
    DELETE_USER,
    OPERATION,
    REMOVE,
    STOP,
    STOP_KINDS,
    CullObserved,
    guard_cull,
    plan_cull,
    recheck_stop,
    recheck_user_deletion,
    server_target,
    sync_hold,
)
from hubpilot.hub_outage import catch_up as hub_catch_up
from hubpilot.hub_outage import is_outage, note_outage
from hubpilot.loop import Action, ActionResult, Plan, Progress, Status, run_actions, utcnow
from hubpilot.ports.hub import Hub, HubError, HubNotAttempted, HubUser, StopResult
from hubpilot.ports.store import ConflictError, StateStore, StoreError
from hubpilot.sync import ManagedRecordError, read_managed

_STOP_STATUS = {
    StopResult.STOPPED: (Status.DONE, "stopped"),
    StopResult.PENDING: (Status.PENDING,
                         "the hub answered 202: the server is still stopping (a slow stop, or one already under way)"),
    StopResult.NOT_RUNNING: (Status.NOOP, "already stopped"),
}
#: one document per server stop reported done (``STOP_REPORTS`` + a hash of user, server and
#: the server's start time): the first run to write it reports the stop, another finds it
STOP_REPORTS = "cull/stops/"
STOP_REPORTS_KEPT = timedelta(days=2)
REPORTED_ELSEWHERE = ("already stopped: another run on this state store stopped it and reports the "
                      "stop (the hub answers 204 also to a DELETE of a server already stopped)")


class CullCapability:
    """Stops idle servers. Policy (``CullSettings``) is bound here; ``plan`` and ``guard`` are pure.

    ``store``: where sync keeps the users it manages; a user sync provisions is never deleted
    (without a store, nobody is)."""

    def __init__(self, hub: Hub, settings: CullSettings, store: StateStore | None = None, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.hub = hub
        self.settings = settings
        self.store = store
        self.clock = clock

    @property
    def name(self) -> str:
        return OPERATION

    async def observe(self) -> CullObserved:
        try:
            # active, not ready: a user whose only server is pending is noted in the plan too
            active = await self.hub.list_users(state="active")
            inactive = await self.hub.list_users(state="inactive") if self.settings.cull_users else []
        except HubError as exc:
            if is_outage(exc) and self.store is not None:
                await note_outage(self.store, self.clock())
            raise
        lag = timedelta(seconds=self.settings.activity_lag)
        catch_up = await hub_catch_up(self.store, self.clock(), lag) if self.store is not None else None
        self._check_groups_read(active)
        if not self.settings.cull_users:
            return CullObserved(tuple(active), catch_up=catch_up)
        if not self.settings.delete_users:
            return CullObserved(tuple(active), tuple(inactive), catch_up=catch_up)
        members, unknown = await self._sync_members()
        return CullObserved(tuple(active), tuple(inactive), members, unknown, catch_up=catch_up)

    def _check_groups_read(self, users: Sequence[HubUser]) -> None:
        """A policy matching hub groups needs the users' groups: without them every server would
        quietly get the default limits (an exempt group's servers stopped after the default
        timeout). Refuse the round instead, naming the scope to grant."""
        by_group = [p.name for p in self.settings.policies if p.match_group is not None]
        blind = sorted(u.name for u in users if not u.groups_read)
        if by_group and blind:
            raise HubError(
                f"GET /users: the hub leaves the users' groups out ({blind[0]!r}"
                + (f" and {len(blind) - 1} more" if len(blind) > 1 else "")
                + f"), so cull policies matching hub groups ({', '.join(by_group)}) cannot be "
                "applied: grant hubpilot's service role read:users:groups (or admin:users, which "
                "implies it; see docs/hub-scopes.md)",
                status=403,
            )

    async def _sync_members(self) -> tuple[frozenset[str] | None, str]:
        """The users sync manages as active members (the directory still wants them); None and
        why (never empty) when that cannot be known."""
        if self.store is None:
            return None, "cull has no state store to read sync's managed users from"
        try:
            managed = await read_managed(self.store)
        except (StoreError, ManagedRecordError) as exc:
            return None, f"sync's managed users cannot be read: {exc}"
        return frozenset(n for n, r in managed.items() if r.active), ""

    def plan(self, observed: CullObserved, now: datetime) -> Plan:
        return plan_cull(observed, self.settings, now)

    def guard(self, observed: CullObserved, plan: Plan) -> Sequence[str]:
        return guard_cull(self.settings, plan)

    async def apply(self, plan: Plan, observed: CullObserved, progress: Progress) -> list[ActionResult]:
        stop_status: dict[str, list[Status]] = {}
        now = _plan_time(plan)
        reports: list[bool] = []
        before = {(u.name, n): s for u in observed.active for n, s in u.servers.items()}
        async def perform(action: Action) -> ActionResult:
            # a hub that left one request of the round unanswered is not asked for the remaining
            # stops (the hub client's round, hubpilot.ports.hub.hub_round): a stop whose requests
            # were not sent is skipped, not failed; the next round re-observes
            try:
                return await act(action)
            except HubNotAttempted as exc:
                return ActionResult(action, Status.SKIPPED, str(exc))

        async def act(action: Action) -> ActionResult:
            user = str(action.params.get("user", action.target))
            if action.kind in STOP_KINDS:
                server = str(action.params.get("server", ""))
                try:
                    # read the server again: a user back at work, or a restart (whose pending
                    # spawn the DELETE would cancel), since the round's reading keeps it
                    current = await self.hub.get_user(user)
                    changed = recheck_stop(action.kind, before.get((user, server)),
                                           current, server, self.settings, now)
                    if changed is not None:
                        stop_status.setdefault(user, []).append(changed[0])
                        return ActionResult(action, *changed)
                    if action.kind == REMOVE:
                        outcome = await self.hub.delete_server(user, server)
                    else:
                        outcome = await self.hub.stop_server(user, server)
                except Exception:
                    stop_status.setdefault(user, []).append(Status.FAILED)
                    raise
                status, detail = _STOP_STATUS[outcome]
                seen = current.servers.get(server) if current is not None else None
                if status is Status.DONE and seen is not None and seen.started is not None:
                    reports.append(True)
                    if not await self._first_report(user, server, seen.started):
                        status, detail = Status.NOOP, REPORTED_ELSEWHERE
                if action.kind == REMOVE and status is not Status.PENDING:
                    detail = f"{detail}; removed" if status is Status.DONE else "already removed or stopped"
                stop_status.setdefault(user, []).append(status)
                return ActionResult(action, status, detail)
            if action.kind == DELETE_USER:
                if not self.settings.delete_users:
                    return ActionResult(action, Status.SKIPPED, "cull.delete_users is off")
                unfinished = [s for s in stop_status.get(user, []) if s not in (Status.DONE, Status.NOOP)]
                if unfinished:
                    return ActionResult(action, Status.SKIPPED, "a server of this user has not stopped")
                # read again before each deletion: sync may have taken the user on since observe,
                # also during this round's earlier deletions (a slow hub, cull.concurrency)
                synced, unknown = await self._sync_members()
                held = unknown or sync_hold(user, synced)
                if held:
                    return ActionResult(action, Status.SKIPPED, held)
                # the hub's DELETE /users/{name} stops a running server and deletes the user anyway:
                # read the user again, a user who started a server since the round's reading stays
                current = await self.hub.get_user(user)
                if current is None:
                    return ActionResult(action, Status.NOOP, "already gone")
                started = sorted(server_target(user, n) for n, s in current.servers.items()
                                 if s.ready or s.pending)
                if started:
                    return ActionResult(action, Status.SKIPPED,
                                        f"started {', '.join(started)} since the round's reading")
                # active again since the reading, without a server yet; not judged after this
                # round's stops of the user's servers: the hub marks the user active at a stop.
                # A stop that found the server already stopped (noop) was someone else's: the user
                # may have stopped it themselves, so their activity counts and they are judged
                ours = stop_status.get(user, [])
                back = None if ours and all(s is Status.DONE for s in ours) \
                    else recheck_user_deletion(current, self.settings, now)
                if back is not None:
                    return ActionResult(action, Status.SKIPPED, back)
                existed = await self.hub.delete_user(user)
                return ActionResult(action, Status.DONE if existed else Status.NOOP,
                                    "deleted" if existed else "already gone")
            return ActionResult(action, Status.SKIPPED, f"cull does not perform {action.kind}")

        results = await run_actions(plan.actions, perform, concurrency=self.settings.concurrency,
                                    progress=progress)
        if reports and self.store is not None and now is not None:
            try:  # best effort: a report outlives any run that could find the same server running
                await self.store.prune(STOP_REPORTS, now - STOP_REPORTS_KEPT)
            except StoreError:
                pass
        return results

    async def _first_report(self, user: str, server: str, started: datetime) -> bool:
        """Whether this run is the first to report the stop of ``user``'s ``server`` that started
        at ``started``. Two runs at once (a lock lost) may both send its DELETE, and JupyterHub
        answers 204 to each: to the stop, and to a DELETE of a server already stopped (5.x; older
        hubs answered 400 "not running"). The first to record the stop in the state store reports
        it done, the other a no-op. Without a store, or when it fails, the stop is reported."""
        if self.store is None:
            return True
        ident = "\0".join((user, server, started.isoformat()))
        key = STOP_REPORTS + hashlib.sha256(ident.encode()).hexdigest()[:40]
        try:
            await self.store.put(key, {"user": user, "server": server, "started": started.isoformat()},
                                 if_match="")
        except ConflictError:
            return False
        except StoreError:
            return True
        return True


def _plan_time(plan: Plan) -> datetime | None:
    """The time the plan was made for (``facts.now``), to judge inactivity again at the stop."""
    try:
        now = datetime.fromisoformat(str(plan.facts["now"]))
    except (KeyError, ValueError):
        return None
    return now if now.tzinfo is not None else None


__all__ = ["DELETE_USER", "REMOVE", "STOP", "STOP_REPORTS", "CullCapability"]
