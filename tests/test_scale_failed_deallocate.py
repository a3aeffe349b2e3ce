"""A Deallocate pool whose last operation failed: its count is the failed operation's goal, and the
NotReady nodes are its stopped VMs (those it did not start), not running machines."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from hubpilot.loop import Outcome
from hubpilot.scale import cost_report, guard_scale, plan_scale
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401 - the fixture
from tests.test_scale_plan import LONG_AGO, POLICY, T0, deallocating, kinds, observed, stopped_vm, upod


def _failed(count: int) -> Any:
    return dataclasses.replace(deallocating(count), provisioning_state="Failed")


def test_a_failed_restart_of_stopped_vms_sends_the_count_again_not_a_higher_one() -> None:
    """A scale-up 1 -> 3 of a Deallocate pool failed (the stopped VMs could not be started, e.g.
    AllocationFailed): count 3, one VM runs, three stay stopped (NotReady). They are no broken
    running machines to replace with a count of 4 (and 5, 6 on the next rounds, each failing
    alike): the failed operation's count is sent again, as in a failed Delete pool."""
    stopped = [stopped_vm(f"s{i}") for i in range(3)]
    obs = observed(_failed(3), ["n0"], [upod("a", "n0"), upod("b", None)], extra_nodes=stopped,
                   empty_since={n.name: LONG_AGO for n in stopped})
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 3, "from": 3})], plan.facts["why"]
    assert plan.facts["stopped"] == 3 and plan.facts["missing"] == 2 and plan.facts["booting"] == 0
    assert guard_scale(obs, plan, POLICY) == []
    # nobody waits: nothing is sent, and no stopped VM is removed
    idle = observed(_failed(3), ["n0"], [upod("a", "n0")], extra_nodes=stopped,
                    empty_since={n.name: LONG_AGO for n in stopped})
    assert plan_scale(idle, POLICY, T0).empty


async def test_the_stopped_vms_of_a_failed_deallocate_pool_are_not_counted_as_running(
        world: dict[str, Any]) -> None:  # noqa: F811
    """The cost report of an hour of a failed Deallocate pool (count 3, one VM running, three
    stopped): one GPU node-hour and three stopped VM-hours, not three node-hours."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=3, machines=["gpu-0", "gpu-1", "gpu-2", "gpu-3"])
    arm.pools["gpu"]["scaleDownMode"] = "Deallocate"
    arm.pools["gpu"]["provisioningState"] = "Failed"
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    for stopped in ("gpu-1", "gpu-2", "gpu-3"):
        kube.node(stopped, ready=False)
    cap, runner = capability(world)
    start = world["clock"]["now"]
    for minutes in range(0, 61, 10):
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.APPLIED and rec.plan is not None and rec.plan.empty, rec.render()
    rep = await cost_report(world["store"], now=start + timedelta(hours=1), days=1, price=None,
                            currency="EUR", stopped_price=0.05)
    assert sum(d.node_hours for d in rep.days) == pytest.approx(1.0)
    assert sum(d.stopped_vm_hours for d in rep.days) == pytest.approx(3.0)
