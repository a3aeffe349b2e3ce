"""The cost report as an admin reads it to justify the budget. Real SQLite store; the pool through
the ARM double."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hubpilot.loop import Outcome
from hubpilot.scale.cost import cost_report
from tests.doubles.arm import ArmDouble
from tests.test_scale_kube import capability, world  # noqa: F401 - the fixture


async def test_a_stopped_pool_runs_no_node(world: dict[str, Any]) -> None:  # noqa: F811
    """``az aks nodepool stop``: the pool keeps its count (2) but no VM of it runs or is billed."""
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"], power="Stopped")
    cap, runner = capability(world)
    start = world["clock"]["now"]
    for minutes in range(0, 121, 5):
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.APPLIED, rec.render()
    assert not arm.writes()
    rep = (await cost_report(world["store"], now=world["clock"]["now"], days=1, price=2.5,
                             currency="EUR")).to_json()
    assert rep["days"][0]["node_hours"] == 0.0 and rep["days"][0]["cost"] == 0.0
