"""Autoscaler-assist: a raised minCount, whether AKS's autoscaler scales the pool up to it at once
(documented since AKS's 2021-07-22 release) or waits for a scale event (before it): the next run
neither raises the floor again nor removes a node, and nothing is asked twice (kmock + the ARM
double, through the real clients)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hubpilot.loop import Outcome, Status, no_progress
from hubpilot.scale import record_demand
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)


@pytest.mark.parametrize("enforced", [True, False])
async def test_a_raised_floor_is_asked_for_once(world: dict[str, Any], enforced: bool) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.enforce_min_count = enforced
    arm.add_pool("gpu", count=1, autoscaling=True, min_count=1, max_count=4, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    cap, runner = capability(world)
    await record_demand(world["store"], user="bob", server="", profile="gpu", at=world["clock"]["now"])
    rec = await runner.run(cap, trigger="demand", actor="hub")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert arm.pools["gpu"]["minCount"] == 2
    assert arm.pools["gpu"]["count"] == (2 if enforced else 1)
    for minutes in (1, 5):  # the new machine has not joined yet (or the autoscaler has not acted)
        world["clock"]["now"] += timedelta(minutes=minutes)
        again = await runner.run(cap, trigger="timer", actor="test")
        assert again.plan is not None and again.plan.empty, again.render()
    assert len([c for c in arm.calls if c.method in ("PUT", "POST")]) == 1


@pytest.mark.parametrize("switch", ["off", "on"])
async def test_the_autoscaler_switched_between_the_observation_and_the_put_is_a_conflict(
        world: dict[str, Any], switch: str) -> None:  # noqa: F811
    """An admin switches the pool's cluster autoscaler off (``az aks nodepool update
    --disable-cluster-autoscaler`` drops minCount and maxCount) or on between hubpilot's observation
    and its PUT. The agent-pool operation changes the pool's eTag (AKS, "Use eTags"), so the PUT
    hubpilot planned from its observation is a conflict, as a 412 would be: not applied, the next
    run re-observes and plans in the pool's new mode. It is no failure of hubpilot's, and no PUT
    goes out."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, autoscaling=switch == "off", min_count=1, max_count=4, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    cap, _ = capability(world)
    await record_demand(world["store"], user="bob", server="", profile="gpu", at=world["clock"]["now"])
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.kind for a in plan.actions] == ["set_min_count" if switch == "off" else "set_count"]
    if switch == "off":
        arm.pools["gpu"].update(enableAutoScaling=False, minCount=None, maxCount=None)
    else:
        arm.pools["gpu"].update(enableAutoScaling=True, minCount=1, maxCount=4)
    arm._bump("gpu")  # an agent-pool operation: the pool's eTag changes
    results = await cap.apply(plan, observed, no_progress)
    assert [(r.action.kind, r.status) for r in results] == [(plan.actions[0].kind, Status.SKIPPED)], results
    assert "changed since it was read" in results[0].detail and "next run" in results[0].detail
    assert not [c for c in arm.calls if c.method == "PUT"]
