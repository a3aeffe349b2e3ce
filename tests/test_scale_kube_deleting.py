"""Kubernetes side: a user pod being deleted (metadata.deletionTimestamp). On a node it still holds
the node (busy until it is gone); unscheduled -- a spawn cancelled, a server stopped before it was
placed -- it waits for nothing and is no demand (kmock + the ARM double, through the real clients)."""

from __future__ import annotations

from typing import Any

from hubpilot.loop import Outcome
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import NS, Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)

DELETED_AT = "2026-03-02T08:59:30Z"


def deleting_pod(kube: Emulator, name: str, node: str | None) -> None:
    """A GPU user pod as Emulator.pod makes it (the GPU pool's toleration too), with its deletion under way."""
    status: dict[str, Any] = {"phase": "Running" if node else "Pending"}
    if node is None:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    kube.k.objects["v1/pods", NS, name] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"component": "singleuser-server"},
                     "annotations": {"hub.jupyter.org/username": name, "hub.jupyter.org/servername": ""},
                     "deletionTimestamp": DELETED_AT, "deletionGracePeriodSeconds": 1},
        "spec": {"nodeName": node, "containers": [{"name": "notebook", "image": "x",
                                                    "resources": {"requests": {"nvidia.com/gpu": "1"}}}],
                 # it tolerates the GPU pool's taint: without, it would be no demand for its taint alone
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "status": status,
    }


async def test_a_pod_being_deleted_is_no_demand_but_still_holds_its_node(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    deleting_pod(kube, "alice", "gpu-0")  # stopping: her node is busy until the pod is gone
    deleting_pod(kube, "bob", None)  # his spawn was cancelled before the pod was placed
    kube.pod("carol", None, ns="other")  # another namespace: excluded
    view = await world["cluster"].read()
    assert sorted(p.name for p in view.pods) == ["alice", "bob"]
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert rec.plan is not None and rec.plan.empty, rec.render()
    assert rec.plan.facts["pending"] == [] and rec.plan.facts["busy"] == ["gpu-0"]
    assert not arm.writes()
