"""A hub name reused by another directory entry (a recycled LDAP uid, an Entra UPN given to a new
employee) against a real JupyterHub and a file directory: the hub user, which holds the first
person's servers, tokens and (in z2jh) home volume, is never handed over to the second."""

from __future__ import annotations

import pytest

from hubpilot.loop import Outcome
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
