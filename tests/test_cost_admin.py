"""The cost report as an admin reads it to justify the budget: days cut in ``scale.timezone`` with
their real hours (23 or 25 on a DST day), today marked partial, a stopped pool costing nothing,
the hours hubpilot did not observe the pool stated, no price meaning no cost (not a cost of 0),
and what "always-on" means spelled out. Real SQLite store; the pool through the ARM double."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome
from hubpilot.scale.cost import SIZES_KEY, STOPPED, cost_report, record_size
from tests.azurite import Azurite
from tests.doubles.arm import ArmDouble
from tests.test_scale_kube import capability, world  # noqa: F401 - the fixture
from tests.test_store import azure_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "cost.sqlite3")
    try:
        yield s
    finally:
        await s.close()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


async def test_days_are_cut_in_the_configured_timezone_with_their_real_hours(store: SqliteStore) -> None:
    """Europe/Berlin: the 29 March 2026 has 23 hours, the 25 October 25. One node all along."""
    await record_size(store, utc(2026, 3, 27, 23), 1, source="observed")  # 28 March 00:00 CET
    rep = (await cost_report(store, now=utc(2026, 3, 30, 10), days=3, price=2.0, currency="EUR",
                             timezone="Europe/Berlin")).to_json()
    assert rep["timezone"] == "Europe/Berlin"
    assert [(d["date"], d["hours"], d["partial"], d["node_hours"], d["always_on_node_hours"], d["cost"])
            for d in rep["days"]] == [("2026-03-28", 24.0, False, 24.0, 24.0, 48.0),
                                      ("2026-03-29", 23.0, False, 23.0, 23.0, 46.0),
                                      ("2026-03-30", 12.0, True, 12.0, 12.0, 24.0)]  # until 12:00 CEST
    assert any("2026-03-30 is partial" in n for n in rep["notes"])
    rep = (await cost_report(store, now=utc(2026, 10, 26, 11), days=2, price=2.0, currency="EUR",
                             timezone="Europe/Berlin")).to_json()
    assert [(d["date"], d["hours"], d["node_hours"], d["partial"]) for d in rep["days"]] == [
        ("2026-10-25", 25.0, 25.0, False), ("2026-10-26", 12.0, 12.0, True)]


async def test_a_change_at_local_midnight_belongs_to_the_local_day(store: SqliteStore) -> None:
    """America/New_York (UTC-5 in March): 2 nodes from 03:00 UTC on the 2nd = 22:00 local on the 1st."""
    await record_size(store, utc(2026, 3, 1, 5), 0, source="observed")  # 1 March 00:00 local
    await record_size(store, utc(2026, 3, 2, 3), 2, source="scale-up")
    rep = (await cost_report(store, now=utc(2026, 3, 2, 17), days=2, price=1.0, currency="USD",
                             timezone="America/New_York")).to_json()
    assert [(d["date"], d["node_hours"], d["changes"]) for d in rep["days"]] == [
        ("2026-03-01", 4.0, 1), ("2026-03-02", 24.0, 0)]  # 22:00-24:00 local; 00:00-12:00 local


async def test_east_of_utc_a_local_day_begins_the_evening_before_in_utc(store: SqliteStore) -> None:
    """Europe/Berlin (UTC+1 in March): 2 March begins at 23:00 UTC on the 1st. The changes at 23:15
    and 23:45 UTC are that day's, both counted; just after local midnight today is the new local day."""
    await record_size(store, utc(2026, 3, 1, 22), 1, source="observed")  # 23:00 local on the 1st
    await record_size(store, utc(2026, 3, 1, 23, 15), 3, source="scale-up")  # 00:15 local on the 2nd
    await record_size(store, utc(2026, 3, 1, 23, 45), 2, source="scale-down")  # 00:45 local
    rep = (await cost_report(store, now=utc(2026, 3, 2, 11), days=1, price=1.0, currency="EUR",
                             timezone="Europe/Berlin")).to_json()
    assert [(d["date"], d["node_hours"], d["changes"], d["peak_nodes"]) for d in rep["days"]] == [
        ("2026-03-02", 1 * 0.25 + 3 * 0.5 + 2 * 11.25, 2, 3)]  # until 12:00 local
    rep = (await cost_report(store, now=utc(2026, 3, 2, 23, 30), days=1, price=1.0, currency="EUR",
                             timezone="Europe/Berlin")).to_json()  # 00:30 local on the 3rd
    assert [(d["date"], d["hours"], d["partial"], d["node_hours"]) for d in rep["days"]] == [
        ("2026-03-03", 0.5, True, 1.0)]


async def test_without_a_price_the_report_gives_node_hours_and_says_so(store: SqliteStore) -> None:
    await record_size(store, utc(2026, 3, 2, 8), 2, source="observed")
    report = await cost_report(store, now=utc(2026, 3, 2, 12), days=1, price=0.0, currency="EUR")
    rep = report.to_json()
    assert rep["days"][0]["node_hours"] == 8.0
    assert rep["days"][0]["cost"] is None and rep["days"][0]["always_on_cost"] is None
    assert rep["total"]["cost"] is None and rep["total"]["always_on_cost"] is None
    assert rep["price_per_node_hour"] is None
    assert any("price_per_node_hour is not set" in n for n in rep["notes"])
    total = next(line for line in report.render().splitlines() if line.startswith("total"))
    assert total.split()[:3] == ["total", "8.00", "-"]


async def test_the_report_states_what_always_on_means_and_which_price(store: SqliteStore) -> None:
    await record_size(store, utc(2026, 3, 2, 0), 1, source="observed")
    await record_size(store, utc(2026, 3, 2, 6), 3, source="scale-up")
    await record_size(store, utc(2026, 3, 2, 7), 1, source="scale-down")
    rep = (await cost_report(store, now=utc(2026, 3, 2, 12), days=1, price=2.0, currency="EUR")).to_json()
    assert rep["always_on"] == "peak" and rep["always_on_nodes"] == 3
    assert any(n.startswith("always-on: 3 node(s) (the peak size recorded in the period)") for n in rep["notes"])
    assert any("today's scale.price_per_node_hour (2 EUR)" in n for n in rep["notes"])
    rep = (await cost_report(store, now=utc(2026, 3, 2, 12), days=1, price=2.0, currency="EUR",
                             always_on_nodes=5)).to_json()
    assert rep["always_on"] == "given" and rep["days"][0]["always_on_node_hours"] == 60.0
    assert any(n.startswith("always-on: 5 node(s) (the size asked for)") for n in rep["notes"])


async def test_days_must_be_a_whole_number_in_range(store: SqliteStore) -> None:
    for bad in (0, -1, 367, 10**9, 1.5, True):
        with pytest.raises(ValueError, match="days must be a whole number between 1 and 366"):
            await cost_report(store, now=utc(2026, 3, 2, 12), days=bad, price=1.0, currency="EUR")  # type: ignore[arg-type]


async def test_two_instances_observing_at_once_lose_and_double_nothing(store: SqliteStore) -> None:
    """Two instances (a lease lost mid-run) observe the pool in the same seconds and write the same
    day's document: each with its etag, so neither an observation time nor a change is lost, and a
    size seen by both is one change, counted once."""
    base = utc(2026, 3, 2, 8)
    gap = timedelta(minutes=6)
    for i in range(20):
        at = base + timedelta(minutes=i)
        size = 2 if i < 10 else 3
        await asyncio.gather(record_size(store, at, size, source="observed", observed=gap),
                             record_size(store, at + timedelta(seconds=1), size, source="observed", observed=gap))
    doc = await store.get(SIZES_KEY.format(day="2026-03-02"))
    assert doc is not None
    assert doc["seen"] == [[base.isoformat(), (base + timedelta(minutes=19, seconds=1)).isoformat()]]
    assert [(p[0][11:19], p[1]) for p in doc["points"]] == [("08:00:00", 2), ("08:10:00", 3)]
    rep = (await cost_report(store, now=base + timedelta(minutes=20), days=1, price=1.0, currency="EUR",
                             gap=gap)).to_json()
    day = rep["days"][0]
    assert day["unobserved_hours"] == 0.0 and day["changes"] == 2
    assert day["node_hours"] == pytest.approx(round((2 * 10 + 3 * 10) / 60, 3), abs=0.001)


class Contended(SqliteStore):
    """A real SQLite store where another instance records a size change of the same day between
    each of our reads of the day's document and our conditional write, ``times`` times."""

    def __init__(self, path: Path, times: int) -> None:
        super().__init__(path)
        self.times, self.raced = times, 0

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        got = await super().get_with_etag(key)
        if key == SIZES_KEY.format(day="2026-03-02") and self.raced < self.times:
            self.raced += 1
            doc = dict(got[0]) if got else {"points": [], "start": 1}
            at = utc(2026, 3, 2, 7, self.raced).isoformat()
            doc["points"] = [*doc.get("points", []), [at, 10 + self.raced, "observed"]]
            await super().put(key, doc)  # the other instance's own write
        return got


async def test_a_size_change_is_recorded_however_often_another_instance_writes_first(tmp_path: Path) -> None:
    """Eight writes of the same day by another instance, each between our read and our write: ours
    loses each time, reads and merges again, and in the end both instances' points are there."""
    store = Contended(tmp_path / "contended.sqlite3", times=8)
    try:
        assert await record_size(store, utc(2026, 3, 2, 9), 5, source="scale-up")
        doc = await store.get(SIZES_KEY.format(day="2026-03-02"))
        assert doc is not None
        assert store.raced == 8
        assert [(p[0][11:16], p[1]) for p in doc["points"]] == [
            *[(f"07:{i:02d}", 10 + i) for i in range(1, 9)], ("09:00", 5)]
    finally:
        await store.close()


class LateBetween(SqliteStore):
    """A real SQLite store where, while our record opens the next day (after it read the size the
    day before ended with, before it writes), another instance's late record of the day before
    lands, and that record finds the next day not written yet."""

    def __init__(self, path: Path, late: Any) -> None:
        super().__init__(path)
        self.late, self.landed = late, False

    async def get(self, key: str) -> dict[str, Any] | None:
        doc = await super().get(key)
        if key == SIZES_KEY.format(day="2026-03-01") and self.late is not None:
            late, self.late = self.late, None
            self.landed = await late(self)
        return doc


async def test_a_late_record_and_the_next_days_first_at_once_agree_on_how_it_begins(tmp_path: Path) -> None:
    """The next day's first record read the size the day before ended with (2) before the late
    record of 3 at 23:59:50 was written; the late record found no next day to correct: the day
    began with 2 for good, and counted the change to 3 again at its first record."""
    gap = timedelta(minutes=2)

    def late(s: SqliteStore) -> Any:
        return record_size(s, utc(2026, 3, 1, 23, 59, 50), 3, source="observed", observed=gap)

    store = LateBetween(tmp_path / "cost.sqlite3", late)
    try:
        await store.put(SIZES_KEY.format(day="2026-03-01"),
                        {"points": [[utc(2026, 3, 1, 8).isoformat(), 2, "observed"]]})
        await record_size(store, utc(2026, 3, 2, 0, 0, 20), 3, source="observed", observed=gap)
        assert store.landed
        doc = await store.get(SIZES_KEY.format(day="2026-03-02"))
        assert doc is not None and doc["start"] == 3 and doc["points"] == []
        rep = (await cost_report(store, now=utc(2026, 3, 2, 12), days=2, price=1.0, currency="EUR",
                                 gap=gap)).to_json()
        assert [d["changes"] for d in rep["days"]] == [2, 0]
    finally:
        await store.close()


class WrittenWhileCorrected(SqliteStore):
    """A real SQLite store where another instance records a size change of 2 March between the
    late record's read of that day (to correct the size it begins with) and its write."""

    armed = False

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        got = await super().get_with_etag(key)
        if key == SIZES_KEY.format(day="2026-03-02") and self.armed and got:
            self.armed = False
            doc = dict(got[0])
            doc["points"] = [*doc["points"], [utc(2026, 3, 2, 10).isoformat(), 7, "scale-up"]]
            await super().put(key, doc)  # the other instance's own write
        return got


async def test_correcting_how_a_day_begins_keeps_what_another_instance_wrote_meanwhile(tmp_path: Path) -> None:
    """A late record of 1 March corrects the size 2 March begins with while another instance
    records 2 March's scale-up to 7: the correction is written with the etag, so that scale-up
    stays, and the day counts it."""
    gap = timedelta(minutes=2)
    store = WrittenWhileCorrected(tmp_path / "cost.sqlite3")
    try:
        await record_size(store, utc(2026, 3, 1, 8), 2, source="observed", observed=gap)
        assert not await record_size(store, utc(2026, 3, 2, 0, 0, 20), 2, source="observed", observed=gap)
        store.armed = True
        assert await record_size(store, utc(2026, 3, 1, 23, 59, 50), 3, source="observed", observed=gap)
        assert not store.armed
        doc = await store.get(SIZES_KEY.format(day="2026-03-02"))
        assert doc is not None and doc["start"] == 3
        assert [(p[0][11:19], p[1]) for p in doc["points"]] == [("00:00:20", 2), ("10:00:00", 7)]
        rep = (await cost_report(store, now=utc(2026, 3, 2, 12), days=1, price=1.0, currency="EUR",
                                 gap=gap)).to_json()
        assert rep["days"][0]["changes"] == 2
        assert rep["days"][0]["node_hours"] == round(3 * 20 / 3600 + 2 * (10 - 20 / 3600) + 7 * 2, 3)
    finally:
        await store.close()


class CountingStore(SqliteStore):
    """The real SQLite store, counting the size documents it hands out."""

    read: int = 0

    async def get(self, key: str) -> dict[str, Any] | None:
        doc = await super().get(key)
        self.read += bool(doc) and key.startswith("scale/sizes/")
        return doc

    async def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        docs = await super().list(prefix)
        self.read += sum(k.startswith("scale/sizes/") for k in docs)
        return docs


async def test_a_report_reads_its_days_not_the_whole_history(tmp_path: Path) -> None:
    """Three years of history (a document a day, a few changes each): a week's report reads about
    a week of documents, and gives the same figures as before."""
    store = CountingStore(tmp_path / "cost.sqlite3")
    try:
        first = utc(2023, 3, 1)
        for day in range(3 * 365 + 2):  # through 1 March 2026
            at = first + timedelta(days=day)
            await store.put(SIZES_KEY.format(day=at.date().isoformat()), {
                "points": [[(at + timedelta(hours=8)).isoformat(), 2, "scale-up"],
                           [(at + timedelta(hours=18)).isoformat(), 0, "scale-down"]],
                "seen": [[at.isoformat(), (at + timedelta(hours=23, minutes=59)).isoformat()]]})
        now = utc(2026, 3, 1, 12)
        rep = (await cost_report(store, now=now, days=7, price=1.0, currency="EUR")).to_json()
        assert store.read <= 9
        assert [d["node_hours"] for d in rep["days"]] == [20.0] * 6 + [8.0]
        assert rep["total"]["unobserved_hours"] == 0.0
    finally:
        await store.close()


async def test_the_size_in_force_is_found_after_a_long_silence(store: SqliteStore) -> None:
    """Nothing recorded for 100 days: the size before still carries into the window."""
    await record_size(store, utc(2025, 11, 1, 8), 1, source="observed")
    rep = (await cost_report(store, now=utc(2026, 2, 9, 12), days=1, price=1.0, currency="EUR")).to_json()
    assert rep["days"][0]["node_hours"] == 12.0


async def test_a_scale_run_reads_one_day_back_for_the_size_in_force(tmp_path: Path) -> None:
    """The pool unchanged for weeks (a holiday at 0 nodes) and observed every day: recording a new
    day's first observation does not walk back through every quiet day to find the size in force."""
    store = CountingStore(tmp_path / "cost.sqlite3")
    try:
        first = utc(2026, 7, 1, 12)
        gap = timedelta(minutes=6)
        for day in range(40):
            await record_size(store, first + timedelta(days=day), 0, source="observed", observed=gap)
        store.read = 0
        assert not await record_size(store, first + timedelta(days=40), 0, source="observed", observed=gap)
        assert store.read <= 2  # the day before, and again once written (a late record of it may have landed)
        assert await record_size(store, first + timedelta(days=40, minutes=1), 1, source="observed", observed=gap)
        store.read = 0
        rep = (await cost_report(store, now=first + timedelta(days=40, hours=1), days=7, price=1.0,
                                 currency="EUR", gap=gap)).to_json()
        assert store.read <= 9
        assert [d["node_hours"] for d in rep["days"]] == [0.0] * 6 + [pytest.approx(1.0 - 1 / 60, abs=0.001)]
        # the observations were a day apart: all but the last minutes are unobserved
        assert rep["days"][0]["unobserved_hours"] == 24.0
    finally:
        await store.close()


class AskingStore(SqliteStore):
    """The real SQLite store, counting every read of a stopped-VM document (found or not)."""

    asked: int = 0

    async def get(self, key: str) -> dict[str, Any] | None:
        self.asked += key.startswith("scale/stopped/")
        return await super().get(key)

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        self.asked += key.startswith("scale/stopped/")
        return await super().get_with_etag(key)


async def test_an_unchanged_stopped_vm_count_reads_no_days_back(tmp_path: Path) -> None:
    """The stopped-VM history is recorded without observation spans, at every scale run. A count
    unchanged for weeks does not make each run walk back through the quiet days for the count in
    force: a day's first record writes the day's document (a write a day), the runs after it read
    that one document."""
    store = AskingStore(tmp_path / "cost.sqlite3")
    try:
        first = utc(2026, 7, 1, 12)
        assert await record_size(store, first, 2, source="observed", series=STOPPED)
        for day in range(1, 25):
            await record_size(store, first + timedelta(days=day), 2, source="observed", series=STOPPED)
        store.asked = 0
        for minute in range(1, 4):
            assert not await record_size(store, first + timedelta(days=24, minutes=minute), 2,
                                         source="observed", series=STOPPED)
        assert store.asked == 3  # the day's document, once a run
        assert await store.get(SIZES_KEY.format(day="2026-07-25")) is None  # another history
        rep = await cost_report(store, now=first + timedelta(days=24, hours=1), days=2, price=None,
                                currency="EUR", stopped_price=0.1)
        assert [d.stopped_vm_hours for d in rep.days] == [48.0, pytest.approx(26.0)]
        assert rep.days[-1].node_hours == 0 and rep.days[-1].stopped_vm_cost == pytest.approx(2.6)
    finally:
        await store.close()


@pytest.mark.azurite
async def test_a_busy_day_fits_the_azure_store(azurite: Azurite) -> None:
    """The cluster autoscaler changing the pool every minute for a whole day: 1440 change points
    (about 75 KB, above a table property's 64 KiB) plus the observation spans are one document that
    the Azure store keeps (in a blob), written with its etag and read back by the report."""
    store = azure_store(azurite)
    try:
        day = utc(2026, 3, 2)
        points = [[(day + timedelta(minutes=i)).isoformat(), 1 + i % 2, "observed"] for i in range(1439)]
        await store.put(SIZES_KEY.format(day="2026-03-02"), {
            "points": points, "seen": [[day.isoformat(), (day + timedelta(minutes=1438)).isoformat()]]})
        assert await record_size(store, day + timedelta(minutes=1439), 2, source="observed",
                                 observed=timedelta(minutes=6))
        doc = await store.get(SIZES_KEY.format(day="2026-03-02"))
        assert doc is not None and len(doc["points"]) == 1440 and len(json.dumps(doc)) > 65_536
        rep = (await cost_report(store, now=utc(2026, 3, 3), days=2, price=1.0, currency="EUR",
                                 timezone="UTC")).to_json()
        assert rep["days"][0]["node_hours"] == 36.0 and rep["days"][0]["changes"] == 1439  # 00:00: the start size
        assert rep["days"][0]["unobserved_hours"] == 0.0
    finally:
        await store.close()


# --- through the scale capability: what a run records --------------------------------------------
@pytest.mark.parametrize("mode", ["Deallocate", "Delete"])
async def test_a_stopped_pool_runs_no_node(world: dict[str, Any], mode: str) -> None:  # noqa: F811
    """``az aks nodepool stop``: the pool keeps its count (2) but no VM of it runs or is billed for
    compute; its two VMs are stopped (deallocated, whatever the scale-down mode), their disks billed."""
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"], power="Stopped")
    arm.pools["gpu"]["scaleDownMode"] = mode
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
    assert rep["days"][0]["stopped_vm_hours"] == 4.0  # 2 VMs for 2 hours


async def test_hours_hubpilot_did_not_observe_are_reported(world: dict[str, Any]) -> None:  # noqa: F811
    """The timer runs every minute, then stops for four hours (a Functions outage): the report
    says how long the pool was not observed and how many node-hours assume its size then."""
    arm: ArmDouble = world["arm"]
    kube = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    for n, user in (("gpu-0", "alice"), ("gpu-1", "bob")):
        kube.node(n)
        kube.pod(user, n)
    cap, runner = capability(world)
    start = world["clock"]["now"]  # 09:00 UTC
    for minutes in (0, 1, 2, 242, 243, 244):  # nothing from 09:02 to 13:02
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        assert (await runner.run(cap, trigger="timer", actor="test")).outcome is Outcome.APPLIED
    report = await cost_report(world["store"], now=world["clock"]["now"], days=1, price=1.0, currency="EUR")
    day = report.to_json()["days"][0]
    assert day["node_hours"] == pytest.approx(2 * 244 / 60, abs=0.001)  # the size held: the best estimate
    assert day["unobserved_hours"] == pytest.approx(4.0, abs=0.001)
    assert day["unobserved_node_hours"] == pytest.approx(8.0, abs=0.001)
    assert any("did not observe the pool for 4.00 h" in n for n in report.notes())
    # while the next run is not due yet, the time since the last one is not a gap
    later = await cost_report(world["store"], now=world["clock"]["now"] + timedelta(minutes=3), days=1,
                              price=1.0, currency="EUR")
    assert later.days[0].unobserved_hours == pytest.approx(4.0, abs=0.001)
    # an hour later without a run, it is
    later = await cost_report(world["store"], now=world["clock"]["now"] + timedelta(hours=1), days=1,
                              price=1.0, currency="EUR")
    assert later.days[0].unobserved_hours == pytest.approx(5.0, abs=0.001)


async def _observe_outage(store: SqliteStore) -> None:
    """2 nodes observed every 5 minutes until 7 March 12:00, then nothing until 11 March 12:00, then
    every 5 minutes until 13:00."""
    for t, until in ((utc(2026, 3, 7, 0), utc(2026, 3, 7, 12)), (utc(2026, 3, 11, 12), utc(2026, 3, 11, 13))):
        while t <= until:
            await record_size(store, t, 2, source="observed", observed=timedelta(minutes=6))
            t += timedelta(minutes=5)


async def test_an_outage_that_began_before_the_period_is_reported_unobserved(store: SqliteStore) -> None:
    """hubpilot observed the pool every 5 minutes until 7 March 12:00, then did not run until 11 March
    12:00. A 3-day report on the 11th at 13:00 starts inside that outage: its 60 hours were not
    observed (the last size, assumed, held), not 0."""
    await _observe_outage(store)
    report = await cost_report(store, now=utc(2026, 3, 11, 13), days=3, price=1.0, currency="EUR",
                               gap=timedelta(minutes=6))
    rep = report.to_json()
    assert [(d["date"], d["node_hours"], d["unobserved_hours"], d["unobserved_node_hours"]) for d in rep["days"]] == [
        ("2026-03-09", 48.0, 24.0, 48.0), ("2026-03-10", 48.0, 24.0, 48.0), ("2026-03-11", 26.0, 12.0, 24.0)]
    assert any("did not observe the pool for 60.00 h" in n for n in report.notes())


async def test_an_outage_that_began_before_a_one_day_period_is_reported_unobserved(store: SqliteStore) -> None:
    """The same outage (7 March 12:00 to 11 March 12:00), reported for the 11th alone: that day's
    document keeps the size it began with (`start`), yet the 12 hours before the first observation
    of the day were not observed, as in the 3-day report -- not 0, not history of an older version."""
    await _observe_outage(store)
    report = await cost_report(store, now=utc(2026, 3, 11, 13), days=1, price=1.0, currency="EUR",
                               gap=timedelta(minutes=6))
    rep = report.to_json()
    assert [(d["node_hours"], d["unobserved_hours"], d["unobserved_node_hours"]) for d in rep["days"]] == [
        (26.0, 12.0, 24.0)]
    assert rep["observed_from"] == "2026-03-07T00:00:00+00:00"
    assert not any("version that did not record them" in n for n in rep["notes"]), rep["notes"]


async def test_history_of_a_version_without_observation_times_says_what_it_cannot_know(store: SqliteStore) -> None:
    """Day documents of the previous version hold change points only (no `start`, no `seen`): the
    report counts their node-hours, and says that before the first recorded observation it cannot
    tell the hours hubpilot did not observe (reported as 0), instead of implying there were none."""
    await store.put(SIZES_KEY.format(day="2026-03-09"), {"points": [["2026-03-09T08:00:00+00:00", 2, "observed"]]})
    await store.put(SIZES_KEY.format(day="2026-03-10"), {"points": [["2026-03-10T18:00:00+00:00", 1, "scale-down"]]})
    await record_size(store, utc(2026, 3, 11, 9), 1, source="observed", observed=timedelta(minutes=6))
    report = await cost_report(store, now=utc(2026, 3, 11, 9, 2), days=3, price=1.0, currency="EUR")
    rep = report.to_json()
    assert [(d["date"], d["node_hours"], d["unobserved_hours"]) for d in rep["days"]] == [
        ("2026-03-09", 32.0, 0.0), ("2026-03-10", 42.0, 0.0), ("2026-03-11", 9.033, 0.0)]
    assert any(n.startswith("observation times are recorded from 2026-03-11T09:00:00+00:00 on") and
               "not known" in n for n in rep["notes"]), rep["notes"]
    assert rep["observed_from"] == "2026-03-11T09:00:00+00:00"
    # only history of the previous version in the period: nothing to tell the gaps by
    old = await cost_report(store, now=utc(2026, 3, 10, 20), days=2, price=1.0, currency="EUR")
    assert old.to_json()["observed_from"] is None
    assert any(n.startswith("no observation times are recorded in the period") for n in old.notes()), old.notes()


async def test_the_first_days_say_that_nothing_was_recorded_before(store: SqliteStore) -> None:
    """hubpilot's first observation ever is on 11 March at 09:00: a 3-day report shows 0 node-hours
    before it, which is not a pool of 0 nodes but nothing recorded; the report says so."""
    await record_size(store, utc(2026, 3, 11, 9), 2, source="observed", observed=timedelta(minutes=6))
    report = await cost_report(store, now=utc(2026, 3, 11, 9, 2), days=3, price=1.0, currency="EUR")
    rep = report.to_json()
    assert [(d["date"], d["node_hours"], d["always_on_node_hours"]) for d in rep["days"]] == [
        ("2026-03-09", 0.0, 0.0), ("2026-03-10", 0.0, 0.0), ("2026-03-11", 0.067, 0.067)]
    assert rep["recorded_from"] == "2026-03-11T09:00:00+00:00"
    assert any(n.startswith("nothing is recorded before 2026-03-11T09:00:00+00:00") for n in rep["notes"]), rep["notes"]
    # observed from its first record on: no history of a version without observation times
    assert rep["observed_from"] == "2026-03-11T09:00:00+00:00"
    assert not any("version that did not record them" in n for n in rep["notes"]), rep["notes"]
    # a period wholly before: nothing recorded in it at all
    empty = await cost_report(store, now=utc(2026, 3, 10, 12), days=2, price=1.0, currency="EUR")
    assert empty.to_json()["recorded_from"] is None
    assert any(n.startswith("nothing is recorded in the period") for n in empty.notes()), empty.notes()
    # a period after the first record says nothing of the kind
    later = await cost_report(store, now=utc(2026, 3, 12, 12), days=1, price=1.0, currency="EUR")
    assert not any(n.startswith("nothing is recorded") for n in later.notes()), later.notes()
