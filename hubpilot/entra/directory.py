"""Entra ID as a :class:`~hubpilot.ports.directory.Directory`, driven by delta queries.

Each read runs one delta round per chunk of at most 50 groups (from the stored deltaLink, or a
full round the first time and after an expired token), resolves the usernames of users it has
not seen, expands nested groups, and only then commits the new state (deltaLink and direct
membership together, one document per chunk, written with its etag). A failed read commits
nothing, and so does a dry-run's read (a dry-run records nothing, and holds no lock: its commit
would fail the conditional one of a real run under way). Membership is derived from the committed
state, so a sync plan the guard refuses comes back on the next run instead of being lost.

A group's delta does not report a member's changed attributes (a renamed userPrincipalName, a
disabled account), so the stored usernames of a chunk are read afresh every ``user_refresh`` (one
bulk read; a group with many users is listed instead), ``accountEnabled`` with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from hubpilot.entra.delta import (
    ChunkState,
    GroupState,
    apply_round,
    closure,
    expand,
    fill_users,
    known_users,
    new_chunks,
    normalise_id,
    refresh_users,
    unresolved_users,
)
from hubpilot.loop import in_dry_run, stored_time, utcnow
from hubpilot.ports.directory import DirectoryError, DirectorySnapshot
from hubpilot.ports.store import ConflictError, StateStore, StoreError

log = logging.getLogger(__name__)

STATE_PREFIX = "entra/delta/"
GROUP_LISTING_THRESHOLD = 150
"""Above this many unknown users in one group, list the group's users (999 a page) instead of
looking them up 15 at a time."""


class GraphReader(Protocol):
    """What the directory needs from Graph (the msgraph-sdk adapter implements it)."""

    async def delta_round(self, group_ids: Sequence[str], delta_link: str | None) -> Mapping[str, Any]:
        """All pages of one round, followed to the deltaLink.

        Returns ``{"entries": [...], "delta_link": str}`` (entries as
        :func:`hubpilot.entra.delta.apply_round` takes them), or ``{"expired": True}`` when Graph
        says the deltaLink is no longer valid (410 Gone, syncStateNotFound). Raises
        DirectoryError on any other failure.
        """
        ...

    async def lookup_users(self, ids: Sequence[str]) -> Mapping[str, tuple[str | None, str, bool | None]]:
        """id → (username attribute, display name, accountEnabled) of the users found (in bulk);
        accountEnabled None: Graph did not say."""
        ...

    async def list_group_users(self, group_id: str) -> Mapping[str, tuple[str | None, str, bool | None]]:
        """id → (username attribute, display name, accountEnabled) of a group's direct user members."""
        ...

    async def deleted_users(self, ids: Sequence[str]) -> set[str]:
        """The ids Graph holds as users in deleted items (``/directory/deletedItems/{id}``);
        an id it does not hold there is not in the answer."""
        ...

    def round(self) -> AbstractAsyncContextManager[None]:
        """The requests of one read. Throttling is waited out only within the round's deadline
        (directory.entra.round_deadline_seconds): a wait that would end past it fails the request
        with DirectoryError, so the read commits nothing and the next run reads again."""
        ...

    async def close(self) -> None: ...


@dataclass
class ReadStats:
    """Counters of the last read (for the benchmark and logs)."""

    rounds: int = 0
    resyncs: int = 0
    lookups: int = 0
    refreshed: int = 0  # users whose attributes were read afresh
    renamed: int = 0
    commits: int = 0
    notes: list[str] = field(default_factory=list)


class EntraDirectory:
    """The Directory port over Graph delta queries, with its state in the state store."""

    def __init__(self, graph: GraphReader, store: StateStore, *, nested: bool = False,
                 nested_max_depth: int = 8, user_refresh: timedelta | None = timedelta(hours=24),
                 disabled_accounts: Literal["remove", "keep"] = "remove",
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.graph = graph
        self.disabled_accounts = disabled_accounts
        self.store = store
        self.nested = nested
        self.nested_max_depth = nested_max_depth
        self.user_refresh = user_refresh
        self.clock = clock
        self.last = ReadStats()

    async def read(self, groups: Sequence[str]) -> DirectorySnapshot:
        async with self.graph.round():
            return await self._read(groups)

    async def _read(self, groups: Sequence[str]) -> DirectorySnapshot:
        stats = ReadStats()
        configured: list[str] = []
        for g in groups:
            gid = normalise_id(g)
            if gid is None:
                raise DirectoryError(
                    f"{g!r} is no Entra group object id: sync.users_groups and sync.admin_groups take "
                    "object ids (GUIDs, Entra admin centre → Groups → Object Id)"
                )
            configured.append(gid)
        try:
            stored = await self.store.list(STATE_PREFIX)
            etags: dict[str, str] = {}
            chunks: dict[str, ChunkState] = {}
            for key in stored:
                got = await self.store.get_with_etag(key)
                if got is None:
                    continue
                doc, etag = got
                chunk = ChunkState.from_json(doc)
                chunks[chunk.key] = chunk
                etags[chunk.key] = etag
        except StoreError as exc:
            raise DirectoryError(f"cannot read the Entra delta state: {exc}") from exc
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DirectoryError(f"the stored Entra delta state is unreadable ({exc}); delete the "
                                 f"documents {STATE_PREFIX}* to start over with a full read") from exc

        done: dict[str, ChunkState] = {}
        changed: set[str] = set()  # groups an incremental round listed: the delta showed their changes
        removed: set[str] = set()
        needed = set(configured)
        for _ in range(self.nested_max_depth + 2):
            tracked = {g for c in chunks.values() for g in c.groups}
            for c in new_chunks(needed - tracked):
                chunks[c.key] = c
            for key, chunk in list(chunks.items()):
                if key in done or not (set(chunk.groups) & needed):
                    continue
                outcome = await self._round(chunk, stats)
                done[key] = outcome.chunk
                if not outcome.fresh:
                    changed |= outcome.seen
                if outcome.fresh:
                    missing = (set(chunk.groups) & set(configured)) - outcome.seen
                    if missing:
                        raise DirectoryError(
                            "Entra ID has no group with object id " + ", ".join(sorted(missing))
                            + " (or hubpilot may not read it: GroupMember.Read.All); fix sync.users_groups/"
                            "admin_groups"
                        )
                    # a nested group a synced group lists as member, but Graph does not return:
                    # its members are unknown, never gone (a deleted group leaves its parents)
                    unread = (set(chunk.groups) & needed) - outcome.seen
                    if unread:
                        raise DirectoryError(
                            "nested Entra group(s) " + ", ".join(sorted(unread)) + " are members of a synced "
                            "group but Graph returns no such group (hubpilot may not read it: "
                            "GroupMember.Read.All, or it was deleted just now); nothing is changed until it "
                            "can be read or leaves the synced group"
                        )
                removed |= outcome.removed
            members = _members(done)
            wider = closure(configured, members, nested=self.nested, max_depth=self.nested_max_depth)
            if wider <= needed:
                break
            needed = wider
        gone = removed & set(configured)
        if gone:
            raise DirectoryError(
                "configured Entra group(s) " + ", ".join(sorted(gone)) + " were deleted; remove them from "
                "sync.users_groups/admin_groups (nothing is changed until then)"
            )
        for gid in removed - gone:
            stats.notes.append(f"nested group {gid} was deleted in Entra ID")

        await self._resolve(list(done.values()), needed, stats, before=list(chunks.values()))
        await self._refresh(done, set(etags), stats)
        members = _members(done)
        deleted = {u for c in done.values() for u in c.deleted_users}
        disabled = {u for c in done.values() for u in c.disabled_users} - deleted
        remove = self.disabled_accounts == "remove"
        expanded, notes = expand(configured, members, nested=self.nested, max_depth=self.nested_max_depth,
                                 deleted=deleted | disabled if remove else deleted)
        if deleted:
            shown = ", ".join(sorted(deleted)[:5]) + (" …" if len(deleted) > 5 else "")
            stats.notes.append(
                f"{len(deleted)} member(s) are in Entra ID's deleted items and are left out (a deleted user keeps "
                f"its group memberships for 30 days): {shown}")
        if disabled:
            shown = ", ".join(sorted(disabled)[:5]) + (" …" if len(disabled) > 5 else "")
            stats.notes.append(
                f"{len(disabled)} member(s) have a disabled account in Entra ID (accountEnabled false) and are "
                + ("left out until it is enabled again" if remove
                   else "kept, as directory.entra.disabled_accounts = 'keep' says")
                + f": {shown}")
        stats.notes.extend(notes)

        # each group under the name it was asked for: an object id is the same in any case (and
        # the sync looks its members up by the name in sync.users_groups / admin_groups)
        snapshot = DirectorySnapshot(
            source="entra", groups={given: expanded[gid] for given, gid in zip(groups, configured, strict=True)},
            notes=tuple(stats.notes), changed=frozenset(changed))
        if in_dry_run():  # it records nothing: the next real run reads these changes again
            self.last = stats
            return snapshot
        # commit: every chunk read in this round, and drop chunks no longer needed
        try:
            for key, chunk in done.items():
                await self.store.put(STATE_PREFIX + key, chunk.to_json(), if_match=etags.get(key, ""))
                stats.commits += 1
            for key, chunk in chunks.items():
                if key not in done and key in etags and not (set(chunk.groups) & needed):
                    await self.store.delete(STATE_PREFIX + key)
        except ConflictError as exc:
            raise DirectoryError(
                "another read committed Entra delta state at the same time; this read is dropped, the "
                "next one reads again"
            ) from exc
        except StoreError as exc:
            raise DirectoryError(f"cannot write the Entra delta state: {exc}") from exc
        self.last = stats
        return snapshot

    async def _round(self, chunk: ChunkState, stats: ReadStats) -> _Round:
        fresh = chunk.delta_link is None
        result = await self.graph.delta_round(chunk.groups, chunk.delta_link)
        stats.rounds += 1
        if result.get("expired"):
            stats.resyncs += 1
            stats.notes.append(
                f"the delta token of {len(chunk.groups)} group(s) expired: full resync (a shrinking "
                "membership still passes the sync guard)"
            )
            fresh = True
            result = await self.graph.delta_round(chunk.groups, None)
            stats.rounds += 1
            if result.get("expired"):
                raise DirectoryError("Graph refused a fresh delta query as expired; try again later")
        link = result.get("delta_link")
        if not isinstance(link, str) or not link:
            raise DirectoryError("a /groups/delta round ended without an @odata.deltaLink")
        outcome = apply_round(chunk, list(result.get("entries") or ()), link, fresh=fresh)
        if outcome.incomplete:
            raise DirectoryError(
                "a full /groups/delta read lists members it cannot attribute, so the membership of "
                f"{len(chunk.groups)} group(s) is unknown and nothing is changed: " + "; ".join(outcome.notes))
        stats.notes.extend(outcome.notes)
        return _Round(outcome.chunk, fresh, outcome.seen, outcome.removed_groups)

    async def _resolve(self, chunks: list[ChunkState], groups: set[str], stats: ReadStats, *,
                       before: list[ChunkState]) -> None:
        unknown = unresolved_users(chunks, groups)
        if not unknown:
            return
        info: dict[str, tuple[str | None, str, bool | None]] = {}
        for uid, (username, display) in known_users([*before, *chunks]).items():
            if uid in unknown:
                info[uid] = (username, display or "", None)
        # a known user reused in another chunk keeps its disabled or deleted mark there (no lookup)
        marked = set(info) & {u for c in [*before, *chunks] for u in c.disabled_users}
        gone = set(info) & {u for c in [*before, *chunks] for u in c.deleted_users}
        unknown -= set(info)
        wanted = {gid: unknown & {u for u, v in s.users.items() if v[1] is None}
                  for c in chunks for gid, s in c.members.items()}
        info.update(await self._fetch(wanted, stats))
        fill_users(chunks, {k: [v[0], v[1]] for k, v in info.items()})
        off = marked | {u for u, v in info.items() if v[2] is False}
        for c in chunks:
            c.disabled_users |= off & {u for s in c.members.values() for u in s.users}
            c.deleted_users |= gone & {u for s in c.members.values() for u in s.users}
        missing = sorted(unknown - set(info))
        if missing:
            stats.notes.append(
                f"{len(missing)} member(s) the groups' delta lists were not returned by Graph's user lookup "
                f"(just created, or deleted just now): {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; "
                "they are skipped and looked up again at the next read")

    async def _refresh(self, done: Mapping[str, ChunkState], stored: set[str], stats: ReadStats) -> None:
        """Read the attributes of every member of the chunks whose last check is older than
        ``user_refresh``; a chunk stored for the first time was just read and counts as checked."""
        now = self.clock()
        due: list[ChunkState] = []
        for key, chunk in done.items():
            if key not in stored:
                chunk.users_checked = now.isoformat()
            elif self.user_refresh is not None and (
                    chunk.users_checked is None
                    or now - (stored_time(chunk.users_checked, "'users_checked'") or now) >= self.user_refresh):
                due.append(chunk)
        if not due:
            return
        wanted = {gid: {u for u, v in s.users.items() if v[1] is not None}
                  for c in due for gid, s in c.members.items()}
        info = await self._fetch(wanted, stats)
        # the fresh answer holds for the person in every chunk (a chunk made later is checked on
        # its own schedule): else one id would come to the sync under two usernames, or disabled
        # in one group and a member through another
        changed = refresh_users(done.values(), {k: [v[0], v[1]] for k, v in info.items()})
        # accountEnabled as Graph answers it; one it does not state (null) is no change
        off = {u for u, v in info.items() if v[2] is False}
        on = {u for u, v in info.items() if v[2] is True}
        # a member /users does not return: a deleted user keeps its group memberships (and the
        # groups' delta says nothing) while it is in deleted items, so ask there; one Graph holds
        # in neither place is unknown, which is no change
        missing = sorted(set().union(*wanted.values()) - set(info))
        gone = await self.graph.deleted_users(missing) if missing else set()
        stats.lookups += bool(missing)
        for c in due:
            c.users_checked = now.isoformat()
        for c in done.values():
            listed = {u for s in c.members.values() for u in s.users}
            c.deleted_users |= gone & listed
            c.disabled_users |= off & listed
            c.deleted_users -= set(info)  # returned again: restored
            c.disabled_users -= on  # enabled again
        stats.refreshed += len(info)
        stats.renamed += len(changed)
        if changed:
            stats.notes.append(
                f"{len(changed)} member(s) have another username in Entra ID than at the last check "
                f"(e.g. a renamed userPrincipalName): {', '.join(changed[:5])}{' …' if len(changed) > 5 else ''}")

    async def _fetch(self, wanted: Mapping[str, set[str]],
                     stats: ReadStats) -> dict[str, tuple[str | None, str, bool | None]]:
        """Attributes of the wanted users (group id → user ids): a group with more than
        GROUP_LISTING_THRESHOLD of them is listed (999 a page), the others are looked up in bulk."""
        everyone: set[str] = set().union(*wanted.values())
        info: dict[str, tuple[str | None, str, bool | None]] = {}
        rest: set[str] = set()
        for gid, users in wanted.items():
            users = users - set(info)
            if len(users) > GROUP_LISTING_THRESHOLD:
                listed = await self.graph.list_group_users(gid)
                stats.lookups += 1
                info.update({k: v for k, v in listed.items() if k in everyone})
            else:
                rest |= users
        rest -= set(info)
        if rest:
            info.update(await self.graph.lookup_users(sorted(rest)))
            stats.lookups += 1
        return info

    async def close(self) -> None:
        await self.graph.close()


@dataclass
class _Round:
    chunk: ChunkState
    fresh: bool
    seen: set[str]
    removed: set[str]


def _members(chunks: Mapping[str, ChunkState]) -> dict[str, GroupState]:
    out: dict[str, GroupState] = {}
    for c in chunks.values():
        out.update(c.members)
    return out
