"""The shared runner and plan types, with a small in-test capability over in-memory data and the
real SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import (
    Action,
    ActionResult,
    LockHeld,
    Outcome,
    Plan,
    Progress,
    Runner,
    Status,
    UnknownPlan,
    run_batches,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Shelf:
    """Wanted items → actions that add missing ones; refuses when more than ``limit`` are added."""

    name = "shelf"

    def __init__(self, wanted: set[str], *, limit: int = 10, delay: float = 0.0, fail: str | None = None) -> None:
        self.wanted = wanted
        self.items: set[str] = set()
        self.limit = limit
        self.delay = delay
        self.fail = fail
        self.observed = 0

    async def observe(self) -> set[str]:
        self.observed += 1
        return set(self.items)

    def plan(self, observed: set[str], now: datetime) -> Plan:
        return Plan.build(self.name, [Action("add", i, reason=f"wanted since {now:%H:%M}")
                                      for i in self.wanted - observed])

    def guard(self, observed: set[str], plan: Plan) -> Sequence[str]:
        return [f"adds {len(plan.actions)} > {self.limit}"] if len(plan.actions) > self.limit else []

    async def apply(self, plan: Plan, observed: set[str], progress: Progress) -> list[ActionResult]:
        await asyncio.sleep(self.delay)
        out = []
        for a in plan.actions:
            if a.target == self.fail:
                out.append(ActionResult(a, Status.FAILED, "broken"))
            else:
                self.items.add(a.target)
                out.append(ActionResult(a, Status.DONE))
        return out


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(str(tmp_path / "state.sqlite3"))
    yield s
    await s.close()


def runner(store: SqliteStore, **kw: object) -> Runner[set[str]]:
    return Runner(store, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def test_plan_id_order_render_json_and_diff() -> None:
    a = Plan.build("op", [Action("remove", "x", 30), Action("create", "b", 10), Action("create", "a", 10)])
    assert [x.target for x in a.actions] == ["a", "b", "x"]
    same = Plan.build("op", [Action("create", "a", 10, reason="other words"), Action("remove", "x", 30),
                             Action("create", "b", 10)])
    assert a.id == same.id and len(a.id) == 16
    assert Plan.from_json(a.to_json()) == a
    assert a.render().splitlines()[0] == f"plan {a.id} for op: 2 create, 1 remove"
    assert a.diff(Plan.build("op", [Action("create", "a", 10)])) == ["- create b", "- remove x"]
    assert Plan.build("op", []).render().endswith("nothing to do")


async def test_dry_run_applies_and_records_nothing(store: SqliteStore) -> None:
    cap = Shelf({"a", "b"})
    record = await runner(store).run(cap, trigger="t", actor="me", dry_run=True)
    assert record.outcome is Outcome.PLANNED and record.plan is not None and len(record.plan.actions) == 2
    assert cap.items == set()
    assert (await store.read_audit(limit=5))[0] == []
    assert await store.read_lock("shelf", NOW) is None


async def test_run_applies_records_and_converges(store: SqliteStore) -> None:
    cap = Shelf({"a", "b"})
    r = runner(store)
    record = await r.run(cap, trigger="timer", actor="me")
    assert record.outcome is Outcome.APPLIED and cap.items == {"a", "b"}
    again = await r.run(cap, trigger="timer", actor="me")
    assert again.outcome is Outcome.APPLIED and again.plan is not None and again.plan.empty
    entries, _ = await store.read_audit(limit=5)
    assert [e["outcome"] for e in entries] == ["applied", "applied"]
    assert entries[1]["results"][0]["status"] == "done" and entries[1]["trigger"] == "timer"
    assert (await r.get_run(record.run_id)).outcome is Outcome.APPLIED  # type: ignore[union-attr]
    assert (await r.last_run("shelf"))["run_id"] == again.run_id  # type: ignore[index]


async def test_partial_failure_is_failed_and_reported_per_action(store: SqliteStore) -> None:
    cap = Shelf({"a", "b"}, fail="b")
    record = await runner(store).run(cap, trigger="t", actor="me")
    assert record.outcome is Outcome.FAILED and record.exit_code == 1
    assert {r.action.target: r.status for r in record.results} == {"a": Status.DONE, "b": Status.FAILED}


async def test_refusal_then_approval_then_stale_approval(store: SqliteStore) -> None:
    cap = Shelf({"a", "b", "c"}, limit=1)
    r = runner(store)
    refused = await r.run(cap, trigger="t", actor="me")
    assert refused.outcome is Outcome.REFUSED and refused.exit_code == 3 and cap.items == set()
    assert refused.refusal == ("adds 3 > 1",) and refused.plan is not None
    assert await r.refused_plan_operation(refused.plan.id) == "shelf"
    cap.wanted.add("d")  # the world moved on: approval must not apply a different plan
    stale = await r.approve(cap, refused.plan.id, actor="admin")
    assert stale.outcome is Outcome.REFUSED and cap.items == set()
    cap.wanted.discard("d")
    ok = await r.approve(cap, refused.plan.id, actor="admin")
    assert ok.outcome is Outcome.APPLIED and cap.items == {"a", "b", "c"}
    assert "  refused: adds 3 > 1" in refused.render()
    assert "  approved despite: adds 3 > 1" in ok.render() and "refused:" not in ok.render()
    with pytest.raises(UnknownPlan):
        await r.approve(cap, refused.plan.id, actor="admin")  # used up


async def test_an_approval_is_refused_for_another_operation_and_before_the_pause_is_read(
        store: SqliteStore) -> None:
    """A refused plan is approved only by a run of its own operation; an approval of a plan no
    refused run recorded is refused at once, also while the operation is paused: it records no run."""
    cap = Shelf({"a", "b"}, limit=1)
    r = runner(store)
    refused = await r.run(cap, trigger="t", actor="me")
    assert refused.outcome is Outcome.REFUSED and refused.plan is not None
    bench = Shelf({"a", "b"}, limit=1)
    bench.name = "bench"
    with pytest.raises(UnknownPlan, match=f"no refused bench plan with id {refused.plan.id}"):
        await r.approve(bench, refused.plan.id, actor="admin")
    await r.set_paused("shelf", True, "admin")
    with pytest.raises(UnknownPlan, match="no refused shelf plan with id 0123456789abcdef"):
        await r.approve(cap, "0123456789abcdef", actor="admin")
    assert (await store.read_audit(operation="bench"))[0] == []
    assert [e["kind"] for e in (await store.read_audit(operation="shelf"))[0]] == ["pause", "run"]
    assert bench.items == set() and cap.items == set()


async def test_paused_runs_only_report(store: SqliteStore) -> None:
    cap = Shelf({"a"})
    r = runner(store)
    await r.set_paused("shelf", True, "admin")
    record = await r.run(cap, trigger="t", actor="me")
    assert record.outcome is Outcome.PAUSED and record.exit_code == 5 and cap.items == set()
    assert record.plan is not None and len(record.plan.actions) == 1
    await r.set_paused("shelf", False, "admin")
    assert (await r.run(cap, trigger="t", actor="me")).outcome is Outcome.APPLIED


async def test_pause_and_resume_are_idempotent_and_keep_who_paused(store: SqliteStore) -> None:
    """A second pause overwrote who paused the operation and since when, and the audit log showed
    it as a new pause; a resume of an operation not paused was audited as a resume too. A pause
    or resume that finds the operation so already changes nothing, writes no audit entry and
    says so, naming who paused it and when."""
    at = [NOW]
    r = Runner(store, clock=lambda: at[0])
    first = await r.set_paused("shelf", True, "alice")
    assert first.changed and first.by == "alice"
    at[0] = NOW + timedelta(hours=1)
    second = await r.set_paused("shelf", True, "bob")
    assert (second.paused, second.changed, second.by, second.at) == (True, False, "alice", NOW.isoformat())
    assert "already paused" in second.describe() and "alice" in second.describe()
    assert await store.get("paused/shelf") == {"paused": True, "by": "alice", "at": NOW.isoformat()}
    resumed = await r.set_paused("shelf", False, "carol")
    again = await r.set_paused("shelf", False, "dave")
    assert (resumed.paused, resumed.changed, again.paused, again.changed) == (False, True, False, False)
    assert "was not paused" in again.describe()
    entries, _ = await store.read_audit(operation="shelf")
    assert [(e["outcome"], e["actor"]) for e in entries] == [("resumed", "carol"), ("paused", "alice")]


async def test_observe_error_fails_with_nothing_applied(store: SqliteStore) -> None:
    class Broken(Shelf):
        async def observe(self) -> set[str]:
            raise ConnectionError("directory down")

    cap = Broken({"a"})
    record = await runner(store).run(cap, trigger="t", actor="me")
    assert record.outcome is Outcome.FAILED and record.error == "ConnectionError: directory down"
    assert record.results == [] and await store.read_lock("shelf", NOW) is None


async def test_a_plan_that_cannot_be_made_is_a_recorded_failure(store: SqliteStore) -> None:
    """A plan or guard that raises (damaged state, a bug) fails the run with nothing applied, and
    the run is finished, audited and unlocked like any other."""
    class Broken(Shelf):
        def plan(self, observed: set[str], now: datetime) -> Plan:
            raise TypeError("can't compare offset-naive and offset-aware datetimes")

    r = runner(store)
    record = await r.run(Broken({"a"}), trigger="t", actor="me")
    assert record.outcome is Outcome.FAILED and record.error is not None
    assert record.error.startswith("planning failed: TypeError") and record.results == []
    assert await store.read_lock("shelf", NOW) is None
    entries, _ = await store.read_audit(operation="shelf", limit=5)
    assert [e["outcome"] for e in entries] == ["failed"]
    assert (await r.get_run(record.run_id)) is not None
    dry = await r.dry_run(Broken({"a"}))
    assert dry.outcome is Outcome.FAILED and dry.error is not None and "planning failed" in dry.error


async def test_concurrent_runs_one_applies_the_other_sees_the_lock(store: SqliteStore) -> None:
    cap = Shelf({"a"}, delay=0.2)
    results = await asyncio.gather(runner(store).run(cap, trigger="t", actor="x"),
                                   runner(store).run(cap, trigger="t", actor="y"), return_exceptions=True)
    assert sorted(type(x).__name__ for x in results) == ["LockHeld", "RunRecord"]
    held = next(x for x in results if isinstance(x, LockHeld))
    assert held.lease is not None and held.lease.holder.startswith(("x:", "y:"))


async def test_a_long_run_renews_its_lease_and_releases_the_renewed_one(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite3"))
    try:
        r: Runner[set[str]] = Runner(store, lock_ttl=timedelta(seconds=1.5))  # renews every second
        record = await r.run(Shelf({"a"}, delay=1.3), trigger="t", actor="me")
        assert record.outcome is Outcome.APPLIED
        assert await store.read_lock("shelf", datetime.now(UTC)) is None  # released, not left to expire
        assert (await r.run(Shelf({"b"}), trigger="t", actor="me")).outcome is Outcome.APPLIED
    finally:
        await store.close()


async def test_old_run_documents_are_pruned_about_once_a_day(store: SqliteStore) -> None:
    now = datetime.now(UTC)  # the store dates documents by its own clock: the runner's agrees with it
    month = timedelta(days=30)
    first = await Runner(store, clock=lambda: now, run_retention=month).run(Shelf({"a"}), trigger="timer", actor="t")
    assert await store.get(f"runs/{first.run_id}") is not None  # young: kept
    assert await store.get("maintenance/runs-pruned") == {"at": now.isoformat()}
    # the first run's document was written 31 days ago, the last prune was 2 days ago
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE docs SET written_us = written_us - ? WHERE key = ?",
                     (31 * 86400 * 10**6, f"runs/{first.run_id}"))
    # and another one written 29 days ago: inside the retention, kept
    await store.put("runs/of-29-days-ago", {"run_id": "of-29-days-ago"})
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE docs SET written_us = written_us - ? WHERE key = ?",
                     (29 * 86400 * 10**6, "runs/of-29-days-ago"))
    await store.put("maintenance/runs-pruned", {"at": (now - timedelta(days=2)).isoformat()})
    second = await Runner(store, clock=lambda: now, run_retention=month).run(Shelf({"b"}), trigger="timer", actor="t")
    assert await store.get(f"runs/{first.run_id}") is None
    assert await store.get("runs/of-29-days-ago") is not None, "a run document inside the retention was pruned"
    assert await store.get(f"runs/{second.run_id}") is not None
    entries, _ = await store.read_audit(operation="shelf")  # the audit log keeps both runs
    assert {e["run_id"] for e in entries} >= {first.run_id, second.run_id}
    assert await store.get("maintenance/runs-pruned") == {"at": now.isoformat()}
    # an hour later another instance finds the day's prune done and leaves the mark alone
    later = now + timedelta(hours=1)
    await Runner(store, clock=lambda: later, run_retention=month).run(Shelf({"c"}), trigger="timer", actor="t")
    assert await store.get("maintenance/runs-pruned") == {"at": now.isoformat()}


async def test_refused_plans_older_than_the_retention_are_pruned_with_the_runs(store: SqliteStore) -> None:
    """A guard that refuses a changing plan every minute writes a refused-plan document each time:
    they were never deleted. Those not refused again within the retention go with the old run
    documents; one refused again is written anew and kept; an approval of a pruned one is refused."""
    now = datetime.now(UTC)
    month = timedelta(days=30)
    for plan_id, age_days in (("0123456789abcdef", 31), ("fedcba9876543210", 29)):
        await store.put(f"refused/{plan_id}", {"operation": "shelf", "at": now.isoformat()})
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE docs SET written_us = written_us - ? WHERE key = ?",
                         (age_days * 86400 * 10**6, f"refused/{plan_id}"))
    r = Runner(store, clock=lambda: now, run_retention=month)
    await r.run(Shelf({"a"}), trigger="timer", actor="t")
    assert await store.get("refused/0123456789abcdef") is None
    assert await store.get("refused/fedcba9876543210") is not None, "a plan refused within the retention was pruned"
    with pytest.raises(UnknownPlan, match="no refused"):
        await r.run(Shelf({"b"}), trigger="api", actor="admin", approve="0123456789abcdef")


async def test_without_retention_nothing_is_pruned(store: SqliteStore) -> None:
    first = await runner(store).run(Shelf({"a"}), trigger="timer", actor="t")
    assert await store.get(f"runs/{first.run_id}") is not None
    assert await store.get("maintenance/runs-pruned") is None


async def test_run_batches_orders_phases_batches_and_isolates_failures() -> None:
    actions = [Action("add", "g1", 2, {"user": "u1"}), Action("add", "g1", 2, {"user": "u2"}),
               Action("make", "g1", 1), Action("add", "g2", 2, {"user": "u3"})]
    calls: list[list[str]] = []

    async def perform(batch: list[Action]) -> list[ActionResult]:
        calls.append([f"{a.kind}:{a.target}:{a.params.get('user', '')}" for a in batch])
        if batch[0].target == "g2":
            raise RuntimeError("hub said 503")
        return [ActionResult(a, Status.DONE) for a in batch]

    seen: list[int] = []
    results = await run_batches(actions, lambda a: (a.kind, a.target), perform, concurrency=2,
                                progress=lambda done, total, msg: seen.append(done))
    assert calls[0] == ["make:g1:"]  # phase 1 first
    assert sorted(calls[1:]) == [["add:g1:u1", "add:g1:u2"], ["add:g2:u3"]]  # one batch per group
    assert [r.status for r in results] == [Status.DONE, Status.DONE, Status.DONE, Status.FAILED]
    assert results[3].detail == "RuntimeError: hub said 503"
    assert seen[-1] == 4


async def test_a_damaged_prune_mark_never_fails_the_run(store: SqliteStore) -> None:
    """The mark is written by hand or by another tool with a time without zone (naive means UTC
    in hubpilot's documents): the run still ends with its record, and the prune goes on by it."""
    now = datetime.now(UTC)
    await store.put("maintenance/runs-pruned", {"at": (now - timedelta(hours=1)).replace(tzinfo=None).isoformat()})
    record = await Runner(store, clock=lambda: now, run_retention=timedelta(days=30)).run(
        Shelf({"a"}), trigger="timer", actor="t")
    assert record.outcome is Outcome.APPLIED
    # an hour ago, by UTC: the day's prune is done, the mark is left alone
    assert await store.get("maintenance/runs-pruned") == {
        "at": (now - timedelta(hours=1)).replace(tzinfo=None).isoformat()}
    # one that is no time at all is no mark: the run prunes and writes it anew
    await store.put("maintenance/runs-pruned", {"at": "yesterday"})
    record = await Runner(store, clock=lambda: now, run_retention=timedelta(days=30)).run(
        Shelf({"b"}), trigger="timer", actor="t")
    assert record.outcome is Outcome.APPLIED
    assert await store.get("maintenance/runs-pruned") == {"at": now.isoformat()}


async def test_a_prune_mark_from_a_clock_that_was_once_far_ahead_does_not_stop_pruning(store: SqliteStore) -> None:
    """A mark written by a clock a month ahead (a host before NTP fixed it) said the day's prune
    was done until the wall clock caught up with it, a month without pruning; a mark more than a
    day ahead of this clock is no mark: the run prunes and writes it anew. One a little ahead (a
    second host's clock) still counts as the day's prune."""
    now = datetime.now(UTC)  # the store dates documents by its own clock: the runner's agrees with it
    month = timedelta(days=30)
    first = await Runner(store, clock=lambda: now, run_retention=month).run(Shelf({"a"}), trigger="timer", actor="t")
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE docs SET written_us = written_us - ? WHERE key = ?",
                     (31 * 86400 * 10**6, f"runs/{first.run_id}"))
    await store.put("maintenance/runs-pruned", {"at": (now + timedelta(minutes=5)).isoformat()})
    await Runner(store, clock=lambda: now, run_retention=month).run(Shelf({"b"}), trigger="timer", actor="t")
    assert await store.get(f"runs/{first.run_id}") is not None  # a little ahead: the day's prune is done
    await store.put("maintenance/runs-pruned", {"at": (now + month).isoformat()})
    second = await Runner(store, clock=lambda: now, run_retention=month).run(Shelf({"c"}), trigger="timer", actor="t")
    assert await store.get(f"runs/{first.run_id}") is None, "a mark a month ahead stopped pruning"
    assert await store.get(f"runs/{second.run_id}") is not None
    assert await store.get("maintenance/runs-pruned") == {"at": now.isoformat()}
