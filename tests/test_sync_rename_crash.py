"""A sync that dies between renaming a hub user and recording the rename (here: the state write
fails, as it would for a process killed at that point) leaves records that still follow the
person: when they leave the directory afterwards, the renamed hub user loses their groups."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome
from hubpilot.ports.store import StoreError
from hubpilot.sync import MANAGED_KEY
from tests.fixtures.syncworld import World

pytestmark = pytest.mark.hub


class DiesBeforeRenameRecord(SqliteStore):
    """Every write of the managed records that no longer holds ``old`` fails: the record a
    completed rename implies is never written."""

    def __init__(self, path: str, old: str) -> None:
        super().__init__(path)
        self.old = old
        self.refused = 0

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        if key == MANAGED_KEY and self.old not in doc.get("users", {}):
            self.refused += 1
            raise StoreError("killed before the rename was recorded")
        return await super().put(key, doc, if_match=if_match)


async def test_a_person_who_leaves_after_an_unrecorded_rename_loses_their_groups(world: World, tmp_path: Path) -> None:
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob, robert = world.user("bob"), world.user("robert")

    world.people["bob"]["username"] = robert  # same directory entry, another name
    world.write()
    healthy = world.store
    world.store = DiesBeforeRenameRecord(str(tmp_path / "state.sqlite3"), bob)
    try:
        dying = await world.run()
        assert world.store.refused, "the rename's record was never attempted"
        assert dying.outcome is not Outcome.APPLIED, dying.render()
    finally:
        await world.store.close()
        world.store = healthy
    state = await world.hub_state()
    assert bob not in state["users"] and state["users"][robert]["groups"] == [f"{world.prefix}analysts"]

    world.set("analysts", "alice")  # robert leaves before any other run
    gone = await world.run()
    assert gone.outcome is Outcome.APPLIED, gone.render()
    assert (await world.hub_state())["users"][robert]["groups"] == []
    managed = await world.store.get(MANAGED_KEY)
    assert managed is not None and managed["users"][robert]["deprovisioned_at"]
    assert (await world.run()).plan.empty  # type: ignore[union-attr]


async def test_a_rename_that_failed_before_the_hub_call_is_retried(world: World, tmp_path: Path) -> None:
    """The rename is recorded ahead of the hub call: when the run stops before the call, the next
    run still renames (it does not create the new name and drop the old one)."""
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob, robert = world.user("bob"), world.user("robert")
    world.people["bob"]["username"] = robert
    world.write()
    saved = await world.store.get(MANAGED_KEY)
    assert saved is not None
    # the state a run killed just after its pre-record leaves: both names recorded, the hub unchanged
    users = dict(saved["users"])
    users[robert] = dict(users[bob])
    await world.store.put(MANAGED_KEY, {**saved, "users": users})
    again = await world.run()
    assert again.plan is not None and again.plan.counts() == {"rename_user": 1}, again.render()
    assert again.outcome is Outcome.APPLIED
    state = await world.hub_state()
    assert bob not in state["users"] and state["users"][robert]["groups"] == [f"{world.prefix}analysts"]
    after = await world.store.get(MANAGED_KEY)
    assert after is not None and bob not in after["users"] and not after["users"][robert].get("deprovisioned_at")
