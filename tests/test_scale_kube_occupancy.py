"""Kubernetes side: a node holding a user pod in any phase that holds it -- bound but still Pending
(the scheduler placed it, its image is being pulled), Running, Unknown (its node stopped
reporting), or being deleted (terminating) -- is never empty: not in the plan's view and not in
apply's re-check after the cordon (kmock + the ARM double, through the real clients)."""

from __future__ import annotations

from typing import Any

import pytest

from hubpilot.loop import Status
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import one_empty_past_the_idle_limit, world  # noqa: F401  (fixture)
from tests.test_scale_kube_deleting import deleting_pod


def holding_pod(kube: Emulator, how: str) -> None:
    """alice's GPU user pod on gpu-0, in a phase that holds the node."""
    if how == "terminating":
        deleting_pod(kube, "alice", "gpu-0")
    else:
        kube.pod("alice", "gpu-0", phase=how)


@pytest.mark.parametrize("how", ["Pending", "Running", "Unknown", "terminating"])
async def test_a_node_holding_a_user_pod_in_any_phase_is_not_empty(world: dict[str, Any], how: str) -> None:  # noqa: F811
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    holding_pod(kube, how)
    cluster = world["cluster"]
    assert [(p.name, p.node) for p in (await cluster.read()).pods] == [("alice", "gpu-0")]
    assert [p.name for p in await cluster.pods_on("gpu-0")] == ["alice"]


@pytest.mark.parametrize("how", ["Pending", "Unknown", "terminating"])
async def test_a_pod_that_holds_the_node_after_planning_keeps_it(world: dict[str, Any], how: str) -> None:  # noqa: F811
    """The removal's re-check after the cordon finds the pod, whatever phase holds the node: the
    node is uncordoned and kept, its VM never deleted."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, _ = await one_empty_past_the_idle_limit(world)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.params.get("nodes") for a in plan.actions] == [["gpu-0"]]
    holding_pod(kube, how)  # lands (or is found) between the plan and the apply
    results = await cap.apply(plan, observed, lambda *a: None)
    assert results[0].status is Status.NOOP and "kept: gpu-0 (now runs alice)" in results[0].detail, results[0]
    assert arm.machines["gpu"] == ["gpu-0"] and not [c for c in arm.calls if c.method == "POST"]
    assert kube.node_obj("gpu-0")["spec"]["unschedulable"] is False
