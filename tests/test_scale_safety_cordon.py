"""Safety: a node cordoned by someone else after the observation is never cordoned, and so never
uncordoned, by hubpilot (kmock + the ARM double, through the real clients)."""

from __future__ import annotations

from typing import Any

from hubpilot.loop import Status
from hubpilot.ports.cluster import CORDON_ANNOTATION
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import one_empty_past_the_idle_limit, world  # noqa: F401  (fixture)


async def test_a_node_cordoned_by_someone_else_after_planning_is_left_as_it_is(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, _ = await one_empty_past_the_idle_limit(world)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.kind for a in plan.actions] == ["remove_nodes"]
    kube.node("gpu-0", unschedulable=True)  # an admin cordons it (maintenance) after the plan
    arm.fault("POST", 409)  # and ARM refuses the deletion: hubpilot would uncordon what it cordoned
    results = await cap.apply(plan, observed, lambda *a: None)
    node = kube.node_obj("gpu-0")
    assert node["spec"]["unschedulable"] is True, results  # still the admin's cordon
    assert CORDON_ANNOTATION not in (node["metadata"].get("annotations") or {})
    assert results[0].status is Status.NOOP and "cordoned by someone else" in results[0].detail
    assert not arm.writes() and arm.machines["gpu"] == ["gpu-0"]
