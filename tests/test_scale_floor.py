"""Autoscaler-assist: a scale-down removes nodes only down to the floor in force. When the plan's
lowering of minCount did not happen (409, an error), its removal in the next phase would take the
pool below minCount: AKS's autoscaler enforces minCount (AKS release 2021-07-22) and would boot
new GPU VMs for the ones just deleted (kmock + the ARM double, through the real clients)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hubpilot.loop import Outcome, Status
from hubpilot.ports.pool import PoolError
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)
from tests.test_scale_kube_taints import edit


async def three_idle_nodes_above_a_floor_of_three(w: dict[str, Any]) -> Any:
    arm: ArmDouble = w["arm"]
    kube: Emulator = w["kube"]
    arm.add_pool("gpu", count=3, autoscaling=True, min_count=3, max_count=4, machines=["gpu-0", "gpu-1", "gpu-2"])
    for n in ("gpu-0", "gpu-1", "gpu-2"):
        kube.node(n)
    cap, runner = capability(w)
    # the first run starts their idle clocks: empty, not yet idle, they keep the floor
    first = await runner.run(cap, trigger="timer", actor="test")
    assert first.plan is not None and first.plan.empty, first.render()
    assert "floor stays 3" in " ".join(first.plan.notes), first.render()
    w["clock"]["now"] += timedelta(minutes=11)
    return cap, runner


async def test_no_removal_below_a_floor_that_was_not_lowered(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await three_idle_nodes_above_a_floor_of_three(world)
    arm.fault("PUT", 409)  # another operation: minCount stays 3
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    kinds = {r.action.kind: r for r in rec.results}
    assert kinds["set_min_count"].status is Status.SKIPPED
    assert kinds["remove_nodes"].status is Status.SKIPPED, rec.render()
    assert "minCount" in kinds["remove_nodes"].detail
    assert not [c for c in arm.calls if c.method == "POST"]
    assert arm.machines["gpu"] == ["gpu-0", "gpu-1", "gpu-2"] and arm.pools["gpu"]["minCount"] == 3
    assert not any(kube.node_obj(n)["spec"].get("unschedulable") for n in ("gpu-0", "gpu-1", "gpu-2"))


async def test_the_removal_follows_a_lowered_floor(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    cap, runner = await three_idle_nodes_above_a_floor_of_three(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in rec.results] == [
        ("set_min_count", Status.DONE), ("remove_nodes", Status.DONE)], rec.render()
    assert arm.pools["gpu"]["minCount"] == 1 and arm.pools["gpu"]["count"] == 1


async def test_lowering_the_floor_is_a_scale_down_its_cooldown_applies(world: dict[str, Any]) -> None:  # noqa: F811
    """In autoscaler-assist mode lowering minCount is the scale-down (docs/scale.md: "lower minCount
    (after the delays)"): a second lowering waits ``scale_down_cooldown_minutes`` after the first,
    as a second removal does, so the floor does not drop by ``max_step_down`` every minute. The floor
    was raised to 4 for servers that no longer wait and the autoscaler has not acted on it (count 2):
    lowering it removes no node, so the cooldown is the lowering's own."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.enforce_min_count = False
    arm.add_pool("gpu", count=2, autoscaling=True, min_count=4, max_count=4, machines=["gpu-0", "gpu-1"])
    for n in ("gpu-0", "gpu-1"):
        kube.node(n)
    kube.pod("alice", "gpu-0")
    kube.pod("bob", "gpu-1")
    cap, runner = capability(world, max_step_down=1, down_cooldown=timedelta(minutes=5))
    first = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in first.results] == [("set_min_count", Status.DONE)], first.render()
    assert arm.pools["gpu"]["minCount"] == 3
    for _ in range(4):  # within the cooldown: the floor stays
        world["clock"]["now"] += timedelta(minutes=1)
        again = await runner.run(cap, trigger="timer", actor="test")
        assert again.plan is not None and again.plan.empty, again.render()
        assert "of the last one" in " ".join(again.plan.notes), again.render()
    assert arm.pools["gpu"]["minCount"] == 3
    world["clock"]["now"] += timedelta(minutes=1)  # 5 min after the first lowering
    later = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in later.results] == [("set_min_count", Status.DONE)], later.render()
    assert arm.pools["gpu"]["minCount"] == 2


async def test_a_failed_pools_floor_is_kept_in_the_machines_that_exist(world: dict[str, Any]) -> None:  # noqa: F811
    """A failed pool's count is above its machines (ARM keeps the failed operation's count): a
    scale-up to 5 failed with 4 machines, then the autoscaler was turned on (minCount 4) and that
    operation failed too. The plan lowers the floor to 2 and removes 2 of the 4 machines; when the
    lowering gets a 409, the removal is cut to the machines above the floor: 4 exist, none is
    above it. Cut by the count (5), one would go, leaving 3 machines under minCount 4: the
    autoscaler would boot a VM for it."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    names = ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    arm.add_pool("gpu", count=4, machines=names)
    for n in names:
        kube.node(n)
    arm.fail_next_operation = "AllocationFailed"
    with pytest.raises(PoolError, match="operation failed"):
        await world["pool"].set_count(5)
    # the autoscaler turned on (count 5, minCount 4): that operation failed too, its count kept
    arm.pools["gpu"].update(enableAutoScaling=True, minCount=4, maxCount=5)
    assert arm.pools["gpu"]["count"] == 5 and arm.machines["gpu"] == names
    assert arm.pools["gpu"]["provisioningState"] == "Failed"
    cap, runner = capability(world)
    first = await runner.run(cap, trigger="timer", actor="test")
    assert first.plan is not None and first.plan.facts["missing"] == 1, first.render()
    world["clock"]["now"] += timedelta(minutes=11)
    arm.fault("PUT", 409)  # another operation: minCount stays 4
    rec = await runner.run(cap, trigger="timer", actor="test")
    kinds = {r.action.kind: r for r in rec.results}
    assert kinds["set_min_count"].action.params["min_count"] == 2, rec.render()
    assert kinds["set_min_count"].status is Status.SKIPPED, rec.render()
    assert kinds["remove_nodes"].status is Status.SKIPPED, rec.render()
    assert "minCount is still 4" in kinds["remove_nodes"].detail
    assert not [c for c in arm.calls if c.method == "POST"]
    assert arm.machines["gpu"] == names and arm.pools["gpu"]["minCount"] == 4
    assert not any(kube.node_obj(n)["spec"].get("unschedulable") for n in names)


async def test_a_lowered_floor_counts_a_node_on_its_way_out_as_leaving(world: dict[str, Any]) -> None:  # noqa: F811
    """The pool stands at its floor of 4 and the cluster autoscaler has begun removing gpu-3 (its
    ToBeDeletedByClusterAutoscaler mark: its VM is on its way out, still one of the pool's
    machines); gpu-0, gpu-1 and gpu-2 have stood empty past the idle limit. The floor comes down by
    max_step_down to 2, and the removal leaves 2 machines besides gpu-3: one node goes. Sized
    against the wanted count (0) alone, two would go, and once gpu-3 is gone the pool would be one
    machine under its floor: AKS's autoscaler would boot a new VM for one just deleted."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    names = ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    arm.add_pool("gpu", count=4, autoscaling=True, min_count=4, max_count=4, machines=names)
    for n in names:
        kube.node(n)
    cap, runner = capability(world, max_step_down=2)
    first = await runner.run(cap, trigger="timer", actor="test")  # their idle clocks start
    assert first.plan is not None and first.plan.empty, first.render()
    world["clock"]["now"] += timedelta(minutes=11)
    now = world["clock"]["now"]
    edit(kube, "nodes", "gpu-3", spec={"taints": [
        {"key": "ToBeDeletedByClusterAutoscaler", "value": str(int(now.timestamp()) - 30), "effect": "NoSchedule"}]})
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert rec.plan is not None and rec.plan.facts["leaving"] == ["gpu-3"], rec.render()
    assert [(r.action.kind, r.status) for r in rec.results] == [
        ("set_min_count", Status.DONE), ("remove_nodes", Status.DONE)], rec.render()
    assert arm.pools["gpu"]["minCount"] == 2
    assert rec.results[1].action.params["removed_nodes"] == ["gpu-0"], rec.render()
    assert arm.machines["gpu"] == ["gpu-1", "gpu-2", "gpu-3"]  # the floor's 2, and gpu-3 on its way out
