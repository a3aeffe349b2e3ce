"""``hubpilot serve``: the admin API (uvicorn) and every schedule, in one process.

This is the on-prem / hybrid deployment and the local demo's server. The API is the same app
the Functions host serves (behind the same cheap front), and the scheduler fires the same
NCRONTAB schedules as the Functions timers, with the same handling: a round that finds the lock
held is skipped, a refused or paused run is an outcome. Runs started over HTTP run as tasks of
this process (``api.run_mode = "inprocess"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta

import uvicorn

from hubpilot.api.app import create_app
from hubpilot.api.front import Front
from hubpilot.api.runs import drain_tasks
from hubpilot.api.scale_routes import stop_follow_up, stop_taking_follow_ups
from hubpilot.api.scheduling import (
    ENTRA_SUBSCRIPTIONS,
    Schedule,
    claim_fire,
    configured_schedules,
    run_scheduled,
    subscriptions_off,
)
from hubpilot.loop import RunRecord, stored_time
from hubpilot.ports.store import StoreError
from hubpilot.schedule import previous_fire, sleep_unless_stopped
from hubpilot.settings import Settings
from hubpilot.wiring import Context, build_context

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Job = Callable[[Context], Awaitable[RunRecord | None]]
SHUTDOWN_GRACE_SECONDS = 30.0
CLOCK_STEP_TOLERANCE = timedelta(minutes=1)
"""A wall clock found this much behind the last fire time still does not fire that time again."""


async def _entra_subscriptions(ctx: Context) -> RunRecord | None:
    """The Graph subscription manager's round (functions/graph.py's timer in Azure)."""
    if subscriptions_off(ctx.settings) is not None:
        return None
    from hubpilot.wiring.entra import run_subscription_manager

    return await run_subscription_manager(ctx)


JOBS: dict[str, Job] = {ENTRA_SUBSCRIPTIONS: _entra_subscriptions}
"""Schedules that are not an operation's, by setting, and what serve runs for them."""


class Scheduler:
    """Fires each operation's schedule in-process; one loop per schedule, rounds never overlap.

    ``sleep`` is injectable so that tests drive it with a fake clock instead of waiting.
    """

    def __init__(self, ctx: Context, schedules: list[Schedule] | None = None, *,
                 sleep: Sleep = asyncio.sleep, jobs: dict[str, Job] | None = None) -> None:
        self.ctx = ctx
        self.jobs = JOBS if jobs is None else jobs
        self.schedules = [s for s in (schedules if schedules is not None
                                      else configured_schedules(ctx.settings))
                          if s.runnable or s.setting in self.jobs]
        self.sleep = sleep
        self.rounds: dict[str, list[tuple[datetime, RunRecord | None]]] = {s.name: [] for s in self.schedules}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_due: dict[str, datetime] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Start no more rounds; a round under way goes on (:meth:`run` returns when it ends)."""
        self._stopping.set()

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False when :meth:`stop` came first."""
        return await sleep_unless_stopped(self.sleep, seconds, self._stopping)

    async def _missed(self, schedule: Schedule, now: datetime) -> datetime | None:
        """The operation's last fire time before ``now`` if no run of it (by any host or trigger)
        ended after that time: the process was down then. Its round runs at once, as the Functions
        timer's schedule monitor runs a past-due fire; None for a first start (no run recorded)."""
        if not schedule.runnable:
            return None
        try:
            last = await self.ctx.runner.last_run(schedule.name)
            ended = stored_time((last or {}).get("at"), f"last_run/{schedule.name} at")
        except Exception as exc:  # the store is down or the document damaged: wait for the next fire
            log.warning("schedule %s: could not read its last run (%s); no catch-up", schedule.name, exc)
            return None
        prev = previous_fire(schedule.expression, now)
        if ended is None or ended >= prev:
            return None
        log.info("schedule %s: the fire at %s was missed (last run ended %s); running it now",
                 schedule.name, prev.isoformat(), ended.isoformat())
        return prev

    async def tick(self, schedule: Schedule) -> RunRecord | None:
        """Wait for the schedule's next fire time, then run one round (none once stopped)."""
        now = self.ctx.clock()
        # after the last round's fire time too: a sleep can end a little before the wall clock
        # reaches it (the loop's monotonic clock and the wall clock drift, NTP steps the clock
        # back), and a quick round would then find that same time next again. A clock stepped
        # back further was wrong before: the schedule follows it rather than wait that long.
        last = self._last_due.get(schedule.name)
        missed = await self._missed(schedule, now) if last is None else None
        after = last if last is not None and timedelta(0) < last - now <= CLOCK_STEP_TOLERANCE else now
        due = missed or schedule.next_fire(after)
        self._last_due[schedule.name] = due
        if not await self._wait(max(0.0, (due - now).total_seconds())):
            return None
        run = asyncio.ensure_future(self._round(schedule, due, missed))
        overran = False
        try:
            overran = await self._watch(schedule, due, run)
            record = await run
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # the scheduler is cancelled (a shutdown past its grace)
                raise
            # the round's own work ended cancelled (a library's cancelled request): a failed round,
            # which must not end this schedule, nor (through run's gather) every other one
            log.error("scheduled %s failed: its round ended cancelled, not by the scheduler (the next round "
                      "runs as usual)", schedule.name)
            record = None
        finally:
            if not run.done():  # cancelled (shutdown past its grace): the round's run is audited as failed
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
        if overran:
            end = self.ctx.clock()
            first, final = schedule.next_fire(due), previous_fire(schedule.expression, end)
            skipped = (f"the fire time {first.isoformat()} was" if final <= first else
                       f"the fire times from {first.isoformat()} to {final.isoformat()} were")
            log.warning("schedule %s: the round that fired at %s ended after %s; %s skipped",
                        schedule.name, due.isoformat(), _took(end - due), skipped)
        self.rounds[schedule.name].append((due, record))
        return record

    async def _watch(self, schedule: Schedule, due: datetime, run: asyncio.Future[RunRecord | None]) -> bool:
        """Wait until the schedule's next fire time at most; True (said in the log) when the round
        still runs then: no second round starts while one runs, and a hung round may never end."""
        nxt = schedule.next_fire(max(due, self.ctx.clock()))
        # the loop's own time, not self.sleep: a round takes real time whatever clock a test gives
        await asyncio.wait({run}, timeout=max(0.0, (nxt - self.ctx.clock()).total_seconds()))
        if run.done():
            return False
        log.warning("schedule %s: the fire at %s is skipped: the round that fired at %s is still running (no "
                    "second round of a schedule starts while one runs; its fire times are skipped until it "
                    "ends)", schedule.name, nxt.isoformat(), due.isoformat())
        return True

    async def _round(self, schedule: Schedule, due: datetime, missed: datetime | None) -> RunRecord | None:
        """One round: the fire time claimed, then the operation's run or the schedule's job."""
        try:
            # a missed fire is run even if claimed: its claimer did not finish it (its run was
            # cancelled at a shutdown), or no run of the operation would have ended after it
            if not await claim_fire(self.ctx, schedule.name, due, force=missed is not None):
                log.info("scheduled %s at %s skipped: another process on this store ran it",
                         schedule.name, due.isoformat())
                record = None
            elif schedule.runnable:
                record = await run_scheduled(self.ctx, schedule.name)
            else:
                record = await self.jobs[schedule.setting](self.ctx)
        except StoreError as exc:  # a store outage must not end the schedule; the next round retries
            # one line a round, what failed without a traceback: the same outage every minute
            log.error("scheduled %s failed: the state store did not answer (the next round retries): %s",
                      schedule.name, exc)
            record = None
        except Exception:  # a bug: the traceback says where
            log.exception("scheduled %s failed", schedule.name)
            record = None
        return record

    async def _loop(self, schedule: Schedule, rounds: int | None) -> None:
        n = 0
        while (rounds is None or n < rounds) and not self._stopping.is_set():
            await self.tick(schedule)
            n += 1

    async def run(self, rounds: int | None = None) -> None:
        """Run every schedule (``rounds`` each, or until :meth:`stop`, or until cancelled: a
        cancelled round's run is audited as failed)."""
        self._tasks = [asyncio.create_task(self._loop(s, rounds), name=f"hubpilot-schedule-{s.name}")
                       for s in self.schedules]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t


def _took(elapsed: timedelta) -> str:
    seconds = max(0, round(elapsed.total_seconds()))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal capture: it re-raises SIGTERM after shutting down, which
    would end the process before in-flight runs drain and the state store closes. :class:`Server`
    handles the signals instead."""

    on_started: Callable[[], None] | None = None
    """Called once the server listens (never when it cannot: uvicorn exits from its startup)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_started is not None:
            self.on_started()


class Server:
    """uvicorn serving the admin API, plus the scheduler. ``port=0`` picks a free port."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8765,
                 context: Context | None = None, schedules: bool | None = None) -> None:
        self.ctx = context or build_context(settings)
        self._own_context = context is None
        self.front = Front(lambda: create_app(self.ctx))
        self.front.app()  # build it now: a long-running server pays its imports at start, not later
        self.config = uvicorn.Config(self.front, host=host, port=port, lifespan="off",
                                     log_level=settings.log_level.lower(), access_log=False)
        self.uvicorn = _Uvicorn(self.config)
        self.with_schedules = settings.api.serve_schedules if schedules is None else schedules
        self.ctx.fires_schedules = self.with_schedules  # GET /status says whether this host fires them
        self.scheduler = Scheduler(self.ctx)
        self.shutdown_grace = SHUTDOWN_GRACE_SECONDS
        self.draining = asyncio.Event()  # set when shutdown begins

    @property
    def port(self) -> int:
        servers = getattr(self.uvicorn, "servers", [])
        for s in servers:
            for sock in s.sockets:
                port: int = sock.getsockname()[1]
                return port
        return int(self.config.port)

    @property
    def started(self) -> bool:
        return bool(self.uvicorn.started)

    def stop(self) -> None:
        """Begin the shutdown: uvicorn stops listening (it answers the requests under way first,
        a client waiting for its run up to ``api.wait_max_seconds``), and from now no round starts,
        no hint is taken and no demand's follow-up run starts."""
        from hubpilot.wiring.entra import stop_taking_hints

        self.uvicorn.should_exit = True
        self.scheduler.stop()
        stop_taking_hints(self.ctx)
        stop_taking_follow_ups(self.ctx)

    async def run(self, *, handle_signals: bool = False) -> None:
        """Serve until :meth:`stop` (or, with ``handle_signals``, SIGINT/SIGTERM/SIGHUP: a closed
        terminal would otherwise end the process at once); then drain runs."""
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self.stop)
        from hubpilot.wiring.entra import start_notification_worker, stop_notification_worker, stop_taking_hints

        # Graph notifications (Entra with notifications on) wait in an in-process queue that
        # this worker drains by running the delta sync.
        worker = start_notification_worker(self.ctx)
        scheduled: list[asyncio.Task[None]] = []

        def start_schedules() -> None:
            # once the server listens: a serve that cannot (its port taken by another serve) exits
            # without running a round, not even a missed fire, which would otherwise run at once;
            # nor does one stopped (a signal) before it listened: its shutdown has begun
            if self.uvicorn.should_exit:
                return
            scheduled.append(asyncio.create_task(self.scheduler.run(), name="hubpilot-scheduler"))
            for s in self.scheduler.schedules:
                log.info("schedule %s: %s", s.name, s.expression)

        if self.with_schedules and self.scheduler.schedules:
            self.uvicorn.on_started = start_schedules
        try:
            await self.uvicorn.serve()
        finally:
            sched = scheduled[0] if scheduled else None
            # no new round starts and no hint is taken (since stop(), or now that uvicorn ended on
            # its own); a scheduled round or a notification's sync under way, like a run started
            # over HTTP, has the grace to finish, then is cancelled (and audited as failed)
            self.scheduler.stop()
            stop_taking_hints(self.ctx)
            self.draining.set()
            # nor does a demand's follow-up: its demands are recorded and count in the next scale run
            await stop_follow_up(self.ctx)
            under_way = [t for t in (sched, worker) if t is not None]
            try:
                await asyncio.wait_for(asyncio.gather(*under_way, drain_tasks(), return_exceptions=True),
                                       self.shutdown_grace)
            except TimeoutError:
                log.warning("runs still in progress %g s after shutdown began were cancelled "
                            "(audited as failed; the next runs re-observe)", self.shutdown_grace)
            await stop_notification_worker(worker)
            if self._own_context:
                await self.ctx.close()


async def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8765,
                context: Context | None = None) -> None:
    """Serve the admin API and run every schedule until interrupted (SIGINT/SIGTERM/SIGHUP)."""
    await Server(settings, host=host, port=port, context=context).run(handle_signals=True)


def main(settings: Settings, *, host: str = "127.0.0.1", port: int = 8765) -> int:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings, host=host, port=port))
    except SystemExit as exc:  # uvicorn exits with its own code (3) when it cannot listen
        if exc.code in (0, None):
            return 0
        log.error("hubpilot serve could not start on %s:%s (see the error above)", host, port)
        return 1
    return 0
