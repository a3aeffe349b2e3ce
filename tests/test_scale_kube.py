"""The Kubernetes adapter against kmock (a Kubernetes API emulator) with the real ``kubernetes``
client, and whole scale runs: kmock + the ARM double + a SQLite state store, through the Runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.aks import AksPool
from hubpilot.adapters.kube import KubeCluster
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome, Runner, Status
from hubpilot.ports.cluster import CORDON_ANNOTATION
from hubpilot.scale import Forecast, ForecastPolicy, Policy, ScaleCapability, cost_report, record_demand
from hubpilot.scale.capability import FORECAST_KEY, MEMORY_KEY
from hubpilot.scale.cost import last_size
from tests.doubles.arm import ArmDouble, StaticToken
from tests.fixtures.kmock import NS, Emulator


@pytest.fixture
async def world(kube: Emulator, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    kube.clear()
    arm = ArmDouble()
    await arm.start()
    store = SqliteStore(tmp_path / "state.sqlite3")
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url)
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=1,
                   retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)
    clock = {"now": datetime(2026, 3, 2, 9, 0, tzinfo=UTC)}  # a Monday
    yield {"arm": arm, "store": store, "cluster": cluster, "pool": pool, "kube": kube, "clock": clock}
    await pool.close()
    await cluster.close()
    await store.close()
    await arm.stop()


def capability(w: dict[str, Any], **policy: Any) -> tuple[ScaleCapability, Runner[Any]]:
    clock = w["clock"]
    now = lambda: clock["now"]  # noqa: E731
    pol = Policy(**{"max_nodes": 6, "idle": timedelta(minutes=10), "delay_after_up": timedelta(minutes=10),
                    "down_cooldown": timedelta(0), **policy})
    cap = ScaleCapability(w["pool"], w["cluster"], w["store"], pol, clock=now)
    return cap, Runner(w["store"], clock=now)


# --- the adapter -----------------------------------------------------------------------------
async def test_read_filters_what_the_selectors_should_have_excluded(world: dict[str, Any]) -> None:
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    kube.node("cpu-0", pool="system")
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)  # pending, wants a GPU
    kube.pod("carol", None, gpu=False)  # pending, no GPU: not our demand
    kube.pod("dave", "cpu-0")  # runs on another pool
    kube.pod("hub-0", "gpu-0", component="hub")  # not a user pod
    kube.pod("eve", "gpu-0", ns="other")  # another namespace
    view = await world["cluster"].read()
    assert [n.name for n in view.nodes] == ["gpu-0"]
    assert sorted(p.name for p in view.pods) == ["alice", "bob"]
    bob = next(p for p in view.pods if p.name == "bob")
    assert bob.node is None and bob.unschedulable and bob.gpu and bob.user == "bob"
    on = await world["cluster"].pods_on("gpu-0")
    assert [p.name for p in on] == ["alice"]


async def test_user_pods_in_namespaces_of_their_own(world: dict[str, Any]) -> None:
    """KubeSpawner's user namespaces: with scale.user_namespaces the node of a user whose pod runs in
    ``jhub-alice`` is busy, in the plan's view and in apply's re-check; without, it looks empty."""
    kube: Emulator = world["kube"]
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    kube.node("gpu-0")
    kube.node("gpu-1")
    kube.pod("alice", "gpu-0", ns=f"{NS}-alice")
    kube.pod("hub-0", "gpu-1", ns=f"{NS}-x", component="hub")  # not a user pod, in any namespace
    narrow: KubeCluster = world["cluster"]
    assert (await narrow.read()).pods == () and await narrow.pods_on("gpu-0") == []
    wide = KubeCluster(namespace=NS, all_namespaces=True, pool="gpu", api_url=kube.url)
    view = await wide.read()
    assert sorted(p.name for p in view.pods) == ["alice"]
    assert [p.name for p in await wide.pods_on("gpu-0")] == ["alice"]
    assert await wide.pods_on("gpu-1") == []
    world["cluster"] = wide
    cap, runner = capability(world)
    first = await runner.run(cap, trigger="timer", actor="test")
    assert first.plan is not None and first.plan.empty
    world["clock"]["now"] += timedelta(minutes=11)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert rec.plan is not None and [a.params["nodes"] for a in rec.plan.actions] == [["gpu-1"]]
    assert arm.machines["gpu"] == ["gpu-0"]  # alice's node stays


async def test_cordon_and_uncordon(world: dict[str, Any]) -> None:
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    assert await world["cluster"].cordon("gpu-0", "hubpilot")
    obj = kube.node_obj("gpu-0")
    assert obj["spec"]["unschedulable"] is True
    assert obj["metadata"]["annotations"][CORDON_ANNOTATION] == "hubpilot"
    assert await world["cluster"].uncordon("gpu-0")
    assert kube.node_obj("gpu-0")["spec"]["unschedulable"] is False
    assert not await world["cluster"].cordon("gone", "hubpilot")
    assert not await world["cluster"].uncordon("gone")  # removed meanwhile: nothing to undo, no error


# --- whole runs ------------------------------------------------------------------------------
async def test_direct_mode_scales_up_for_a_pending_gpu_pod(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    world["kube"].node("gpu-0")
    world["kube"].pod("alice", "gpu-0")
    world["kube"].pod("bob", None)
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert [(r.action.kind, r.status) for r in rec.results] == [("set_count", Status.DONE)]
    assert arm.pools["gpu"]["count"] == 2
    again = await runner.run(cap, trigger="timer", actor="test")  # the node has not joined yet
    assert again.plan is not None and again.plan.empty, again.render()


async def test_direct_mode_removes_only_the_idle_empty_node(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=3, machines=["gpu-0", "gpu-1", "gpu-2"])
    for n in ("gpu-0", "gpu-1", "gpu-2"):
        kube.node(n)
    kube.pod("alice", "gpu-1")
    cap, runner = capability(world, min_nodes=1)
    first = await runner.run(cap, trigger="timer", actor="test")
    assert first.plan is not None and first.plan.empty  # empty since now: not idle yet
    world["clock"]["now"] += timedelta(minutes=11)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    action = rec.plan.actions[0] if rec.plan else None
    assert action is not None and action.kind == "remove_nodes"
    assert action.params["nodes"] == ["gpu-0", "gpu-2"]  # the busy node satisfies min_nodes 1
    assert arm.machines["gpu"] == ["gpu-1"]
    post = next(c for c in arm.calls if c.method == "POST")
    assert post.body["machineNames"] == action.params["nodes"]
    assert not any(c.method == "PUT" for c in arm.calls)  # never lowers the count itself


async def test_nodes_removed_from_a_delete_pool_are_leaving_while_they_linger(world: dict[str, Any]) -> None:
    """With scaleDownMode Delete the VMs are gone but their nodes stay registered (NotReady, cordoned
    by us) until Kubernetes drops them: leaving, not unusable capacity to replace or nodes to uncordon."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await past_the_idle_limit(world, busy="gpu-1", empty="gpu-0", mode="Delete")
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and [a.params["nodes"] for a in rec.plan.actions] == [["gpu-0"]], rec.render()
    kube.node("gpu-0", ready=False, unschedulable=True, annotations={CORDON_ANNOTATION: "hubpilot"})
    world["clock"]["now"] += timedelta(minutes=1)
    after = await runner.run(cap, trigger="timer", actor="test")
    assert after.plan is not None and after.plan.empty, after.render()
    assert after.plan.facts["leaving"] == ["gpu-0"] and arm.pools["gpu"]["count"] == 1


async def test_stopped_vms_of_a_deallocate_pool_are_left_alone(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])  # the double's pools use scaleDownMode Deallocate
    kube.node("gpu-0")
    for stopped in ("gpu-1", "gpu-2"):  # stopped VMs keep their nodes, NotReady, outside the count
        kube.node(stopped, ready=False)
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert rec.plan is not None and rec.plan.facts["stopped"] == 2
    assert [(r.action.kind, r.action.params["count"]) for r in rec.results] == [("set_count", 2)]
    assert arm.pools["gpu"]["count"] == 2  # one VM started for bob, none "replacing" the stopped ones
    kube.pod("bob", "gpu-1")  # the restarted VM is ready and runs bob; gpu-2 stays stopped
    kube.node("gpu-1")
    kube.pod("alice", "gpu-0", phase="Succeeded")  # alice stopped: gpu-0 is empty
    world["clock"]["now"] += timedelta(minutes=30)
    await runner.run(cap, trigger="timer", actor="test")  # gpu-0 empty from now on
    world["clock"]["now"] += timedelta(minutes=11)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    removed = [a.params["nodes"] for a in rec.plan.actions if a.kind == "remove_nodes"] if rec.plan else []
    assert removed == [["gpu-0"]]  # the idle ready node; never the stopped VM's node gpu-2
    assert kube.node_obj("gpu-2")["spec"]["unschedulable"] is False  # not even cordoned


@pytest.mark.parametrize("mode", ["Deallocate", "Delete"])
async def test_the_cost_report_counts_a_deallocate_pools_stopped_vms_apart(world: dict[str, Any], mode: str) -> None:
    """Azure bills a stopped VM's managed disks: the cost report counts the stopped VM-hours of a
    Deallocate pool apart from the node-hours (no compute billed), and prices them with
    scale.stopped_vm_price_per_hour. Observed each run: two stopped VMs for an hour, then one (its
    VM deleted) for an hour. A Delete pool keeps no stopped VM: nothing recorded, nothing counted."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    arm.pools["gpu"]["scaleDownMode"] = mode
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    if mode == "Deallocate":
        for stopped in ("gpu-1", "gpu-2"):  # stopped VMs keep their nodes, NotReady, outside the count
            kube.node(stopped, ready=False)
    cap, runner = capability(world)
    start = world["clock"]["now"]
    for minutes in range(0, 121, 10):
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        if minutes == 60 and mode == "Deallocate":
            del kube.k.objects["v1/nodes", None, "gpu-2"]  # its VM deleted: one stopped VM left
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.APPLIED and rec.plan is not None and rec.plan.empty, rec.render()
    rep = await cost_report(world["store"], now=start + timedelta(hours=2), days=1, price=2.0, currency="EUR",
                            stopped_price=0.05)
    day = rep.days[-1]
    assert day.node_hours == pytest.approx(2.0)  # gpu-0, running
    if mode == "Delete":
        assert day.stopped_vm_hours == 0 and await world["store"].list("scale/stopped/") == {}
        assert not any("stopped VMs" in n for n in rep.notes()) and "stopped h" not in rep.render()
        return
    assert day.stopped_vm_hours == pytest.approx(3.0)  # 2 VMs x 1 h + 1 VM x 1 h
    assert day.stopped_vm_cost == pytest.approx(0.15)
    total = rep.to_json()["total"]
    assert (total["stopped_vm_hours"], total["stopped_vm_cost"], total["cost"]) == (3.0, 0.15, 4.0)
    assert any("stopped VMs of the pool" in n and "3.00 VM-hours" in n for n in rep.notes()), rep.notes()
    assert "stopped h" in rep.render().splitlines()[0]
    unpriced = await cost_report(world["store"], now=start + timedelta(hours=2), days=1, price=2.0, currency="EUR")
    assert unpriced.days[-1].stopped_vm_cost is None
    assert any("set scale.stopped_vm_price_per_hour" in n for n in unpriced.notes())


async def past_the_idle_limit(w: dict[str, Any], *, busy: str = "gpu-0", empty: str = "gpu-1",
                              mode: str = "Deallocate") -> tuple[ScaleCapability, Runner[Any]]:
    """A pool of two nodes: ``busy`` runs alice, ``empty`` has stood empty past the idle limit."""
    arm: ArmDouble = w["arm"]
    kube: Emulator = w["kube"]
    arm.add_pool("gpu", count=2, machines=sorted([busy, empty]))
    arm.pools["gpu"]["scaleDownMode"] = mode
    kube.node(busy)
    kube.node(empty)
    kube.pod("alice", busy)
    cap, runner = capability(w)
    await runner.run(cap, trigger="timer", actor="test")
    w["clock"]["now"] += timedelta(minutes=11)
    return cap, runner


async def one_empty_past_the_idle_limit(w: dict[str, Any]) -> tuple[ScaleCapability, Runner[Any]]:
    """A pool of one node, gpu-0, empty since the first run and now past the idle limit."""
    w["arm"].add_pool("gpu", count=1, machines=["gpu-0"])
    w["kube"].node("gpu-0")
    cap, runner = capability(w)
    await runner.run(cap, trigger="timer", actor="test")
    w["clock"]["now"] += timedelta(minutes=11)
    return cap, runner


async def removed_from_a_deallocate_pool(w: dict[str, Any]) -> tuple[ScaleCapability, Runner[Any]]:
    """gpu-0 runs alice, gpu-1 stands empty past the idle limit and is removed (deleteMachines)."""
    cap, runner = await past_the_idle_limit(w)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert [r.action.params.get("removed_nodes") for r in rec.results] == [["gpu-1"]]
    memory = await w["store"].get(MEMORY_KEY)
    assert memory is not None and list(memory["removed"]) == ["gpu-1"]  # watched from now on
    return cap, runner


async def test_a_removed_vm_whose_node_stays_registered_was_kept(world: dict[str, Any]) -> None:
    cap, runner = await removed_from_a_deallocate_pool(world)
    world["kube"].node("gpu-1", ready=False)  # the stopped VM's node, NotReady
    world["clock"]["now"] += timedelta(minutes=5)
    soon = await runner.run(cap, trigger="timer", actor="test")
    assert soon.plan is not None and "removal_keeps_vms" not in soon.plan.facts
    world["clock"]["now"] += timedelta(minutes=6)
    later = await runner.run(cap, trigger="timer", actor="test")
    assert later.plan is not None and later.plan.facts["removal_keeps_vms"] is True
    assert not any("deleted the VMs" in n for n in later.plan.notes)


async def test_a_removed_vm_whose_node_goes_was_deleted_and_the_plan_says_so(world: dict[str, Any]) -> None:
    cap, runner = await removed_from_a_deallocate_pool(world)
    del world["kube"].k.objects["v1/nodes", None, "gpu-1"]  # AKS deleted the VM: its node is gone
    world["clock"]["now"] += timedelta(minutes=1)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.facts["removal_keeps_vms"] is False
    assert any("AKS deleted the VMs hubpilot removed" in n for n in rec.plan.notes), rec.plan.notes
    memory = await world["store"].get(MEMORY_KEY)
    assert memory is not None and memory["vm_kept"] is False and memory["removed"] == {}


async def test_a_node_that_got_a_pod_after_planning_is_uncordoned_not_removed(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    kube.node("gpu-0")
    kube.node("gpu-1")
    cap, runner = capability(world, max_step_down=2)
    await runner.run(cap, trigger="timer", actor="test")
    world["clock"]["now"] += timedelta(minutes=11)
    observed = await cap.observe()
    plan = cap.plan(observed, world["clock"]["now"])
    assert plan.actions[0].params["nodes"] == ["gpu-0", "gpu-1"]
    kube.pod("late", "gpu-0")  # a spawn lands between plan and apply
    results = await cap.apply(plan, observed, lambda *a: None)
    assert results[0].status is Status.DONE and "kept gpu-0" in results[0].detail
    assert results[0].action.params["removed_nodes"] == ["gpu-1"]
    assert arm.machines["gpu"] == ["gpu-0"]
    assert kube.node_obj("gpu-0")["spec"]["unschedulable"] is False
    # the cost record has the size the pool really has: one node removed, not the two planned
    assert await last_size(world["store"], world["clock"]["now"].date()) == 1


async def test_a_node_whose_user_pod_has_ended_is_removed(world: dict[str, Any]) -> None:
    """A user pod that has ended stays listed until it is deleted: an evicted one (phase Failed)
    lingers until the pod garbage collector takes it. It runs nothing: the plan counts its node
    empty, and apply's re-check after the cordon finds the node empty too and removes it (not
    kept, cordoned and uncordoned again every round while the VM costs on)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await one_empty_past_the_idle_limit(world)
    kube.pod("evicted", "gpu-0", phase="Failed")
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert [(r.action.kind, r.status) for r in rec.results] == [("remove_nodes", Status.DONE)], rec.render()
    assert rec.results[0].action.params["removed_nodes"] == ["gpu-0"], rec.render()
    assert arm.machines["gpu"] == []


async def test_dry_run_cordons_nothing(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await one_empty_past_the_idle_limit(world)
    rec = await runner.run(cap, trigger="cli", actor="test", dry_run=True)
    assert rec.outcome is Outcome.PLANNED and rec.plan is not None and rec.plan.counts() == {"remove_nodes": 1}
    assert kube.node_obj("gpu-0")["spec"].get("unschedulable") is False
    assert not arm.writes()


async def test_409_skips_the_round_and_the_next_run_removes_the_node(world: dict[str, Any]) -> None:
    """The 409's operation may be deleting this very node (another run's deleteMachines): it stays
    cordoned, and the next run re-observes (tests/test_scale_concurrent.py)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await one_empty_past_the_idle_limit(world)
    arm.fault("POST", 409)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [r.status for r in rec.results] == [Status.SKIPPED], rec.render()
    assert "409" in rec.results[0].detail and "left cordoned gpu-0" in rec.results[0].detail
    assert [c.status for c in arm.calls if c.method == "POST"] == [409]  # not retried
    assert kube.node_obj("gpu-0")["spec"]["unschedulable"] is True
    assert arm.machines["gpu"] == ["gpu-0"]
    again = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in again.results] == [("remove_nodes", Status.DONE)], again.render()
    assert arm.machines["gpu"] == []


async def test_409_then_demand_uncordons_the_node(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    cap, runner = await one_empty_past_the_idle_limit(world)
    arm.fault("POST", 409)
    await runner.run(cap, trigger="timer", actor="test")
    assert kube.node_obj("gpu-0")["spec"]["unschedulable"] is True
    kube.pod("bob", None)  # a GPU server waits: the node is wanted again
    again = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in again.results] == [("uncordon", Status.DONE)], again.render()
    assert kube.node_obj("gpu-0")["spec"]["unschedulable"] is False


async def test_pool_busy_skips_the_round(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    arm.pools["gpu"]["provisioningState"] = "Upgrading"
    world["kube"].pod("bob", None)
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.empty
    assert any("Upgrading" in n for n in rec.plan.notes)
    assert not arm.writes()


async def test_a_scale_up_of_a_failed_pool_adds_at_most_max_step_up_machines(world: dict[str, Any]) -> None:
    """A failed scale-up leaves its count (6) with the machines that existed (2): those never
    created are not there, and the next count asks for them again. scale.max_step_up (4) is the
    most nodes one run adds: the step is from the machines that exist, not the failed count (a
    count of 6 + 2 = 8 would add 6 machines at once)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    for i in range(2):
        kube.node(f"gpu-{i}")
        kube.pod(f"u{i}", f"gpu-{i}")
    for i in range(2, 6):
        kube.pod(f"u{i}", None)
    arm.fail_next_operation = "AllocationFailed"
    cap, runner = capability(world, max_step_up=4, max_nodes=10)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.action.params["count"], r.status) for r in rec.results] == [
        ("set_count", 6, Status.FAILED)], rec.render()
    assert arm.pools["gpu"]["count"] == 6 and len(arm.machines["gpu"]) == 2
    for i in range(6, 8):  # two more servers wait: 6 in all, 8 nodes wanted
        kube.pod(f"u{i}", None)
    again = await runner.run(cap, trigger="timer", actor="test")
    assert again.outcome is Outcome.APPLIED, again.render()
    assert [(r.action.kind, r.action.params["count"], r.status) for r in again.results] == [
        ("set_count", 6, Status.DONE)], again.render()
    assert len(arm.machines["gpu"]) == 6


async def test_failed_operation_is_reported_and_the_next_run_reobserves(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=0, machines=[])
    world["kube"].pod("bob", None)
    arm.fail_next_operation = "AllocationFailed"
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.FAILED and "operation failed" in rec.results[0].detail
    assert arm.pools["gpu"]["provisioningState"] == "Failed"  # a failed pool takes new operations
    # as ARM: the failed scale-up's count stays the pool's (1) with no machine behind it; that
    # machine is not on its way, and bob still waits: the next run sends the count again
    assert arm.pools["gpu"]["count"] == 1 and arm.machines["gpu"] == []
    again = await runner.run(cap, trigger="timer", actor="test")
    assert again.outcome is Outcome.APPLIED, again.render()
    assert [(r.action.kind, r.action.params["count"], r.status) for r in again.results] == [
        ("set_count", 1, Status.DONE)], again.render()
    assert len(arm.machines["gpu"]) == 1 and arm.pools["gpu"]["provisioningState"] == "Succeeded"
    assert again.plan is not None and again.plan.facts["booting"] == 0


async def test_autoscaler_assist_sets_min_count_from_hook_demand(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=0, autoscaling=True, min_count=0, max_count=4, machines=[])
    cap, runner = capability(world)
    await record_demand(world["store"], user="alice", server="", profile="gpu",
                        at=world["clock"]["now"])
    rec = await runner.run(cap, trigger="demand", actor="hub")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    put = next(c for c in arm.calls if c.method == "PUT")
    assert put.body["properties"]["minCount"] == 1 and put.body["properties"]["count"] == 0
    assert arm.pools["gpu"]["minCount"] == 1


async def test_cost_records_every_size_change(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    kube.pod("bob", None)
    cap, runner = capability(world)
    start = world["clock"]["now"]
    await runner.run(cap, trigger="timer", actor="test")  # records 1, then 2
    world["clock"]["now"] = start + timedelta(hours=2)
    report = await cost_report(world["store"], now=world["clock"]["now"], days=1, price=2.5, currency="EUR")
    day = report.days[0]
    assert day.peak == 2 and day.changes == 2
    assert day.node_hours == pytest.approx(4.0, abs=0.01)  # 2 nodes for 2 hours from 09:00
    assert day.cost == pytest.approx(10.0, abs=0.05)
    assert day.always_on_node_hours == pytest.approx(2 * 2, abs=0.01)  # 09:00 → 11:00 at the peak


async def test_an_unreadable_hub_only_delays_demand_it_never_blocks_the_round(world: dict[str, Any]) -> None:
    from hubpilot.adapters.hub import HubClient

    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=0, machines=[])
    world["kube"].pod("bob", None)
    clock = world["clock"]
    hub = HubClient("http://127.0.0.1:9/hub/api", "t", retries=0, timeout=2)
    try:
        cap = ScaleCapability(world["pool"], world["cluster"], world["store"], Policy(max_nodes=4),
                              clock=lambda: clock["now"], hub=hub, gpu_profiles=["gpu"])
        rec = await Runner(world["store"], clock=lambda: clock["now"]).run(cap, trigger="timer", actor="t")
    finally:
        await hub.close()
    assert rec.plan is not None and any("pending spawns are unknown" in n for n in rec.plan.notes)
    assert rec.outcome is Outcome.APPLIED and arm.pools["gpu"]["count"] == 1


async def test_a_node_left_cordoned_by_a_crashed_run_is_uncordoned(world: dict[str, Any]) -> None:
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0", unschedulable=True, annotations={CORDON_ANNOTATION: "hubpilot"})
    kube.pod("alice", "gpu-0")  # got a pod before the crash: must stay and become schedulable
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.status) for r in rec.results] == [("uncordon", Status.DONE)], rec.render()
    node = kube.node_obj("gpu-0")
    assert node["spec"]["unschedulable"] is False
    assert CORDON_ANNOTATION not in (node["metadata"].get("annotations") or {})
    assert not arm.writes()


async def test_runs_learn_the_forecast_and_keep_its_spare(world: dict[str, Any]) -> None:
    """Whole runs: arrivals seen in the cluster and the hook's signals are learned into
    ``scale/forecast``; a dry-run learns nothing; the next week's hour gets the learned spare."""
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    world["kube"].node("gpu-0")
    world["kube"].pod("alice", "gpu-0", user="alice")
    fp = ForecastPolicy(quantile=0.95, boot=timedelta(minutes=3))
    cap, runner = capability(world, forecast=fp, idle=timedelta(minutes=1))
    clock = world["clock"]
    await runner.dry_run(cap, trigger="api", actor="test")
    assert await world["store"].get(FORECAST_KEY) is None
    # alice is in sight all hour, two more start at 09:20; alice, running before the first
    # observation, is no arrival of this hour (she may have come at any time)
    for minute in range(0, 60, 5):
        clock["now"] = datetime(2026, 3, 2, 9, minute, tzinfo=UTC)
        if minute == 20:
            await record_demand(world["store"], user="bob", server="", profile="gpu", at=clock["now"])
            world["kube"].pod("carol", None, user="carol")
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.APPLIED, rec.render()
    clock["now"] = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    await runner.run(cap, trigger="timer", actor="test")
    stored = Forecast.from_json(await world["store"].get(FORECAST_KEY))
    assert stored.rates["0-09"] == 2 and stored.weeks["0-09"] == 1
    # a week later at 08:58, nobody there yet: the learned 09:00 hour asks for a warm node
    world["kube"].clear()
    arm.add_pool("gpu", count=0, machines=[])
    clock["now"] = datetime(2026, 3, 9, 8, 58, tzinfo=UTC)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [(r.action.kind, r.action.params["count"]) for r in rec.results] == [("set_count", 1)], rec.render()
    assert rec.plan is not None and any("forecast" in w for w in rec.plan.facts["why"])
