"""Gaps found by a mutation review of the Graph delta reader (hubpilot/entra/delta.py,
hubpilot/entra/directory.py and the delta part of hubpilot/adapters/entra.py): each test here
failed against a small change of that code that a real bug could be. Through the real msgraph-sdk
against the HTTP-level Graph double, with the SQLite store (fixtures of tests/test_entra_graph.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.entra.directory import EntraDirectory
from tests.doubles.graph import GraphDouble
from tests.test_entra_graph import Clock, client, people, store

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

