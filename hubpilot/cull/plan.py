"""The pure part of culling: observed hub state + settings + now → a plan, and its guard.

Semantics follow jupyterhub-idle-culler 2.0: servers with a pending spawn or stop and servers
that are not ready are left alone; inactivity is measured from the server's ``last_activity``,
falling back to ``started``; a server is stopped when idle beyond its timeout, or (``max_age``)
when it has run longer than that, active or not. Differences (all safer): the default/named
switches also govern max-age stops, users are only reported unless deletion is enabled, and a
user sync provisions (an active member of a synced directory group) is never deleted: the next
sync would create them again, and each stop is judged again on the hub's state just before it is
sent (``recheck_stop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hubpilot.config.cull import CullSettings
from hubpilot.cull.policy import Limits, human, limits_for, profile_of
from hubpilot.hub_outage import describe
from hubpilot.loop import Action, Plan, Status
from hubpilot.ports.hub import HubServer, HubUser

OPERATION = "cull"
STOP = "stop_server"
REMOVE = "remove_server"
DELETE_USER = "delete_user"
STOP_KINDS = frozenset({STOP, REMOVE})


@dataclass(frozen=True)
class CullObserved:
    """What one round read from the hub: users with active servers, ready or pending (one paged
    ``state=active`` listing; a pending server is noted, never stopped) and, only when
    ``cull_users`` is on, users without running servers.

    ``sync_members``: the users sync manages as active members (read only when users may be
    deleted); None when unknown, and then ``sync_unknown`` says why and nobody is deleted."""

    active: tuple[HubUser, ...]
    inactive: tuple[HubUser, ...] = ()
    sync_members: frozenset[str] | None = None
    sync_unknown: str = "sync's managed users were not read"
    catch_up: tuple[datetime, datetime] | None = None
    """After a hub outage (a round found the hub unreachable): when a round found it answering
    again, and when the servers' activity reports will have caught up (``activity_lag`` later).
    Until then the hub's ``last_activity`` is old for servers in use: nothing is stopped or
    deleted for inactivity (max-age stops go on)."""


def server_target(user: str, server: str) -> str:
    return f"{user}/{server}" if server else user


def _verdict(server: HubServer, limits: Limits, now: datetime) -> tuple[bool, str]:
    """(stop?, why) for one ready, non-pending server."""
    age = now - server.started if server.started else None
    since = server.last_activity or server.started
    idle = now - since if since else None
    label = f"policy {limits.policy}"
    if idle is not None and limits.inactivity_timeout is not None and idle >= limits.inactivity_timeout:
        return True, f"idle for {human(idle)} ({label}: {human(limits.inactivity_timeout)})"
    if age is not None and limits.max_age is not None and age >= limits.max_age:
        idle_text = f", idle for {human(idle)}" if idle is not None else ""
        limit = human(limits.max_age)
        return True, f"max age: running for {human(age)}{idle_text} ({label}: max age {limit})"
    if idle is None:
        return False, f"no last_activity and no started time ({label})"
    if limits.inactivity_timeout is None:
        return False, f"active {human(idle)} ago ({label}: no inactivity timeout)"
    return False, f"active {human(idle)} ago ({label}: {human(limits.inactivity_timeout)})"


def _by_inactivity(server: HubServer, limits: Limits, now: datetime) -> bool:
    """Whether :func:`_verdict` stops the server for inactivity (not for its max age)."""
    since = server.last_activity or server.started
    return since is not None and limits.inactivity_timeout is not None and now - since >= limits.inactivity_timeout


def _catching_up(observed: CullObserved, now: datetime) -> str | None:
    """Why activity cannot be judged at ``now`` (the hub was down; its reports are catching up), or None."""
    if observed.catch_up is None or now >= observed.catch_up[1]:
        return None
    return describe(*observed.catch_up)


def _user_verdict(user: HubUser, settings: CullSettings, now: datetime) -> str | None:
    """Why a user with no running server counts as long-inactive, or None."""
    if user.admin and not settings.cull_admin_users:
        return None
    since = user.last_activity or user.created
    if since is None:
        return None
    inactive = now - since
    timeout = timedelta(seconds=settings.inactivity_timeout) if settings.inactivity_timeout else None
    if timeout is not None and inactive >= timeout:
        return f"inactive for {human(inactive)} (timeout {human(timeout)})"
    if settings.max_age and user.created and now - user.created >= timedelta(seconds=settings.max_age):
        limit = human(timedelta(seconds=settings.max_age))
        return f"created {human(now - user.created)} ago (max age {limit})"
    return None


def recheck_stop(kind: str, before: HubServer | None, current: HubUser | None, name: str,
                 settings: CullSettings, now: datetime | None) -> tuple[Status, str] | None:
    """Pure: whether a stop planned from the round's reading (``before``) is still to be sent,
    judged on what the hub says now (``current``, the user read again); None: send it, else the
    result to report instead. Between the reading and the stop (the stops run ``concurrency`` at
    a time, each waiting for the hub's answer) the user may have come back to the server, or
    restarted it: the hub answers a DELETE of a server whose spawn is pending by cancelling that
    spawn. ``now``: the plan's time, to judge inactivity again (None: not judged again)."""
    if current is None:
        return Status.NOOP, "already gone: the hub no longer has the user"
    server = current.servers.get(name)
    if server is None or not (server.ready or server.pending):
        # stopped since the reading, not by this round (by its user, say, back at work): cull
        # removes only the named servers it stops, so it stays, with its volume
        return Status.NOOP, ("already stopped; not removed: stopped since the round's reading, not by "
                             "this round (cull removes only the named servers it stops)"
                             if kind == REMOVE else "already stopped")
    if server.pending and server.pending != "stop":  # a stop in progress: the DELETE only joins it
        return Status.SKIPPED, f"pending {server.pending} since the round's reading (a restart)"
    if before is not None and server.started != before.started:
        started = server.started.isoformat() if server.started else "unknown"
        return Status.SKIPPED, f"restarted since the round's reading (started {started})"
    if now is not None and not server.pending:
        stop, why = _verdict(server, limits_for(settings, server, current.groups), now)
        if not stop:
            return Status.SKIPPED, f"{why}, since the round's reading"
    return None


def recheck_user_deletion(current: HubUser, settings: CullSettings, now: datetime | None) -> str | None:
    """Pure: why a deletion planned from the round's reading must not be sent, judged on the user
    as the hub has them now (read again), at the plan's time; None: send it. The deletions run
    after the round's stops, minutes after the reading: a user who came back meanwhile (a login,
    the spawn page) without starting a server yet is active again, not long-inactive. Not for a
    user whose servers the round stopped: the hub sets the user's ``last_activity`` at a stop."""
    if now is None or _user_verdict(current, settings, now) is not None:
        return None
    if current.admin and not settings.cull_admin_users:
        return "an admin since the round's reading (cull.cull_admin_users is off)"
    since = current.last_activity or current.created
    active = f"active {human(now - since)} ago" if since is not None else "no activity time"
    timeout = f"timeout {human(timedelta(seconds=settings.inactivity_timeout))}" \
        if settings.inactivity_timeout else "no inactivity timeout"
    return f"{active} ({timeout}), since the round's reading"


def sync_hold(user: str, sync_members: frozenset[str] | None) -> str | None:
    """Why ``user`` must not be deleted for sync's sake, or None: sync provisions them (the next
    sync run would create them again), or sync's managed users are unknown."""
    if sync_members is None:
        return "sync's managed users are unknown this round"
    if user in sync_members:
        return ("sync manages them as a member of a synced directory group "
                "(deleted, they would be created again by the next sync)")
    return None


def plan_cull(observed: CullObserved, settings: CullSettings, now: datetime) -> Plan:
    """Pure: one action per server to stop (with its reason), a note per server kept or skipped."""
    actions: list[Action] = []
    notes: list[str] = []
    per_policy: dict[str, int] = {}
    kept = skipped = 0
    culled_users: dict[str, bool] = {}  # user -> every server of theirs is being stopped
    catching_up = _catching_up(observed, now)
    for user in sorted(observed.active, key=lambda u: u.name):
        all_stopped = True
        for name in sorted(user.servers):
            server = user.servers[name]
            target = server_target(user.name, name)
            if server.pending:
                notes.append(f"skipped {target}: pending {server.pending}")
                skipped += 1
                all_stopped = False
                continue
            if not server.ready:
                notes.append(f"skipped {target}: not ready")
                skipped += 1
                all_stopped = False
                continue
            limits = limits_for(settings, server, user.groups)
            stop, why = _verdict(server, limits, now)
            allowed = settings.cull_named_servers if name else settings.cull_default_servers
            if stop and not allowed:
                kind = "named" if name else "default"
                notes.append(f"kept {target}: {why}, but culling {kind} servers is off")
                kept += 1
                all_stopped = False
                continue
            if not stop:
                notes.append(f"kept {target}: {why}")
                kept += 1
                all_stopped = False
                continue
            if catching_up and _by_inactivity(server, limits, now) and not (
                    limits.max_age is not None and server.started and now - server.started >= limits.max_age):
                notes.append(f"kept {target}: {why}, but {catching_up}")
                kept += 1
                all_stopped = False
                continue
            kind = REMOVE if name and settings.remove_named_servers else STOP
            params: dict[str, Any] = {"user": user.name, "server": name}
            profile = profile_of(server)
            reason = why if profile is None else f"{why}, profile {profile}"
            actions.append(Action(kind, target, phase=0, params=params, reason=reason))
            per_policy[limits.policy] = per_policy.get(limits.policy, 0) + 1
        culled_users[user.name] = all_stopped

    inactive_users: list[dict[str, str]] = []
    unknown_noted = False
    if settings.cull_users:
        # Users whose every server is stopped this round, and users with no running server.
        candidates = [u for u in observed.active if culled_users.get(u.name)] + [
            u for u in observed.inactive if not any(s.ready or s.pending for s in u.servers.values())
            and u.name not in culled_users
        ]
        unread: list[str] = []  # users the hub sent without `created` (no read:users): not fully judged
        for user in sorted(candidates, key=lambda u: u.name):
            verdict = _user_verdict(user, settings, now)
            if not user.created_read and not (user.admin and not settings.cull_admin_users) \
                    and (user.last_activity is None or (settings.max_age and verdict is None)):
                unread.append(user.name)
            if verdict is None:
                continue
            inactive_users.append({"user": user.name, "reason": verdict})
            if settings.delete_users and catching_up:
                notes.append(f"kept long-inactive user {user.name}: {verdict}; not deleted: {catching_up}")
                continue
            if settings.delete_users:
                held = sync_hold(user.name, observed.sync_members)
                if held:
                    if observed.sync_members is None and not unknown_noted:
                        notes.append(f"no user is deleted this round: {observed.sync_unknown}")
                        unknown_noted = True
                    notes.append(f"kept long-inactive user {user.name}: {verdict}; not deleted: {held}")
                    continue
                actions.append(Action(DELETE_USER, user.name, phase=1, params={"user": user.name},
                                      reason=f"{verdict}; delete_users is on"))
            else:
                notes.append(f"long-inactive user {user.name}: {verdict} (reported only; delete_users is off)")

        if unread:
            notes.append(_unread_created_note(unread, settings))

    facts = {
        "servers_seen": sum(len(u.servers) for u in observed.active),
        "to_stop": sum(1 for a in actions if a.kind in STOP_KINDS),
        "kept": kept,
        "skipped": skipped,
        "stops_by_policy": per_policy,
        "inactive_users": inactive_users,
        "now": now.isoformat(),
    }
    return Plan.build(OPERATION, actions, notes, facts)


def _unread_created_note(users: list[str], settings: CullSettings) -> str:
    """The plan's word on users the hub sent without their creation time (a token without
    ``read:users``): never active, they have no time to judge; and a user max age cannot apply."""
    shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
    missed = "users never active are not reported"
    if settings.max_age:
        missed += " and cull.max_age is not applied to users"
    return (f"the hub leaves the users' created time out (the hub token lacks read:users): {missed} "
            f"({shown}); grant read:users to hubpilot's service role (docs/hub-scopes.md)")


def guard_cull(settings: CullSettings, plan: Plan) -> list[str]:
    """Pure: reasons to refuse the plan (an admin can approve a refused plan)."""
    reasons: list[str] = []
    stops = sum(1 for a in plan.actions if a.kind in STOP_KINDS)
    if stops > settings.max_stops_per_round:
        reasons.append(
            f"the plan stops {stops} servers, more than cull.max_stops_per_round="
            f"{settings.max_stops_per_round}; review it and approve it, or raise the limit"
        )
    deletions = [a for a in plan.actions if a.kind == DELETE_USER]
    if deletions and not settings.delete_users:
        reasons.append(f"the plan deletes {len(deletions)} users but cull.delete_users is off")
    if len(deletions) > settings.max_user_deletions_per_round:
        reasons.append(
            f"the plan deletes {len(deletions)} users, more than cull.max_user_deletions_per_round="
            f"{settings.max_user_deletions_per_round}; review it and approve it, or raise the limit"
        )
    unknown = sorted({a.kind for a in plan.actions} - STOP_KINDS - {DELETE_USER})
    if unknown:
        reasons.append(f"the plan holds actions cull does not perform: {', '.join(unknown)}")
    return reasons

