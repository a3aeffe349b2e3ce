"""Sync: observe (directory, hub, managed users) and apply (hub writes, managed-user records)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hubpilot.config.sync import SyncSettings
from hubpilot.loop import (
    Action,
    ActionResult,
    Clock,
    ConflictPause,
    Plan,
    Progress,
    Status,
    run_batches,
    stored_time,
    utcnow,
)
from hubpilot.naming import hub_lookup_name
from hubpilot.ports.directory import Directory, DirectorySnapshot
from hubpilot.ports.hub import Hub, HubError, HubGroup, HubUser, StopResult, UsersNotCreated
from hubpilot.ports.store import ConflictError, StateStore
from hubpilot.sync.plan import (
    OPERATION,
    Desired,
    ManagedUser,
    SyncObserved,
    admin_mirrors,
    desired_state,
    group_loss_reasons,
    guard_sync,
    plan_sync,
    removal_reasons,
    reused_names,
    same_entry,
)

MANAGED_KEY = "sync/managed"
TARGETED_LIMIT = 100
"""More users in question than this and observe reads the whole user list instead of each."""


class ManagedRecordError(Exception):
    """The stored set of managed users is unreadable; nothing is done until it is repaired."""


async def read_managed(store: StateStore) -> dict[str, ManagedUser]:
    """The users sync manages (hub name → record); ManagedRecordError when the stored document is
    damaged, StoreError when the store cannot be read."""
    return (await _read_records(store)).managed


@dataclass(frozen=True)
class _Records:
    managed: dict[str, ManagedUser]
    mirrors: frozenset[str]
    approved: datetime | None
    deleted: dict[str, datetime]
    approved_ahead: dict[str, datetime]
    group_removed: dict[str, dict[str, datetime]]
    deleted_ids: dict[str, str] = field(default_factory=dict)
    replaced: tuple[tuple[str, str | None, datetime], ...] = ()


async def _read_records(store: StateStore) -> _Records:
    """The managed users, the hub groups sync has mirrored (``groups``; absent in documents of
    older versions), when an admin last approved a plan refused for its removals
    (``removals_approved_at``; with the removals it accepted that carry a later time,
    ``removals_approved_ahead``) and the people deleted within the removal window (``deleted``),
    from the one stored document."""
    doc = await store.get(MANAGED_KEY)
    if doc is None:
        return _Records({}, frozenset(), None, {}, {}, {})
    try:
        mirrors = doc.get("groups", [])
        if not isinstance(mirrors, list) or not all(isinstance(g, str) for g in mirrors):
            raise ValueError(f"'groups' is not a list of hub group names: {mirrors!r}"[:160])
        users = {name: ManagedUser.from_json(rec) for name, rec in doc.get("users", {}).items()}
        approved = stored_time(doc.get("removals_approved_at"), "'removals_approved_at'")
        taken_out = doc.get("group_removed") or {}
        if not isinstance(taken_out, dict):
            raise ValueError(f"'group_removed' is {type(taken_out).__name__}, not an object of hub group → "
                             "(hub name → time)")
        deleted_ids = doc.get("deleted_ids") or {}
        if not isinstance(deleted_ids, dict) or not all(isinstance(i, str) for i in deleted_ids.values()):
            raise ValueError(f"'deleted_ids' is not an object of hub name → directory id: {deleted_ids!r}"[:160])
        return _Records(users, frozenset(mirrors), approved, _name_times(doc.get("deleted"), "deleted"),
                        _name_times(doc.get("removals_approved_ahead"), "removals_approved_ahead"),
                        {str(g): _name_times(people, f"group_removed of {g}") for g, people in taken_out.items()},
                        {str(n): i for n, i in deleted_ids.items()}, _replaced(doc.get("replaced_removals")))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ManagedRecordError(
            f"the state document {MANAGED_KEY!r} is damaged ({exc}); restore it from the audit log"
        ) from exc


class SyncCapability:
    """Directory groups → hub users, admins and groups, for the users hubpilot manages."""

    name = OPERATION

    def __init__(
        self,
        directory: Directory,
        hub: Hub,
        store: StateStore,
        policy: SyncSettings,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.directory = directory
        self.hub = hub
        self.store = store
        self.policy = policy
        self.clock = clock
        self._want: tuple[DirectorySnapshot, Desired] | None = None
        # this apply's users the hub refused to create, or whose creation failed → why
        self._not_created: dict[str, str] = {}
        # this apply's new names whose rename waits (a server started since the reading) → why
        self._not_renamed: dict[str, str] = {}
        # this apply's users whose admin flag the hub refuses to clear (hubpilot is no hub admin)
        self._flag_kept: set[str] = set()

    def _desired(self, snapshot: DirectorySnapshot) -> Desired:
        """The snapshot's desired state, computed once per snapshot (observe, plan and apply all
        need it; for 10 000 members it is the costliest pure step)."""
        if self._want is None or self._want[0] is not snapshot:
            self._want = (snapshot, desired_state(snapshot, self.policy))
        return self._want[1]

    async def observe(self) -> SyncObserved:
        groups = list(dict.fromkeys([*self.policy.users_groups, *self.policy.admin_groups]))
        if not groups:
            raise ValueError("sync.users_groups is empty: there is nothing to sync")
        snapshot, hub_groups, records = await asyncio.gather(
            self.directory.read(groups),
            self.hub.list_groups(),
            _read_records(self.store),
        )
        by_name = {g.name: g for g in hub_groups}
        users = await self._observe_users(snapshot, by_name, records.managed)
        approved = await self._last_approval(records)
        return SyncObserved(snapshot=snapshot, users=users, groups=by_name, managed=records.managed,
                            mirrors=records.mirrors, removals_approved_at=approved,
                            deleted=records.deleted, approved_ahead=records.approved_ahead,
                            group_removed=records.group_removed, deleted_ids=records.deleted_ids,
                            replaced=records.replaced)

    async def _last_approval(self, records: _Records) -> datetime | None:
        """When an admin last approved a plan refused for its removals: ``removals_approved_at``,
        or a later approval the audit log holds. A release before sync.removal_window_hours
        recorded no approval in sync/managed, and one rolled back to writes none: without the
        audit, removals it applied with an approval would count again after an upgrade, and the
        next routine removal would be refused. The audit is read only when removals since the
        recorded approval are within the window (the guard would count them), from the first of them."""
        approved = records.approved
        if self.policy.removal_window_hours <= 0:
            return approved
        since = self.clock() - timedelta(hours=self.policy.removal_window_hours)
        if approved is not None and approved > since:
            since = approved
        stamps = [r.deprovisioned_at for r in records.managed.values() if r.deprovisioned_at is not None]
        counted = [at for at in [*stamps, *records.deleted.values(), *(r[2] for r in records.replaced)] if at > since]
        if not counted:
            return approved
        # an approval before the first removal it could accept changes nothing: read from there
        found = await audited_approval(self.store, min(counted) - timedelta(microseconds=1))
        return found if found is not None and (approved is None or found > approved) else approved

    async def _observe_users(
        self, snapshot: DirectorySnapshot, groups: Mapping[str, HubGroup], managed: Mapping[str, ManagedUser]
    ) -> dict[str, HubUser]:
        """The hub users the plan needs to see.

        The plan reads a user's record only to know that they exist, whether they are admin (in
        flag mode; in role mode for its notes on the flag) and which servers a leaving user runs.
        Group membership already proves that a user exists, so in role mode hubpilot fetches only
        the people whose existence, servers or flag are in question — newcomers not in any hub
        group yet, people who leave, deletions that fall due, people adopted or taken back — one
        request each; when those are many (a first sync), or in flag mode, it reads the whole user
        list once instead. Both give the plan the same answer. With sync.stop_servers, the
        deprovisioned whose servers run come from one read of the users
        with a server (``state=active``).
        """
        if self.policy.admin_mode == "flag":
            return {u.name: u for u in await self.hub.list_users()}
        want = self._desired(snapshot)
        member_of: dict[str, set[str]] = {}
        for g in groups.values():
            for u in g.users:
                member_of.setdefault(u, set()).add(g.name)
        # (and renames: a name other entries claim now, a clash, may be its person's old one)
        named = set(want.ids.values())
        leaving = {n for n, r in managed.items() if r.active and n not in want.users
                   and (n not in want.uncertain or r.directory_id in named)}
        due = {n for n, r in managed.items() if not r.active and self.policy.delete_users
               and n not in want.users}
        # people this run takes out of an admin group's mirror: whether they hold the admin flag too
        demoted = {n for g in admin_mirrors(self.policy) for n in (groups[g].users if g in groups else ())
                   if n in want.users and n not in want.admins and n in managed}
        # a name another directory entry carries now: its hub user's servers and whether it exists
        reused = reused_names(managed, want)
        # people this run adopts or takes back who are in a hub group already: whether they hold the flag
        taken_in = {n for n in want.users & member_of.keys() if (r := managed.get(n)) is None or not r.active}
        asked = sorted((want.users - member_of.keys()) | leaving | due | demoted | reused | taken_in)
        if len(asked) > TARGETED_LIMIT:
            return {u.name: u for u in await self.hub.list_users()}
        users = {n: HubUser(n, False, frozenset(gs)) for n, gs in member_of.items()}
        # the deprovisioned whose servers run (started after the run that deprovisioned them read
        # them, or by an admin since): one read of the users with a server, however many they are
        gone = {n for n, r in managed.items() if not r.active and n not in want.users
                and n not in want.uncertain} if self.policy.stop_servers else set()
        # one after the other: a run's requests then come in the same order every time
        fetched = await asyncio.gather(*(self.hub.get_user(n) for n in asked))
        with_servers = await self.hub.list_users(state="active") if gone else []
        for running in with_servers:
            if running.name in gone:
                users[running.name] = running
        for name, user in zip(asked, fetched, strict=True):
            if user is None:
                users.pop(name, None)
            else:
                users[name] = user
        return users

    def plan(self, observed: SyncObserved, now: datetime) -> Plan:
        return plan_sync(observed, self.policy, now, want=self._desired(observed.snapshot))

    def guard(self, observed: SyncObserved, plan: Plan) -> list[str]:
        return guard_sync(observed, plan, self.policy)

    async def apply(self, plan: Plan, observed: SyncObserved, progress: Progress) -> list[ActionResult]:
        self._not_created = {}
        self._not_renamed = {}
        self._flag_kept = set()
        # Recorded as managed before the hub gets them: a run killed between creating users (or
        # adding them to groups) and the final record would leave them unmanaged, and one who
        # left before the next run would keep their groups for good.
        # A rename is recorded ahead too, under both names (same directory id): killed after the
        # hub's rename, the new name is still followed; killed before it, the next run renames.
        # Each record carries its person's directory id from the start: one without would be taken
        # for whoever carries the name later (a newcomer handed a leaver's hub user).
        ahead = [ActionResult(a, Status.DONE) for a in plan.actions
                 if a.kind in ("create_user", "manage_user", "rename_user")]
        if ahead:
            await self._record_managed(ahead, self._desired(observed.snapshot), ahead=True)
        results = await run_batches(
            plan.actions, _batch_key, self._perform, concurrency=self.policy.concurrency, progress=progress
        )
        # A person is marked deprovisioned only when every step of their removal succeeded;
        # otherwise the next run plans the remaining steps again. Not waited for: an admin flag the
        # hub refuses to clear (hubpilot is no hub admin), which no run clears until someone acts;
        # the leaver has lost all else, their removal counts in the window now (once), and every
        # run retries the flag (its refusal names the fix).
        failed = {
            r.action.params.get("user", r.action.target)
            for r in results
            if r.status is Status.FAILED and r.action.kind != "deprovision"
            and not (r.action.kind == "revoke_admin" and r.action.target in self._flag_kept)
        }
        results = [
            ActionResult(r.action, Status.FAILED, "not recorded: an earlier step for this user failed; "
                         "the next run retries") if r.action.kind == "deprovision" and r.action.target in failed
            else ActionResult(r.action, r.status, (
                f"{r.action.target} keeps the hub's admin flag, which the hub refused to clear (see revoke_admin); "
                "every run retries it")) if r.action.kind == "deprovision" and r.action.target in self._flag_kept
            else r
            for r in results
        ]
        # a creation that failed and left no hub user is not managed after all (its record, if
        # any, is as before); when the hub cannot say, the record stays (the next run retries)
        undo: dict[str, ManagedUser | None] = {}
        for r in results:
            if r.action.kind == "create_user" and r.status is Status.FAILED:
                try:
                    if await self.hub.get_user(r.action.target) is None:
                        undo[r.action.target] = observed.managed.get(r.action.target)
                except HubError:  # the record stays; the next run retries
                    pass
        want = self._desired(observed.snapshot)
        # The runner applies a plan the guard refuses only when an admin approved it: an approved
        # plan refused for its removals restarts sync.removal_window_hours' count of removals (its
        # refusal named the removals so far, which the approval accepted with the plan's own), one
        # refused for a group's losses the count of those losses; each only what its refusal named.
        approved = bool(removal_reasons(observed, plan, self.policy))
        groups_approved = bool(group_loss_reasons(observed, plan, self.policy))
        if approved or groups_approved or results or any(
                r.active and n in want.ids and r.directory_id != want.ids[n]
                and same_entry(r.directory_id, want.ids[n], want) for n, r in observed.managed.items()):
            taken = await self._record_managed(results, want, undo, approved=approved,
                                               groups_approved=groups_approved, before=observed.managed)
            # a deprovisioning whose record another run (its lock lost) took away meanwhile, or
            # renamed: this run's plan was of an older state, and its report says so
            results = [ActionResult(r.action, Status.SKIPPED, f"not recorded: {taken[r.action.target]}")
                       if r.action.kind == "deprovision" and r.status is Status.DONE and r.action.target in taken
                       else r for r in results]
        return results

    # --- apply ---------------------------------------------------------------------------------
    async def _perform(self, batch: list[Action]) -> list[ActionResult]:
        kind, first = batch[0].kind, batch[0]
        hub = self.hub
        # the new name of a rename not made this run (a server started since the reading) is no
        # hub user yet: its group and admin changes wait for the run that renames
        held = {id(a): self._not_renamed[who] for a in batch
                if kind in _OF_A_USER and (who := str(a.params.get("user", a.target))) in self._not_renamed}
        if held:
            rest = [a for a in batch if id(a) not in held]
            done = iter(await self._perform(rest) if rest else [])
            return [ActionResult(a, Status.SKIPPED, held[id(a)]) if id(a) in held else next(done) for a in batch]
        if kind == "create_user":
            wanted = [a.target for a in batch]
            failed: dict[str, str] = {}
            try:
                created = set(await hub.create_users(wanted))
            except UsersNotCreated as partly:  # the others are created: only these fail
                created, failed = set(partly.created), partly.failed
            except Exception:
                # the hub refuses a group request naming a user it does not have (400, no one is
                # added): the additions of this apply leave them out, the next run adds them
                self._not_created.update((n, "its creation failed (see create_user); the next run adds it")
                                         for n in wanted)
                raise
            others = sorted(created - set(wanted))
            out: list[ActionResult] = []
            for a in batch:
                if a.target in created:
                    out.append(ActionResult(a, Status.DONE))
                elif a.target in failed:
                    self._not_created[a.target] = "the hub failed to create this user (see create_user)"
                    out.append(ActionResult(a, Status.FAILED, (
                        f"the hub failed to create {a.target}: {failed[a.target]} (its authenticator's add_user "
                        "raised; the hub's log has the traceback); the next run tries again")))
                elif await hub.get_user(a.target) is not None:
                    out.append(ActionResult(a, Status.NOOP))  # exists already (e.g. logged in meanwhile)
                else:  # the hub refused the name, or its normalize_username / username_map renamed it
                    self._not_created[a.target] = "the hub did not create this user (see create_user)"
                    out.append(ActionResult(a, Status.FAILED, (
                        f"the hub has no user {a.target!r} after POST /users"
                        + (f" (it created {', '.join(others)})" if others else "")
                        + ": its authenticator refuses the name or names users otherwise than sync.naming "
                        "(username_pattern, normalize_username, username_map); align sync.naming with the "
                        "authenticator")))
            return out
        if kind in ("manage_user", "deprovision"):
            return [ActionResult(a, Status.DONE) for a in batch]  # recorded in _record_managed
        if kind == "rename_user":
            # read the user again: KubeSpawner names the pod and the volume after the user, and a
            # server started since the reading would run on under the old name; not renamed now,
            # the next run stops it (sync.stop_servers) and renames after
            current = await hub.get_user(first.target)
            started = sorted(s or "default" for s, srv in (current.servers.items() if current else ())
                             if srv.ready or srv.pending)
            if started:
                new = str(first.params["to"])
                self._not_renamed[new] = (f"not done: {first.target} was not renamed to {new} this run (a "
                                          "server started since the reading); the run that renames does it")
                return [ActionResult(first, Status.SKIPPED, (
                    f"not renamed this run: a server started since the reading is running "
                    f"({', '.join(started)}), which would run on under the old name (its pod and volume are "
                    f"named after the user); the next run "
                    + ("stops it and a later one renames" if self.policy.stop_servers else
                       "renames once it has stopped (sync.stop_servers is off)")))]
            try:
                renamed = await hub.rename_user(first.target, first.params["to"])
            except HubError as exc:
                # the new name is no hub user: its group and admin changes wait for the rename
                new = str(first.params["to"])
                self._not_renamed[new] = (f"not done: {first.target} was not renamed to {new} this run (the "
                                          "rename failed); the run that renames does it")
                raise self._admin_refusal(exc, first.target) from exc
            return [ActionResult(first, Status.DONE if renamed else Status.NOOP,
                                 f"now {first.params['to']}" if renamed else "already renamed")]
        if kind == "create_group":
            made = await hub.create_group(first.target)
            return [ActionResult(first, Status.DONE if made else Status.NOOP)]
        if kind == "add_to_group":
            # a user the hub refused to create would fail the whole request (400): the others go in
            absent = {a.params["user"]: self._not_created[a.params["user"]] for a in batch
                      if a.params["user"] in self._not_created}
            # the hub looks each name up in its authenticator's form: a name sync.naming gives that
            # the hub maps on (a username_map target that is mapped again, or has capitals) would
            # put whoever carries that form in the group (or fail the whole request): not sent
            absent |= {a.params["user"]: (
                f"not sent: the hub looks {a.params['user']!r} up as {form!r} (its authenticator's "
                f"normalize_username: lowercased, then username_map, as sync.naming) and would add {form} to "
                f"{first.target} instead, or refuse the request; its API cannot add {a.params['user']} to a group: "
                f"fix the authenticator's username_map and sync.naming.username_map so that no name they give is "
                f"mapped again or has capitals")
                for a in batch if a.params["user"] not in absent
                and (form := hub_lookup_name(a.params["user"], self.policy.naming)) != a.params["user"]}
            present = [a for a in batch if a.params["user"] not in absent]
            # a user deleted since the reading (a cull round that read sync's records before this
            # run took them on): the hub adds the others; the next run creates and adds them
            missing = await hub.add_group_members(first.target, [a.params["user"] for a in present]) \
                if present else {}
            return [ActionResult(a, Status.SKIPPED, f"not added: {missing[a.params['user']]}; the next run "
                                 "creates and adds them") if a.params["user"] in missing
                    else ActionResult(a, Status.DONE) for a in present] + [
                ActionResult(a, Status.FAILED, absent[a.params["user"]]) for a in batch
                if a.params["user"] in absent]
        if kind == "remove_from_group":
            # the hub looks each name up in its authenticator's form: a name not in that form would
            # take out whoever carries that form (or fail the whole request): not sent
            odd = {a.params["user"]: (
                f"not sent: the hub looks {a.params['user']!r} up as {form!r} (its authenticator's "
                f"normalize_username and username_map, as sync.naming) and would take {form} out of "
                f"{first.target} instead, or refuse the request; its API cannot take {a.params['user']} out: "
                f"a hub admin renames hub user {a.params['user']} to {form} (PATCH /users/{a.params['user']}) "
                f"when {form} is free, or deletes it")
                for a in batch if (form := hub_lookup_name(a.params["user"], self.policy.naming)) != a.params["user"]}
            sent = [a.params["user"] for a in batch if a.params["user"] not in odd]
            if sent:
                odd |= await hub.remove_group_members(first.target, sent)
            return [ActionResult(a, Status.FAILED, odd[a.params["user"]]) if a.params["user"] in odd
                    else ActionResult(a, Status.DONE) for a in batch]
        if kind in ("grant_admin", "revoke_admin"):
            try:
                await hub.set_admin(first.target, kind == "grant_admin")
            except HubError as exc:
                refusal = self._admin_refusal(exc, first.target)
                if refusal is not exc and kind == "revoke_admin":
                    self._flag_kept.add(first.target)
                raise refusal from exc
            return [ActionResult(first, Status.DONE)]
        if kind == "stop_servers":
            # read the user again: another run (a cull round, scale's reclaim, the user) may have
            # stopped a server since the reading, and the hub answers 204 to a DELETE of a stopped
            # server too; only the servers still running are stopped, the others are no stop of ours
            servers = list(first.params.get("servers", []))
            current = await hub.get_user(first.target)
            running = {s for s, srv in (current.servers.items() if current else ()) if srv.ready or srv.pending}
            outcomes = [await hub.stop_server(first.target, s) if s in running else StopResult.NOT_RUNNING
                        for s in servers]
            status = Status.PENDING if StopResult.PENDING in outcomes else \
                Status.DONE if StopResult.STOPPED in outcomes else Status.NOOP
            detail = ", ".join(f"{s or 'default'}: {'already stopped' if o is StopResult.NOT_RUNNING else o}"
                               for s, o in zip(servers, outcomes, strict=True))
            return [ActionResult(first, status, detail)]
        if kind == "revoke_tokens":
            n = await hub.revoke_tokens(first.target)
            return [ActionResult(first, Status.DONE if n else Status.NOOP, f"{n} token(s) revoked")]
        if kind == "delete_user":
            gone = await hub.delete_user(first.target)
            return [ActionResult(first, Status.DONE if gone else Status.NOOP)]
        raise ValueError(f"sync cannot apply an action of kind {kind!r}")

    def _admin_refusal(self, exc: HubError, name: str) -> HubError:
        """A PATCH /users/{name} the hub refused because hubpilot is no hub admin (403 "Only admins
        can grant admin permissions" / "... modify other admins"), with what to fix; other errors as
        they are."""
        if exc.status != 403 or "Only admins can" not in str(exc):
            return exc
        if self.policy.admin_mode == "flag":
            fix = ("sync.admin_mode = 'flag' needs the hubpilot service to hold the hub's admin role, which it "
                   "does not: grant it, or set sync.admin_mode = 'role' (the default) and bind the admin role to "
                   "the admin groups with hubpilot_hub.configure(c, admin_groups=[...]) (docs/hub-scopes.md)")
        else:
            fix = (f"{name} holds the hub's admin flag (set by hand, or by sync.admin_mode = 'flag' before), and "
                   "the hub lets no non-admin modify an admin: a hub admin clears "
                   f"{name}'s admin flag (admin rights come from the synced admin groups), and the next run goes on")
        return HubError(f"{exc}; {fix}", status=exc.status)

    async def _record_managed(self, results: Sequence[ActionResult], want: Desired | None,
                              undo: Mapping[str, ManagedUser | None] | None = None, *,
                              ahead: bool = False, approved: bool = False,
                              groups_approved: bool = False,
                              before: Mapping[str, ManagedUser] | None = None) -> dict[str, str]:
        """Write the managed-user records the applied actions imply, in one conditional write,
        and each active managed user's directory id (``want.ids``: hub name → id), which a later
        rename in the directory is recognised by. A record's id is only ever filled in or brought
        to the same entry's current form, never given to another entry that carries the name now
        (the record stays its person's). Nothing is written when nothing changes. ``ahead``:
        before apply, the records of the people created, taken back and renamed (a rename's new
        name beside the old one), with their ids; the hub groups mirrored are recorded after.
        ``approved``: the plan was approved despite its removals; the removal window's count
        starts again now.
        ``groups_approved``: approved despite its group losses; their count starts again now.
        ``before``: the records the plan was made from. Returns the deprovisionings not recorded
        (hub name → why): another run (its lock lost) renamed the person or took the record away
        since ``before``."""
        ids = want.ids if want is not None else {}
        now = self.clock()
        touched = [r for r in results if r.status in (Status.DONE, Status.NOOP)]
        pause = ConflictPause(RECORD_SECONDS)
        while True:
            not_recorded: dict[str, str] = {}
            current = await self.store.get_with_etag(MANAGED_KEY)
            doc: dict[str, Any] = dict(current[0]) if current else {"users": {}}
            users: dict[str, Any] = dict(doc.get("users", {}))
            deleted: dict[str, Any] = dict(doc.get("deleted") or {})
            deleted_ids: dict[str, Any] = dict(doc.get("deleted_ids") or {})
            # removals within the window whose hub name another person's record takes now (a
            # recycled uid): kept apart, with the leaver's id, so that they still count
            replaced: list[Any] = list(doc.get("replaced_removals") or [])
            taken_out: dict[str, dict[str, Any]] = {g: dict(p) for g, p in (doc.get("group_removed") or {}).items()}
            for r in touched:
                name, kind = r.action.target, r.action.kind
                if kind in ("create_user", "manage_user"):
                    previous = users.get(name)
                    kept = previous if previous and kind == "manage_user" and not previous.get("deprovisioned_at") \
                        else None
                    since = kept.get("since") if kept else None
                    _unstamp_another(taken_out, users, deleted_ids, name, ids.get(name), want)
                    _displace(users, replaced, name, ids.get(name), want)
                    users[name] = ManagedUser(datetime.fromisoformat(since) if since else now).to_json()
                    if kept and kept.get("directory_id"):
                        # recorded meanwhile by another run (its lock lost; a rename it recorded
                        # ahead): the person's directory id stays with the record
                        users[name]["directory_id"] = kept["directory_id"]
                elif kind == "rename_user":
                    new = r.action.params["to"]
                    rec = users.get(name) if ahead else users.pop(name, None)
                    if rec:
                        _unstamp_another(taken_out, users, deleted_ids, new, rec.get("directory_id"), want)
                        _displace(users, replaced, new, rec.get("directory_id"), want)
                    # no record of the old name: another run (its lock lost) recorded the rename
                    users[new] = dict(rec) if rec else users.get(new) or ManagedUser(now).to_json()
                    if not ahead:  # the person's removals from groups follow the name (the hub's groups do)
                        for people in taken_out.values():
                            if name in people:
                                people[new] = people.pop(name)
                elif kind == "deprovision":
                    # a record another run (its lock lost) took away meanwhile (renamed, deleted)
                    # is not made again: this run's plan was of an older state. A rename another
                    # run records (ahead: both names, or done: the new one) is not a removal either
                    moved = _renamed_by_another_run(name, before, users)
                    if moved is not None:
                        not_recorded[name] = f"renamed to {moved} by another run"
                    elif name in users:
                        users[name] = {**users[name], "deprovisioned_at": now.isoformat()}
                    elif name in deleted:
                        not_recorded[name] = "deleted by another run"
                    elif before is not None and name in before:
                        not_recorded[name] = "no longer managed: another run took its record away"
                elif kind == "remove_from_group" and not groups_approved:
                    _stamp(taken_out, name, str(r.action.params["user"]), now, users, want)
                elif kind == "delete_user":
                    gone = users.pop(name, None)
                    if gone and gone.get("deprovisioned_at"):  # their removal still counts in the window
                        if name in deleted and _other_person(deleted_ids.get(name), gone.get("directory_id"), want):
                            replaced.append({"name": name, "directory_id": deleted_ids[name], "at": deleted[name]})
                        deleted[name] = gone["deprovisioned_at"]
                        if gone.get("directory_id"):
                            deleted_ids[name] = gone["directory_id"]
                        else:
                            deleted_ids.pop(name, None)
            # a removal from a group that failed may have taken place (the hub acted, its answer was
            # lost; the next run sees it done and plans nothing): it is stamped too. One that did not
            # take place leaves the person in the hub group, where the count passes them over, and
            # the next run's removal stamps them again
            stamped = False
            for r in results:
                if r.action.kind == "remove_from_group" and r.status is Status.FAILED and not ahead \
                        and not groups_approved:
                    stamped |= _stamp(taken_out, r.action.target, str(r.action.params["user"]), now, users, want)
            for name, prior in (undo or {}).items():
                if prior is None:
                    users.pop(name, None)
                else:
                    users[name] = prior.to_json()
                    # the record put back holds its removal again (displaced ahead of the creation)
                    replaced = [r for r in replaced if not (isinstance(r, dict) and r.get("name") == name
                                and _time_or_none(r.get("at")) == prior.deprovisioned_at)]
            changed = bool(touched) or bool(undo) or stamped
            if approved:
                # the approval accepts every removal recorded so far; those another instance stamped
                # with a clock ahead of this one's are named (the count goes on after the approval)
                doc["removals_approved_at"] = now.isoformat()
                stamps = {str(r["name"]): r["at"] for r in replaced if isinstance(r, dict) and "name" in r}
                _put_or_drop(doc, "removals_approved_ahead",
                             _after(stamps | _removal_stamps(users, deleted), now))
                changed = True
            if groups_approved:  # the approval accepted every membership loss so far
                taken_out = {}
                changed = True
            for name, rec in users.items():
                wanted = ids.get(name)
                if wanted and want is not None and not rec.get("deprovisioned_at") \
                        and rec.get("directory_id") != wanted and same_entry(rec.get("directory_id"), wanted, want):
                    users[name] = {**rec, "directory_id": wanted}
                    changed = True
            if want is not None and not ahead:  # the hub groups mirrored so far: a leaver leaves them all
                mirrors = sorted({*(doc.get("groups") or []), *want.groups})
                if mirrors != doc.get("groups"):
                    doc["groups"] = mirrors
                    changed = True
            if not changed:
                return not_recorded
            doc["users"] = users
            # the deleted are kept while their removal is within the window (then not counted)
            window_start = now - timedelta(hours=self.policy.removal_window_hours)
            for key, times in (("deleted", deleted), ("removals_approved_ahead", doc.get("removals_approved_ahead"))):
                _put_or_drop(doc, key, _after(times or {}, window_start))
            _put_or_drop(doc, "deleted_ids", {n: i for n, i in deleted_ids.items() if n in doc.get("deleted", {})})
            replaced = [r for r in replaced if isinstance(r, dict)
                        and (t := _time_or_none(r.get("at"))) is not None and t > window_start]
            if replaced:
                doc["replaced_removals"] = replaced
            else:
                doc.pop("replaced_removals", None)
            # people taken out of a mirrored group, kept while within the window and not back in it
            back = want.groups if want is not None else {}
            _put_or_drop(doc, "group_removed", {g: kept for g, people in taken_out.items() if (kept := {
                n: at for n, at in _after(people, window_start).items() if n not in back.get(g, ())})})
            try:
                await self.store.put(MANAGED_KEY, doc, if_match=current[1] if current else "")
                return not_recorded
            except ConflictError:
                if not await pause.lost():
                    break
        raise RuntimeError(f"could not record managed users in {MANAGED_KEY!r}: {pause.conflicts} conditional writes "
                           f"in a row lost to other writers within {RECORD_SECONDS:g} s (nothing was overwritten)")


RECORD_SECONDS = 30.0  # conditional writes of sync/managed that lose keep merging this long
AUDIT_PAGES = 20  # pages of 100 audit entries read for an approval within the removal window


async def audited_approval(store: StateStore, since: datetime) -> datetime | None:
    """The time of the latest applied approval of a sync plan refused for its removals (a refusal
    reason "the plan removes ...", the wording of every release) that the audit log holds after
    ``since``; None if there is none."""
    cursor: str | None = None
    for _ in range(AUDIT_PAGES):
        entries, cursor = await store.read_audit(since=since, operation=OPERATION, limit=100, cursor=cursor)
        for e in entries:  # newest first
            refusal = e.get("refusal")
            if e.get("trigger") != "approval" or e.get("outcome") != "applied" or not isinstance(refusal, list) \
                    or not any(isinstance(r, str) and r.startswith("the plan removes ") for r in refusal):
                continue
            try:
                at = stored_time(e.get("at") or e.get("finished"), "'at'")
            except ValueError:
                continue
            if at is not None and at > since:
                return at
        if cursor is None:
            break
    return None


def _name_times(value: Any, what: str) -> dict[str, datetime]:
    """``deleted`` or ``removals_approved_ahead`` of the stored document (hub name → time; absent
    in documents of older versions)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what!r} is {type(value).__name__}, not an object of hub name → time")
    out = {}
    for name, at in value.items():
        when = stored_time(at, f"{what!r} of {name!r}")
        if when is not None:
            out[str(name)] = when
    return out


def _replaced(value: Any) -> tuple[tuple[str, str | None, datetime], ...]:
    """``replaced_removals`` of the stored document: removals whose hub name another person's
    record took (a list of name, directory id, time; absent in documents of older versions)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"'replaced_removals' is {type(value).__name__}, not a list")
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("directory_id"), str | None):
            raise ValueError(f"'replaced_removals' holds {item!r}, not a name, directory id and time"[:160])
        when = stored_time(item.get("at"), f"'replaced_removals' of {item['name']!r}")
        if when is not None:
            out.append((item["name"], item.get("directory_id"), when))
    return tuple(out)


def _displace(users: Mapping[str, Any], replaced: list[Any], name: str, new_id: str | None,
              want: Desired | None) -> None:
    """Before another person's record takes hub name ``name``: keep a leaver's removal that its
    record holds (with their id) in ``replaced``, where it still counts in the removal window."""
    old = users.get(name)
    if isinstance(old, Mapping) and old.get("deprovisioned_at") \
            and _other_person(old.get("directory_id"), new_id, want):
        replaced.append({"name": name, "directory_id": old["directory_id"], "at": old["deprovisioned_at"]})


def _unstamp_another(taken_out: dict[str, dict[str, Any]], users: Mapping[str, Any], deleted_ids: Mapping[str, Any],
                     name: str, new_id: str | None, want: Desired | None) -> None:
    """Before another person's record takes hub name ``name``: drop the removals from groups its
    last holder (its record, or the deleted's id) was stamped with. They were a leaver's, who counts
    as a removal; they are no group loss of the newcomer."""
    old = users.get(name)
    holder = old.get("directory_id") if isinstance(old, Mapping) else deleted_ids.get(name)
    if _other_person(holder if isinstance(holder, str) else None, new_id, want):
        for people in taken_out.values():
            people.pop(name, None)


def _other_person(old: str | None, new: str | None, want: Desired | None) -> bool:
    """Whether directory ids ``old`` (recorded) and ``new`` are known to be different people."""
    return old is not None and new is not None and old != new and (want is None or not same_entry(old, new, want))


def _time_or_none(value: Any) -> datetime | None:
    try:
        return stored_time(value, "time")
    except ValueError:
        return None


def _after(times: Mapping[str, Any], start: datetime) -> dict[str, Any]:
    """The entries of a hub name → stored time map that lie after ``start`` (unreadable ones go)."""
    return {n: at for n, at in times.items() if (t := _time_or_none(at)) is not None and t > start}


def _put_or_drop(doc: dict[str, Any], key: str, value: dict[str, Any]) -> None:
    """Store a map under ``key``, or leave the key out when it is empty."""
    if value:
        doc[key] = value
    else:
        doc.pop(key, None)


def _removal_stamps(users: Mapping[str, Any], deleted: Mapping[str, Any]) -> dict[str, Any]:
    """Hub name → the stored time of their removal: deprovisioned records, and the deleted."""
    out = dict(deleted)
    for name, rec in users.items():
        if isinstance(rec, Mapping) and rec.get("deprovisioned_at"):
            out[name] = rec["deprovisioned_at"]
    return out


def _renamed_by_another_run(name: str, before: Mapping[str, ManagedUser] | None,
                            users: Mapping[str, Any]) -> str | None:
    """The name another run renamed ``name`` to since the plan's records (``before``): an active
    record of another name, unknown to ``before``, with the person's directory id; or None."""
    if before is None:
        return None
    old = before.get(name)
    if old is None or old.directory_id is None:
        return None
    for other, rec in sorted(users.items()):
        if other != name and other not in before and isinstance(rec, Mapping) \
                and rec.get("directory_id") == old.directory_id and not rec.get("deprovisioned_at"):
            return other
    return None


def _stamp(taken_out: dict[str, dict[str, Any]], group: str, person: str, now: datetime,
           users: Mapping[str, Any], want: Desired | None) -> bool:
    """Stamp ``person``'s removal from ``group`` — unless their name is gone (no record, not wanted:
    another run, its lock lost, renamed them meanwhile), where the stamp would only stay behind."""
    if person not in users and (want is None or person not in want.users):
        return False
    taken_out.setdefault(group, {})[person] = now.isoformat()
    return True


_OF_A_USER = ("add_to_group", "remove_from_group", "grant_admin", "revoke_admin")
"""The kinds of action that change a hub user other than by creating, renaming or removing it."""


def _batch_key(action: Action) -> tuple[str, str]:
    """Bulk where the hub API allows it: one POST /users, one request per group change."""
    if action.kind in ("create_user", "manage_user", "deprovision"):
        return (action.kind, "")
    if action.kind in ("add_to_group", "remove_from_group"):
        return (action.kind, action.target)
    return (action.kind, action.target + "\0" + repr(sorted(action.params.items())))
