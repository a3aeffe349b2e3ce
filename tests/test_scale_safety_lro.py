"""Safety: once ARM has accepted a deleteMachines, the nodes stay cordoned whatever happens while
its status is polled (kmock + the ARM double, through the real clients)."""

from __future__ import annotations

from typing import Any

from hubpilot.loop import Status
from tests.doubles.arm import ArmDouble, Operation
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import past_the_idle_limit, world  # noqa: F401  (fixture)


async def test_an_unreachable_status_url_after_an_accepted_delete_keeps_the_nodes_cordoned(
        world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await past_the_idle_limit(world)

    def unreachable(op: Operation, kind: str) -> str:  # the network fails after the 202
        return f"http://127.0.0.1:9/subscriptions/{arm.subscription}/operationresults/{op.id}?api-version=2026-08-01"
    arm._op_url = unreachable  # type: ignore[method-assign]
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [c.status for c in arm.calls if c.method == "POST"] == [202]  # ARM took the deletion
    result = rec.results[0]
    assert result.action.kind == "remove_nodes"
    # the machine is being deleted: its node must stay unschedulable, or a user pod may land on it
    assert kube.node_obj("gpu-1")["spec"]["unschedulable"] is True, rec.render()
    assert result.status is Status.PENDING, rec.render()


async def test_a_lost_answer_to_an_accepted_delete_keeps_the_nodes_cordoned(world: dict[str, Any]) -> None:  # noqa: F811
    """The connection closes after ARM took the deleteMachines, before its 202 arrives: the client
    cannot tell whether it was accepted, so the nodes stay cordoned (the next run re-observes and
    uncordons what is still there)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await past_the_idle_limit(world)
    arm.hold_operations = True
    arm.lose_answer("POST")
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [c.status for c in arm.calls if c.method == "POST"] == [202]  # ARM took the deletion
    assert any(op.kind == "deleteMachines" for op in arm.operations.values())
    assert kube.node_obj("gpu-1")["spec"]["unschedulable"] is True, rec.render()
    result = rec.results[0]
    assert result.action.kind == "remove_nodes" and result.status is Status.PENDING, rec.render()
    arm.release()


async def test_an_accepted_delete_answered_by_a_failing_gateway_keeps_the_nodes_cordoned(
        world: dict[str, Any]) -> None:  # noqa: F811
    """ARM took the deleteMachines and a gateway answered 502 (azure-core never sends a POST again
    after a 502): the deletion may be under way, so its nodes stay cordoned as after a lost answer;
    uncordoned, the node would take a user pod while its VM is deleted."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await past_the_idle_limit(world)
    arm.hold_operations = True
    arm.answer_failed("POST", 502)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [c.status for c in arm.calls if c.method == "POST"] == [502]
    assert any(op.kind == "deleteMachines" for op in arm.operations.values())  # ARM took the deletion
    assert kube.node_obj("gpu-1")["spec"]["unschedulable"] is True, rec.render()
    result = rec.results[0]
    assert result.action.kind == "remove_nodes" and result.status is Status.PENDING, rec.render()
    arm.release()
