"""GPU node lifecycle on AKS, through the real ``kubernetes`` client against kmock and the ARM double:
a node is Ready before the NVIDIA device plugin (or the GPU operator, which installs the driver
first) registers its GPUs, and the device plugin takes a GPU out of ``allocatable`` for good when it
marks it unhealthy (an Xid error): the node stays Ready, a GPU pod can never land on it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.loop import Outcome
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)
from tests.test_scale_kube_taints import edit


def gpus(kube: Emulator, name: str, allocatable: str | None, *, capacity: str = "1",
         ready_since: Any = None) -> None:
    """The node's GPUs as the kubelet reports them (``allocatable`` None: not registered yet), and
    when it last became Ready."""
    status: dict[str, Any] = {"capacity": {"cpu": "4"}, "allocatable": {"cpu": "4"}}
    if allocatable is not None:
        status["capacity"]["nvidia.com/gpu"] = capacity
        status["allocatable"]["nvidia.com/gpu"] = allocatable
    ready: dict[str, Any] = {"type": "Ready", "status": "True"}
    if ready_since is not None:
        ready["lastTransitionTime"] = ready_since.strftime("%Y-%m-%dT%H:%M:%SZ")
    status["conditions"] = [ready]
    edit(kube, "nodes", name, status=status)


async def test_a_ready_node_whose_gpu_the_device_plugin_marked_unhealthy_is_replaced_for_a_waiting_server(
        world: dict[str, Any]) -> None:  # noqa: F811
    """gpu-1 has been Ready for hours, but its one GPU is unhealthy (allocatable 0): bob's GPU pod
    can never land there. Counted as capacity, the pool stayed at 2 and bob waited until his spawn
    timed out; it is no capacity for him: one node more, and the plan says why."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    now = world["clock"]["now"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    arm.pools["gpu"]["scaleDownMode"] = "Delete"
    kube.node("gpu-0")
    kube.node("gpu-1")
    gpus(kube, "gpu-0", "1", ready_since=now - timedelta(hours=3))
    gpus(kube, "gpu-1", "0", ready_since=now - timedelta(hours=3))
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)
    view = await world["cluster"].read()
    assert {n.name: n.gpus for n in view.nodes} == {"gpu-0": 1, "gpu-1": 0}
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert rec.plan is not None and [(a.kind, a.params.get("count")) for a in rec.plan.actions] == [("set_count", 3)]
    assert any("gpu-1" in w and "without an allocatable GPU" in w for w in rec.plan.facts["why"]), rec.plan.facts["why"]
    assert arm.pools["gpu"]["count"] == 3
    # bob lands on the new node; the node without a GPU is then surplus, and removed once idle
    kube.node("gpu-2")
    gpus(kube, "gpu-2", "1", ready_since=now)
    kube.pod("bob", "gpu-2")
    arm.machines["gpu"].append("gpu-2")
    world["clock"]["now"] += timedelta(minutes=11)
    later = await runner.run(cap, trigger="timer", actor="test")
    assert later.outcome is Outcome.APPLIED, later.render()
    assert later.plan is not None and [a.params.get("nodes") for a in later.plan.actions] == [["gpu-1"]]


async def test_a_node_whose_device_plugin_has_not_registered_yet_is_capacity_on_the_way(
        world: dict[str, Any]) -> None:  # noqa: F811
    """Ready a minute ago, GPUs not registered yet (the device plugin, or the GPU operator's driver,
    comes minutes after Ready): bob's pod will land there, no second node is booted for him. The
    same for a node of a Deallocate pool restarted a minute ago (created long ago, the kubelet
    lists 0 GPUs until the plugin registers again)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    now = world["clock"]["now"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    kube.node("gpu-0")
    kube.node("gpu-1")
    gpus(kube, "gpu-0", "1", ready_since=now - timedelta(hours=3))
    gpus(kube, "gpu-1", None, ready_since=now - timedelta(minutes=1))
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.empty, rec.render()
    gpus(kube, "gpu-1", "0", ready_since=now - timedelta(minutes=1))  # restarted: listed, 0 until it registers
    again = await runner.run(cap, trigger="timer", actor="test")
    assert again.plan is not None and again.plan.empty, again.render()


async def test_a_pool_whose_nodes_never_list_the_gpu_resource_is_not_grown_node_after_node(
        world: dict[str, Any]) -> None:  # noqa: F811
    """No node lists ``nvidia.com/gpu`` at all (a pool whose GPUs come under another resource name,
    or a driver that fails on every node): a replacement would be no different, so the nodes stay
    capacity as before -- no node is booted a round for ever."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    now = world["clock"]["now"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    arm.pools["gpu"]["scaleDownMode"] = "Delete"
    kube.node("gpu-0")
    gpus(kube, "gpu-0", None, ready_since=now - timedelta(hours=3))
    kube.pod("bob", None)
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.empty, rec.render()
