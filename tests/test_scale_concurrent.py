"""Two scale applies at once (the lock lost, two instances): kmock + the ARM double through the real
clients. Every apply is safe to run twice or concurrently: a node is deleted once, and a node whose
machine another apply is deleting is never uncordoned under it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from hubpilot.adapters.aks import AksPool
from hubpilot.loop import Status
from hubpilot.ports.cluster import CORDON_ANNOTATION
from hubpilot.scale import ScaleCapability
from tests.doubles.arm import ArmDouble, StaticToken
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, one_empty_past_the_idle_limit, past_the_idle_limit, world  # noqa: F401  (fixture)
from tests.test_scale_safety_pending_removal import finish_operations


def second_pool(arm: ArmDouble) -> AksPool:
    return AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=1,
                   retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)


async def apply_at_once(cap: ScaleCapability, arm: ArmDouble, plan: Any, observed: Any) -> tuple[Any, Any]:
    """``plan`` applied by ``cap`` and, at the same time, by a second deployment (its own ARM client)."""
    other_pool = second_pool(arm)
    try:
        other = ScaleCapability(other_pool, cap.cluster, cap.store, cap.policy, clock=cap.clock)
        a, b = await asyncio.gather(cap.apply(plan, observed, lambda *x: None),
                                    other.apply(plan, observed, lambda *x: None))
    finally:
        await other_pool.close()
    return a, b


async def test_two_removals_at_once_delete_the_node_once_and_leave_it_cordoned(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, _ = await one_empty_past_the_idle_limit(world)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.kind for a in plan.actions] == ["remove_nodes"]
    arm.polls = 20  # the first deleteMachines still runs when the second arrives
    a, b = await apply_at_once(cap, arm, plan, observed)
    statuses = sorted(r.status.value for r in (*a, *b))
    # the first cordon changes the node: the other's, carrying the observed resourceVersion, is
    # refused (409), and that apply keeps its hands off the node (NOOP); had both cordons gone
    # through, the second deleteMachines would meet the first's operation (409, SKIPPED)
    assert statuses in (sorted([Status.DONE.value, Status.NOOP.value]),
                        sorted([Status.DONE.value, Status.SKIPPED.value])), (a, b)
    assert arm.machines["gpu"] == []  # deleted once
    assert [c.status for c in arm.calls if c.method == "POST"] in ([202], [202, 409])
    node = kube.node_obj("gpu-0")
    # its VM is gone: uncordoned by the apply that got the 409, a user pod could have landed on it
    assert node["spec"]["unschedulable"] is True, (a, b)
    assert node["metadata"]["annotations"].get(CORDON_ANNOTATION)


async def test_two_scale_ups_at_once_send_one_count(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)  # waits for a GPU node
    cap, _ = capability(world)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [(a.kind, a.params["count"]) for a in plan.actions] == [("set_count", 2)]
    a, b = await apply_at_once(cap, arm, plan, observed)
    assert arm.pools["gpu"]["count"] == 2 and len(arm.machines["gpu"]) == 2
    assert len([c for c in arm.calls if c.method == "PUT" and c.status < 300]) == 1
    assert sorted(r.status.value for r in (*a, *b)) in (
        sorted([Status.DONE.value, Status.SKIPPED.value]), sorted([Status.DONE.value, Status.NOOP.value])), (a, b)


@pytest.mark.parametrize("status", [500, 503, 504])
async def test_a_deletion_answered_5xx_is_not_sent_again_and_its_node_is_neither_uncordoned_nor_replaced(
        world: dict[str, Any], status: int) -> None:  # noqa: F811
    """ARM accepts deleteMachines but a gateway answers 500, 503 or 504. Sent again (azure-core's
    retry policy resends a POST after those), it met its own operation (409) and was reported a
    conflict that never happened: its node was not watched, and once its VM was gone the next run
    uncordoned the node and booted a replacement for it. The POST goes once; the removal is
    pending, its node stays cordoned and is watched while it leaves."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await past_the_idle_limit(world, mode="Delete")
    arm.polls = 3
    arm.answer_failed("POST", status)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [c.status for c in arm.calls if c.method == "POST"] == [status], rec.render()
    assert [r.status for r in rec.results] == [Status.PENDING], rec.render()
    finish_operations(arm)
    assert arm.machines["gpu"] == ["gpu-0"] and arm.pools["gpu"]["count"] == 1
    # its VM is gone, its node still registered (NotReady, cordoned by us) until Kubernetes drops it
    kube.node("gpu-1", ready=False, unschedulable=True, annotations={CORDON_ANNOTATION: "hubpilot"})
    world["clock"]["now"] += timedelta(minutes=1)
    later = await runner.run(cap, trigger="timer", actor="test")
    assert later.plan is not None and later.plan.empty, later.render()  # no uncordon, no replacement
    assert later.plan.facts["leaving"] == ["gpu-1"]
    node = kube.node_obj("gpu-1")
    assert node["spec"]["unschedulable"] is True and node["metadata"]["annotations"].get(CORDON_ANNOTATION)
    assert not any(c.method == "PUT" for c in arm.calls) and arm.pools["gpu"]["count"] == 1


async def test_the_same_removal_applied_twice_deletes_once_and_keeps_the_node_cordoned(world: dict[str, Any]) -> None:  # noqa: F811
    """The same plan applied a second time after the first finished (a retried request, a re-run
    of an approved plan): the node is registered still (its VM is gone or going), its machine is
    not in the pool any more. It must stay cordoned and watched, never be uncordoned."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await one_empty_past_the_idle_limit(world)
    arm.pools["gpu"]["scaleDownMode"] = "Delete"  # a removed node leaves the cluster
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [(a.kind, a.params.get("nodes")) for a in plan.actions] == [("remove_nodes", ["gpu-0"])], plan
    first = await cap.apply(plan, observed, lambda *x: None)
    assert [r.status for r in first] == [Status.DONE] and arm.machines["gpu"] == []
    second = await cap.apply(plan, observed, lambda *x: None)
    assert [r.status for r in second] == [Status.NOOP] and "on its way out" in second[0].detail, second
    node = kube.node_obj("gpu-0")
    assert node["spec"]["unschedulable"] is True, second
    assert arm.machines["gpu"] == []
    world["clock"]["now"] += timedelta(minutes=1)
    later = await runner.run(cap, trigger="timer", actor="test")
    assert later.plan is not None and later.plan.empty, later.render()  # gpu-0 is leaving


async def test_a_scale_up_refused_for_a_stale_etag_says_so_not_409(world: dict[str, Any]) -> None:  # noqa: F811
    """The pool changed between the observation and the PUT (an admin's change, the autoscaler's):
    ARM answers 412, or the count read again is above the one planned. The action is skipped, and
    its text says the pool changed since it was read, not that another operation holds it (409):
    an admin told that looks for an operation that does not exist."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)  # waits for a GPU node
    cap, _ = capability(world)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [(a.kind, a.params["count"]) for a in plan.actions] == [("set_count", 2)]
    arm._bump("gpu")  # changed since it was read (same count): its eTag is new
    stale = await cap.apply(plan, observed, lambda *x: None)
    arm.pools["gpu"]["count"] = 3  # grew since it was read: set_count never lowers it
    arm.machines["gpu"] += ["gpu-1", "gpu-2"]
    grown = await cap.apply(plan, observed, lambda *x: None)
    for results in (stale, grown):
        assert [r.status for r in results] == [Status.SKIPPED], results
        detail = results[0].detail
        assert "changed since it was read" in detail and "409" not in detail, detail
        assert "another operation" not in detail, detail
    arm.pools["gpu"]["count"], arm.machines["gpu"] = 1, ["gpu-0"]
    arm.pools["gpu"]["provisioningState"] = "Updating"  # another operation holds the pool
    busy = await cap.apply(plan, observed, lambda *x: None)
    assert [r.status for r in busy] == [Status.SKIPPED], busy
    assert "another operation on the pool is in progress" in busy[0].detail and "409" in busy[0].detail, busy
    assert not [c for c in arm.calls if c.method == "PUT" and c.status < 300]
