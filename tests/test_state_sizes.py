"""The size history (scale/sizes/<day>) is a record for the cost report: a damaged one never stops
a scale run, and it is still read with times without offset (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hubpilot.loop import Outcome, Status
from hubpilot.scale.cost import SIZES_KEY, last_size, record_size
from tests.doubles.arm import ArmDouble
from tests.test_scale_kube import capability, world  # noqa: F401 - the fixture


@pytest.mark.parametrize("points", [
    [["not a time", 1, "observed"]],
    [["2026-03-02T08:00:00", 1, "observed"]],  # naive: compared with an aware time
    [["2026-03-02T08:00:00+00:00"]],
    "1,2",
    [None],
])
async def test_damaged_size_history_does_not_stop_a_scale_up(world: dict[str, Any], points: Any) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    world["kube"].node("gpu-0")
    world["kube"].pod("alice", "gpu-0")
    world["kube"].pod("bob", None)
    await world["store"].put(SIZES_KEY.format(day="2026-03-02"), {"points": points})
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert [(r.action.kind, r.status) for r in rec.results] == [("set_count", Status.DONE)]
    assert arm.pools["gpu"]["count"] == 2


async def test_size_history_with_naive_times_reads_as_utc(world: dict[str, Any]) -> None:  # noqa: F811
    store = world["store"]
    await store.put(SIZES_KEY.format(day="2026-03-02"), {"points": [["2026-03-02T08:00:00", 3, "observed"]]})
    assert not await record_size(store, datetime(2026, 3, 2, 9, 0, tzinfo=UTC), 3, source="observed")
    assert await last_size(store, datetime(2026, 3, 2, tzinfo=UTC).date()) == 3
