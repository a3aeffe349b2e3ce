"""Delta rounds applied to a stored membership (pure).

A *chunk* is a set of at most 50 group object ids read with one ``/groups/delta`` query
(``$filter=id eq 'a' or id eq 'b' ...``); its state is the deltaLink of the last complete round
plus the direct members of each of its groups. A round is the pages from the query to the
``@odata.deltaLink``. A group can appear on several pages (large groups are split): entries are
applied in order to sets, so repeating one is harmless.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hubpilot.config.base import GUID
from hubpilot.loop import stored_time
from hubpilot.ports.directory import Member

CHUNK_SIZE = 50
"""Graph's limit of ids in one ``/groups/delta`` filter."""


def normalise_id(value: Any) -> str | None:
    """An object id as lower-case canonical GUID text, or None when it is no GUID.

    The SDK turns canonical GUIDs in untyped data into :class:`uuid.UUID` and leaves anything
    else a string (the Graph docs even print a 35-character id in an ``@removed`` entry).
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if GUID.fullmatch(text):
            return text
    return None




@dataclass
class GroupState:
    """Direct members of one group: users (id → [username, display]) and nested group ids."""

    users: dict[str, list[str | None]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    others: set[str] = field(default_factory=set)  # devices, service principals, contacts

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "groups": sorted(self.groups), "others": sorted(self.others)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupState:
        """Read stored members; a wrong shape is a ValueError, never members read as fewer."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a group's members are {type(data).__name__}, not an object")
        stored = _of(data.get("users"), dict, "users")
        users: dict[str, list[str | None]] = {}
        for k, v in stored.items():
            if not isinstance(v, list) or len(v) < 2 or not all(x is None or isinstance(x, str) for x in v[:2]):
                raise ValueError(f"member {k!r} is {v!r}, not [username, display name]")
            users[str(k)] = [v[0], v[1]]
        return cls(users, {str(g) for g in _of(data.get("groups"), list, "groups")},
                   {str(o) for o in _of(data.get("others"), list, "others")})

    def copy(self) -> GroupState:
        return GroupState({k: list(v) for k, v in self.users.items()}, set(self.groups), set(self.others))


@dataclass
class ChunkState:
    """One delta chunk: its groups, the deltaLink of its last complete round, their members."""

    groups: tuple[str, ...]
    delta_link: str | None = None
    members: dict[str, GroupState] = field(default_factory=dict)
    users_checked: str | None = None  # ISO time the members' usernames were last read afresh
    # members Graph holds in deleted items: a soft-deleted user keeps its group memberships and
    # the groups' delta does not mention it (delta-query-groups); no member for the hub until a
    # lookup returns the user again (restored)
    deleted_users: set[str] = field(default_factory=set)
    # members whose account is disabled (accountEnabled false) at the last lookup: a group's delta
    # does not report it; no member for the hub (directory.entra.disabled_accounts = "remove")
    # until a lookup returns the account enabled
    disabled_users: set[str] = field(default_factory=set)

    @property
    def key(self) -> str:
        return chunk_key(self.groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "delta_link": self.delta_link,
            "members": {g: s.to_json() for g, s in sorted(self.members.items())},
            "users_checked": self.users_checked,
            "deleted_users": sorted(self.deleted_users),
            "disabled_users": sorted(self.disabled_users),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChunkState:
        groups = tuple(str(g) for g in _of(data.get("groups"), list, "groups"))
        members = {str(g): GroupState.from_json(s) for g, s in _of(data.get("members"), dict, "members").items()}
        link = data.get("delta_link")
        checked = data.get("users_checked")
        stored_time(checked, "'users_checked'")  # an ISO time (naive: UTC), else a ValueError naming it
        deleted = {str(u) for u in _of(data.get("deleted_users"), list, "deleted_users")}
        disabled = {str(u) for u in _of(data.get("disabled_users"), list, "disabled_users")}
        if "disabled_users" not in data:
            # written by a release that did not read accountEnabled: no disabled member is known, so
            # the members are due for a fresh read (the username refresh reads it)
            checked = None
        return cls(groups, str(link) if link else None, members, str(checked) if checked else None, deleted,
                   disabled)


def _of(value: Any, kind: type[Any], what: str) -> Any:
    """A stored field that must be a JSON ``kind`` (null or absent: empty)."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{what!r} is {type(value).__name__}, not {'an object' if kind is dict else 'a list'}")
    return value


def chunk_key(groups: Iterable[str]) -> str:
    import hashlib

    return hashlib.sha256(",".join(sorted(groups)).encode()).hexdigest()[:16]


def new_chunks(groups: Iterable[str], size: int = CHUNK_SIZE) -> list[ChunkState]:
    ordered = sorted(set(groups))
    return [ChunkState(tuple(ordered[i:i + size])) for i in range(0, len(ordered), size)]


@dataclass
class RoundOutcome:
    """What one round did to a chunk."""

    chunk: ChunkState
    seen: set[str] = field(default_factory=set)  # groups that appeared in the round
    removed_groups: set[str] = field(default_factory=set)  # groups the round says were deleted
    added_users: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    malformed: bool = False  # an entry could not be attributed: resync next time
    incomplete: bool = False  # a full round lists someone it cannot attribute: membership unknown


def apply_round(
    chunk: ChunkState,
    entries: Sequence[Mapping[str, Any]],
    delta_link: str,
    *,
    fresh: bool,
) -> RoundOutcome:
    """Apply a complete round to a chunk and return the new chunk state (the input is unchanged).

    ``entries`` are the groups of all pages, in order: ``{"id": ..., "removed": bool,
    "members": [{"id": ..., "@odata.type": "#microsoft.graph.user", "@removed": {...}}, ...]}``.
    ``fresh`` (a first round or a resync) starts from empty membership. Entries with an id that
    is no GUID cannot be attributed: they are reported, ignored (an unknown change never
    removes anyone) and the chunk forgets its deltaLink, so the next read is a full one. In a
    ``fresh`` round the entries *are* the membership: one that adds a member it cannot attribute
    makes the outcome ``incomplete`` (ignoring it would drop that person as if they had left).
    """
    mine = set(chunk.groups)
    members = {g: GroupState() for g in chunk.groups} if fresh else {
        g: (chunk.members.get(g) or GroupState()).copy() for g in chunk.groups
    }
    out = RoundOutcome(ChunkState(chunk.groups, delta_link, members, chunk.users_checked))
    for entry in entries:
        gid = normalise_id(entry.get("id"))
        if gid is None:
            if entry.get("members"):
                out.notes.append(
                    f"a /groups/delta entry without a valid group id ({entry.get('id')!r}) carried "
                    "member changes; they are ignored and the next read is a full one"
                )
                out.malformed = True
                out.incomplete |= fresh and any("@removed" not in m for m in entry["members"])
            continue
        if gid not in mine:
            continue  # not asked for (Graph may echo others); never guess
        out.seen.add(gid)
        state = members[gid]
        if entry.get("removed"):
            out.removed_groups.add(gid)
            members[gid] = GroupState()
            continue
        for m in entry.get("members") or ():
            mid = normalise_id(m.get("id"))
            removed = "@removed" in m  # its presence marks a removal; the reason inside is optional
            if mid is None:
                out.notes.append(
                    f"group {gid}: a members@delta entry has a malformed id {m.get('id')!r} "
                    f"({'removal' if removed else 'addition'}); it is ignored and the next read is a full one"
                )
                out.malformed = True
                out.incomplete |= fresh and not removed
                continue
            kind = str(m.get("@odata.type") or "").lower()
            if kind.endswith(".group"):
                if removed:
                    state.groups.discard(mid)
                else:
                    state.groups.add(mid)
            elif kind.endswith(".user"):
                if removed:
                    state.users.pop(mid, None)
                elif mid not in state.users:
                    state.users[mid] = [None, None]
                    out.added_users.add(mid)
            elif removed:
                state.others.discard(mid)
            else:
                state.others.add(mid)
    if out.malformed:
        out.chunk.delta_link = None
    # a full read lists a soft-deleted member again: it stays marked while it is a member
    out.chunk.deleted_users = {u for u in chunk.deleted_users if any(u in s.users for s in members.values())}
    out.chunk.disabled_users = {u for u in chunk.disabled_users if any(u in s.users for s in members.values())}
    return out


def unresolved_users(chunks: Iterable[ChunkState], groups: Iterable[str]) -> set[str]:
    """Users of ``groups`` whose attributes are not known yet (display is None)."""
    wanted = set(groups)
    out: set[str] = set()
    for c in chunks:
        for g, s in c.members.items():
            if g in wanted:
                out.update(u for u, (_, display) in s.users.items() if display is None)
    return out


def known_users(chunks: Iterable[ChunkState]) -> dict[str, list[str | None]]:
    """Attributes already known for any user, from any group (reused instead of a lookup)."""
    out: dict[str, list[str | None]] = {}
    for c in chunks:
        for s in c.members.values():
            for u, info in s.users.items():
                if info[1] is not None:
                    out[u] = info
    return out


def fill_users(chunks: Iterable[ChunkState], info: Mapping[str, Sequence[str | None]]) -> None:
    """Record looked-up attributes; a user the lookup did not find stays unresolved (no username
    yet), so the next read asks again: Graph documents replication delays for new objects."""
    for c in chunks:
        for s in c.members.values():
            for u, cur in s.users.items():
                found = info.get(u)
                if cur[1] is None and found:
                    s.users[u] = [found[0], found[1] or ""]


def refresh_users(chunks: Iterable[ChunkState], info: Mapping[str, Sequence[str | None]]) -> list[str]:
    """Overwrite known users' attributes with a fresh read; users the read did not return keep
    what is stored (a missing answer is no change). Returns the ids whose username changed."""
    changed: set[str] = set()
    for c in chunks:
        for s in c.members.values():
            for u, cur in s.users.items():
                found = info.get(u)
                if found is None or cur[1] is None:
                    continue
                if found[0] != cur[0]:
                    changed.add(u)
                s.users[u] = [found[0], found[1] or ""]
    return sorted(changed)


def closure(configured: Iterable[str], members: Mapping[str, GroupState], *, nested: bool,
            max_depth: int) -> set[str]:
    """Every group that must be read: the configured ones and, with nesting, their subgroups."""
    seen = set(configured)
    if not nested:
        return seen
    frontier = set(seen)
    for _ in range(max_depth):
        nxt: set[str] = set()
        for g in frontier:
            s = members.get(g)
            if s is not None:
                nxt.update(s.groups - seen)
        if not nxt:
            break
        seen |= nxt
        frontier = nxt
    return seen


def expand(
    configured: Sequence[str],
    members: Mapping[str, GroupState],
    *,
    nested: bool,
    max_depth: int,
    deleted: Collection[str] = frozenset(),
) -> tuple[dict[str, frozenset[Member]], list[str]]:
    """Full (transitive with ``nested``) membership of each configured group, and notes. Users in
    ``deleted`` (in Entra's deleted items, though still listed as members) are left out."""
    notes: list[str] = []
    out: dict[str, frozenset[Member]] = {}
    for top in configured:
        people: dict[str, Member] = {}
        # breadth first: a group is expanded at the depth of its shortest path from ``top`` (a
        # longer way to it walked first would cut its subgroups at nested_max_depth)
        queue: deque[tuple[str, int, tuple[str, ...]]] = deque([(top, 0, (top,))])
        reached = {top}  # queued already, at its shortest depth
        while queue:
            gid, depth, path = queue.popleft()
            s = members.get(gid)
            if s is None:
                continue
            for uid, (username, display) in s.users.items():
                if uid not in deleted:
                    people[uid] = Member(id=uid, username=username, display=display or "")
            if s.others:
                notes.append(f"group {gid}: {len(s.others)} member(s) that are neither users nor groups are skipped")
            if not s.groups:
                continue
            if not nested:
                notes.append(f"group {gid} has {len(s.groups)} nested group(s); nesting is off, they are skipped")
                continue
            for sub in sorted(s.groups):
                if sub in path:
                    notes.append(f"nesting cycle {' → '.join((*path, sub))}: not followed again")
                elif sub in reached:
                    continue  # expanded by a path no longer than this one
                elif depth + 1 > max_depth:
                    notes.append(f"group {sub} under {gid} is deeper than nested_max_depth={max_depth}: skipped")
                else:
                    reached.add(sub)
                    queue.append((sub, depth + 1, (*path, sub)))
        out[top] = frozenset(people.values())
    return out, sorted(set(notes))
