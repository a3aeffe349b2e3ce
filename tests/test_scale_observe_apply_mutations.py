"""Mutation review of scale's observe and apply against kmock and the ARM double (through the real
clients): behaviour the other scale tests left unpinned, each test named for what it keeps."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.loop import Outcome, Status
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)


async def test_a_removal_cut_to_a_floor_that_was_not_lowered_keeps_exactly_the_floor(
        world: dict[str, Any]) -> None:  # noqa: F811
    """Autoscaler-assist: four idle nodes over a floor of 2. The plan lowers minCount and removes
    three; the lowering gets a 409, so minCount stays 2 and the removal is cut to the nodes above
    it: two go, two stay (one more would leave the pool under minCount, and AKS's autoscaler
    would boot a VM for one just deleted)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    names = ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    arm.add_pool("gpu", count=4, autoscaling=True, min_count=2, max_count=4, machines=names)
    for n in names:
        kube.node(n)
    cap, runner = capability(world, max_step_down=3)
    first = await runner.run(cap, trigger="timer", actor="test")  # their idle clocks start
    assert first.plan is not None and first.plan.empty, first.render()
    world["clock"]["now"] += timedelta(minutes=11)
    arm.fault("PUT", 409)  # another operation: minCount stays 2
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert rec.plan is not None
    assert [len(a.params["nodes"]) for a in rec.plan.actions if a.kind == "remove_nodes"] == [3], rec.render()
    kinds = {r.action.kind: r for r in rec.results}
    assert kinds["set_min_count"].status is Status.SKIPPED, rec.render()
    assert len(kinds["remove_nodes"].action.params["nodes"]) == 2, rec.render()
    assert kinds["remove_nodes"].status is Status.DONE, rec.render()
    assert "minCount is still 2" in kinds["remove_nodes"].detail, rec.render()
    assert len(arm.machines["gpu"]) == 2 and arm.pools["gpu"]["minCount"] == 2
