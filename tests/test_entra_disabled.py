"""Disabled Entra accounts (``accountEnabled = false``) lose hub access: the Entra directory through
the real msgraph-sdk against the HTTP-level Graph double (tests/doubles/graph.py), and end to end
through the real sync capability and a real JupyterHub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from hubpilot.adapters.entra import StaticTokenCredential
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.entra.directory import STATE_PREFIX, EntraDirectory
from hubpilot.loop import Outcome
from hubpilot.ports.directory import DirectoryError
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.entra import build_entra_directory, use_credential
from tests.doubles.graph import TOKEN, GraphDouble
from tests.fixtures.webhook import Webhook
from tests.realhub import RealHub
from tests.test_entra_graph import Clock, client, people, state_docs
from tests.test_entra_hub import Tenant


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.sqlite3")
    yield s
    await s.close()


def ids(snapshot: Any, gid: str) -> set[str]:
    return {m.id for m in snapshot.groups[gid]}


async def one_group(fresh: GraphDouble, store: SqliteStore, n: int, **kw: Any,
                    ) -> tuple[str, list[str], Clock, EntraDirectory]:
    g = fresh.add_group()
    ps = people(fresh, n, "d")
    fresh.add_members(g, ps)
    clock = Clock()
    d = EntraDirectory(client(fresh), store, user_refresh=timedelta(hours=24), clock=clock, **kw)
    await d.read([g])
    return g, ps, clock, d


async def test_a_disabled_member_leaves_at_the_username_refresh_and_comes_back_when_enabled(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A group's delta does not report a disabled account: the periodic refresh reads
    accountEnabled with the usernames; a disabled member is no member from then on, through a full
    resync too, and is the same member again (same id, same username) once enabled."""
    g, ps, clock, d = await one_group(fresh, store, 3)
    upn = fresh.users[ps[0]]["userPrincipalName"]
    fresh.users[ps[0]]["accountEnabled"] = False
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([g]), g) == set(ps)  # not due yet: the delta says nothing
    clock.now += timedelta(hours=24)
    fresh.reset_log()
    snap = await d.read([g])
    assert ids(snap, g) == set(ps[1:])
    (lookup,) = fresh.requests("/users", "GET")
    assert "accountEnabled" in lookup.query["$select"].split(",")
    assert any("disabled" in n and ps[0] in n for n in snap.notes), snap.notes
    (doc,) = (await state_docs(store)).values()
    assert doc["disabled_users"] == [ps[0]]
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([g]), g) == set(ps[1:])  # between refreshes
    fresh.expire_tokens()  # a full read lists them as a member again: still none
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([g]), g) == set(ps[1:]) and d.last.resyncs == 1

    fresh.users[ps[0]]["accountEnabled"] = True
    clock.now += timedelta(hours=24)
    back = await d.read([g])
    assert ids(back, g) == set(ps)
    assert {m.username for m in back.groups[g] if m.id == ps[0]} == {upn}
    (doc,) = (await state_docs(store)).values()
    assert doc["disabled_users"] == []
    await d.close()


async def test_a_disabled_newcomer_is_left_out_at_once_by_lookup_and_by_group_listing(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """Members seen for the first time are looked up with accountEnabled, in bulk and through a
    large group's listing alike."""
    g, ps, _, d = await one_group(fresh, store, 1)
    small = people(fresh, 2, "n")
    fresh.users[small[0]]["accountEnabled"] = False
    fresh.add_members(g, small)
    fresh.reset_log()
    snap = await d.read([g])
    assert ids(snap, g) == {ps[0], small[1]}
    assert fresh.requests("/users", "GET")

    big = fresh.add_group()
    many = people(fresh, 160, "m")
    fresh.users[many[5]]["accountEnabled"] = False
    fresh.add_members(big, many)
    fresh.reset_log()
    snap = await d.read([g, big])
    listing = fresh.requests(f"/groups/{big}/members/graph.user", "GET")
    assert listing and "accountEnabled" in listing[0].query["$select"].split(",")
    assert ids(snap, big) == set(many) - {many[5]}
    assert ids(snap, g) == {ps[0], small[1]}
    await d.close()


async def test_unknown_is_never_disabled(fresh: GraphDouble, store: SqliteStore) -> None:
    """A member the lookup does not return, or returns without accountEnabled, stays; a failed
    lookup fails the read and commits nothing."""
    g, ps, clock, d = await one_group(fresh, store, 3)
    fresh.users[ps[0]]["accountEnabled"] = False
    clock.now += timedelta(hours=24)
    assert ids(await d.read([g]), g) == set(ps[1:])

    del fresh.users[ps[0]]["accountEnabled"]  # Graph answers null: unknown, no change either way
    del fresh.users[ps[1]]["accountEnabled"]
    clock.now += timedelta(hours=24)
    assert ids(await d.read([g]), g) == set(ps[1:])
    gone = fresh.users.pop(ps[0])  # neither returned nor in deleted items: unknown, no change
    clock.now += timedelta(hours=24)
    assert ids(await d.read([g]), g) == set(ps[1:])
    fresh.users[ps[0]] = {**gone, "accountEnabled": True}
    clock.now += timedelta(hours=24)
    assert ids(await d.read([g]), g) == set(ps)

    before = await state_docs(store)
    fresh.users[ps[2]]["accountEnabled"] = False
    clock.now += timedelta(hours=24)
    fresh.fail_paths["/users"] = 503
    with pytest.raises(DirectoryError):
        await d.read([g])
    fresh.fail_paths.clear()
    assert await state_docs(store) == before
    await d.close()


async def test_keep_is_the_previous_behaviour_and_the_setting_is_checked(
        fresh: GraphDouble, store: SqliteStore) -> None:
    g = fresh.add_group()
    ps = people(fresh, 2, "k")
    fresh.users[ps[0]]["accountEnabled"] = False
    fresh.add_members(g, ps)

    def settings(value: str) -> Settings:
        return Settings(directory={"kind": "entra", "entra": {
            "graph_base_url": fresh.base_url, "retry_delay_seconds": 0, "disabled_accounts": value}},
            sync={"users_groups": [g]})

    ctx = Context(settings=settings("keep"), store=store)
    use_credential(ctx, StaticTokenCredential(TOKEN))
    d = build_entra_directory(ctx)
    try:
        snap = await d.read([g])
        assert ids(snap, g) == set(ps)
        assert any("disabled" in n and "disabled_accounts" in n for n in snap.notes), snap.notes
    finally:
        await d.close()
        await ctx.close()
    with pytest.raises(pydantic.ValidationError, match="disabled_accounts"):
        settings("delete")


async def test_state_of_the_previous_release_loads_and_is_checked_at_the_first_read(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A chunk written by the previous release has no disabled_users: none is known, so its members
    are read afresh at the first read (a disabled one leaves then); what is written keeps the
    previous release's shape (members as [username, display name]), the new key beside it."""
    g, ps, clock, d = await one_group(fresh, store, 2)
    (key,) = (await state_docs(store)).keys()
    doc, etag = await store.get_with_etag(key)  # type: ignore[misc]
    del doc["disabled_users"]
    await store.put(key, doc, if_match=etag)
    fresh.users[ps[0]]["accountEnabled"] = False
    clock.now += timedelta(minutes=15)
    fresh.reset_log()
    assert ids(await d.read([g]), g) == {ps[1]}
    assert [r.path for r in fresh.log] == ["/groups/delta", "/users"]
    written = (await state_docs(store))[key]
    assert written["disabled_users"] == [ps[0]]
    assert all(isinstance(v, list) and len(v) == 2 for v in written["members"][g]["users"].values())
    assert set(written) == {"groups", "delta_link", "members", "users_checked", "deleted_users", "disabled_users"}
    await d.close()


# --- end to end: a real hub --------------------------------------------------------------------

@pytest.mark.hub
async def test_disabled_accounts_are_deprovisioned_through_the_guard_and_come_back_when_enabled(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    t = Tenant(graph, real_hub, webhook, max_removals=1)
    clock = Clock()
    t.ctx.clock = clock
    ana, ben, cy = t.person("ana"), t.person("ben"), t.person("cy")
    graph.add_members(t.users_group, [ana, ben, cy])
    graph.add_member(t.admin_group, ben)
    first = await t.sync()
    assert first.outcome is Outcome.APPLIED, first.render()
    async with real_hub.admin() as admin:
        r = await admin.post(f"/users/{t.name('ben')}/tokens", json={"note": "ben's token"})
        assert r.status_code == 201, r.text

    graph.users[ben]["accountEnabled"] = False
    graph.users[cy]["accountEnabled"] = False
    clock.now += timedelta(minutes=15)
    assert (await t.sync()).outcome is Outcome.APPLIED  # not due yet: no change
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben"), t.name("cy")]
    clock.now += timedelta(hours=24)
    refused = await t.sync()  # a mass disable is refused like a mass removal
    assert refused.outcome is Outcome.REFUSED and refused.plan is not None, refused.render()
    assert any("sync.max_removals" in r for r in refused.refusal)
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben"), t.name("cy")]
    approved = await t.ctx.runner.approve(t.ctx.capability("sync"), refused.plan.id, actor="admin")
    assert approved.outcome is Outcome.APPLIED, approved.render()
    assert await t.hub_state() == {"admins": [], "users": [t.name("ana")]}
    async with real_hub.admin() as admin:
        tokens = (await admin.get(f"/users/{t.name('ben')}/tokens")).json()
    assert tokens["api_tokens"] == []

    graph.users[ben]["accountEnabled"] = True
    clock.now += timedelta(hours=24)
    back = await t.sync()
    assert back.outcome is Outcome.APPLIED, back.render()
    assert await t.hub_state() == {"admins": [t.name("ben")], "users": [t.name("ana"), t.name("ben")]}
    docs = await t.ctx.store.list(STATE_PREFIX)
    assert sorted(u for doc in docs.values() for u in doc["disabled_users"]) == [cy]


async def test_a_disabled_member_known_from_another_chunk_stays_out_of_a_group_read_first_now(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A member already known (from a group read before) is not looked up again when another group
    lists it first: its disabled mark goes with it, also once the first group is no longer read."""
    g, ps, clock, d = await one_group(fresh, store, 2)
    fresh.users[ps[0]]["accountEnabled"] = False
    clock.now += timedelta(hours=24)
    assert ids(await d.read([g]), g) == {ps[1]}
    other = fresh.add_group()
    fresh.add_members(other, ps)
    fresh.reset_log()
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([other]), other) == {ps[1]}
    assert not fresh.requests("/users")  # both known: no lookup
    await d.close()


async def test_a_deleted_member_known_from_another_chunk_stays_out_of_a_group_read_first_now(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """The same for a member in deleted items: a group newly configured (read first now, its
    membership kept by the deleted user) does not bring it back as a member."""
    g, ps, clock, d = await one_group(fresh, store, 2)
    other = fresh.add_group()
    fresh.add_members(other, ps)  # a member of both before the deletion
    fresh.soft_delete_user(ps[0])
    clock.now += timedelta(hours=24)
    assert ids(await d.read([g]), g) == {ps[1]}
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([other]), other) == {ps[1]}
    await d.close()
