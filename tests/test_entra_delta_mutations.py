"""Gaps found by a mutation review of the Graph delta reader (hubpilot/entra/delta.py,
hubpilot/entra/directory.py and the delta part of hubpilot/adapters/entra.py): each test here
failed against a small change of that code that a real bug could be. Through the real msgraph-sdk
against the HTTP-level Graph double, with the SQLite store (fixtures of tests/test_entra_graph.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.entra.directory import STATE_PREFIX, EntraDirectory
from hubpilot.ports.directory import DirectoryError
from tests.doubles.graph import GraphDouble
from tests.test_entra_graph import Clock, client, people, store
from tests.test_entra_hub import DryRunAtCommit

__all__ = ["store"]  # the fixture, imported for pytest


def usernames(snapshot: Any, gid: str) -> dict[str, str | None]:
    return {m.id: m.username for m in snapshot.groups[gid]}


async def test_a_fresh_read_of_a_member_holds_for_every_group_of_every_chunk(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A group configured later is read in its own chunk, its members' attributes checked on
    their own schedule. A person in both groups renamed (or disabled) in Entra: the refresh due
    for the first chunk reads them afresh, and that answer holds for the person in every group.
    Before, the other chunk kept the old username until its own refresh, so one directory id came
    to the sync under two names in one snapshot (the new name a new hub user, the old one kept
    in the other group), and a disabled account stayed a member through the other group."""
    first, later = fresh.add_group(), fresh.add_group()
    renamed, disabled, other = people(fresh, 3, "x")
    fresh.add_members(first, [renamed, disabled, other])
    clock = Clock()
    d = EntraDirectory(client(fresh), store, user_refresh=timedelta(hours=24), clock=clock)
    await d.read([first])
    clock.now += timedelta(hours=12)
    fresh.add_members(later, [renamed, disabled])
    await d.read([first, later])  # a second chunk, its users checked now

    fresh.users[renamed]["userPrincipalName"] = "renamed-x@example.org"
    fresh.users[disabled]["accountEnabled"] = False
    clock.now += timedelta(hours=12)  # the first chunk's refresh is due, the later one's is not
    snap = await d.read([first, later])
    assert d.last.renamed == 1
    assert usernames(snap, first) == {renamed: "renamed-x@example.org",
                                      other: fresh.users[other]["userPrincipalName"]}
    assert usernames(snap, later) == {renamed: "renamed-x@example.org"}
    await d.close()


async def test_a_device_removed_from_the_group_is_no_longer_counted_as_skipped(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """Members that are neither users nor groups (a device) are reported as skipped; one removed
    from the group (members@delta with @removed, type device) is no longer counted."""
    g = fresh.add_group()
    (p,) = people(fresh, 1, "dev")
    fresh.add_member(g, p)
    device = str(uuid.uuid4())
    fresh.add_member(g, device, "others")
    d = EntraDirectory(client(fresh), store)
    first = await d.read([g])
    assert {m.id for m in first.groups[g]} == {p}
    assert any("1 member(s) that are neither users nor groups" in n for n in first.notes)
    fresh.remove_member(g, device, "others")
    second = await d.read([g])
    assert {m.id for m in second.groups[g]} == {p}
    assert not any("neither users nor groups" in n for n in second.notes)
    await d.close()


async def test_a_read_whose_state_another_read_committed_meanwhile_fails_and_keeps_that_state(
        fresh: GraphDouble, tmp_path: Path) -> None:
    """Two hosts read the same groups into one state store (a Functions instance and the CLI): the
    one that commits second read the state before the other's commit (none yet, the first time),
    so its conditional write fails and the read with it; the other's deltaLink and members stay
    as committed."""
    g = fresh.add_group()
    ps = people(fresh, 3, "race")
    fresh.add_members(g, ps[:2])
    shared = DryRunAtCommit(tmp_path / "shared.sqlite3")
    slow, quick = EntraDirectory(client(fresh), shared), EntraDirectory(client(fresh), shared)
    shared.hook = lambda: quick.read([g])  # both read first: the state is new to both
    with pytest.raises(DirectoryError, match="another read committed"):
        await slow.read([g])
    assert {m.id for m in shared.dry.groups[g]} == set(ps[:2])
    await slow.read([g])
    fresh.add_member(g, ps[2])
    shared.hook = lambda: quick.read([g])  # runs in full just before ``slow`` commits
    with pytest.raises(DirectoryError, match="another read committed"):
        await slow.read([g])
    assert {m.id for m in shared.dry.groups[g]} == set(ps)
    (doc,) = (await shared.list(STATE_PREFIX)).values()
    assert set(doc["members"][g]["users"]) == set(ps)
    fresh.remove_member(g, ps[0])
    assert {m.id for m in (await slow.read([g])).groups[g]} == set(ps[1:])  # on from quick's deltaLink
    await slow.close()
    await quick.close()
    await shared.close()


async def test_up_to_150_newcomers_of_a_group_are_looked_up_in_bulk_more_are_listed(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """docs/entra.md: new users are looked up 15 a request; for more than 150 new users in one
    group the group's users are listed instead. 150 are still looked up (ten requests)."""
    g = fresh.add_group()
    ps = people(fresh, 150, "t")
    fresh.add_members(g, ps)
    d = EntraDirectory(client(fresh), store)
    snap = await d.read([g])
    assert len(snap.groups[g]) == 150 and all(m.username for m in snap.groups[g])
    assert not fresh.requests(f"/groups/{g}/members") and len(fresh.requests("/users", "GET")) == 10
    await d.close()

    other = fresh.add_group()
    fresh.add_members(other, people(fresh, 151, "u"))
    fresh.reset_log()
    d = EntraDirectory(client(fresh), store)
    snap = await d.read([other])
    assert len(snap.groups[other]) == 151
    assert len(fresh.requests(f"/groups/{other}/members", "GET")) == 1 and not fresh.requests("/users")
    await d.close()


async def test_newcomers_a_large_groups_listing_named_are_not_looked_up_again_for_a_small_group(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """Two groups read first in one chunk: the large one is listed, and the newcomers it shares
    with the small one (read before it in the chunk) need no lookup of their own."""
    small, big = sorted(str(uuid.uuid4()) for _ in range(2))
    fresh.add_group(small)
    fresh.add_group(big)
    ps = people(fresh, 160, "s")
    fresh.add_members(big, ps)
    fresh.add_members(small, ps[:5])
    d = EntraDirectory(client(fresh), store)
    snap = await d.read([small, big])
    assert len(snap.groups[small]) == 5 and len(snap.groups[big]) == 160
    assert [r.path for r in fresh.log if "/delta" not in r.path] == [f"/groups/{big}/members/graph.user"]
    await d.close()


async def test_only_groups_an_incremental_round_listed_count_as_changed(fresh: GraphDouble, store: SqliteStore) -> None:
    """docs/entra.md: the plan's changed_groups are the groups whose changes the delta query
    listed in that read; a group read in full (the first time, after an expired token) is not
    among them, so a notification for it is re-checked."""
    g = fresh.add_group()
    ps = people(fresh, 2, "ch")
    fresh.add_member(g, ps[0])
    d = EntraDirectory(client(fresh), store)
    assert not (await d.read([g])).changed  # the first read: in full
    fresh.add_member(g, ps[1])
    assert (await d.read([g])).changed == {g}
    fresh.add_member(g, fresh.add_user())
    fresh.expire_tokens()
    snap = await d.read([g])
    assert d.last.resyncs == 1 and not snap.changed
    await d.close()
