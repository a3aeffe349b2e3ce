"""Sync: plan and guard — pure functions of the observed state, the policy and now."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from hubpilot.config.sync import SyncSettings
from hubpilot.loop import Action, Plan, stored_time
from hubpilot.naming import hub_group_name, hub_name
from hubpilot.ports.directory import DirectorySnapshot
from hubpilot.ports.hub import HubGroup, HubUser

OPERATION = "sync"

# The order apply performs them: creations before group changes before removals.
PHASE_CREATE_USER = 10
PHASE_RENAME = 12
PHASE_MANAGE = 15
PHASE_CREATE_GROUP = 20
PHASE_ADD_TO_GROUP = 30
PHASE_GRANT_ADMIN = 40
PHASE_REVOKE_ADMIN = 50
PHASE_REMOVE_FROM_GROUP = 60
PHASE_STOP = 70
PHASE_DEPROVISION = 80
PHASE_DELETE = 90


@dataclass(frozen=True)
class ManagedUser:
    """A hub user hubpilot manages: brought in by a synced group at ``since``."""

    since: datetime
    deprovisioned_at: datetime | None = None
    directory_id: str | None = None  # the directory's stable id of the person (renames follow it)

    @property
    def active(self) -> bool:
        return self.deprovisioned_at is None

    def to_json(self) -> dict[str, str | None]:
        out = {
            "since": self.since.isoformat(),
            "deprovisioned_at": self.deprovisioned_at.isoformat() if self.deprovisioned_at else None,
        }
        if self.directory_id is not None:
            out["directory_id"] = self.directory_id
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, str | None]) -> ManagedUser:
        """Read a stored record; a wrong shape is a ValueError (fields it does not know are ignored)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a managed user record is {type(data).__name__}, not an object")
        since = stored_time(data.get("since"), "'since'")
        if since is None:
            raise ValueError("managed user record without 'since'")
        ident = data.get("directory_id") or None
        if ident is not None and not isinstance(ident, str):
            raise ValueError(f"'directory_id' is {type(ident).__name__}, not a string")
        return cls(since, stored_time(data.get("deprovisioned_at"), "'deprovisioned_at'"), ident)


@dataclass(frozen=True)
class SyncObserved:
    snapshot: DirectorySnapshot
    users: Mapping[str, HubUser]
    groups: Mapping[str, HubGroup]
    managed: Mapping[str, ManagedUser] = field(default_factory=dict)
    mirrors: frozenset[str] = frozenset()  # hub groups sync has mirrored (recorded), configured or not
    # when an admin last approved a plan the guard refused for its removals: removals until then
    # are not counted in sync.removal_window_hours again (the approval accepted them)
    removals_approved_at: datetime | None = None
    # people sync deleted (sync.delete_users) whose removal is still within sync.removal_window_hours:
    # hub name → when they were removed; their records are gone, their removal still counts
    deleted: Mapping[str, datetime] = field(default_factory=dict)
    # the directory ids of the deleted (hub name → id; none for those deleted by older versions)
    deleted_ids: Mapping[str, str] = field(default_factory=dict)
    # removals still within the window whose hub name another person carries now (a recycled uid:
    # the leaver's record, or entry in ``deleted``, went to the newcomer): (hub name, id, when)
    replaced: tuple[tuple[str, str | None, datetime], ...] = ()
    # removals that approval accepted which carry a later time than it (stamped by another
    # instance whose clock is ahead): hub name → that time; not counted again
    approved_ahead: Mapping[str, datetime] = field(default_factory=dict)
    # people sync took out of a mirrored hub group within sync.removal_window_hours since the last
    # approval: hub group → hub name → when; counted with a plan's own against the group-loss limits
    group_removed: Mapping[str, Mapping[str, datetime]] = field(default_factory=dict)


@dataclass(frozen=True)
class Desired:
    """What the directory says the hub should look like (only for names we are sure of)."""

    users: frozenset[str]
    admins: frozenset[str]
    groups: Mapping[str, frozenset[str]]  # hub group name → members
    uncertain: frozenset[str]  # names neither to add nor to remove (clashes)
    notes: tuple[str, ...]
    empty_groups: tuple[str, ...]
    ids: Mapping[str, str] = field(default_factory=dict)  # hub name → directory id (no clashes)
    unnamed: frozenset[str] = frozenset()  # directory ids (and older-form ids) of members without a usable hub name
    labels: Mapping[str, str] = field(default_factory=dict)  # directory id → how messages name the entry
    aliases: Mapping[str, str] = field(default_factory=dict)  # directory id → the entry's id of an older form


def same_entry(recorded: str | None, wanted: str, want: Desired) -> bool:
    """Whether a managed record whose directory id is ``recorded`` belongs to the entry the
    directory now knows by ``wanted``: the same id, the same entry's id of an older form (its DN,
    recorded before entryUUIDs were), or no id at all (a record of an older version: nothing says
    otherwise). A different id is another person, whatever the name."""
    return recorded is None or recorded == wanted or recorded == want.aliases.get(wanted)


def reused_names(managed: Mapping[str, ManagedUser], want: Desired) -> frozenset[str]:
    """Wanted hub names whose managed record belongs to another directory entry than the one
    that carries the name now (a recycled LDAP uid, an Entra UPN given to a new employee). The
    hub user holds the first person's servers, tokens and home volume: it is not handed over."""
    return frozenset(n for n in want.users if (r := managed.get(n)) is not None and n in want.ids
                     and not same_entry(r.directory_id, want.ids[n], want))


def desired_state(snapshot: DirectorySnapshot, policy: SyncSettings) -> Desired:
    notes: list[str] = list(snapshot.notes)
    unnamed: set[str] = set()  # ids of members skipped for their name: still members
    by_name: dict[str, set[str]] = {}  # hub name → directory ids claiming it
    labels: dict[str, str] = {}  # directory id → how messages name the entry
    aliases: dict[str, str] = {}  # directory id → the entry's id of an older form
    member_names: dict[str, dict[str, str]] = {}  # directory group → {directory id: hub name}
    empty: list[str] = []
    for group in [*policy.users_groups, *policy.admin_groups]:
        if group in member_names:
            continue
        members = snapshot.groups.get(group)
        if members is None:  # the directory adapter promises every group; be safe anyway
            raise ValueError(f"directory snapshot has no entry for group {group!r}")
        if not members:
            empty.append(group)
        names: dict[str, str] = {}
        for m in sorted(members, key=lambda m: m.id):
            name, problem = hub_name(m.username, policy.naming)
            if name is None:
                notes.append(f"skipped {m.label} in group {group}: {problem}")
                unnamed.add(m.id)
                if m.alias:  # its record may still hold the id of an older form (just after an upgrade)
                    unnamed.add(m.alias)
                continue
            names[m.id] = name
            labels[m.id] = m.label
            if m.alias and m.alias != m.id:
                aliases[m.id] = m.alias
            by_name.setdefault(name, set()).add(m.id)
        member_names[group] = names
    clashes = {n for n, ids in by_name.items() if len(ids) > 1}
    for n in sorted(clashes):
        notes.append(
            f"hub name {n!r} is claimed by several directory entries "
            f"({'; '.join(sorted(labels[i] for i in by_name[n]))}); "
            "nothing is done for this name until the directory is fixed"
        )

    def names_of(groups: list[str]) -> set[str]:
        return {n for g in groups for n in member_names[g].values() if n not in clashes}

    admins = names_of(policy.admin_groups)
    users = names_of(policy.users_groups) | admins
    groups = {
        hub_group_name(g, policy.group_prefix, policy.group_names): frozenset(
            n for n in member_names[g].values() if n not in clashes
        )
        for g in dict.fromkeys([*policy.users_groups, *policy.admin_groups])
    }
    ids = {n: next(iter(i)) for n, i in by_name.items() if n in users and n not in clashes}
    unnamed.update(j for n in clashes for i in by_name[n] for j in (i, aliases.get(i)) if j)
    return Desired(frozenset(users), frozenset(admins), groups, frozenset(clashes), tuple(notes),
                   tuple(empty), ids, frozenset(unnamed), labels, aliases)


@dataclass(frozen=True)
class Renames:
    """Managed hub users whose directory entry now carries another name (old → new)."""

    now: Mapping[str, str]  # renamed in this run
    waiting: Mapping[str, str]  # their servers stop first; renamed in a later run
    notes: tuple[str, ...] = ()
    # of ``now``: renamed in the hub by an earlier run that did not record it (the hub's answer
    # was lost): only the record follows (the hub answers 404 to the old name, "already renamed")
    finished: frozenset[str] = frozenset()
    # hub users holding the admin flag in role mode (the hub lets no non-admin modify them): kept
    # as they are, the new name waits, until a hub admin clears the flag
    held: Mapping[str, str] = field(default_factory=dict)

    @property
    def new_names(self) -> set[str]:
        return {*self.now.values(), *self.waiting.values()}


def find_renames(observed: SyncObserved, want: Desired, policy: SyncSettings) -> Renames:
    """A managed user who left the desired set while their directory id now stands for a name
    the hub does not know is renamed (``PATCH /users/{old}``), not removed and created again:
    the hub keeps their groups, tokens and stored server state (KubeSpawner remembers the
    volume's name). Not when the new name exists already (the person logged in under it: the
    old user is deprovisioned as usual; a leaver's record of the new name whose hub user is gone
    does not stop it). A hub user holding the admin flag in role mode is held (``held``): the hub
    lets no non-admin modify an admin (403 "Only admins can modify other admins"), and the person
    did not leave; the rename waits until a hub admin clears the flag.

    A rename the hub made while its run failed (its answer lost, the connection cut after the hub
    acted) left both names recorded (the rename is recorded ahead of the hub call) and only the
    new one in the hub: the rename is planned again, to finish its record, never as the old name's
    removal (which the guard would count, and report, as a person who left)."""
    by_id = {i: n for n, i in want.ids.items()}
    now: dict[str, str] = {}
    waiting: dict[str, str] = {}
    finished: set[str] = set()
    held: dict[str, str] = {}
    notes: list[str] = []
    for old, record in sorted(observed.managed.items()):
        # (an old name other entries claim now, a clash, is no obstacle: the hub user is this
        # entry's, whoever gets the name once the clash is fixed)
        if not record.active or record.directory_id is None or old in want.users:
            continue
        new = by_id.get(record.directory_id)
        # a record of the new name with the same id is this rename's own, written ahead of it
        ahead = new is not None and new in observed.managed \
            and observed.managed[new].directory_id == record.directory_id
        if ahead and new is not None and new in observed.users and old not in observed.users \
                and observed.managed[new].active and new not in now.values():
            now[old] = new
            finished.add(old)
            continue
        # a deprovisioned record of the new name whose hub user is gone (a leaver deleted by hand,
        # sync.delete_users off) holds the name, nothing else: the rename takes its place
        if (new is None or new == old or new in observed.users
                or (new in observed.managed and not ahead and observed.managed[new].active)
                or new in now.values() or new in waiting.values() or new in held.values()):
            continue  # one hub user per new name: a second old record leaves as usual
        user = observed.users.get(old)
        if user is None:
            continue
        if user.admin and policy.admin_mode == "role":
            held[old] = new
            notes.append(f"{old} is now {new} in the directory, but hub user {old} holds the hub's admin flag, "
                         "and the hub lets no non-admin rename an admin (403 'Only admins can modify other "
                         f"admins'; sync.admin_mode = 'role'): {old} is kept as they are and {new} is not created "
                         f"yet; a hub admin clears {old}'s admin flag (PATCH /users/{old} {{\"admin\": false}}, "
                         "or unticks admin on the hub's admin page; admin rights come from the synced admin "
                         f"groups), and the next run renames {old} to {new}")
            continue
        running = [s for s, srv in user.servers.items() if srv.ready or srv.pending]
        (waiting if running else now)[old] = new
    return Renames(now, waiting, tuple(notes), frozenset(finished), held)


def plan_sync(observed: SyncObserved, policy: SyncSettings, now: datetime, *, want: Desired | None = None) -> Plan:
    """Everything the hub needs so that it matches the directory, for the users hubpilot manages
    (``want``: the snapshot's desired state, when the caller has computed it already)."""
    want = want or desired_state(observed.snapshot, policy)
    actions: list[Action] = []
    users, managed = observed.users, observed.managed
    # A managed user whose directory entry is still a member, but has no usable name now
    # (invalid, missing, claimed by another entry too), is unknown: neither removed nor renamed.
    held = sorted(n for n, r in managed.items() if r.active and r.directory_id is not None
                  and r.directory_id in want.unnamed and n not in want.users)
    if held:
        want = replace(want, uncertain=want.uncertain | frozenset(held))
    held_notes = tuple(f"{n} is kept as they are: their directory entry is still a member of a synced group "
                       "but has no usable hub name now (see the notes above); fix the entry" for n in held)
    # A hub user created for another directory entry than the one carrying its name now is not
    # handed over: it is that person's (servers, tokens, home volume). For the plan the name is
    # not wanted; its own person, gone, leaves as any leaver, or, renamed, takes it along.
    taken = frozenset(n for n in reused_names(managed, want) if n in users)
    carried = want
    if taken:
        want = replace(want, users=want.users - taken, admins=want.admins - taken,
                       groups={g: m - taken for g, m in want.groups.items()},
                       ids={n: i for n, i in want.ids.items() if n not in taken})
    renames = find_renames(observed, want, policy)
    if renames.held:  # neither removed nor created: the person is kept under the old name for now
        # (nor the new name's record, written ahead by a run whose rename the hub refused)
        later = frozenset(renames.held.values())
        want = replace(want, uncertain=want.uncertain | frozenset(renames.held) | later, users=want.users - later,
                       admins=want.admins - later, groups={g: m - later for g, m in want.groups.items()},
                       ids={n: i for n, i in want.ids.items() if n not in later})
    # new name → the hub user's name until this run's rename (one the hub made already is its own)
    renamed_to = {new: old for old, new in renames.now.items() if old not in renames.finished}
    not_yet = set(renames.waiting.values())  # exist only after a later run's rename

    for old, new in sorted(renames.now.items()):
        actions.append(Action("rename_user", old, PHASE_RENAME, {"to": new}, reason=(
            f"renamed to {new} in the directory (same directory entry); the hub has {new} already (an earlier "
            "run renamed it and failed before recording it): recorded now" if old in renames.finished else
            f"renamed to {new} in the directory (same directory entry)")))
    wait_notes: list[str] = []
    for old, new in sorted(renames.waiting.items()):
        running = sorted(s for s, srv in users[old].servers.items() if srv.ready or srv.pending)
        if policy.stop_servers:
            actions.append(Action("stop_servers", old, PHASE_STOP, {"servers": running},
                                  reason=f"renamed to {new} in the directory: servers stop before the rename"))
        else:
            wait_notes.append(f"{old} is now {new} in the directory: the rename waits until their servers "
                              f"({', '.join(s or 'default' for s in running)}) stop (sync.stop_servers is off)")

    for name in sorted(want.users):
        if name in renamed_to or name in not_yet or name in renames.now.values():
            continue
        record = managed.get(name)
        if name not in users:
            actions.append(Action("create_user", name, PHASE_CREATE_USER,
                                  reason="member of a synced directory group"))
        elif record is None:
            actions.append(Action("manage_user", name, PHASE_MANAGE,
                                  reason="existing hub user found in a synced directory group"))
        elif not record.active:
            actions.append(Action("manage_user", name, PHASE_MANAGE,
                                  reason="back in a synced directory group after deprovisioning"))

    for group, members in sorted(want.groups.items()):
        hub_group = observed.groups.get(group)
        if hub_group is None:
            actions.append(Action("create_group", group, PHASE_CREATE_GROUP,
                                  reason="mirrors a synced directory group"))
        # membership as it is once this run's renames are done (the hub keeps a renamed user's groups)
        current = frozenset(renames.now.get(n, n) for n in (hub_group.users if hub_group else ()))
        for name in sorted(members - current):
            if name in not_yet:
                continue
            actions.append(Action("add_to_group", group, PHASE_ADD_TO_GROUP, {"user": name},
                                  reason=f"{name} is a member of the directory group"))
        for name in sorted(current - members):
            # a name another entry carries now (or other entries claim, a clash) leaves the groups
            # even while its rename waits: the hub's gate lets whoever logs in under it in by the groups
            if name in renames.waiting:
                if name not in taken and name not in want.uncertain:
                    continue
            elif name in want.uncertain:
                continue
            if name in managed or name in want.users:
                actions.append(Action("remove_from_group", group, PHASE_REMOVE_FROM_GROUP,
                                      {"user": name},
                                      reason=f"{name} is no longer a member of the directory group"))

    flags = policy.admin_mode == "flag"
    for name in sorted(want.admins if flags else ()):
        if name in not_yet:
            continue
        user = users.get(renamed_to.get(name, name))
        if user is None or not user.admin:
            actions.append(Action("grant_admin", name, PHASE_GRANT_ADMIN,
                                  reason="member of a synced admin group"))

    leaving: list[str] = []
    returning_notes: list[str] = []
    for name, record in sorted(managed.items()):
        if name in want.users or name in want.uncertain or name in renames.now or name in renames.waiting:
            continue
        user = users.get(name)
        if record.active:
            leaving.append(name)
            if user is not None:
                if user.admin and flags:
                    actions.append(Action("revoke_admin", name, PHASE_REVOKE_ADMIN,
                                          reason="left the synced admin group"))
                running = sorted(s for s, srv in user.servers.items() if srv.ready or srv.pending)
                if policy.stop_servers and running:
                    actions.append(Action("stop_servers", name, PHASE_STOP, {"servers": running},
                                          reason="no longer in any synced directory group"))
                if policy.revoke_tokens:
                    actions.append(Action("revoke_tokens", name, PHASE_STOP,
                                          reason="no longer in any synced directory group"))
            actions.append(Action("deprovision", name, PHASE_DEPROVISION,
                                  reason="no longer in any synced directory group"))
            continue
        # a person whose entry is a member again, but has no usable hub name now, is not known to
        # have left: kept deprovisioned (no name to take them back under), never deleted meanwhile
        returning = record.directory_id is not None and record.directory_id in want.unnamed
        if returning and name not in taken:  # (a name another entry carries: its own note says why)
            returning_notes.append(
                f"{name} is kept deprovisioned{', not deleted' if policy.delete_users else ''}: their directory "
                "entry is a member of a synced group again but has no usable hub name now (see the notes above); "
                "fix the entry, and the next run takes them back")
        deleting = policy.delete_users and record.deprovisioned_at is not None and not returning \
            and now >= record.deprovisioned_at + timedelta(hours=policy.delete_grace_hours)
        # a server started after the run that deprovisioned them read them (the stop it planned
        # found none), or started for them since: every run that finds one stops it (a deletion
        # stops it anyway)
        running = sorted(s for s, srv in user.servers.items() if srv.ready or srv.pending) if user else []
        when = f" on {record.deprovisioned_at:%Y-%m-%d}" if record.deprovisioned_at else ""
        # flag mode: a leaver recorded while the hub refused to clear their admin flag (hubpilot is
        # no hub admin), or flagged since: every run clears it (a deletion takes it anyway)
        if flags and user is not None and user.admin and not deleting:
            actions.append(Action("revoke_admin", name, PHASE_REVOKE_ADMIN, reason=(
                f"deprovisioned{when} (no longer in any synced directory group), but holds the hub's admin flag")))
        if policy.stop_servers and running and not deleting:
            actions.append(Action("stop_servers", name, PHASE_STOP, {"servers": running}, reason=(
                f"deprovisioned{when} (no longer in any synced directory group), but runs a server "
                "started since")))
        if deleting and record.deprovisioned_at is not None:
            # no hub user: deleted by a run that failed before recording it (the hub's answer
            # was lost) or by hand; the deletion only goes into the record (a no-op at the hub)
            actions.append(Action("delete_user", name, PHASE_DELETE, reason=(
                f"deprovisioned on {record.deprovisioned_at:%Y-%m-%d}, grace of {policy.delete_grace_hours:g} h "
                "is over" + ("" if user is not None else f"; the hub has no user {name} any more (deleted "
                             "by a run that failed before recording it, or by hand): recorded as deleted"))))
    # A hub group sync mirrored before, whose directory group is no longer configured, keeps its
    # members (what it grants is the hub admin's call), but not the people who leave now: a
    # removed person loses access, also through a mirror nobody configures any more.
    for group in sorted(observed.mirrors - set(want.groups)):
        hub_group = observed.groups.get(group)
        for name in sorted(set(leaving) & set(hub_group.users if hub_group else ())):
            actions.append(Action("remove_from_group", group, PHASE_REMOVE_FROM_GROUP, {"user": name},
                                  reason=f"{name} left the synced directory groups; {group} is a group sync "
                                  "mirrored before (its directory group is no longer configured)"))
    # Admin flags of managed users that are still members but not of an admin group, also of
    # those this plan makes managed (an existing hub user adopted, a person back after
    # deprovisioning): left for the next run, their revocation was in no plan reviewed or dry-run.
    adopted = {a.target for a in actions if a.kind == "manage_user"}
    for name in sorted(want.users - want.admins if policy.admin_groups and flags else ()):
        user = users.get(renamed_to.get(name, name))
        if user is not None and user.admin and (name in adopted or (
                renamed_to.get(name, name) in managed and managed[renamed_to.get(name, name)].active)):
            actions.append(Action("revoke_admin", name, PHASE_REVOKE_ADMIN,
                                  reason="not a member of any synced admin group"))

    # In role mode the admin flag is no admin right of hubpilot's making (the hub lets no non-admin
    # clear it): one set by hand, or in flag mode before, outlives the admin group. Say so.
    flag_notes: list[str] = []
    noted: set[str] = set()
    for group in sorted(admin_mirrors(policy) if not flags else ()):
        for name in sorted(observed.groups[group].users if group in observed.groups else ()):
            user = users.get(name)
            if name in want.users and name not in want.admins and name in managed and user is not None \
                    and user.admin and name not in noted:
                noted.add(name)
                flag_notes.append(f"{name} left the synced admin groups but holds the hub's admin flag "
                                  "(set by hand, or by sync.admin_mode = 'flag' before), which keeps their "
                                  "admin rights and which only a hub admin can clear")
    # ... also for a leaver (deprovisioned, but their hub user stays an admin) and for a person this
    # plan takes back or adopts into the synced groups, in no synced admin group
    fix = ("(set by hand, or by sync.admin_mode = 'flag' before; the hub lets no non-admin clear it): a hub admin "
           "clears {name}'s admin flag (PATCH /users/{name} {{\"admin\": false}}, or unticks admin on the hub's admin "
           "page; admin rights come from the synced admin groups)")
    for name in sorted(leaving if not flags else ()):
        user = users.get(name)
        if user is not None and user.admin and name not in noted:
            flag_notes.append(f"{name} is deprovisioned (no longer in any synced directory group) but hub user {name} "
                              "holds the hub's admin flag, which stays " + fix.format(name=name))
    for name in sorted(adopted - want.admins if not flags else ()):
        user = users.get(name)
        if user is not None and user.admin and name not in noted:
            flag_notes.append(f"{name} is taken into the synced groups, in no synced admin group, but hub user {name} "
                              "holds the hub's admin flag, which gives them admin rights " + fix.format(name=name))
    reuse_notes = tuple(_reuse_note(n, managed[n], carried, renames) for n in sorted(taken))
    active = sum(1 for r in managed.values() if r.active)
    recent = recent_removals(observed, want, policy, now)
    facts = {
        "directory_source": observed.snapshot.source,
        "desired_users": len(want.users),
        "desired_admins": len(want.admins),
        "managed_active": active,
        "removals": len(leaving),
        # a rename the hub made already is no new one for the guard, nor one waiting for servers
        # this plan does not stop (sync.stop_servers off)
        "renames": len(renames.now) - len(renames.finished) + (len(renames.waiting) if policy.stop_servers else 0),
        "reused_names": sum(1 for n in taken if n in leaving),
        "empty_groups": list(want.empty_groups),
        "recent_removals": len(recent),
    }
    if observed.snapshot.changed is not None:  # the groups whose changes the directory read was shown
        facts["changed_groups"] = sorted(observed.snapshot.changed)
    if taken_out := recent_group_removals(observed, want, policy, now):
        facts["recent_group_removals"] = taken_out
    return Plan.build(OPERATION, actions,
                      (*want.notes, *held_notes, *returning_notes, *renames.notes, *wait_notes, *reuse_notes,
                       *flag_notes), facts)


def _reuse_note(name: str, record: ManagedUser, carried: Desired, renames: Renames) -> str:
    """What happens to a hub name another directory entry carries now, and what an admin does."""
    new_id, old_id = carried.ids[name], record.directory_id
    label = carried.labels.get(new_id, new_id)
    entry = label if label == new_id else f"{label} (id {new_id})"
    head = f"hub name {name!r} now belongs to directory entry {entry}, but hub user {name} was created for id {old_id}"
    if name in renames.now:
        return (f"{head}, now {renames.now[name]!r} in the directory: {name} is renamed to {renames.now[name]} "
                f"(it keeps {old_id}'s data), and {label} gets {name} at the next run")
    if name in renames.waiting:
        return (f"{head}, now {renames.waiting[name]!r} in the directory: {name}'s servers stop and it leaves the "
                f"synced groups now, it is renamed to {renames.waiting[name]} at a later run, and then {label} "
                f"gets {name}")
    elsewhere = next((n for n, i in carried.ids.items() if i == old_id), None)
    if elsewhere is not None:
        where = (f", now {elsewhere!r} in the directory, which {name} cannot be renamed to (entries that swap "
                 "names, or a name the hub has already, are held, not resolved)")
    elif old_id in carried.unnamed:
        where = ", who is still a member but has no usable hub name now"
    else:
        where = ", who is no longer a member"
    state = "deprovisioned" if record.active else "kept deprovisioned"
    return (f"{head}{where}: {name} is {state}, not handed over (it holds {old_id}'s data and tokens); "
            f"{label} gets access once an admin deletes or renames hub user {name}")


def recent_removals(observed: SyncObserved, want: Desired, policy: SyncSettings, now: datetime) -> list[str]:
    """The people sync deprovisioned within the last ``sync.removal_window_hours`` before ``now``
    (a window that starts just after ``now - window``), which the guard counts with a plan's own
    removals: a directory that degrades over several runs (a flapping replica, an ACL change
    rolled out over an hour, a Graph tenant answering in part) otherwise removes everyone a few
    at a time. Counted too: people deleted since (``deleted``: sync.delete_users with a grace
    shorter than the window takes their records, not their removal). Not counted: removals up to
    an admin's approval of a plan refused for its removals (``removals_approved_at``: the approval
    accepted them, also those stamped later by another instance's clock ahead: ``approved_ahead``),
    people back in a synced group now (they return in this plan), and people back before (their
    record is active again). Back means the same person (``same_entry``), not the same name: a
    leaver whose hub name another directory entry carries now (a recycled uid, the leaver's hub
    user deleted by hand) still counts, also once the newcomer's record took the name's place
    (``replaced``)."""
    if policy.removal_window_hours <= 0:
        return []
    start = now - timedelta(hours=policy.removal_window_hours)
    approved = observed.removals_approved_at
    removed = [(n, r.directory_id, r.deprovisioned_at) for n, r in observed.managed.items()
               if r.deprovisioned_at is not None]
    for n, at in observed.deleted.items():
        ident, record = observed.deleted_ids.get(n), observed.managed.get(n)
        # a record of the name is the person's own again (counted by it, or back), or a newcomer's
        if record is None or (record.directory_id is not None and not same_entry(ident, record.directory_id, want)):
            removed.append((n, ident, at))
    removed += observed.replaced

    def back(name: str, ident: str | None) -> bool:
        return name in want.users and (ident is None or name not in want.ids
                                       or same_entry(ident, want.ids[name], want))

    return sorted(n for n, ident, at in removed
                  if at > start and (approved is None or at > approved) and not back(n, ident)
                  and observed.approved_ahead.get(n) != at)


def recent_group_removals(observed: SyncObserved, want: Desired, policy: SyncSettings,
                          now: datetime) -> dict[str, int]:
    """Per mirrored hub group, how many people sync took out of it within the last
    ``sync.removal_window_hours`` who stay hub users and are not back in it (the directory's
    group, or the hub's, has them again): a group answer that degrades over several runs
    otherwise strips the group a few people at a time, each run under the floor. An approval
    clears the stamps (it accepted them), so they are not filtered here by its time. A stamp is
    of the person who held the hub name then: while the name's record (or, deleted, its id) is
    another directory entry's than the one carrying the name now (a recycled uid), it is a
    leaver's, who counts as a removal, not a group loss of the newcomer."""
    if policy.removal_window_hours <= 0:
        return {}
    start = now - timedelta(hours=policy.removal_window_hours)

    def stays(name: str) -> bool:
        if name not in want.users:
            return False
        record = observed.managed.get(name)
        holder = record.directory_id if record is not None else observed.deleted_ids.get(name)
        return holder is None or name not in want.ids or same_entry(holder, want.ids[name], want)

    out: dict[str, int] = {}
    for group, people in observed.group_removed.items():
        hub_group = observed.groups.get(group)
        back = set(want.groups.get(group, ())) | set(hub_group.users if hub_group else ())
        n = sum(1 for name, at in people.items() if at > start and name not in back and stays(name))
        if n:
            out[group] = n
    return out


def admin_mirrors(policy: SyncSettings) -> set[str]:
    """The hub groups that mirror the synced admin groups."""
    return {hub_group_name(g, policy.group_prefix, policy.group_names) for g in policy.admin_groups}


def removal_reasons(observed: SyncObserved, plan: Plan, policy: SyncSettings) -> list[str]:
    """Reasons to refuse the plan's removals (``deprovision``), counted with the removals sync made
    within ``sync.removal_window_hours`` (the plan's fact ``recent_removals``) against
    ``sync.max_removals`` and ``sync.max_removal_percent``. A plan that removes nobody is never
    refused here, however many left in the window. Apply asks this too: a plan applied although
    it has such reasons was approved, and the approval restarts the window."""
    removals = sum(1 for a in plan.actions if a.kind == "deprovision")
    if not removals:
        return []
    recent = int(plan.facts.get("recent_removals", 0))
    active = sum(1 for r in observed.managed.values() if r.active)
    # a hub name another directory entry carries now removes its hub user's person: when that is
    # (nearly) everyone, the ids changed form rather than the people
    reused = int(plan.facts.get("reused_names", 0))
    hint = (f"; {reused} of them are hub names another directory entry carries now (not handed over): when "
            "that is nearly everyone, the directory's ids changed form (directory.ldap.id_attribute changed, or, "
            "people known by their DN, entries moved to another OU); fix that rather than approve") if reused else ""
    if not recent:
        return _over_limits(policy, removals, active, count=f"the plan removes {removals} users",
                            share=f"the plan removes {removals} of {active} managed users", tail=hint)
    # the people managed when the window began: the active ones and those removed since
    total, base = removals + recent, active + recent
    window = f"{policy.removal_window_hours:g} h"
    what = (f"the plan removes {removals} users and sync removed {recent} in the last {window} "
            f"(sync.removal_window_hours): {total} in all")
    todo = (f"; a directory that loses people over several runs (a flapping replica, an ACL change, a partial "
            f"answer) looks like this: fix the directory, or, when the removals are right, approve the plan "
            f"{plan.id} (the run says how), which accepts all {total} and restarts the count{hint}")
    return _over_limits(policy, total, base, count=what, share=f"{what} of {base} managed users", tail=todo)


def _over_limits(policy: SyncSettings, n: int, base: int, *, count: str, share: str, tail: str = "",
                 share_tail: str | None = None) -> list[str]:
    """Refusals of ``n`` people against ``sync.max_removals`` and of ``n`` out of ``base`` against
    ``sync.max_removal_percent``: ``count`` and ``share`` open the two messages, ``tail`` (for the
    share ``share_tail`` when given) ends them."""
    out = []
    if n > policy.max_removals:
        out.append(f"{count}, more than sync.max_removals = {policy.max_removals}{tail}")
    if base and n * 100.0 / base > policy.max_removal_percent:
        out.append(f"{share} ({n * 100.0 / base:.0f} %), more than sync.max_removal_percent = "
                   f"{policy.max_removal_percent:g} %{tail if share_tail is None else share_tail}")
    return out


def group_loss_reasons(observed: SyncObserved, plan: Plan, policy: SyncSettings) -> list[str]:
    """Refuse a plan that takes more than ``sync.max_removal_percent`` of a mirrored hub group's
    members out of it, and more than ``sync.group_removal_floor`` people, counting those who stay
    hub users (people who leave are counted as removals). They are no removals, but they lose
    what the group grants (profiles, GPUs; admin rights for an admin group's mirror): a partly
    hidden or truncated group answer would take them out in one run, a degrading one over several:
    the people sync took out within ``sync.removal_window_hours`` (the plan's fact
    ``recent_group_removals``) count with the plan's own, against the members the group had when
    the window began. A group the directory answered as empty is refused as such already."""
    leaving = {a.target for a in plan.actions if a.kind == "deprovision"}
    # people deprovisioned earlier, put back in a mirror by hand, left the hub already: no group loss
    # (those this plan takes back are managed again: they stay)
    back = {a.target for a in plan.actions if a.kind == "manage_user"}
    leaving |= {n for n, r in observed.managed.items() if not r.active and n not in back}
    out: dict[str, int] = {}
    for a in plan.actions:
        if a.kind == "remove_from_group" and a.params["user"] not in leaving:
            out[a.target] = out.get(a.target, 0) + 1
    empty = {hub_group_name(g, policy.group_prefix, policy.group_names) for g in plan.facts.get("empty_groups", [])}
    directory = {hub_group_name(g, policy.group_prefix, policy.group_names): g
                 for g in dict.fromkeys([*policy.users_groups, *policy.admin_groups])}
    admins = admin_mirrors(policy)
    earlier: dict[str, int] = plan.facts.get("recent_group_removals", {})
    reasons: list[str] = []
    for group, n in sorted(out.items()):
        hub_group = observed.groups.get(group)
        members = len(hub_group.users) if hub_group else 0
        recent = earlier.get(group, 0)
        # the members when the window began: those here now and those taken out since
        total, base = n + recent, members + recent
        # only configured mirrors: a mirror no longer configured loses just the people who leave
        if group not in directory or group in empty or not members or total <= policy.group_removal_floor \
                or total * 100.0 / base <= policy.max_removal_percent:
            continue
        grants = "admin rights" if group in admins else "what the group grants (profiles, GPUs)"
        share = f"{total * 100.0 / base:.0f} %"
        what = (f"the plan takes {n} of the {members} members out of hub group {group} (directory group "
                f"{directory[group]!r}; {share})" if not recent else
                f"the plan takes {n} of the {members} members out of hub group {group} (directory group "
                f"{directory[group]!r}) and sync took {recent} out in the last "
                f"{policy.removal_window_hours:g} h (sync.removal_window_hours): {total} of the {base} members "
                f"then ({share})")
        degrading, accepts = (", or that degrades over several runs,", ", which accepts them all and restarts "
                              "the count") if recent else ("", "")
        reasons.append(
            f"{what} who stay hub users, more than sync.max_removal_percent = {policy.max_removal_percent:g} % "
            f"and more than sync.group_removal_floor = {policy.group_removal_floor}; they lose {grants}. A group "
            f"answer that is partly hidden (an ACL) or cut short{degrading} looks like this: fix the directory, "
            f"or, when the change is right, approve the plan {plan.id} (the run says how){accepts}"
        )
    return reasons


def guard_sync(observed: SyncObserved, plan: Plan, policy: SyncSettings) -> list[str]:
    """Refuse mass removals (counted over sync.removal_window_hours), renames and deletions, mass
    membership loss of a mirrored group, and an empty directory answer where members existed."""
    reasons = removal_reasons(observed, plan, policy)
    removals = sum(1 for a in plan.actions if a.kind == "deprovision")
    # a rename waiting for its servers to stop counts too: this plan stops them
    renames = int(plan.facts.get("renames", sum(1 for a in plan.actions if a.kind == "rename_user")))
    active = sum(1 for r in observed.managed.values() if r.active)
    reasons += _over_limits(policy, renames, active, count=f"the plan renames {renames} users",
                            share=f"the plan renames {renames} of {active} managed users",
                            tail="; a mass rename (e.g. a changed domain) is approved by hand",
                            share_tail="; a mass rename (e.g. a changed naming setting) is approved by hand")
    # a deletion ends a removal for good (in z2jh with the user's volume): turning deletion on, or
    # shortening its grace, must not delete everyone deprovisioned so far in one run
    # (one of a user the hub has no more only records a deletion that took place)
    deletions = sum(1 for a in plan.actions if a.kind == "delete_user" and a.target in observed.users)
    records = len(observed.managed)
    reasons += _over_limits(policy, deletions, records, count=f"the plan deletes {deletions} users",
                            share=f"the plan deletes {deletions} of {records} managed users, active or deprovisioned")
    reasons += group_loss_reasons(observed, plan, policy)
    for group in plan.facts.get("empty_groups", []):
        mirror = observed.groups.get(hub_group_name(group, policy.group_prefix, policy.group_names))
        had = [u for u in (mirror.users if mirror else ()) if u in observed.managed]
        if had:
            reasons.append(
                f"the directory answered that group {group!r} is empty, but {len(had)} managed users "
                "were members; an empty answer is treated like a mass removal"
            )
    if removals and active and not plan.facts.get("desired_users") and not reasons:
        reasons.append(f"the directory returned no members at all while {active} users are managed")
    return reasons
