"""The cost report's figures where the pool is not what its count says, and other edges of the
size history. Real SQLite store; the pool through the ARM double, the cluster through kmock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hubpilot.loop import Status
from hubpilot.scale.cost import cost_report
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401 - the fixture


async def test_a_scale_up_that_keeps_failing_counts_only_the_machines_that_run(
        world: dict[str, Any]) -> None:  # noqa: F811
    """No GPU capacity in the region for two hours: every run asks for 5 nodes and ARM's operation
    fails (AllocationFailed). ARM keeps the failed operation's count (5) as the pool's, but only
    the 2 machines that existed run: the report counts 2 nodes, not 5."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    for i in range(2):
        kube.node(f"gpu-{i}")
        kube.pod(f"u{i}", f"gpu-{i}")
    for i in range(2, 5):
        kube.pod(f"u{i}", None)
    cap, runner = capability(world)
    start = world["clock"]["now"]
    for minutes in range(0, 121, 5):
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        arm.fail_next_operation = "AllocationFailed"
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert [(r.action.kind, r.status) for r in rec.results] == [("set_count", Status.FAILED)], rec.render()
    assert arm.pools["gpu"]["count"] == 5 and arm.pools["gpu"]["provisioningState"] == "Failed"
    assert len(arm.machines["gpu"]) == 2
    rep = (await cost_report(world["store"], now=world["clock"]["now"], days=1, price=1.0,
                             currency="EUR", gap=timedelta(minutes=10))).to_json()
    day = rep["days"][0]
    assert day["node_hours"] == pytest.approx(4.0, abs=0.001), day  # 2 machines for 2 hours
    assert day["peak_nodes"] == 2 and rep["always_on_nodes"] == 2


async def test_a_scale_down_of_a_failed_pool_records_the_machines_left(world: dict[str, Any]) -> None:  # noqa: F811
    """A failed scale-up left the pool's count at 5 with 2 machines; one of them empties and is
    removed: 1 machine runs after, not the 4 of the count."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    arm.pools["gpu"].update(count=5, provisioningState="Failed")  # as AllocationFailed leaves it
    kube.node("gpu-0")
    kube.node("gpu-1")
    kube.pod("alice", "gpu-0")
    cap, runner = capability(world)
    start = world["clock"]["now"]
    removed_at = []
    for minutes in range(0, 61, 5):
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        rec = await runner.run(cap, trigger="timer", actor="test")
        if any(r.action.kind == "remove_nodes" and r.status is Status.DONE for r in rec.results):
            removed_at.append(minutes)
    assert len(removed_at) == 1 and arm.machines["gpu"] == ["gpu-0"], removed_at
    rep = await cost_report(world["store"], now=world["clock"]["now"], days=1, price=None, currency="EUR")
    t = removed_at[0]
    assert rep.days[0].node_hours == pytest.approx((2 * t + 1 * (60 - t)) / 60, abs=0.001), rep.render()
    assert rep.days[0].peak == 2


async def test_a_size_history_that_cannot_be_written_neither_stops_scaling_nor_loses_the_removal(
        world: dict[str, Any]) -> None:  # noqa: F811
    """The size history only feeds the cost report. A store that refuses its writes (here the
    state file refuses every write of scale/sizes/ documents) must not stop the scale run, and
    above all must not keep the scale memory from recording the nodes the run removed: unwatched,
    they would be uncordoned under their deleted VMs."""
    import sqlite3

    from hubpilot.scale.capability import MEMORY_KEY

    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    kube.node("gpu-0")
    kube.node("gpu-1")
    kube.pod("alice", "gpu-1")
    cap, runner = capability(world, min_nodes=1)
    assert (await runner.run(cap, trigger="timer", actor="test")).plan.empty  # type: ignore[union-attr]
    with sqlite3.connect(world["store"].path) as db:
        db.executescript("""
            CREATE TRIGGER sizes_no_insert BEFORE INSERT ON docs WHEN NEW.key LIKE 'scale/sizes/%'
            BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END;
            CREATE TRIGGER sizes_no_update BEFORE UPDATE ON docs WHEN NEW.key LIKE 'scale/sizes/%'
            BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END;""")
    world["clock"]["now"] += timedelta(minutes=11)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert arm.machines["gpu"] == ["gpu-1"], rec.render()  # the idle node went
    removal = next(r for r in rec.results if r.action.kind == "remove_nodes")
    assert removal.status is Status.DONE, rec.render()
    memory = await world["store"].get(MEMORY_KEY)
    assert memory is not None and "gpu-0" in memory.get("removed", {}), memory
    assert any("cost" in (r.detail or "") and r.status is Status.FAILED for r in rec.results), rec.render()
