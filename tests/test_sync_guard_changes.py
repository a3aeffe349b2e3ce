"""Review of the sync's safety rules against the real hub: configuration changes and directory
events that would touch many people at once are refused by the guard like a mass removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubpilot.loop import Outcome
from tests.realhub import RealHub
from tests.test_sync_real import World

pytestmark = pytest.mark.hub


async def test_a_naming_change_that_renames_everyone_is_refused_by_the_share_limit(
        real_hub: RealHub, tmp_path: Path) -> None:
    """Turning on strip_domain (or any naming change) gives every person a new name: a rename of
    all managed users is refused like their removal would be, though fewer than max_removals."""
    world = World(real_hub, tmp_path, max_removal_percent=20.0)
    try:
        shorts = [f"p{i}" for i in range(5)]
        for s in shorts:
            world.people[s] = {"username": f"{world.user(s)}@example.org"}
        world.groups["analysts"] = shorts
        world.write()
        assert (await world.run()).outcome is Outcome.APPLIED
        world.policy = world.policy.model_copy(
            update={"naming": world.policy.naming.model_copy(update={"strip_domain": True})})
        refused = await world.run()
        assert refused.outcome is Outcome.REFUSED, refused.render()
        assert any("renames 5 of 5 managed users" in r for r in refused.refusal), refused.refusal
        users = (await world.hub_state())["users"]
        assert sorted(users) == sorted(f"{world.user(s)}@example.org" for s in shorts)  # nothing renamed
        assert refused.plan is not None
        approved = await world.runner().approve(world.capability(), refused.plan.id, actor="admin")
        assert approved.outcome is Outcome.APPLIED, approved.render()
        assert sorted((await world.hub_state())["users"]) == sorted(world.user(s) for s in shorts)
    finally:
        await world.close()

