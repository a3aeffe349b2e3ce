"""``hubpilot serve``: the in-process scheduler (driven by a fake clock) and the real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubpilot.api.scheduling import Schedule, run_scheduled
from hubpilot.serve import Scheduler, Server
from tests.test_api_kit import TOKENS, make_context, token_settings

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 2, 12, 7, 30, tzinfo=UTC)


class FakeTime:
    """A clock and a sleep that advances it: the scheduler's waits take no real time."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def _ctx(tmp_path: Path, fake: FakeTime):  # type: ignore[no-untyped-def]
    ctx, worlds = make_context(tmp_path)
    ctx.clock = fake
    return ctx, worlds


async def test_scheduler_fires_at_the_ncrontab_times_and_runs_through_the_runner(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="hubpilot.serve")
    fake = FakeTime(T0)
    ctx, worlds = _ctx(tmp_path, fake)
    sched = Scheduler(ctx, [Schedule("sync", "0 */15 * * * *", True, "sync.schedule")], sleep=fake.sleep)
    await sched.run(rounds=3)
    fired = [due for due, _ in sched.rounds["sync"]]
    assert fired == [T0.replace(minute=15, second=0), T0.replace(minute=30, second=0),
                     T0.replace(minute=45, second=0)]
    assert fake.slept[0] == 7.5 * 60
    records = [r for _, r in sched.rounds["sync"]]
    assert all(r is not None and r.trigger == "timer" and r.outcome == "applied" for r in records)
    assert records[0] is not None and records[0].result_counts() == {"done": 2}
    assert worlds["sync"].items == {"sync-a", "sync-b"}
    last = await ctx.runner.last_run("sync")
    assert last is not None and last["trigger"] == "timer" and last["at"] == fired[-1].isoformat()
    # quick rounds: none said to have skipped a fire time
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"], caplog.text
    await ctx.close()


async def test_a_held_lock_skips_the_round_and_refusals_do_not_stop_the_schedule(tmp_path: Path) -> None:
    fake = FakeTime(T0)
    ctx, worlds = _ctx(tmp_path, fake)
    lease = await ctx.store.acquire_lock("cull", "someone", timedelta(minutes=20), T0)
    assert lease is not None
    worlds["scale"].items, worlds["scale"].desired = {"1", "2", "3"}, set()
    cull = Scheduler(ctx, [Schedule("cull", "0 */10 * * * *", True, "cull.schedule")], sleep=fake.sleep)
    await cull.run(rounds=3)  # 12:10 and 12:20 inside the lease, 12:30 after it
    assert [r is None for _, r in cull.rounds["cull"]] == [True, True, False]
    assert worlds["cull"].applies == 1
    scale = Scheduler(ctx, [Schedule("scale", "0 * * * * *", True, "scale.schedule")], sleep=fake.sleep)
    await scale.run(rounds=2)
    assert [str(r.outcome) for _, r in scale.rounds["scale"] if r] == ["refused", "refused"]
    assert worlds["scale"].items == {"1", "2", "3"}
    await ctx.close()


async def test_a_round_that_raises_is_logged_and_the_schedule_goes_on(tmp_path: Path) -> None:
    fake = FakeTime(T0)
    ctx, _ = _ctx(tmp_path, fake)
    sched = Scheduler(ctx, [Schedule("nonesuch", "0 0 * * * *", True, "x.schedule")], sleep=fake.sleep)
    await sched.run(rounds=2)
    assert [r for _, r in sched.rounds["nonesuch"]] == [None, None]
    await ctx.close()


async def test_the_scheduler_takes_every_operation_schedule_from_the_settings(tmp_path: Path) -> None:
    ctx, _ = make_context(tmp_path)
    names = {s.name: s.expression for s in Scheduler(ctx).schedules}
    assert names == {"sync": ctx.settings.sync.schedule, "cull": ctx.settings.cull.schedule,
                     "scale": ctx.settings.scale.schedule}
    await ctx.close()


async def test_other_schedules_run_their_job_and_only_known_ones_are_taken(tmp_path: Path) -> None:
    fake = FakeTime(T0)
    ctx, _ = _ctx(tmp_path, fake)
    calls: list[datetime] = []

    async def job(c: object) -> None:
        assert c is ctx
        calls.append(fake.now)

    schedules = [Schedule("x.renew_schedule", "0 0 */6 * * *", False, "x.renew_schedule"),
                 Schedule("y.other_schedule", "0 0 * * * *", False, "y.other_schedule")]
    sched = Scheduler(ctx, schedules, sleep=fake.sleep, jobs={"x.renew_schedule": job})
    assert [s.name for s in sched.schedules] == ["x.renew_schedule"]
    await sched.run(rounds=2)
    assert calls == [T0.replace(hour=18, minute=0, second=0), T0.replace(day=3, hour=0, minute=0, second=0)]
    await ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _serve_process(tmp_path: Path, settings: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``hubpilot serve`` (serve.main, as the CLI runs it) in a process of its own with these
    ``HUBPILOT_`` variables besides a state file, the test tokens and no schedules; yields once it
    answers /healthz (the process and its base URL) and kills it if the test left it running."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
    env.update({
        "HUBPILOT_STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"),
        "HUBPILOT_API__TOKENS": json.dumps(token_settings()),
        "HUBPILOT_API__SERVE_SCHEDULES": "false",
        "HUBPILOT_HUB__API_URL": "http://127.0.0.1:9/hub/api",
        **settings,
    })
    code = f"from hubpilot.serve import main; from hubpilot.settings import load_settings; " \
           f"raise SystemExit(main(load_settings(), host='127.0.0.1', port={port}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            pytest.fail("hubpilot serve did not come up")
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_serve_main_serves_on_loopback_and_stops_cleanly_on_sigterm(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGHUP too (the terminal it was started from closed): it ended the process at once, a run
    under way neither audited nor its lock released (held 10 min)."""
    with _serve_process(tmp_path, {}) as (proc, base):
        assert httpx.get(f"{base}/api/v1/status").status_code == 401
        status = httpx.get(f"{base}/api/v1/status", headers={"Authorization": f"Bearer {TOKENS['reader']}"})
        assert status.status_code == 200
        assert {s["name"] for s in status.json()["schedules"]} >= {"sync", "cull", "scale"}
        assert {s["fired_here"] for s in status.json()["schedules"]} == {False}  # api.serve_schedules off
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert TOKENS["reader"] not in out


class EarlyTime(FakeTime):
    """A sleep that wakes ``early`` seconds before the wall clock reaches the time it was asked
    for: the event loop's monotonic clock and the wall clock drift apart (an NTP step back)."""

    def __init__(self, now: datetime, early: float) -> None:
        super().__init__(now)
        self.early = early

    async def sleep(self, seconds: float) -> None:
        await super().sleep(max(0.0, seconds - self.early))


async def test_a_round_is_never_fired_twice_for_one_fire_time_when_the_wall_clock_lags(tmp_path: Path) -> None:
    fake = EarlyTime(T0, early=0.5)
    ctx, _ = _ctx(tmp_path, fake)
    sched = Scheduler(ctx, [Schedule("sync", "0 */15 * * * *", True, "sync.schedule")], sleep=fake.sleep)
    await sched.run(rounds=3)
    fired = [due for due, _ in sched.rounds["sync"]]
    assert fired == [T0.replace(minute=15, second=0), T0.replace(minute=30, second=0),
                     T0.replace(minute=45, second=0)], "one fire time ran more than once"
    await ctx.close()


async def _serve_one_schedule(tmp_path: Path) -> tuple[Server, asyncio.Task[None], Any, Any]:
    """``hubpilot serve`` (uvicorn on a free loopback port) whose sync schedule fires at once
    (a fake clock) and whose sync run waits in apply until the test opens its gate."""
    fake = FakeTime(T0)
    ctx, worlds = _ctx(tmp_path, fake)
    worlds["sync"].gate = asyncio.Event()
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=True)
    server.scheduler = Scheduler(ctx, [Schedule("sync", "0 * * * * *", True, "sync.schedule")], sleep=fake.sleep)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(worlds["sync"].entered.wait(), 10)  # the scheduled run is applying
    return server, task, ctx, worlds


async def test_a_scheduled_run_under_way_at_shutdown_finishes_within_the_grace(tmp_path: Path) -> None:
    server, task, ctx, worlds = await _serve_one_schedule(tmp_path)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        status = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {TOKENS['reader']}"})
    assert {s["fired_here"] for s in status.json()["schedules"]} == {True}  # this serve fires its schedules
    server.stop()  # what SIGTERM does
    await asyncio.wait_for(server.draining.wait(), 10)
    worlds["sync"].gate.set()  # the run ends after shutdown began
    await asyncio.wait_for(task, 10)
    assert worlds["sync"].items == {"sync-a", "sync-b"}
    entries, _ = await ctx.store.read_audit(operation="sync")
    assert [(e["trigger"], e["outcome"]) for e in entries] == [("timer", "applied")]
    assert [r is not None and r.outcome == "applied" for _, r in server.scheduler.rounds["sync"]] == [True]
    await ctx.close()


async def test_a_scheduled_run_cancelled_at_shutdown_is_recorded_as_failed_and_frees_its_lock(
        tmp_path: Path) -> None:
    server, task, ctx, worlds = await _serve_one_schedule(tmp_path)
    server.shutdown_grace = 0.2  # the run never ends by itself: the gate stays shut
    server.stop()
    await asyncio.wait_for(task, 10)
    assert worlds["sync"].items == set()
    entries, _ = await ctx.store.read_audit(operation="sync")
    assert [(e["trigger"], e["outcome"]) for e in entries] == [("timer", "failed")], \
        "a run cancelled at shutdown left no audit entry"
    assert "cancelled" in entries[0]["error"]
    doc = await ctx.runner.run_document(entries[0]["run_id"])  # as GET /runs/{id} reads it
    assert doc is not None and doc["outcome"] == "failed"
    assert await ctx.runner.last_run("sync") is None  # it did not end: a restart catches it up
    assert await ctx.store.acquire_lock("sync", "next", timedelta(minutes=1), datetime.now(UTC)) is not None
    await ctx.close()


async def test_a_fire_missed_while_serve_was_down_runs_once_at_start_as_the_functions_timer_does(
        tmp_path: Path) -> None:
    # a daily sync at 02:00; the last run was yesterday's; serve was down over today's 02:00 and
    # starts at 12:07:30 (Functions' schedule monitor runs such a past-due fire at start)
    fake = FakeTime(T0.replace(hour=2, minute=0, second=0) - timedelta(days=1))
    ctx, worlds = _ctx(tmp_path, fake)
    assert (await run_scheduled(ctx, "sync")) is not None  # yesterday 02:00
    worlds["sync"].desired.add("sync-c")
    fake.now = T0
    sched = Scheduler(ctx, [Schedule("sync", "0 0 2 * * *", True, "sync.schedule")], sleep=fake.sleep)
    await sched.run(rounds=2)
    fired = [due for due, _ in sched.rounds["sync"]]
    assert fired == [T0.replace(hour=2, minute=0, second=0), T0.replace(day=3, hour=2, minute=0, second=0)]
    assert fake.slept[0] == 0.0, "the missed fire waited for the next one"
    first = sched.rounds["sync"][0][1]
    assert first is not None and first.outcome == "applied" and first.started == T0
    assert "sync-c" in worlds["sync"].items
    await ctx.close()


async def test_no_catch_up_when_the_last_fire_was_run_or_nothing_ever_ran(tmp_path: Path) -> None:
    fake = FakeTime(T0.replace(hour=2, minute=0, second=0))
    ctx, _ = _ctx(tmp_path, fake)
    assert (await run_scheduled(ctx, "sync")) is not None  # today's 02:00 ran
    fake.now = T0
    sched = Scheduler(ctx, [Schedule("sync", "0 0 2 * * *", True, "sync.schedule"),
                            Schedule("cull", "0 0 2 * * *", True, "cull.schedule")], sleep=fake.sleep)
    await sched.run(rounds=1)
    assert [due for due, _ in sched.rounds["sync"]] == [T0.replace(day=3, hour=2, minute=0, second=0)]
    assert [due for due, _ in sched.rounds["cull"]] == [T0.replace(day=3, hour=2, minute=0, second=0)]
    await ctx.close()


async def test_two_serve_processes_on_one_store_run_each_fire_time_once(tmp_path: Path) -> None:
    # two hubpilot serve processes (e.g. an HA pair) on one state store; B's clock is 0.3 s behind
    # A's, so B fires after A's quick run has ended and released the lock
    from hubpilot.adapters.store_sqlite import SqliteStore
    from hubpilot.wiring import Context

    clock_a, clock_b = FakeTime(T0), FakeTime(T0 - timedelta(seconds=0.3))
    ctx_a, _ = _ctx(tmp_path, clock_a)
    ctx_b = Context(settings=ctx_a.settings, store=SqliteStore(ctx_a.store.path))  # type: ignore[attr-defined]
    ctx_b.factories.update(ctx_a.factories)
    ctx_b.clock = clock_b
    sync = [Schedule("sync", "0 */15 * * * *", True, "sync.schedule")]
    a = Scheduler(ctx_a, sync, sleep=clock_a.sleep)
    b = Scheduler(ctx_b, sync, sleep=clock_b.sleep)
    await a.run(rounds=1)
    await b.run(rounds=1)
    await a.run(rounds=1)
    await b.run(rounds=1)
    entries, _ = await ctx_a.store.read_audit(operation="sync")
    assert len(entries) == 2, "one fire time ran on both processes"
    assert [r is not None for _, r in a.rounds["sync"]] == [True, True]
    assert [r is not None for _, r in b.rounds["sync"]] == [False, False]
    await ctx_b.close()
    await ctx_a.close()


async def test_a_fire_time_claimed_by_a_clock_far_ahead_does_not_silence_the_schedule(tmp_path: Path) -> None:
    fake = FakeTime(T0)
    ctx, _ = _ctx(tmp_path, fake)
    await ctx.store.put("schedule/sync", {"fired": "2027-03-02T12:15:00+00:00", "by": "wrong-clock:1"})
    sched = Scheduler(ctx, [Schedule("sync", "0 */15 * * * *", True, "sync.schedule")], sleep=fake.sleep)
    await sched.run(rounds=2)
    assert [r is not None and r.outcome == "applied" for _, r in sched.rounds["sync"]] == [True, True]
    await ctx.close()


async def test_a_clock_stepped_far_back_is_followed_not_waited_out(tmp_path: Path) -> None:
    # the clock ran an hour ahead and is corrected after a round: the schedule goes on from the
    # corrected time instead of waiting an hour for the fire time after the last round's
    fake = FakeTime(T0 + timedelta(hours=1))
    ctx, _ = _ctx(tmp_path, fake)
    sched = Scheduler(ctx, [Schedule("sync", "0 */15 * * * *", True, "sync.schedule")], sleep=fake.sleep)
    await sched.run(rounds=1)
    fake.now = T0
    await sched.run(rounds=1)
    assert [due for due, _ in sched.rounds["sync"]] == [T0.replace(hour=13, minute=15, second=0),
                                                        T0.replace(minute=15, second=0)]
    await ctx.close()


async def test_a_fire_whose_run_was_cancelled_at_shutdown_is_caught_up_at_the_next_start(tmp_path: Path) -> None:
    fake = FakeTime(T0.replace(hour=1, minute=59, second=0))
    ctx, worlds = _ctx(tmp_path, fake)
    assert (await run_scheduled(ctx, "sync")) is not None  # a run before: the last run
    worlds["sync"].desired.add("sync-c")
    worlds["sync"].gate = asyncio.Event()
    worlds["sync"].entered.clear()
    daily = [Schedule("sync", "0 0 2 * * *", True, "sync.schedule")]
    first = Scheduler(ctx, daily, sleep=fake.sleep)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(worlds["sync"].entered.wait(), 10)  # the 02:00 run is applying
    task.cancel()  # shutdown past its grace
    with contextlib.suppress(asyncio.CancelledError):
        await task
    worlds["sync"].gate = None
    fake.now = T0
    again = Scheduler(ctx, daily, sleep=fake.sleep)  # serve started again
    await again.run(rounds=1)
    [(due, record)] = again.rounds["sync"]
    assert due == T0.replace(hour=2, minute=0, second=0)
    assert record is not None and record.outcome == "applied" and "sync-c" in worlds["sync"].items
    await ctx.close()


async def test_a_notification_sync_under_way_at_shutdown_finishes_within_the_grace(tmp_path: Path) -> None:
    from hubpilot.entra.notifications import Hint
    from hubpilot.settings import Settings
    from hubpilot.wiring.entra import InProcessHints, notification_queue
    from tests.test_api_kit import make_settings

    base = make_settings()
    settings = Settings(**{**base.model_dump(exclude_unset=True),
                           "directory": {"kind": "entra", "entra": {
                               "notifications": True, "client_state": "s" * 32,
                               "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications"}}})
    ctx, worlds = make_context(tmp_path, settings)
    worlds["sync"].gate = asyncio.Event()
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    task = asyncio.create_task(server.run())
    queue = notification_queue(ctx)
    assert isinstance(queue, InProcessHints)
    await queue.push(Hint("sync", received=datetime.now(UTC).isoformat()))
    await asyncio.wait_for(worlds["sync"].entered.wait(), 10)  # the worker's sync is applying
    server.stop()
    await asyncio.wait_for(server.draining.wait(), 10)
    worlds["sync"].gate.set()
    await asyncio.wait_for(task, 10)
    entries, _ = await ctx.store.read_audit(operation="sync")
    assert [(e["trigger"], e["outcome"]) for e in entries] == [("notification", "applied")]
    assert worlds["sync"].items == {"sync-a", "sync-b"}
    await ctx.close()


async def test_serve_with_the_azure_hint_queue_says_it_does_not_drain_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With directory.entra.queue = "azure", notifications are acknowledged and left on the Storage
    queue for the Functions app's graph_hints function; hubpilot serve drains only its in-process
    queue. Starting it so must say that notifications will not reach a sync from here."""
    from hubpilot.settings import Settings
    from hubpilot.wiring.entra import AzureHints, notification_queue
    from tests.test_api_kit import make_settings

    base = make_settings()
    settings = Settings(**{**base.model_dump(exclude_unset=True),
                           "directory": {"kind": "entra", "entra": {
                               "notifications": True, "client_state": "s" * 32, "queue": "azure",
                               "queue_account_url": "https://account.queue.core.windows.net",
                               "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications"}}})
    ctx, _ = make_context(tmp_path, settings)
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    with caplog.at_level("WARNING", logger="hubpilot"):
        task = asyncio.create_task(server.run())
        while not server.started:
            await asyncio.sleep(0.01)
        server.stop()
        await asyncio.wait_for(task, 10)
    assert isinstance(notification_queue(ctx), AzureHints)
    said = [r.getMessage() for r in caplog.records if "directory.entra.queue" in r.getMessage()]
    assert len(said) == 1 and "graph_hints" in said[0] and "'memory'" in said[0], caplog.text
    await ctx.close()


async def test_serve_on_a_port_in_use_runs_no_scheduled_round(tmp_path: Path) -> None:
    # a second `hubpilot serve` started by mistake on the port the first one holds: it cannot
    # listen and exits, and must not run a round first (here a missed fire, which runs at once)
    fake = FakeTime(T0.replace(hour=2, minute=0, second=0) - timedelta(days=1))
    ctx, worlds = _ctx(tmp_path, fake)
    assert (await run_scheduled(ctx, "sync")) is not None  # yesterday 02:00
    worlds["sync"].desired.add("sync-c")
    fake.now = T0
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        # a host name, as `--host localhost`: resolving it lets other tasks run before the bind
        server = Server(ctx.settings, host="localhost", port=held.getsockname()[1], context=ctx,
                        schedules=True)
        server.scheduler = Scheduler(ctx, [Schedule("sync", "0 0 2 * * *", True, "sync.schedule")],
                                     sleep=fake.sleep)
        with pytest.raises(SystemExit):
            await server.run()
    assert server.scheduler.rounds["sync"] == [], "a round ran though the server never listened"
    assert "sync-c" not in worlds["sync"].items
    await ctx.close()


async def _until(cond: Any, what: str) -> None:
    """Wait (real time, bounded) until ``cond()`` holds; the scheduler's own clock is fake."""
    for _ in range(400):
        if cond():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


async def test_a_round_still_running_at_the_next_fire_time_is_reported_not_doubled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hung round (a hub that answers slowly, a directory read that never ends) is not piled
    up: no second round of the schedule starts while it runs, and the log says so at the fire
    time it skips, not only once it ends (it may never end)."""
    caplog.set_level("INFO", logger="hubpilot.serve")
    fake = FakeTime(T0)
    ctx, worlds = _ctx(tmp_path, fake)
    worlds["sync"].gate = asyncio.Event()
    sched = Scheduler(ctx, [Schedule("sync", "* * * * * *", True, "sync.schedule")], sleep=fake.sleep)
    task = asyncio.create_task(sched.run(rounds=2))
    try:
        await asyncio.wait_for(worlds["sync"].entered.wait(), 10)
        first = T0 + timedelta(seconds=1)

        def skipped() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()]

        await _until(skipped, "a warning that the fire time after the hung round's is skipped")
        (said,) = skipped()
        assert f"fire at {(first + timedelta(seconds=1)).isoformat()}" in said, said
        assert f"round that fired at {first.isoformat()} is still running" in said, said
        assert worlds["sync"].applies == 1 and sched.rounds["sync"] == []
        fake.now += timedelta(seconds=5)  # the round hangs on; its fire times pass
        worlds["sync"].gate.set()
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    fired = [due for due, _ in sched.rounds["sync"]]
    assert fired == [first, first + timedelta(seconds=6)]
    # the hung round's end says which fire times it skipped, once; the round after it fires at
    # the fake clock's next second, which does not move while it runs: should it take more than a
    # real second (a loaded machine), its own overrun is said too, in a line of its own
    ended = [r.getMessage() for r in caplog.records
             if f"round that fired at {first.isoformat()} ended" in r.getMessage() and "skipped" in r.getMessage()]
    assert len(ended) == 1, caplog.text
    assert f"from {(first + timedelta(seconds=1)).isoformat()} to {(first + timedelta(seconds=5)).isoformat()} were" \
        in ended[0], ended
    await ctx.close()


async def test_a_round_cancelled_from_within_does_not_end_its_schedule_or_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A round whose own work ends cancelled (a library's cancelled request, nothing of the
    scheduler's) is a failed round: its schedule and the other schedules go on."""
    fake = FakeTime(T0)
    ctx, _ = _ctx(tmp_path, fake)
    calls: list[datetime] = []

    async def job(c: object) -> None:
        calls.append(fake.now)
        if len(calls) == 1:
            raise asyncio.CancelledError

    schedules = [Schedule("x.renew_schedule", "0 0 * * * *", False, "x.renew_schedule"),
                 Schedule("sync", "0 */20 * * * *", True, "sync.schedule")]
    sched = Scheduler(ctx, schedules, sleep=fake.sleep, jobs={"x.renew_schedule": job})
    await asyncio.wait_for(sched.run(rounds=3), 30)
    assert len(calls) == 3, "the schedule ended with its cancelled round"
    assert [r is None for _, r in sched.rounds["x.renew_schedule"]] == [True, True, True]
    assert len(sched.rounds["sync"]) == 3, "another schedule ended with the cancelled round"
    assert any("x.renew_schedule" in r.getMessage() and "cancelled" in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR"), caplog.text
    await ctx.close()


async def test_a_schedule_of_an_unconfigured_operation_says_so_once(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A hub without a GPU pool keeps scale's schedule (every minute by default): each round is
    skipped, and said so once at INFO, the later ones at DEBUG, not a line a minute all day."""
    from hubpilot.adapters.store_sqlite import SqliteStore
    from hubpilot.settings import Settings
    from hubpilot.wiring import Context

    settings = Settings(hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "t" * 32})
    ctx = Context(settings=settings, store=SqliteStore(tmp_path / "state.sqlite3"))
    try:
        with caplog.at_level("DEBUG", logger="hubpilot.api.scheduling"):
            for _ in range(5):
                assert await run_scheduled(ctx, "scale") is None
        said = [r for r in caplog.records if "scale.enabled is off" in r.getMessage()]
        assert [r.levelname for r in said] == ["INFO"] + ["DEBUG"] * 4, [r.getMessage() for r in said]
    finally:
        await ctx.close()


async def test_a_serve_with_its_schedules_off_runs_no_scheduled_round(tmp_path: Path) -> None:
    """api.serve_schedules off (another host fires them, e.g. the Functions app on the same store):
    the server answers, and no round of any schedule runs here, not even one due at once."""
    fake = FakeTime(T0)
    ctx, worlds = _ctx(tmp_path, fake)
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    server.scheduler = Scheduler(ctx, [Schedule("sync", "* * * * * *", True, "sync.schedule")], sleep=fake.sleep)
    task = asyncio.create_task(server.run())
    try:
        await _until(lambda: server.started, "the server listens")
        with pytest.raises(TimeoutError):  # a round would be under way at once (the fake clock)
            await asyncio.wait_for(worlds["sync"].entered.wait(), 0.5)
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
    assert server.scheduler.rounds["sync"] == [] and worlds["sync"].applies == 0
    assert await ctx.runner.last_run("sync") is None
    await ctx.close()


async def test_a_stop_during_the_wait_for_a_fire_time_starts_no_round(tmp_path: Path) -> None:
    """Shutdown begins while a schedule waits for its next fire time: the wait ends at once and
    no round starts after it (it would run in the grace meant for work already under way)."""
    fake = FakeTime(T0)
    ctx, worlds = _ctx(tmp_path, fake)
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the fire time is far off
        waiting.set()
        await asyncio.sleep(3600)

    sched = Scheduler(ctx, [Schedule("sync", "0 0 2 * * *", True, "sync.schedule")], sleep=sleep)
    task = asyncio.create_task(sched.run())
    await asyncio.wait_for(waiting.wait(), 10)
    sched.stop()
    await asyncio.wait_for(task, 10)
    assert sched.rounds["sync"] == [] and worlds["sync"].applies == 0
    assert await ctx.runner.last_run("sync") is None
    await ctx.close()


async def test_a_run_started_over_http_under_way_at_shutdown_finishes_before_serve_returns(tmp_path: Path) -> None:
    """SIGTERM while a run started by POST /api/v1/sync applies: serve waits for it (within the
    grace) before it returns and the process exits; it neither leaves the run to be killed with
    the process, its lock held until it expires, nor closes the state store under it."""
    ctx, worlds = make_context(tmp_path)
    worlds["sync"].gate = asyncio.Event()
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    task = asyncio.create_task(server.run())
    try:
        await _until(lambda: server.started, "the server listens")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            r = await client.post("/api/v1/sync", headers={"Authorization": f"Bearer {TOKENS['admin']}"})
        assert r.status_code == 202, r.text
        await asyncio.wait_for(worlds["sync"].entered.wait(), 10)  # the run is applying
        server.stop()  # what SIGTERM does
        await asyncio.wait_for(server.draining.wait(), 10)
        await asyncio.sleep(0.3)
        assert not task.done(), "serve returned while a run it started was still applying"
        worlds["sync"].gate.set()
        await asyncio.wait_for(task, 10)
    finally:
        worlds["sync"].gate.set()
        server.stop()
        await asyncio.wait_for(task, 10)
    entries, _ = await ctx.store.read_audit(operation="sync")
    assert [(e["trigger"], e["outcome"]) for e in entries] == [("api", "applied")]
    assert worlds["sync"].items == {"sync-a", "sync-b"}
    assert await ctx.store.acquire_lock("sync", "next", timedelta(minutes=1), datetime.now(UTC)) is not None
    await ctx.close()


async def test_a_serve_stopped_before_it_listens_runs_no_scheduled_round(tmp_path: Path) -> None:
    """SIGTERM while serve is still starting (stop() before uvicorn listens): shutdown has begun,
    so no round starts, not even a missed fire, which would otherwise run at once in the grace."""
    fake = FakeTime(T0.replace(hour=2, minute=0, second=0) - timedelta(days=1))
    ctx, worlds = _ctx(tmp_path, fake)
    assert (await run_scheduled(ctx, "sync")) is not None  # yesterday 02:00
    worlds["sync"].desired.add("sync-c")
    fake.now = T0
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=True)
    server.scheduler = Scheduler(ctx, [Schedule("sync", "0 0 2 * * *", True, "sync.schedule")], sleep=fake.sleep)
    server.stop()  # what SIGTERM does, before the server listens
    await asyncio.wait_for(server.run(), 10)
    assert server.scheduler.rounds["sync"] == [], "a round ran though shutdown began before it"
    assert "sync-c" not in worlds["sync"].items
    await ctx.close()


def _notifying_settings() -> Any:
    """The test API's settings with Entra notifications on, drained by serve's in-process worker."""
    from hubpilot.settings import Settings
    from tests.test_api_kit import make_settings

    base = make_settings()
    return Settings(**{**base.model_dump(exclude_unset=True),
                       "directory": {"kind": "entra", "entra": {
                           "notifications": True, "client_state": "s" * 32,
                           "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications"}}})


async def test_a_notification_waiting_to_retry_a_held_lock_at_shutdown_starts_no_run(tmp_path: Path) -> None:
    """SIGTERM while the worker waits to retry a hint whose sync found the lock held (another
    sync runs): the wait ends at once and no sync starts in the grace, even if the other run
    frees the lock meanwhile (the scheduled sync is the safety net). It started one, cancelled
    at the grace's end and audited as failed should it outlast it, and kept shutdown waiting for
    the retry's wait (30 s for a lifecycle event's failed round: the whole grace)."""
    from hubpilot.entra.notifications import Hint
    from hubpilot.wiring.entra import notification_queue, notification_worker

    ctx, worlds = make_context(tmp_path, _notifying_settings())
    lease = await ctx.store.acquire_lock("sync", "timer:other-run", timedelta(minutes=10), ctx.clock())
    assert lease is not None
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    task = asyncio.create_task(server.run())
    waiting, resume = asyncio.Event(), asyncio.Event()

    async def sleep(seconds: float) -> None:  # the worker's wait before it retries the held lock
        waiting.set()
        await resume.wait()

    try:
        await _until(lambda: server.started, "the server listens")
        worker = notification_worker(ctx)
        assert worker is not None
        worker.sleep = sleep
        await notification_queue(ctx).push(Hint("sync", received=datetime.now(UTC).isoformat()))
        await asyncio.wait_for(waiting.wait(), 10)  # its sync found the lock held
        server.stop()  # what SIGTERM does
        await asyncio.wait_for(server.draining.wait(), 10)
        await ctx.store.release_lock(lease)  # the other sync ends
        resume.set()
        await asyncio.wait_for(task, 10)
    finally:
        resume.set()
        server.stop()
        await asyncio.wait_for(task, 10)
    entries, _ = await ctx.store.read_audit(operation="sync")
    assert entries == [], "a notification's sync started after shutdown began"
    assert worlds["sync"].applies == 0
    await ctx.close()


async def test_a_notification_sync_past_the_grace_is_cancelled_audited_as_failed_and_frees_its_lock(
        tmp_path: Path) -> None:
    """The worker's sync, like a scheduled round, has the grace and no more: then it is cancelled,
    its audit entry and run document say failed, and its lock is free for the next process."""
    from hubpilot.entra.notifications import Hint
    from hubpilot.wiring.entra import notification_queue

    ctx, worlds = make_context(tmp_path, _notifying_settings())
    worlds["sync"].gate = asyncio.Event()  # never opened: the sync hangs in apply
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    server.shutdown_grace = 0.2
    task = asyncio.create_task(server.run())
    try:
        await _until(lambda: server.started, "the server listens")
        await notification_queue(ctx).push(Hint("sync", received=datetime.now(UTC).isoformat()))
        await asyncio.wait_for(worlds["sync"].entered.wait(), 10)  # the worker's sync is applying
        server.stop()
        await asyncio.wait_for(task, 10)
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
    entries, _ = await ctx.store.read_audit(operation="sync")
    assert [(e["trigger"], e["outcome"]) for e in entries] == [("notification", "failed")]
    assert "cancelled" in entries[0]["error"]
    doc = await ctx.runner.run_document(entries[0]["run_id"])
    assert doc is not None and doc["outcome"] == "failed"
    assert worlds["sync"].items == set()
    assert await ctx.store.acquire_lock("sync", "next", timedelta(minutes=1), datetime.now(UTC)) is not None
    await ctx.close()



@pytest.mark.azurite
def test_serve_closes_the_azure_hint_queue_at_exit(tmp_path: Path, azurite: Any) -> None:
    """hubpilot serve whose webhook left a Graph notification on the Storage queue
    (directory.entra.queue = "azure", for the Functions app to drain) closes that queue's client
    with its context: the process ended logging "Unclosed client session" and "Unclosed connector"
    errors."""
    tenant = "84bd8158-6d4d-4958-8b9f-9d6445542f95"
    with _serve_process(tmp_path, {
        "HUBPILOT_DIRECTORY__KIND": "entra",
        "HUBPILOT_DIRECTORY__ENTRA__NOTIFICATIONS": "true",
        "HUBPILOT_DIRECTORY__ENTRA__CLIENT_STATE": "s" * 32,
        "HUBPILOT_DIRECTORY__ENTRA__NOTIFICATION_URL": "https://hubpilot.example.org/api/v1/graph/notifications",
        "HUBPILOT_DIRECTORY__ENTRA__QUEUE": "azure",
        "HUBPILOT_DIRECTORY__ENTRA__QUEUE_CONNECTION_STRING": azurite.connection_string,
    }) as (proc, base):
        gid = "6f1c3a52-0000-4000-8000-000000000001"
        notification = {"value": [{
            "subscriptionId": "7a3f2b10-0000-4000-8000-000000000002", "clientState": "s" * 32,
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "changeType": "updated",
            "resource": f"Groups/{gid}", "tenantId": tenant,
            "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "@odata.id": f"Groups/{gid}", "id": gid,
                             "organizationId": tenant}}]}
        r = httpx.post(f"{base}/api/v1/graph/notifications", json=notification, timeout=30)
        assert r.status_code == 202, r.text  # on the Storage queue
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "Unclosed" not in out, out


async def test_a_fire_time_that_comes_while_serve_waits_for_a_request_to_end_starts_no_round(
        tmp_path: Path) -> None:
    """SIGTERM while a client waits for its run (POST /api/v1/sync?wait=...): uvicorn keeps that
    connection until its answer, and shutdown has begun all the same: a fire time that comes
    meanwhile starts no round (one started then, after the signal)."""
    fake = FakeTime(T0)
    ctx, worlds = _ctx(tmp_path, fake)
    worlds["sync"].gate = asyncio.Event()  # the run started over HTTP applies until the test opens it
    waiting, fire = asyncio.Event(), asyncio.Event()

    async def sleep(seconds: float) -> None:  # the cull schedule's wait for its next fire time
        waiting.set()
        await fire.wait()
        fake.now += timedelta(seconds=seconds)

    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=True)
    server.scheduler = Scheduler(ctx, [Schedule("cull", "0 0 * * * *", True, "cull.schedule")], sleep=sleep)
    task = asyncio.create_task(server.run())
    try:
        await _until(lambda: server.started, "the server listens")
        await asyncio.wait_for(waiting.wait(), 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
            post = asyncio.create_task(client.post(
                "/api/v1/sync", params={"wait": 20}, headers={"Authorization": f"Bearer {TOKENS['admin']}"}))
            await asyncio.wait_for(worlds["sync"].entered.wait(), 10)  # the run applies; the client waits
            server.stop()  # what SIGTERM does
            await asyncio.sleep(0.5)  # uvicorn has stopped listening and waits for that answer
            assert not task.done()
            fire.set()  # the cull schedule's fire time comes
            await asyncio.sleep(0.3)
            worlds["sync"].gate.set()
            assert (await asyncio.wait_for(post, 10)).status_code == 200
        await asyncio.wait_for(task, 10)
    finally:
        fire.set()
        worlds["sync"].gate.set()
        server.stop()
        await asyncio.wait_for(task, 10)
    assert server.scheduler.rounds["cull"] == [] and worlds["cull"].applies == 0, "a round started after SIGTERM"
    entries, _ = await ctx.store.read_audit(operation="cull")
    assert entries == []
    await ctx.close()
