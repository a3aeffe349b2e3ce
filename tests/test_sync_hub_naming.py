"""Review: a hub that names a created user otherwise than sync.naming (its authenticator's
username_map) gets a clear error every run, and no managed record for a user that is not there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hubpilot.loop import Outcome, Status
from hubpilot.sync import MANAGED_KEY
from tests.test_sync_real import World

pytestmark = pytest.mark.hub


async def test_a_hub_that_names_a_new_user_otherwise_fails_the_creation_clearly(
        hub_factory: Callable[..., Awaitable[Any]], tmp_path: Path) -> None:
    hub = await hub_factory(extra_config='c.Authenticator.username_map = {"review-bob": "review-robert"}')
    world = World(hub, tmp_path)
    try:
        world.people["bob"] = {"username": "review-bob", "name": "Bob"}
        world.groups["analysts"] = ["bob"]
        world.write()
        for _ in range(2):  # the first run and the next: the same clear error, no silent 'already exists'
            record = await world.run()
            assert record.outcome is Outcome.FAILED, record.render()
            create = [r for r in record.results if r.action.kind == "create_user"]
            assert [r.status for r in create] == [Status.FAILED], record.render()
            assert "sync.naming" in create[0].detail and "review-bob" in create[0].detail
            managed = (await world.store.get(MANAGED_KEY) or {}).get("users", {})
            assert "review-bob" not in managed
    finally:
        await world.close()
