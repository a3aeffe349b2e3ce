"""Review: a managed person whose directory entry is still a member, but whose username is now
unusable (invalid, missing, or claimed by another entry too), is not deprovisioned."""

from __future__ import annotations

from dataclasses import replace

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
