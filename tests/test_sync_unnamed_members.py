"""Review: a managed person whose directory entry is still a member, but whose username is now
unusable (invalid, missing, or claimed by another entry too), is not deprovisioned."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from hubpilot.ports.directory import DirectorySnapshot, Member
from hubpilot.sync import guard_sync, plan_sync
from tests.test_sync_plan import NOW, POLICY, ROLE_POLICY, converge, empty_hub, kinds, snap


def _synced() -> object:
    start = empty_hub(snap(analysts=["ann", "bob"]))
    state = converge(start, plan_sync(start, POLICY, NOW))
    managed = {n: replace(r, directory_id=f"uid={n},ou=people") for n, r in state.managed.items()}
    return replace(state, managed=managed)


@pytest.mark.parametrize("policy", [POLICY, ROLE_POLICY])
@pytest.mark.parametrize(
    "bob",
    [
        [Member("uid=bob,ou=people", "bob smith")],  # not a valid hub name
        [Member("uid=bob,ou=people", None)],  # the username attribute is gone (or unreadable)
        [Member("uid=bob,ou=people", "Robert"), Member("uid=robert,ou=people", "robert")],  # a clash
    ],
)
def test_a_member_whose_name_is_unusable_now_is_kept_not_deprovisioned(bob: list[Member], policy: object) -> None:
    state = _synced()
    members = frozenset({Member("uid=ann,ou=people", "ann"), *bob})
    snapshot = DirectorySnapshot("test", {"analysts": members, "gpu-users": frozenset(),
                                          "hub-admins": frozenset()})
    world = replace(state, snapshot=snapshot)
    plan = plan_sync(world, policy, NOW)  # type: ignore[arg-type]
    assert not any(a.target == "bob" or a.params.get("user") == "bob" for a in plan.actions), kinds(plan)
    assert plan.facts["removals"] == 0
    assert guard_sync(world, plan, policy) == []  # type: ignore[arg-type]
    assert any("bob" in n and "kept" in n for n in plan.notes), plan.notes


def test_a_member_who_really_left_is_still_deprovisioned() -> None:
    state = _synced()
    world = replace(state, snapshot=snap(analysts=["ann"]))
    assert ("deprovision", "bob") in kinds(plan_sync(world, POLICY, NOW))  # type: ignore[arg-type]


UPGRADE_CASES = [
    [Member("5f1e-bob", "bob smith", alias="uid=bob,ou=people")],  # not a valid hub name
    [Member("5f1e-bob", None, alias="uid=bob,ou=people")],  # the username attribute is gone
    [Member("5f1e-bob", "Robert", alias="uid=bob,ou=people"),  # a clash
     Member("77aa-robert", "robert", alias="uid=robert,ou=people")],
]


def _upgraded(bob: list[Member]) -> DirectorySnapshot:
    """The directory after an upgrade from DN ids to entryUUIDs: every entry is known by its
    entryUUID, its DN (the id the records hold) beside it as the alias."""
    ann = Member("5f1e-ann", "ann", alias="uid=ann,ou=people")
    return DirectorySnapshot("test", {"analysts": frozenset({ann, *bob}), "gpu-users": frozenset(),
                                      "hub-admins": frozenset()})


@pytest.mark.parametrize("bob", UPGRADE_CASES)
def test_just_after_an_id_upgrade_a_member_whose_name_is_unusable_is_kept(bob: list[Member]) -> None:
    """The records hold DN ids (recorded before entryUUIDs were); the first sync after the upgrade
    finds bob's entry under its entryUUID, with an unusable name. His record's DN is his entry's
    alias: the same person, still a member, so he is kept as he is, not deprovisioned."""
    state = _synced()
    world = replace(state, snapshot=_upgraded(bob))
    plan = plan_sync(world, POLICY, NOW)  # type: ignore[arg-type]
    assert not any(a.target == "bob" or a.params.get("user") == "bob" for a in plan.actions), kinds(plan)
    assert plan.facts["removals"] == 0
    assert any("bob is kept as they are" in n for n in plan.notes), plan.notes


@pytest.mark.parametrize("bob", UPGRADE_CASES)
def test_just_after_an_id_upgrade_a_returning_member_whose_name_is_unusable_is_not_deleted(bob: list[Member]) -> None:
    """bob left and was deprovisioned under his DN id; after the upgrade his entry is a member
    again, known by its entryUUID, with an unusable name: kept deprovisioned, not deleted."""
    state = _synced()
    gone = NOW - timedelta(days=31)
    managed = {**state.managed, "bob": replace(state.managed["bob"], deprovisioned_at=gone)}
    world = replace(state, snapshot=_upgraded(bob), managed=managed)
    deleting = POLICY.model_copy(update={"delete_users": True, "delete_grace_hours": 720})
    plan = plan_sync(world, deleting, NOW)
    assert not any(a.kind == "delete_user" for a in plan.actions), kinds(plan)
    assert any("bob is kept deprovisioned, not deleted" in n for n in plan.notes), plan.notes
