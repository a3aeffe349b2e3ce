"""Stored documents from older and newer hubpilot versions, and damaged ones: each loads, or fails
with a ValueError that says what is wrong — never a crash later in plan or apply, never fewer
members than stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hubpilot.entra.delta import ChunkState, GroupState
from hubpilot.loop import Outcome
from hubpilot.scale.forecast import Forecast, ForecastPolicy, learn
from hubpilot.scale.plan import Memory
from hubpilot.sync import MANAGED_KEY
from hubpilot.sync.plan import ManagedUser
from tests.fixtures.syncworld import World

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NAIVE = "2026-11-20T12:00:00"  # a time without offset: UTC, as audit entries read it


# --- managed-user records --------------------------------------------------------------------------
def test_managed_record_of_every_shape_loads() -> None:
    first = ManagedUser.from_json({"since": "2026-01-01T00:00:00+00:00", "deprovisioned_at": None})
    assert first.active and first.directory_id is None  # before directory ids were kept
    newer = ManagedUser.from_json({"since": "2026-01-01T00:00:00+00:00", "deprovisioned_at": None,
                                   "directory_id": "x", "source": "ldap"})
    assert newer.directory_id == "x"
    naive = ManagedUser.from_json({"since": NAIVE, "deprovisioned_at": NAIVE})
    assert naive.deprovisioned_at is not None and NOW - naive.deprovisioned_at == timedelta(days=5)


@pytest.mark.parametrize("record", [
    None, [], "x", {}, {"since": 5}, {"since": "yesterday"}, {"since": NAIVE, "deprovisioned_at": 7},
    {"since": NAIVE, "directory_id": ["a"]}, {"since": NAIVE, "directory_id": {"a": 1}},
])
def test_damaged_managed_record_is_a_value_error(record: Any) -> None:
    with pytest.raises(ValueError):
        ManagedUser.from_json(record)


@pytest.mark.parametrize("doc", [
    {"users": {"x": {"since": NAIVE, "directory_id": ["a"]}}},
    {"users": {"x": {"since": NAIVE, "deprovisioned_at": True}}},
    {"users": None},
    {"users": ["x"]},
    {"users": {}, "groups": "analysts"},
    {"users": {}, "groups": [1]},
    {"users": {}, "deleted": ["x"]},
    {"users": {}, "deleted": {"x": 5}},
    {"users": {}, "deleted": {"x": "last week"}},
    {"users": {}, "removals_approved_ahead": {"x": 1}},
    {"users": {}, "group_removed": ["x"]},
    {"users": {}, "group_removed": {"g": {"x": "yesterday"}}},
    {"users": {}, "group_removed": {"g": ["x"]}},
])
async def test_sync_with_damaged_managed_records_fails_clearly_and_changes_nothing(
        world: World, doc: dict[str, Any]) -> None:
    world.set("analysts", "ann")
    await world.store.put(MANAGED_KEY, doc)
    record = await world.run()
    assert record.outcome is Outcome.FAILED and record.error and MANAGED_KEY in record.error, record.render()
    assert not record.results and await world.store.get(MANAGED_KEY) == doc
    assert await world.hub_state() == {"users": {}, "groups": {}}


async def test_sync_reads_a_naive_deprovision_time_as_utc(world: World) -> None:
    world.policy = world.policy.model_copy(update={"delete_users": True, "delete_grace_hours": 1})
    world.set("analysts", "ann", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    doc = await world.store.get(MANAGED_KEY)
    assert doc is not None
    doc["users"][world.user("bob")]["deprovisioned_at"] = NAIVE  # written by hand, or another tool
    await world.store.put(MANAGED_KEY, doc)
    world.set("analysts", "ann")
    record = await world.run()
    assert record.outcome is Outcome.APPLIED, record.render()
    assert [a.kind for a in record.plan.actions if a.target == world.user("bob")] == ["delete_user"]


# --- scale memory and forecast ---------------------------------------------------------------------
def test_scale_memory_of_every_shape_loads() -> None:
    oldest = Memory.from_json({"empty_since": {"n1": "2026-11-25T11:00:00+00:00"}, "last_up": None,
                               "last_down": None})
    assert oldest.count is None and oldest.removed == {} and oldest.vm_kept is None
    newer = Memory.from_json({"empty_since": {}, "count": 3, "removed": {}, "vm_kept": True, "next": {"a": 1}})
    assert newer.count == 3 and newer.vm_kept is True and newer.short_since is None
    short = Memory.from_json({"short_since": NAIVE})  # read as UTC, like the other times
    assert short.short_since is not None and NOW - short.short_since == timedelta(days=5)
    naive = Memory.from_json({"empty_since": {"n1": NAIVE}, "last_up": NAIVE, "removed": {"n2": NAIVE}})
    # plan subtracts these from an aware now
    assert NOW - naive.empty_since["n1"] == NOW - naive.removed["n2"] == timedelta(days=5)
    assert naive.last_up is not None and NOW - naive.last_up == timedelta(days=5)


@pytest.mark.parametrize("doc", [
    {"empty_since": []}, {"empty_since": {"n1": 5}}, {"last_up": "soon"}, {"count": "x"},
    {"count": 2.5}, {"removed": "n1"}, {"short_since": "soon"},
])
def test_damaged_scale_memory_says_what_to_do(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"scale memory is damaged.*delete it"):
        Memory.from_json(doc)


def test_forecast_with_naive_times_is_learned_from() -> None:
    stored = Forecast.from_json({"rates": {"2-12": 1.0}, "weeks": {"2-12": 3}, "open_bucket": "2-12",
                                 "open_count": 1, "seen": {"u~": NAIVE}})
    after = learn(stored, ["u~"], NOW, ForecastPolicy())  # apply does this after every scale run
    assert after.seen["u~"] == NOW


# --- Entra delta chunks ----------------------------------------------------------------------------
def test_entra_chunk_of_every_shape_loads() -> None:
    oldest = ChunkState.from_json({"groups": ["g"], "delta_link": "https://l", "members": {
        "g": {"users": {"u1": ["ann@x", "Ann"]}, "groups": [], "others": []}}})
    assert oldest.users_checked is None and oldest.members["g"].users == {"u1": ["ann@x", "Ann"]}
    newer = ChunkState.from_json({"groups": ["g"], "delta_link": "https://l", "version": 9, "members": {
        "g": {"users": {"u1": ["ann@x", None, "extra"]}, "groups": [], "others": [], "owners": {}}}})
    assert newer.members["g"].users == {"u1": ["ann@x", None]}


@pytest.mark.parametrize("doc", [
    {"groups": ["g"], "delta_link": "https://l", "members": []},  # read as no members before
    {"groups": ["g"], "delta_link": "https://l", "members": {"g": None}},
    {"groups": ["g"], "delta_link": "https://l", "members": {"g": {"users": {"u1": "ann@x"}}}},
    {"groups": ["g"], "delta_link": "https://l", "members": {"g": {"users": {"u1": [5, 6]}}}},
    {"groups": ["g"], "delta_link": "https://l", "members": {"g": {"users": [["u1", "ann"]]}}},
    {"groups": "g", "members": {}},
])
def test_damaged_entra_chunk_is_a_value_error_not_fewer_members(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ChunkState.from_json(doc)
    with pytest.raises(ValueError):
        GroupState.from_json(None)  # type: ignore[arg-type]
