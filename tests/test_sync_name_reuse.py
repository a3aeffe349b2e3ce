"""A hub name reused by another directory entry (a recycled LDAP uid, an Entra UPN given to a new
employee) against a real JupyterHub and a file directory: the hub user, which holds the first
person's servers, tokens and (in z2jh) home volume, is never handed over to the second."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome
from hubpilot.ports.store import StoreError
from hubpilot.sync import MANAGED_KEY
from tests.fixtures.syncworld import World
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


async def test_a_reused_name_is_deprovisioned_for_the_leaver_and_held_from_the_newcomer(
        world: World, real_hub: RealHub) -> None:
    x = world.user("x")
    world.people["a"] = {"username": x, "name": "Ann"}
    world.people["keep"] = {"username": world.user("keep")}
    world.groups["analysts"] = ["a", "keep"]
    world.groups["gpu"] = ["a"]
    world.write()
    assert (await world.run()).outcome is Outcome.APPLIED
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][x]["directory_id"] == "a"
    await real_hub.spawn(x)
    async with real_hub.admin() as admin:
        r = await admin.post(f"/users/{x}/tokens", json={"note": "a's token"})
        assert r.status_code == 201, r.text

    # a leaves; another entry b carries the same username, in the same run
    del world.people["a"]
    world.people["b"] = {"username": x, "name": "Bea"}
    world.groups["analysts"] = ["b", "keep"]
    world.groups["gpu"] = ["b"]
    world.write()
    record = await world.run()
    assert record.outcome is Outcome.APPLIED, record.render()
    assert record.plan is not None
    counts = record.plan.counts()
    assert "manage_user" not in counts and "add_to_group" not in counts, record.render()
    assert {("revoke_tokens", x), ("deprovision", x)} <= {(a.kind, a.target) for a in record.plan.actions}
    (note,) = [n for n in record.plan.notes if "not handed over" in n]
    assert f"hub name {x!r} now belongs to directory entry b" in note and "id a" in note
    assert "deletes or renames" in note
    async with real_hub.admin() as admin:
        user = (await admin.get(f"/users/{x}")).json()
        tokens = (await admin.get(f"/users/{x}/tokens")).json()
    assert user["groups"] == []
    assert all(not s.get("ready") for s in user["servers"].values())
    assert tokens["api_tokens"] == []
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None
    assert managed["users"][x]["directory_id"] == "a" and managed["users"][x]["deprovisioned_at"]

    # every later run holds b too: the record stays a's
    world.client.reset_stats()
    again = await world.run()
    assert again.outcome is Outcome.APPLIED and again.plan is not None and again.plan.empty, again.render()
    assert any("not handed over" in n for n in again.plan.notes)
    assert world.client.stats["writes"] == 0
    assert (await world.store.get(MANAGED_KEY)) == managed

    # an admin deletes hub user x: the next run creates x for b, as for any newcomer
    async with real_hub.admin() as admin:
        assert (await admin.delete(f"/users/{x}")).status_code == 204
    fresh = await world.run()
    assert fresh.outcome is Outcome.APPLIED and fresh.plan is not None, fresh.render()
    assert fresh.plan.counts() == {"create_user": 1, "add_to_group": 2}, fresh.render()
    assert (await world.hub_state())["users"][x]["groups"] == sorted(
        [f"{world.prefix}analysts", f"{world.prefix}gpu"])
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None
    assert managed["users"][x]["directory_id"] == "b" and not managed["users"][x]["deprovisioned_at"]
    assert (await world.run()).plan.empty  # type: ignore[union-attr]



async def test_a_renamed_person_whose_old_name_two_other_entries_claim_is_renamed(
        world: World, real_hub: RealHub) -> None:
    """a (hub user x, a running server, a token) is renamed y in the directory, while two other
    entries, b and c, both carry x (a clash). The hub user x is a's: it is renamed to y (its server
    stopped first), keeping a's groups and token; no empty y is made beside it, and once the clash
    is fixed the entry keeping x gets a new hub user, nobody is deprovisioned."""
    x, y = world.user("x"), world.user("y")
    world.people["a"] = {"username": x, "name": "Ann"}
    world.set("gpu", "keep")
    world.groups["analysts"] = ["a"]
    world.groups["gpu"] = ["a", "keep"]
    world.write()
    assert (await world.run()).outcome is Outcome.APPLIED
    await real_hub.spawn(x)
    async with real_hub.admin() as admin:
        r = await admin.post(f"/users/{x}/tokens", json={"note": "a's token"})
        assert r.status_code == 201, r.text
        token_id = r.json()["id"]

    world.people["a"]["username"] = y
    world.people["b"] = {"username": x, "name": "Bea"}
    world.people["c"] = {"username": x.upper(), "name": "Cem"}
    world.groups["analysts"] = ["a", "b", "c"]
    world.write()
    first = await world.run()
    assert first.outcome is Outcome.APPLIED and first.plan is not None, first.render()
    assert ("stop_servers", x) in {(a.kind, a.target) for a in first.plan.actions}, first.render()
    assert "create_user" not in first.plan.counts() and "deprovision" not in first.plan.counts(), first.render()
    assert any(f"{x!r} is claimed by several directory entries" in n for n in first.plan.notes)
    for _ in range(20):  # the stop may still be pending: the rename waits for it
        record = await world.run()
        assert record.plan is not None
        if "rename_user" in record.plan.counts():
            break
        await asyncio.sleep(0.5)
    assert record.outcome is Outcome.APPLIED and ("rename_user", x) in {
        (a.kind, a.target) for a in record.plan.actions}, record.render()
    state = await world.hub_state()
    assert x not in state["users"]
    assert state["users"][y]["groups"] == sorted([f"{world.prefix}analysts", f"{world.prefix}gpu"])
    async with real_hub.admin() as admin:
        tokens = (await admin.get(f"/users/{y}/tokens")).json()["api_tokens"]
    assert token_id in {t["id"] for t in tokens}  # a's own hub user, renamed
    assert (await world.run()).plan.empty  # type: ignore[union-attr]  # nothing for x while the clash lasts

    world.groups["analysts"] = ["a", "b"]  # c leaves: b keeps x
    world.write()
    fixed = await world.run()
    assert fixed.outcome is Outcome.APPLIED and fixed.plan is not None, fixed.render()
    assert fixed.plan.counts() == {"create_user": 1, "add_to_group": 1}, fixed.render()
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][x]["directory_id"] == "b"
    assert managed["users"][y]["directory_id"] == "a" and not managed["users"][y]["deprovisioned_at"]


class DiesAfterTheFirstRecord(SqliteStore):
    """Every write of the managed records after the first fails: a run killed between the record
    it writes ahead of the hub (the creation's) and its final one."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.writes = 0

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        if key == MANAGED_KEY:
            self.writes += 1
            if self.writes > 1:
                raise StoreError("killed before the final record")
        return await super().put(key, doc, if_match=if_match)


async def test_a_run_killed_after_creating_a_user_has_recorded_whose_user_it_is(
        world: World, tmp_path: Path) -> None:
    """The record written ahead of a creation carries the person's directory id: a run killed
    before its final record, whose person leaves before the next run, leaves a hub user that is
    still theirs, and a newcomer who carries the name later is not handed it."""
    x = world.user("x")
    world.set("analysts", "keep")
    assert (await world.run()).outcome is Outcome.APPLIED
    world.people["a"] = {"username": x, "name": "Ann"}
    world.groups["analysts"] = ["a", "keep"]
    world.write()
    healthy = world.store
    world.store = DiesAfterTheFirstRecord(str(tmp_path / "state.sqlite3"))
    try:
        dying = await world.run()
        assert world.store.writes > 1, "the final record was never attempted"
        assert dying.outcome is not Outcome.APPLIED, dying.render()
    finally:
        await world.store.close()
        world.store = healthy
    assert (await world.hub_state())["users"][x]["groups"] == [f"{world.prefix}analysts"]

    # a leaves before any other run
    del world.people["a"]
    world.groups["analysts"] = ["keep"]
    world.write()
    gone = await world.run()
    assert gone.outcome is Outcome.APPLIED, gone.render()
    assert ("deprovision", x) in {(a.kind, a.target) for a in gone.plan.actions}, gone.render()
    assert (await world.hub_state())["users"][x]["groups"] == []

    # b, another entry, carries the name now: the hub user holds a's servers, tokens and volume
    world.people["b"] = {"username": x, "name": "Bea"}
    world.groups["analysts"] = ["b", "keep"]
    world.write()
    later = await world.run()
    assert later.outcome is Outcome.APPLIED and later.plan is not None, later.render()
    counts = later.plan.counts()
    assert "manage_user" not in counts and "add_to_group" not in counts, later.render()
    assert any("not handed over" in n for n in later.plan.notes), later.render()
    assert (await world.hub_state())["users"][x]["groups"] == []
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][x]["directory_id"] == "a", managed


@pytest.mark.parametrize("gone", ["by hand", "sync.delete_users"])
async def test_a_leaver_whose_name_a_newcomer_gets_still_counts_in_the_removal_window(
        real_hub: RealHub, tmp_path: Path, gone: str) -> None:
    """a leaves; their hub user x is deleted (by an admin, or by sync.delete_users after a 0 h
    grace); b, another entry, carries x and gets a new hub user x. a's removal is within the
    window all the same: with max_removals = 1, the run that removes one more (2 in all) is
    refused, and the removal stays recorded while b's record holds the name."""
    deleting = gone == "sync.delete_users"
    world = World(real_hub, tmp_path, max_removals=1, delete_users=deleting, delete_grace_hours=0.0)
    try:
        x = world.user("x")
        world.people["a"] = {"username": x, "name": "Ann"}
        world.set("analysts", "keep", "stay")
        world.groups["analysts"] = ["a", "keep", "stay"]
        world.write()
        assert (await world.run()).outcome is Outcome.APPLIED
        del world.people["a"]
        world.groups["analysts"] = ["keep", "stay"]
        world.write()
        left = await world.run()
        assert left.outcome is Outcome.APPLIED and ("deprovision", x) in {
            (a.kind, a.target) for a in left.plan.actions}, left.render()
        if deleting:
            assert (await world.run()).plan.counts() == {"delete_user": 1}
        else:
            async with real_hub.admin() as admin:
                assert (await admin.delete(f"/users/{x}")).status_code == 204

        world.people["b"] = {"username": x, "name": "Bea"}
        world.groups["analysts"] = ["b", "keep", "stay"]
        world.write()
        fresh = await world.run()
        assert fresh.outcome is Outcome.APPLIED and fresh.plan is not None, fresh.render()
        assert fresh.plan.counts() == {"create_user": 1, "add_to_group": 1}, fresh.render()
        managed = await world.store.get(MANAGED_KEY)
        assert managed is not None and managed["users"][x]["directory_id"] == "b"
        if deleting:  # the leaver's removal under deleted, with whose it is
            assert managed["deleted_ids"] == {x: "a"} and x in managed["deleted"]
        else:  # the leaver's record went to b: its removal is kept apart, with a's id
            (kept,) = managed["replaced_removals"]
            assert (kept["name"], kept["directory_id"]) == (x, "a")

        world.groups["analysts"] = ["b", "stay"]  # keep leaves: a's removal and this one, 2 > 1
        world.write()
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert refused.plan is not None and refused.plan.facts["recent_removals"] == 1
        assert refused.refusal[0].startswith("the plan removes 1 users and sync removed 1 in the last 24 h"), \
            refused.refusal
    finally:
        await world.close()


@pytest.mark.parametrize("gone", ["by hand", "sync.delete_users"])
async def test_a_leavers_loss_of_a_group_is_no_group_loss_of_the_newcomer_who_gets_the_name(
        real_hub: RealHub, tmp_path: Path, gone: str) -> None:
    """a, in gpu, leaves (a removal; their removal from gpu is no group loss: README); their hub
    user x is deleted and b, another entry, in analysts but not gpu, gets a new hub user x. b never
    was in gpu, so a's removal from it is no group loss of x now: the next run taking one person
    out of gpu (1 ≤ sync.group_removal_floor = 1) applies; counting a's stamp for b made it 2 of 5
    (40 % > 30 %) and refused it."""
    deleting = gone == "sync.delete_users"
    world = World(real_hub, tmp_path, group_removal_floor=1, max_removal_percent=30.0,
                  delete_users=deleting, delete_grace_hours=0.0)
    try:
        x = world.user("x")
        world.people["a"] = {"username": x, "name": "Ann"}
        stayers = ["g1", "g2", "g3", "g4"]
        world.set("analysts", *stayers)
        world.set("gpu", *stayers)
        world.groups["analysts"] = ["a", *stayers]
        world.groups["gpu"] = ["a", *stayers]
        world.write()
        assert (await world.run()).outcome is Outcome.APPLIED
        world.groups["analysts"] = stayers
        world.groups["gpu"] = stayers
        world.write()
        left = await world.run()
        assert left.outcome is Outcome.APPLIED and left.plan is not None, left.render()
        assert ("deprovision", x) in {(a.kind, a.target) for a in left.plan.actions}, left.render()
        if deleting:
            assert (await world.run()).plan.counts() == {"delete_user": 1}
        else:
            async with real_hub.admin() as admin:
                assert (await admin.delete(f"/users/{x}")).status_code == 204

        world.people["b"] = {"username": x, "name": "Bea"}
        world.groups["analysts"] = ["b", *stayers]
        world.write()
        fresh = await world.run()
        assert fresh.outcome is Outcome.APPLIED and fresh.plan is not None, fresh.render()
        assert fresh.plan.counts() == {"create_user": 1, "add_to_group": 1}, fresh.render()
        assert (await world.hub_state())["groups"][f"{world.prefix}gpu"] == sorted(world.user(s) for s in stayers)

        world.groups["gpu"] = stayers[1:]  # g1 loses gpu, staying a hub user: 1 loss, at the floor
        world.write()
        after = await world.run()
        assert after.outcome is Outcome.APPLIED, (after.refusal, after.render())
        assert after.plan is not None and "recent_group_removals" not in after.plan.facts, after.plan.facts
    finally:
        await world.close()
