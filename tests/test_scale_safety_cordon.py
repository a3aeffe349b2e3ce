"""Safety: a node cordoned by someone else after the observation is never cordoned, and so never
uncordoned, by hubpilot; nor is one that changed in any way since it was observed (the cordon
carries the observed resourceVersion, which the API server checks) (kmock + the ARM double,
through the real clients)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.adapters.kube import KubeCluster
from hubpilot.loop import Status
from hubpilot.ports.cluster import CORDON_ANNOTATION
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import NS, Emulator
from tests.test_scale_kube import capability, one_empty_past_the_idle_limit, past_the_idle_limit, world  # noqa: F401


async def test_a_node_cordoned_by_someone_else_after_planning_is_left_as_it_is(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, _ = await one_empty_past_the_idle_limit(world)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.kind for a in plan.actions] == ["remove_nodes"]
    kube.node("gpu-0", unschedulable=True)  # an admin cordons it (maintenance) after the plan
    arm.fault("POST", 409)  # and ARM refuses the deletion: hubpilot would uncordon what it cordoned
    results = await cap.apply(plan, observed, lambda *a: None)
    node = kube.node_obj("gpu-0")
    assert node["spec"]["unschedulable"] is True, results  # still the admin's cordon
    assert CORDON_ANNOTATION not in (node["metadata"].get("annotations") or {})
    assert results[0].status is Status.NOOP and "cordoned by someone else" in results[0].detail
    assert not arm.writes() and arm.machines["gpu"] == ["gpu-0"]


async def test_the_cordon_of_a_removal_carries_the_resource_version_it_observed(world: dict[str, Any]) -> None:  # noqa: F811
    """The API server checks it: a node changed since the observation is answered 409."""
    kube: Emulator = world["kube"]
    cap, _ = await past_the_idle_limit(world)
    seen = kube.node_obj("gpu-1")["metadata"]["resourceVersion"]
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    before = len(list(kube.k["patch /api/v1/nodes/gpu-1"]))
    results = await cap.apply(plan, observed, lambda *a: None)
    assert [r.status for r in results] == [Status.DONE], results
    cordon = list(kube.k["patch /api/v1/nodes/gpu-1"])[before]
    assert cordon.data["spec"] == {"unschedulable": True}
    assert cordon.data["metadata"]["resourceVersion"] == seen, cordon.data


async def test_a_node_another_run_cordoned_since_the_observation_is_left_to_it(world: dict[str, Any]) -> None:  # noqa: F811
    """Two runs from different observations (two deployments, a lost lock): the other one cordoned
    gpu-1 for a removal of its own after this run observed it. This run's cordon is refused (409,
    the node changed since it was observed): it neither deletes the node's machine nor, later,
    uncordons it under the other run's deletion."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, _ = await past_the_idle_limit(world, mode="Delete")
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.params["nodes"] for a in plan.actions] == [["gpu-1"]], plan
    other = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url)
    try:
        assert await other.cordon("gpu-1", cap.holder)  # the other run, same holder name
    finally:
        await other.close()
    results = await cap.apply(plan, observed, lambda *a: None)
    assert [r.status for r in results] == [Status.NOOP], results
    assert "changed since it was observed" in results[0].detail, results
    assert not arm.writes() and arm.machines["gpu"] == ["gpu-0", "gpu-1"]
    node = kube.node_obj("gpu-1")
    assert node["spec"]["unschedulable"] is True  # the other run's cordon stands
    assert node["metadata"]["annotations"][CORDON_ANNOTATION] == cap.holder


async def test_a_pod_bound_to_a_node_after_its_re_check_keeps_the_node(world: dict[str, Any]) -> None:  # noqa: F811
    """Two empty idle nodes go in one removal: gpu-1 is cordoned and found empty, then gpu-2. A pod
    the scheduler had placed on gpu-1 before its cordon is bound meanwhile (its binding lands after
    the re-check). A last look at the cordoned nodes just before deleteMachines keeps gpu-1 (and
    uncordons it) instead of deleting the VM under the user's server."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=3, machines=["gpu-0", "gpu-1", "gpu-2"])
    arm.pools["gpu"]["scaleDownMode"] = "Delete"
    for n in ("gpu-0", "gpu-1", "gpu-2"):
        kube.node(n)
    kube.pod("alice", "gpu-0")
    cap, runner = capability(world)
    await runner.run(cap, trigger="timer", actor="test")
    world["clock"]["now"] += timedelta(minutes=11)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.params["nodes"] for a in plan.actions] == [["gpu-1", "gpu-2"]], plan
    kube.k.after_node_patch["gpu-2"] = lambda: kube.pod("bob", "gpu-1")  # bound once gpu-1 was re-checked
    results = await cap.apply(plan, observed, lambda *a: None)
    assert [r.status for r in results] == [Status.DONE], results
    assert results[0].action.params["removed_nodes"] == ["gpu-2"], results
    assert "gpu-1 (now runs bob)" in results[0].detail, results
    assert arm.machines["gpu"] == ["gpu-0", "gpu-1"]  # bob's VM stays
    node = kube.node_obj("gpu-1")
    assert not node["spec"]["unschedulable"] and CORDON_ANNOTATION not in (node["metadata"].get("annotations") or {})


async def test_a_pod_bound_to_the_only_node_of_a_removal_after_its_cordon_keeps_the_node(
        world: dict[str, Any]) -> None:  # noqa: F811
    """The re-check after each cordon is what keeps the last node of a removal (the last look
    before the deletion covers only the nodes cordoned before it): one empty node is removed, and a
    pod the scheduler placed on it before its cordon is bound just after it. Nothing is deleted and
    the node is uncordoned, back in service under the user's server."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, _ = await one_empty_past_the_idle_limit(world)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert [a.params["nodes"] for a in plan.actions] == [["gpu-0"]], plan
    kube.k.after_node_patch["gpu-0"] = lambda: kube.pod("late", "gpu-0")  # bound after the cordon
    results = await cap.apply(plan, observed, lambda *a: None)
    assert [r.status for r in results] == [Status.NOOP], results
    assert "gpu-0 (now runs late)" in results[0].detail, results
    assert not [c for c in arm.calls if c.method == "POST"] and arm.machines["gpu"] == ["gpu-0"]
    node = kube.node_obj("gpu-0")
    assert not node["spec"]["unschedulable"] and CORDON_ANNOTATION not in (node["metadata"].get("annotations") or {})


async def test_the_adapter_never_cordons_a_node_someone_else_cordoned(world: dict[str, Any]) -> None:  # noqa: F811
    """The adapter reads the node first: one cordoned without hubpilot's annotation is someone
    else's, and is left untouched even when the resourceVersion given is the node's current one
    (the API server's precondition cannot tell), or none is given."""
    kube: Emulator = world["kube"]
    cluster: KubeCluster = world["cluster"]
    kube.node("gpu-0", unschedulable=True)  # an admin's cordon, before the observation
    kube.node("gpu-1")
    current = kube.node_obj("gpu-0")["metadata"]["resourceVersion"]
    before = len(list(kube.k["patch /api/v1/nodes/gpu-0"]))
    assert not await cluster.cordon("gpu-0", "hubpilot", resource_version=current)
    assert not await cluster.cordon("gpu-0", "hubpilot")
    assert len(list(kube.k["patch /api/v1/nodes/gpu-0"])) == before
    assert CORDON_ANNOTATION not in (kube.node_obj("gpu-0")["metadata"].get("annotations") or {})
    assert await cluster.cordon("gpu-1", "hubpilot")
    assert kube.node_obj("gpu-1")["metadata"]["annotations"][CORDON_ANNOTATION] == "hubpilot"
