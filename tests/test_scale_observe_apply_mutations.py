"""Mutation review of scale's observe and apply against kmock and the ARM double (through the real
clients): behaviour the other scale tests left unpinned, each test named for what it keeps."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.loop import Outcome, Status
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, one_empty_past_the_idle_limit, world  # noqa: F401  (fixture)


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


async def test_a_removal_answered_409_starts_no_cooldown(world: dict[str, Any]) -> None:  # noqa: F811
    """A deleteMachines refused with 409 removed nothing: the round is skipped, and the scale-down
    cooldown does not start from it. The next run removes the idle node at once."""
    arm: ArmDouble = world["arm"]
    await one_empty_past_the_idle_limit(world)
    cap, runner = capability(world, down_cooldown=timedelta(minutes=30))
    arm.fault("POST", 409)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [r.status for r in rec.results] == [Status.SKIPPED], rec.render()
    assert arm.machines["gpu"] == ["gpu-0"]
    world["clock"]["now"] += timedelta(minutes=1)
    again = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in again.results] == [("remove_nodes", Status.DONE)], again.render()
    assert arm.machines["gpu"] == []


async def test_a_scale_up_answered_409_starts_no_delay_after_up(world: dict[str, Any]) -> None:  # noqa: F811
    """A count refused with 409 added nothing: the delay after a scale-up does not start from it.
    The servers gone, the node that stood empty past the idle limit is removed on time, not held
    for ``delay_after_up`` after a scale-up that never happened."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)  # a GPU server waits: a scale-up to 2
    cap, runner = capability(world, delay_after_up=timedelta(minutes=30))
    arm.fault("PUT", 409)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in rec.results] == [("set_count", Status.SKIPPED)], rec.render()
    kube.drop_pod("bob")  # his spawn was cancelled, and alice stopped her server
    kube.drop_pod("alice")
    world["clock"]["now"] += timedelta(minutes=1)
    idle = await runner.run(cap, trigger="timer", actor="test")  # gpu-0's idle clock starts
    assert idle.plan is not None and idle.plan.empty, idle.render()
    world["clock"]["now"] += timedelta(minutes=11)
    again = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in again.results] == [("remove_nodes", Status.DONE)], again.render()
    assert arm.machines["gpu"] == []


async def test_a_node_an_admin_cordoned_is_no_room_for_a_waiting_server_and_never_removed(
        world: dict[str, Any]) -> None:  # noqa: F811
    """gpu-1 stands empty, cordoned by an admin (no hubpilot mark): bob's GPU server cannot land on
    it, so the pool grows for him; and, empty past the idle limit, it is not planned for removal
    (not hubpilot's to remove)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    kube.node("gpu-0")
    kube.node("gpu-1", unschedulable=True)
    kube.pod("alice", "gpu-0")
    view = await world["cluster"].read()
    assert [(n.name, n.unschedulable) for n in view.nodes] == [("gpu-0", False), ("gpu-1", True)]
    cap, runner = capability(world)
    first = await runner.run(cap, trigger="timer", actor="test")
    assert first.plan is not None and first.plan.empty, first.render()
    world["clock"]["now"] += timedelta(minutes=11)
    later = await runner.run(cap, trigger="timer", actor="test")  # gpu-1 empty past the idle limit
    assert later.plan is not None and later.plan.empty, later.render()
    kube.pod("bob", None)  # a GPU server waits
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in rec.results] == [("set_count", Status.DONE)], rec.render()
    assert arm.pools["gpu"]["count"] == 3
    assert kube.node_obj("gpu-1")["spec"]["unschedulable"] is True  # the admin's cordon stands
