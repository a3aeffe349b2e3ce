"""The pool size history and the cost report, on a real SQLite store, with figures worked out
by hand: UTC days across midnight, gaps, repeated and out-of-order records, an empty history,
a first day only partly covered, the always-on comparison and the ``days`` bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.scale.cost import cost_report, record_size

D = datetime(2026, 3, 28, tzinfo=UTC)  # a Saturday; Europe's clocks change on the 29th (UTC days: no effect)


def h(hours: float, day: int = 0) -> datetime:
    return D + timedelta(days=day, hours=hours)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "cost.sqlite3")
    try:
        yield s
    finally:
        await s.close()


async def report(store: SqliteStore, now: datetime, days: int, price: float = 2.5) -> dict[str, Any]:
    return (await cost_report(store, now=now, days=days, price=price, currency="EUR")).to_json()


async def test_node_hours_across_midnight_and_the_dst_night(store: SqliteStore) -> None:
    await record_size(store, h(22), 2, source="observed")
    await record_size(store, h(1.5, 1), 4, source="scale-up")  # 01:30 UTC on the 29th (DST night)
    rep = await report(store, h(12, 1), days=2)
    d0, d1 = rep["days"]
    # 28th: 2 nodes 22:00-24:00 = 4 node-h; always-on (peak 4) from the first record: 4 x 2 h = 8
    assert (d0["date"], d0["node_hours"], d0["cost"], d0["peak_nodes"]) == ("2026-03-28", 4.0, 10.0, 2)
    assert (d0["always_on_node_hours"], d0["always_on_cost"], d0["changes"]) == (8.0, 20.0, 1)
    # 29th (a 24 h UTC day): 2 x 1.5 h + 4 x 10.5 h = 45 node-h until now (12:00); always-on 4 x 12 h
    assert (d1["date"], d1["node_hours"], d1["cost"], d1["peak_nodes"]) == ("2026-03-29", 45.0, 112.5, 4)
    assert (d1["always_on_node_hours"], d1["always_on_cost"], d1["changes"]) == (48.0, 120.0, 1)
    assert rep["total"] == {"node_hours": 49.0, "cost": 122.5, "always_on_node_hours": 56.0,
                            "always_on_cost": 140.0, "saving_ratio": round(1 - 49 / 56, 4),
                            "unobserved_hours": 0.0, "unobserved_node_hours": 0.0,
                            "stopped_vm_hours": 0.0, "stopped_vm_cost": None}
    assert rep["always_on_nodes"] == 4


async def test_a_gap_in_records_keeps_the_last_known_size(store: SqliteStore) -> None:
    await record_size(store, h(8), 3, source="observed")  # then hubpilot is down until now
    rep = await report(store, h(20), days=1)
    assert rep["days"][0]["node_hours"] == 36.0  # 3 nodes x 12 h


async def test_a_size_recorded_twice_is_one_change(store: SqliteStore) -> None:
    assert await record_size(store, h(10), 3, source="scale-up")
    assert not await record_size(store, h(10, 0) + timedelta(minutes=1), 3, source="observed")
    assert not await record_size(store, h(0.5, 1), 3, source="observed")  # next day, same size
    rep = await report(store, h(12, 1), days=2)
    assert [d["changes"] for d in rep["days"]] == [1, 0]
    assert [d["node_hours"] for d in rep["days"]] == [42.0, 36.0]


async def test_a_late_record_does_not_hide_a_later_change(store: SqliteStore) -> None:
    """Records can arrive out of time order (two hosts, a skewed clock). Whether a size is new
    depends on the size in force at its time, not on the record appended last."""
    assert await record_size(store, h(10), 2, source="observed")
    assert await record_size(store, h(9), 3, source="observed")  # arrives late
    assert await record_size(store, h(11), 3, source="scale-up")  # 2 -> 3 at 11:00: a change
    rep = await report(store, h(12), days=1)
    # 09-10: 3, 10-11: 2, 11-12: 3 -> 8 node-h
    assert rep["days"][0]["node_hours"] == 8.0


async def test_a_late_record_of_the_same_size_moves_the_change_earlier(store: SqliteStore) -> None:
    """Two instances observe the pool a second apart and the later one writes first: the earlier
    record makes the later point no change, so the day has one change, at the earlier time."""
    assert await record_size(store, h(8) + timedelta(seconds=1), 2, source="observed")
    assert await record_size(store, h(8), 2, source="observed")  # arrives late
    assert await record_size(store, h(9), 3, source="scale-up")
    doc = await store.get("scale/sizes/2026-03-28")
    assert doc is not None
    assert [(p[0][11:19], p[1]) for p in doc["points"]] == [("08:00:00", 2), ("09:00:00", 3)]
    rep = await report(store, h(10), days=1)
    assert rep["days"][0]["changes"] == 2 and rep["days"][0]["node_hours"] == 5.0


async def test_a_late_record_looks_past_a_damaged_point_for_the_next_change(store: SqliteStore) -> None:
    """The size history only feeds the report, which leaves a damaged point out (hand-edited, a
    count that is no number). A late record of the size the next real point has must make that
    point no change, as it does without the damaged one between them: the damaged point was taken
    for the next one, and the day counted one change too many."""
    assert await record_size(store, h(8), 2, source="observed")
    assert await record_size(store, h(9), 3, source="scale-up")
    doc = await store.get("scale/sizes/2026-03-28")
    assert doc is not None
    doc["points"].insert(1, [h(8.75).isoformat(), "three", "hand-edited"])  # damaged, left out by readers
    await store.put("scale/sizes/2026-03-28", doc)
    assert await record_size(store, h(8.5), 3, source="observed")  # arrives late: 3 from 08:30
    doc = await store.get("scale/sizes/2026-03-28")
    assert doc is not None
    assert [(p[0][11:16], p[1]) for p in doc["points"]] == [("08:00", 2), ("08:30", 3), ("08:45", "three")]
    rep = await report(store, h(10), days=1)
    assert rep["days"][0]["changes"] == 2 and rep["days"][0]["node_hours"] == 2 * 0.5 + 3 * 1.5
    # a damaged point without a count at all after a late record: an IndexError, which failed the
    # scale run recording its observation (only a store error is said and passed over)
    doc["points"].append([h(9.5).isoformat()])
    await store.put("scale/sizes/2026-03-28", doc)
    assert await record_size(store, h(9.25), 4, source="observed")


async def test_a_late_record_before_midnight_is_followed_by_the_next_day(store: SqliteStore) -> None:
    """Two instances around midnight UTC: one observes the pool at 23:59:50 and writes after the
    other wrote the next day's first record. The next day began with the size recorded before the
    late one (its ``start``), and that was never corrected: the same change counted on both days,
    and when the next day's observations had seen that earlier size (no change then, so no point)
    the next day counted the late size all day, while the day after began with the earlier one."""
    gap = timedelta(minutes=2)
    late, next_day = h(24) - timedelta(seconds=10), h(0, 1) + timedelta(seconds=20)
    # the next day's observation saw the new size: the change is the late record's, once
    await record_size(store, h(8), 2, source="observed", observed=gap)
    assert await record_size(store, next_day, 3, source="observed", observed=gap)
    assert await record_size(store, late, 3, source="observed", observed=gap)  # arrives late
    doc = await store.get("scale/sizes/2026-03-29")
    assert doc is not None and doc["start"] == 3 and doc["points"] == []
    rep = await report(store, h(12, 1), days=2)
    assert [(d["changes"], d["node_hours"]) for d in rep["days"]] == [(2, round(2 * 16 + 1 / 360, 3)), (0, 36.0)]


async def test_a_late_record_before_midnight_keeps_what_the_next_day_observed(store: SqliteStore) -> None:
    gap = timedelta(minutes=2)
    late, next_day = h(24) - timedelta(seconds=10), h(0, 1) + timedelta(seconds=20)
    # the next day's observation saw the earlier size (a skewed clock, a change nobody recorded)
    await record_size(store, h(8), 2, source="observed", observed=gap)
    assert not await record_size(store, next_day, 2, source="observed", observed=gap)
    assert await record_size(store, late, 3, source="observed", observed=gap)  # arrives late
    doc = await store.get("scale/sizes/2026-03-29")
    assert doc is not None and doc["start"] == 3
    assert [(p[0], p[1]) for p in doc["points"]] == [(next_day.isoformat(), 2)]
    # 29th: 3 nodes for the 20 s until the observation, then 2; the 30th begins with 2
    rep = await report(store, h(12, 2), days=2)
    assert [(d["changes"], d["node_hours"]) for d in rep["days"]] == [(1, round(48 + 1 / 180, 3)), (0, 24.0)]
    assert not await record_size(store, late, 3, source="observed", observed=gap)  # again: nothing changes
    assert await store.get("scale/sizes/2026-03-29") == doc


async def test_a_late_record_before_midnight_leaves_a_damaged_point_of_the_next_day_alone(
        store: SqliteStore) -> None:
    """The next day holds a damaged point (a count stored as text) before its first change: the
    correction of how the day begins drops the first change, now no change, and leaves the damaged
    point as it was (nothing of its own is left behind in the points)."""
    gap = timedelta(minutes=2)
    late, damaged, first = h(24) - timedelta(seconds=10), h(0, 1) + timedelta(minutes=5), h(1, 1)
    await record_size(store, h(8), 2, source="observed", observed=gap)
    assert await record_size(store, first, 3, source="scale")  # no observation: a scale-up recorded
    doc = await store.get("scale/sizes/2026-03-29")
    assert doc is not None and doc["start"] == 2
    kept = [damaged.isoformat(), "3", "by hand"]
    await store.put("scale/sizes/2026-03-29", {**doc, "points": [kept, *doc["points"]]})
    assert await record_size(store, late, 3, source="observed", observed=gap)  # arrives late
    doc = await store.get("scale/sizes/2026-03-29")
    assert doc is not None and doc["start"] == 3 and doc["points"] == [kept]


async def test_a_late_record_of_the_day_before_that_is_not_its_last_leaves_the_next_day_as_it_began(
        store: SqliteStore) -> None:
    """Around midnight an instance's record of 23:59:30 arrives after the other instance recorded
    23:59:40 and the next day's first observation: the day before still ends with the size of
    23:59:40, so the next day begins with it as it did (no change, no point)."""
    gap = timedelta(minutes=2)
    await record_size(store, h(8), 2, source="observed", observed=gap)
    assert await record_size(store, h(24) - timedelta(seconds=20), 3, source="observed", observed=gap)
    assert not await record_size(store, h(0, 1) + timedelta(seconds=10), 3, source="observed", observed=gap)
    assert await record_size(store, h(24) - timedelta(seconds=30), 5, source="observed", observed=gap)  # late
    doc = await store.get("scale/sizes/2026-03-29")
    assert doc is not None and doc["start"] == 3 and doc["points"] == []
    rep = await report(store, h(12, 1), days=2)
    assert [(d["changes"], d["node_hours"]) for d in rep["days"]] == [
        (3, round(2 * (16 - 30 / 3600) + 5 * 10 / 3600 + 3 * 20 / 3600, 3)), (0, 36.0)]


async def test_a_day_that_begins_with_the_size_the_day_before_ended_with_has_no_change(store: SqliteStore) -> None:
    """The pool unchanged over midnight: the next day's first observation is no change (no point),
    only the size the day began with and the time observed."""
    gap = timedelta(minutes=2)
    await record_size(store, h(8), 2, source="observed", observed=gap)
    assert not await record_size(store, h(8, 1), 2, source="observed", observed=gap)
    doc = await store.get("scale/sizes/2026-03-29")
    assert doc == {"points": [], "start": 2, "seen": [[h(8, 1).isoformat(), h(8, 1).isoformat()]]}
    rep = await report(store, h(12, 1), days=2)
    assert [(d["changes"], d["node_hours"]) for d in rep["days"]] == [(1, 32.0), (0, 24.0)]


async def test_a_late_observation_within_the_observed_time_keeps_it_observed(store: SqliteStore) -> None:
    """Observed every minute from 08:00 to 08:10; another instance's observation of 08:05:30 is
    written after them. The pool stays observed until 08:10, not until 08:05:30."""
    gap = timedelta(minutes=2)
    for m in range(11):
        await record_size(store, h(8) + timedelta(minutes=m), 2, source="observed", observed=gap)
    assert not await record_size(store, h(8) + timedelta(minutes=5, seconds=30), 2, source="observed",
                                 observed=gap)
    doc = await store.get("scale/sizes/2026-03-28")
    assert doc is not None and doc["seen"] == [[h(8).isoformat(), (h(8) + timedelta(minutes=10)).isoformat()]]
    rep = (await cost_report(store, now=h(9), days=1, price=1.0, currency="EUR", gap=gap)).to_json()
    assert rep["days"][0]["unobserved_hours"] == round(50 / 60, 3)


async def test_a_pause_of_exactly_the_allowed_length_is_observed(store: SqliteStore) -> None:
    """The docs: a pause *longer* than the schedule's allowance is time not observed. Observations
    exactly that far apart leave no unobserved time."""
    gap = timedelta(minutes=6)
    for m in (0, 6, 12):
        await record_size(store, h(8) + timedelta(minutes=m), 2, source="observed", observed=gap)
    doc = await store.get("scale/sizes/2026-03-28")
    assert doc is not None and doc["seen"] == [[h(8).isoformat(), (h(8) + timedelta(minutes=12)).isoformat()]]
    rep = (await cost_report(store, now=h(8.2), days=1, price=1.0, currency="EUR", gap=gap)).to_json()
    assert rep["days"][0]["unobserved_hours"] == 0.0


async def test_records_at_the_same_instant_keep_their_order(store: SqliteStore) -> None:
    """An observation and the scale-down that follows it, stamped with the same time: the size
    after that instant is the one recorded last, not the larger one."""
    await record_size(store, h(10), 3, source="observed")
    await record_size(store, h(10), 1, source="scale-down")
    rep = await report(store, h(12), days=1)
    assert rep["days"][0]["node_hours"] == 2.0  # 1 node x 2 h


async def test_an_empty_history_reports_zeros(store: SqliteStore) -> None:
    rep = await report(store, h(12), days=3)
    assert [d["date"] for d in rep["days"]] == ["2026-03-26", "2026-03-27", "2026-03-28"]
    assert all(d["node_hours"] == 0 and d["always_on_node_hours"] == 0 for d in rep["days"])
    assert rep["total"]["saving_ratio"] is None and rep["always_on_nodes"] == 0
    text = (await cost_report(store, now=h(12), days=3, price=2.5, currency="EUR")).render()
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert total.split() == ["total", "0.00", "0.00", "0.00", "0.00", "0.00", "(EUR)"]


async def test_the_first_day_is_counted_from_the_first_record(store: SqliteStore) -> None:
    await record_size(store, h(6, -1), 2, source="observed")
    rep = await report(store, h(6), days=3)
    assert [d["node_hours"] for d in rep["days"]] == [0.0, 36.0, 12.0]
    assert [d["always_on_node_hours"] for d in rep["days"]] == [0.0, 36.0, 12.0]


async def test_the_size_before_the_window_carries_in(store: SqliteStore) -> None:
    await record_size(store, h(12, -40), 2, source="observed")  # 40 days back: beyond last_size's lookback
    rep = await report(store, h(12), days=1)
    assert rep["days"][0]["node_hours"] == 24.0 and rep["days"][0]["always_on_node_hours"] == 24.0


async def test_always_on_is_the_peak_over_the_same_time(store: SqliteStore) -> None:
    await record_size(store, h(0), 1, source="observed")
    await record_size(store, h(12), 5, source="scale-up")
    await record_size(store, h(13), 0, source="scale-down")
    rep = await report(store, h(23.5), days=1, price=1.25)
    d = rep["days"][0]
    assert d["node_hours"] == 17.0 and d["cost"] == round(17.0 * 1.25, 2)  # 1x12 + 5x1 + 0x10.5
    assert d["always_on_node_hours"] == 117.5 and d["always_on_cost"] == round(117.5 * 1.25, 2)
    assert d["changes"] == 2 and d["peak_nodes"] == 5  # the 00:00 record is the size at the start
    assert rep["total"]["saving_ratio"] == round(1 - 17.0 / 117.5, 4)


async def test_a_record_at_midnight_belongs_to_the_new_day(store: SqliteStore) -> None:
    await record_size(store, h(18), 1, source="observed")
    await record_size(store, h(0, 1), 2, source="scale-up")
    rep = await report(store, h(6, 1), days=2)
    assert [(d["node_hours"], d["changes"]) for d in rep["days"]] == [(6.0, 1), (12.0, 0)]


async def test_days_bounds(store: SqliteStore) -> None:
    assert len((await report(store, h(12), days=366))["days"]) == 366
    for bad in (0, 367, -1):
        with pytest.raises(ValueError):
            await report(store, h(12), days=bad)



async def test_at_midnight_today_is_a_row_of_its_own(store: SqliteStore) -> None:
    """At exactly 00:00 UTC today has begun: ``days=N`` still gives N rows, today's empty so far."""
    await record_size(store, h(18), 2, source="observed")
    rep = await report(store, h(0, 1), days=2)
    assert [(d["date"], d["node_hours"], d["peak_nodes"]) for d in rep["days"]] == [
        ("2026-03-28", 12.0, 2), ("2026-03-29", 0.0, 2)]
