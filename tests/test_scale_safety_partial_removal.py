"""Safety: a ``deleteMachines`` that fails part-way (some machines went before the operation
failed) uncordons only the nodes whose machines are still in the pool; a node whose VM went stays
cordoned and is watched while it leaves (kmock + the ARM double, through the real clients)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.loop import Outcome, Status
from hubpilot.ports.cluster import CORDON_ANNOTATION
from hubpilot.scale.capability import MEMORY_KEY
from hubpilot.scale.cost import last_size
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)


async def two_idle(w: dict[str, Any]) -> Any:
    """gpu-0 runs alice; gpu-1 and gpu-2 have stood empty past the idle limit (a Delete pool)."""
    arm: ArmDouble = w["arm"]
    kube: Emulator = w["kube"]
    arm.add_pool("gpu", count=3, machines=["gpu-0", "gpu-1", "gpu-2"])
    arm.pools["gpu"]["scaleDownMode"] = "Delete"
    for n in ("gpu-0", "gpu-1", "gpu-2"):
        kube.node(n)
    kube.pod("alice", "gpu-0")
    cap, runner = capability(w)
    await runner.run(cap, trigger="timer", actor="test")
    w["clock"]["now"] += timedelta(minutes=11)
    return cap, runner


async def test_a_removal_that_fails_part_way_uncordons_only_the_nodes_still_there(
        world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await two_idle(world)
    arm.fail_next_operation = "VMSSDeleteFailed"
    arm.fail_after_deleting = 1  # gpu-1's VM went, then the operation failed
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [op.status for op in arm.operations.values() if op.kind == "deleteMachines"] == ["Failed"]
    assert arm.machines["gpu"] == ["gpu-0", "gpu-2"]
    assert rec.outcome is Outcome.FAILED, rec.render()
    [result] = rec.results
    assert result.action.kind == "remove_nodes" and result.status is Status.FAILED, rec.render()
    assert result.action.params["removed_nodes"] == ["gpu-1"], rec.render()
    assert "removed gpu-1" in result.detail and "gpu-2" in result.detail, rec.render()
    # gpu-1's VM is gone: uncordoned, its node (registered a little longer) would take a user pod
    gone = kube.node_obj("gpu-1")
    assert gone["spec"]["unschedulable"] is True, rec.render()
    assert gone["metadata"]["annotations"].get(CORDON_ANNOTATION)
    # gpu-2's machine is still there: it is back in service
    assert kube.node_obj("gpu-2")["spec"]["unschedulable"] is False, rec.render()
    memory = await world["store"].get(MEMORY_KEY)
    assert memory is not None and list(memory["removed"]) == ["gpu-1"]  # watched while it leaves
    # the cost report's size history has the size the pool has now: gpu-1's machine went
    assert await last_size(world["store"], world["clock"]["now"].date()) == 2
    # the next run: gpu-1 is leaving (never uncordoned, never replaced); gpu-2 is removed again
    world["clock"]["now"] += timedelta(minutes=1)
    again = await runner.run(cap, trigger="timer", actor="test")
    assert again.plan is not None and again.plan.facts["leaving"] == ["gpu-1"], again.render()
    assert kube.node_obj("gpu-1")["spec"]["unschedulable"] is True, again.render()
    assert not [r for r in again.results if r.action.kind == "uncordon"], again.render()


async def test_a_refused_removal_uncordons_every_node(world: dict[str, Any]) -> None:  # noqa: F811
    """ARM refuses the deletion outright (400): no machine went, every node is back in service."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await two_idle(world)
    arm.fault("POST", 400, error={"code": "InvalidParameter", "message": "no"})
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.FAILED and rec.results[0].status is Status.FAILED, rec.render()
    assert arm.machines["gpu"] == ["gpu-0", "gpu-1", "gpu-2"]
    for n in ("gpu-1", "gpu-2"):
        assert kube.node_obj(n)["spec"]["unschedulable"] is False, rec.render()
    memory = await world["store"].get(MEMORY_KEY)
    assert memory is None or not memory.get("removed"), memory


async def test_machines_that_cannot_be_read_again_leave_every_node_cordoned(world: dict[str, Any]) -> None:  # noqa: F811
    """The deletion failed part-way and the pool's machines cannot be read (403): which went is
    unknown, so no node is uncordoned; they are watched as a removal that may have been accepted."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await two_idle(world)
    arm.fail_next_operation = "VMSSDeleteFailed"
    arm.fail_after_deleting = 1
    arm.fault("GET", 403, error={"code": "AuthorizationFailed", "message": "no machines/read"}, on="machines")
    rec = await runner.run(cap, trigger="timer", actor="test")
    [result] = rec.results
    assert result.status is Status.FAILED and "could not be read again" in result.detail, rec.render()
    assert "AuthorizationFailed" in result.detail, rec.render()
    for n in ("gpu-1", "gpu-2"):
        assert kube.node_obj(n)["spec"]["unschedulable"] is True, rec.render()
    memory = await world["store"].get(MEMORY_KEY)
    assert memory is not None and sorted(memory["removed"]) == ["gpu-1", "gpu-2"]
