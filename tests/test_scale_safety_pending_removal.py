"""Safety: a removal ARM accepted but hubpilot did not see finish (the operation outlasted
``lro_wait_seconds``, or its answer was lost) is tracked like a finished one. Its nodes are
leaving: never capacity, never uncordoned, never removed again, and no replacement is booted for
them (kmock + the ARM double, through the real clients)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.loop import Outcome, Status
from hubpilot.ports.cluster import CORDON_ANNOTATION
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import past_the_idle_limit, world  # noqa: F401  (fixture)


def finish_operations(arm: ArmDouble) -> None:
    """ARM finishes the operations it holds (as it does whether or not anybody polls them)."""
    arm.release()
    for op in arm.operations.values():
        while op.status == "InProgress":
            arm._advance(op)


async def removal_left_pending(w: dict[str, Any], *, lose_answer: bool) -> Any:
    """gpu-0 runs alice, gpu-1 is idle; the removal of gpu-1 is accepted and still running when the
    run stops waiting (or its answer is lost); then ARM finishes it."""
    arm: ArmDouble = w["arm"]
    cap, runner = await past_the_idle_limit(w, busy="gpu-0", empty="gpu-1", mode="Delete")
    w["pool"].lro_wait = 0.2
    arm.hold_operations = True
    if lose_answer:
        arm.lose_answer("POST")
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in rec.results] == [("remove_nodes", Status.PENDING)], rec.render()
    finish_operations(arm)
    assert arm.machines["gpu"] == ["gpu-0"] and arm.pools["gpu"]["count"] == 1
    return cap, runner


async def test_a_pending_removal_is_neither_uncordoned_nor_replaced(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await removal_left_pending(world, lose_answer=False)
    # the VM is gone, its node still registered (ready a little longer, cordoned by us)
    world["clock"]["now"] += timedelta(minutes=1)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.empty, rec.render()  # no uncordon: a pod would land on it
    assert rec.plan.facts["leaving"] == ["gpu-1"]
    assert kube.node_obj("gpu-1")["spec"]["unschedulable"] is True
    # then NotReady until Kubernetes drops it: no replacement for the node hubpilot removed
    kube.node("gpu-1", ready=False, unschedulable=True, annotations={CORDON_ANNOTATION: "hubpilot"})
    world["clock"]["now"] += timedelta(minutes=1)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED and rec.plan is not None and rec.plan.empty, rec.render()
    assert not any(c.method == "PUT" for c in arm.calls) and arm.pools["gpu"]["count"] == 1


async def test_a_removal_whose_answer_was_lost_is_tracked_too(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    cap, runner = await removal_left_pending(world, lose_answer=True)
    # a pod of bob's wants a GPU: the leaving node is no capacity for him, and stays cordoned
    world["kube"].pod("bob", None)
    world["clock"]["now"] += timedelta(minutes=1)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert [(r.action.kind, r.action.params.get("count")) for r in rec.results] == [("set_count", 2)], rec.render()
    assert rec.plan is not None and rec.plan.facts["leaving"] == ["gpu-1"]
    assert world["kube"].node_obj("gpu-1")["spec"]["unschedulable"] is True
    assert [c.status for c in arm.calls if c.method == "POST"] == [202]  # gpu-1 never asked for twice
