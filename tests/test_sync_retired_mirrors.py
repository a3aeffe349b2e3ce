"""A hub group hubpilot mirrored before, whose directory group is no longer configured, keeps its
members (what it grants is the hub admin's to decide), but a person who leaves the directory
afterwards is taken out of it too: a removed person loses access, even through a retired mirror."""

from __future__ import annotations

import pytest

from hubpilot.loop import Outcome
from tests.fixtures.syncworld import World

pytestmark = pytest.mark.hub


async def test_a_leaver_is_removed_from_a_mirror_no_longer_configured(world: World) -> None:
    world.set("analysts", "alice", "bob")
    world.set("gpu", "bob", "carol")
    assert (await world.run()).outcome is Outcome.APPLIED
    gpu = f"{world.prefix}gpu"
    assert (await world.hub_state())["groups"][gpu] == sorted([world.user("bob"), world.user("carol")])

    world.policy = world.policy.model_copy(update={"users_groups": ["analysts"]})  # gpu is no longer synced
    kept = await world.run()
    assert kept.outcome is Outcome.APPLIED, kept.render()
    state = await world.hub_state()
    # carol left every synced group: deprovisioned, and out of the retired mirror too
    assert state["groups"][gpu] == [world.user("bob")]
    # bob is still a member of a synced group: the retired mirror keeps him (the admin's call)
    assert world.user("bob") in state["groups"][gpu]

    world.set("analysts", "alice")  # bob leaves the directory
    gone = await world.run()
    assert gone.outcome is Outcome.APPLIED, gone.render()
    assert (await world.hub_state())["groups"][gpu] == []
    assert (await world.run()).plan.empty  # type: ignore[union-attr]
