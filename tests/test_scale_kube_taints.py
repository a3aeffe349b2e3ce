"""Taints, tolerations and deletionTimestamp through the real ``kubernetes`` client against kmock:
the adapter reads them (kmock ignores selectors: the objects the selectors must exclude are there
too), cordon leaves alone a node that is being deleted, and whole scale runs in autoscaler-assist
mode never remove a node beside the one the cluster autoscaler is removing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from hubpilot.loop import Outcome
from hubpilot.ports.cluster import CORDON_ANNOTATION, Taint, Toleration
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import NS, Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)

POOL_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}


def plain(value: Any) -> Any:
    """A stored object as plain dicts and lists (kmock hands out its own mapping views)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def edit(kube: Emulator, kind: str, name: str, ns: str | None = None, **changes: Any) -> None:
    """Set fields of a stored object: ``spec={...}`` / ``metadata={...}`` are merged one level deep."""
    key = (f"v1/{kind}", ns, name)
    obj = plain(kube.k.objects[key])
    for part, fields in changes.items():
        obj[part] = {**obj.get(part, {}), **fields}
    kube.k.objects[key] = obj


def mark(kube: Emulator, name: str, now: Any) -> None:
    """The cluster autoscaler's marks on a node it is removing."""
    edit(kube, "nodes", name, spec={"taints": [
        POOL_TAINT,
        {"key": "DeletionCandidateOfClusterAutoscaler", "value": str(int(now.timestamp()) - 600),
         "effect": "PreferNoSchedule"},
        {"key": "ToBeDeletedByClusterAutoscaler", "value": str(int(now.timestamp()) - 30), "effect": "NoSchedule"}]})


async def test_read_maps_taints_deletion_and_tolerations(world: dict[str, Any]) -> None:  # noqa: F811
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    kube.node("gpu-1")
    kube.node("cpu-0", pool="system")  # the node selector excludes it
    edit(kube, "nodes", "gpu-0", spec={"taints": [POOL_TAINT]})
    edit(kube, "nodes", "gpu-1", metadata={"deletionTimestamp": "2026-03-02T08:59:00Z", "finalizers": ["x"]})
    edit(kube, "nodes", "cpu-0", spec={"taints": [{"key": "other", "effect": "NoExecute"}]})
    kube.pod("bob", None)
    edit(kube, "pods", "bob", NS, spec={"tolerations": [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 300},
        {"operator": "Exists"}]})
    view = await world["cluster"].read()
    nodes = {n.name: n for n in view.nodes}
    assert sorted(nodes) == ["gpu-0", "gpu-1"]
    assert nodes["gpu-0"].taints == (Taint("sku", "gpu", "NoSchedule"),) and not nodes["gpu-0"].deleting
    assert nodes["gpu-1"].taints == () and nodes["gpu-1"].deleting
    (bob,) = view.pods
    assert bob.tolerations == (Toleration("sku", "Equal", "gpu", "NoSchedule"),
                               Toleration("node.kubernetes.io/not-ready", "Exists", "", "NoExecute", 300),
                               Toleration("", "Exists", "", ""))


async def test_cordon_leaves_a_node_that_is_being_deleted_alone(world: dict[str, Any]) -> None:  # noqa: F811
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    kube.node("gpu-1")
    mark(kube, "gpu-0", world["clock"]["now"])
    edit(kube, "nodes", "gpu-1", metadata={"deletionTimestamp": "2026-03-02T08:59:00Z", "finalizers": ["x"]})
    for name in ("gpu-0", "gpu-1"):
        assert not await world["cluster"].cordon(name, "hubpilot")
        obj = kube.node_obj(name)
        assert not obj["spec"].get("unschedulable") and CORDON_ANNOTATION not in obj["metadata"]["annotations"]


async def test_assist_mode_removes_no_node_beside_the_one_the_autoscaler_removes(
        world: dict[str, Any]) -> None:  # noqa: F811
    """count 3, floor 2: alice on gpu-0, gpu-1 and gpu-2 empty and idle. The autoscaler is removing
    gpu-2; hubpilot removing gpu-1 too would leave one node, below the floor, with no spare."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=3, autoscaling=True, min_count=2, max_count=6,
                 machines=["gpu-0", "gpu-1", "gpu-2"])
    for n in ("gpu-0", "gpu-1", "gpu-2"):
        kube.node(n)
        edit(kube, "nodes", n, spec={"taints": [POOL_TAINT]})
    kube.pod("alice", "gpu-0")
    edit(kube, "pods", "alice", NS, spec={"tolerations": [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]})
    cap, runner = capability(world, min_nodes=2)
    await runner.run(cap, trigger="timer", actor="test")
    world["clock"]["now"] += timedelta(minutes=11)
    mark(kube, "gpu-2", world["clock"]["now"])
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED and rec.plan is not None and rec.plan.empty, rec.render()
    assert rec.plan.facts["leaving"] == ["gpu-2"]
    assert not arm.writes() and arm.machines["gpu"] == ["gpu-0", "gpu-1", "gpu-2"]
    assert not kube.node_obj("gpu-1")["spec"].get("unschedulable")
