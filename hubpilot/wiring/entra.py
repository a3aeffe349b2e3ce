"""Wiring of the Entra work: Graph client, directory, subscription manager, notification queue.

Hosts call:

* :func:`build_entra_directory` (through ``Context.directory`` when ``directory.kind = "entra"``);
* :func:`notification_queue` — where the webhook routes leave hints: in-process (``hubpilot
  serve``, drained by :class:`NotificationWorker`) or the Azure Storage queue ``hubpilot-graph``
  (drained by the queue-triggered function in ``functions/graph.py``);
* :func:`process_hint` — one hint → one sync run (``trigger="notification"``) or one run of the
  subscription manager (after a lifecycle event, followed by a queued sync hint);
  :func:`run_subscription_manager` — the timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from hubpilot.config.entra import EntraSettings
from hubpilot.entra.directory import STATE_PREFIX, EntraDirectory
from hubpilot.entra.notifications import Hint, NotificationQueue, coalesce, covered_by, unseen_groups
from hubpilot.entra.subscriptions import SubscriptionManager, SubscriptionPolicy, missed_changes
from hubpilot.loop import LockHeld, Outcome, RunRecord, log_outcome
from hubpilot.ports.directory import Directory
from hubpilot.schedule import sleep_unless_stopped
from hubpilot.wiring import Context

log = logging.getLogger(__name__)

_extras: dict[int, dict[str, Any]] = {}


def _extra(ctx: Context) -> dict[str, Any]:
    key = id(ctx)
    if key not in _extras:
        _extras[key] = {}
        weakref.finalize(ctx, _extras.pop, key, None)
    return _extras[key]


def entra_settings(ctx: Context) -> EntraSettings:
    d = ctx.settings.directory
    if d is None or d.entra is None:
        raise ValueError("no [directory.entra] section is configured (directory.kind = \"entra\")")
    return d.entra


def use_credential(ctx: Context, credential: Any) -> None:
    """Use this azure-core async TokenCredential for Graph instead of azure-identity's (tests, tools)."""
    _extra(ctx)["credential"] = credential


def build_graph_client(ctx: Context) -> Any:
    from hubpilot.adapters.entra import GraphClient, build_credential

    s = entra_settings(ctx)
    credential = _extra(ctx).get("credential") or build_credential(
        s.credential, client_id=s.client_id, tenant_id=s.tenant_id, authority_host=s.authority_host,
        timeout=s.timeout_seconds,
    )
    return GraphClient(
        credential=credential,
        base_url=s.graph_base_url,
        scope=s.effective_scope,
        username_attribute=s.username_attribute,
        throttle_priority=s.throttle_priority,
        max_retries=s.max_retries,
        retry_delay=s.retry_delay_seconds,
        timeout=s.timeout_seconds,
        lookup_concurrency=s.user_lookup_concurrency,
        round_seconds=s.round_deadline_seconds,
    )


def build_entra_directory(ctx: Context) -> Directory:
    s = entra_settings(ctx)
    refresh = timedelta(hours=s.username_refresh_hours) if s.username_refresh_hours else None
    return EntraDirectory(build_graph_client(ctx), ctx.store, nested=s.nested,
                          nested_max_depth=s.nested_max_depth, user_refresh=refresh,
                          disabled_accounts=s.disabled_accounts, clock=ctx.clock)


async def subscription_policy(ctx: Context) -> SubscriptionPolicy:
    """One subscription per configured group and, with nesting, per nested group the delta state
    knows (a change inside a nested group then notifies too)."""
    s = entra_settings(ctx)
    configured = [g.lower() for g in (*ctx.settings.sync.users_groups, *ctx.settings.sync.admin_groups)]
    nested: list[str] = []
    if s.nested:
        for doc in (await ctx.store.list(STATE_PREFIX)).values():
            nested.extend(str(g) for g in doc.get("groups") or ())
    groups = tuple(sorted(set(configured) | set(nested)))
    return SubscriptionPolicy(
        groups=groups,
        notification_url=s.notification_url or "",
        lifecycle_url=s.effective_lifecycle_url,
        client_state=s.client_state.get_secret_value() if s.client_state else "",
        lifetime=timedelta(minutes=s.subscription_minutes),
        renew_before=timedelta(minutes=s.renew_before_minutes),
    )


async def run_subscription_manager(ctx: Context, *, force_renew: Sequence[str] = (),
                                   trigger: str = "schedule", actor: str = "timer",
                                   retry_held: bool = False, resync: bool = False) -> RunRecord | None:
    """One round of the subscription manager through the Runner; None when notifications are
    off or (unless ``retry_held``, which raises LockHeld instead) another round holds the lock.
    The round writes the run's one log line (:func:`hubpilot.loop.log_outcome`), whichever host
    started it.

    Changes made while a group had no working subscription were never notified: after a round
    that replaced one Graph dropped without a lifecycle event reaching hubpilot (found gone by the
    timer: the plan's fact ``vanished``, or by a renewal's 404), and after ``resync`` (a lifecycle
    event: Graph paused delivery), a sync hint is queued, received now, so a delta sync that
    starts after the subscriptions were restored fetches them (change-notifications-lifecycle-events)."""
    s = entra_settings(ctx)
    if not s.notifications:
        return None
    graph = build_graph_client(ctx)
    try:
        cap = SubscriptionManager(graph, await subscription_policy(ctx), force_renew=force_renew, store=ctx.store)
        async with graph.round():  # throttling waited out only within directory.entra.round_deadline_seconds
            record = await ctx.runner.run(cap, trigger=trigger, actor=actor)
        log_outcome(record)
        if resync or missed_changes(record.plan, record.results):
            await notification_queue(ctx).push(Hint("sync", received=ctx.clock().isoformat()))
        return record
    except LockHeld as exc:
        if retry_held:
            raise
        log.info("subscription manager skipped: %s", exc)
        return None
    finally:
        await graph.close()


class RoundFailed(Exception):
    """The manager's round a lifecycle event asked for (``reauthorizationRequired``,
    ``subscriptionRemoved``) failed: retry it, boundedly. Graph pauses delivery until a
    subscription is reauthorized, and no timer round renews one that is not yet due, so a lost
    event would leave the group unnotified until then. Raised out of the Functions queue trigger,
    the host delivers the message again (host.json ``queues.maxDequeueCount``, then the poison
    queue); the in-process worker retries it itself."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(f"the subscription manager's round {record.run_id} for a lifecycle event failed "
                         "(its log line says why); the event is retried")
        self.record = record


async def covering_run(ctx: Context, hint: Hint) -> RunRecord | None:
    """The last sync run when it covers the hint (:func:`hubpilot.entra.notifications.covered_by`)."""
    last = await ctx.runner.last_run("sync")
    if not last or not hint.received:
        return None
    record = await ctx.runner.get_run(str(last.get("run_id")))
    if record is None or not covered_by(hint, str(last.get("outcome")), record.started):
        return None
    return record


async def process_hint(ctx: Context, hint: Hint) -> RunRecord | None:
    """Do what a hint asks: None when nothing had to be done. Raises LockHeld when a run of the
    same operation holds the lock (retry later), and :class:`RoundFailed` when the manager's round
    a lifecycle event asked for failed (retry later). A run writes its one log line
    (:func:`hubpilot.loop.log_outcome`: operation, run id, trigger, outcome and cause).

    A lifecycle event that names subscriptions (``reauthorizationRequired``,
    ``subscriptionRemoved``) means Graph may have paused or stopped delivering changes: after the
    manager has renewed or recreated them, a sync hint is queued (see
    :func:`run_subscription_manager`)."""
    if hint.kind == "subscriptions":
        record = await run_subscription_manager(ctx, force_renew=hint.renew, trigger="lifecycle", actor="graph",
                                                retry_held=bool(hint.renew), resync=bool(hint.renew))
        if hint.renew and record is not None and record.outcome is Outcome.FAILED:
            raise RoundFailed(record)
        return record
    covering = await covering_run(ctx, hint)
    if covering is not None:  # no run of its own; a re-check if that run's delta read missed the change
        await _recheck(ctx, hint, covering)
        return None
    record = await ctx.runner.run(ctx.capability("sync"), trigger="notification", actor="graph")
    log_outcome(record)
    await _recheck(ctx, hint, record)
    return record


async def _recheck(ctx: Context, hint: Hint, record: RunRecord) -> None:
    """Graph's delta query can show a change minutes after its notification was sent (its
    replication delay, "Known issues": delta query): when the applied sync a hint started, or the
    one that covered it, was shown no change of some group the hint names
    (:func:`hubpilot.entra.notifications.unseen_groups`), the hint is queued once more for those
    groups, ``recheck_seconds`` later, as a re-check, which queues none. It is received when due,
    so only a sync that starts after that covers it."""
    delay = entra_settings(ctx).recheck_seconds
    if delay <= 0 or record.outcome is not Outcome.APPLIED or record.plan is None:
        return
    groups = unseen_groups(hint, record.plan)
    if not groups:
        return
    due = ctx.clock() + timedelta(seconds=delay)
    try:  # the sync itself is done: a queue that fails now must not fail (and redeliver) its hint
        await notification_queue(ctx).push(Hint("sync", groups, received=due.isoformat(), recheck=True),
                                           delay_seconds=delay)
    except Exception as exc:  # any queue error: said, the scheduled sync follows
        log.warning("sync run %s (trigger %s) was shown no change of notified group(s) %s, and its re-check could "
                    "not be queued (the scheduled sync follows any change Graph's delta query shows late): %s: %s",
                    record.run_id, record.trigger, ", ".join(groups), type(exc).__name__, exc)
        return
    log.info("sync run %s (trigger %s) was shown no change of notified group(s) %s: Graph's delta query may not "
             "show the change yet; re-checking once in %.0f s (directory.entra.recheck_seconds)",
             record.run_id, record.trigger, ", ".join(groups), delay)


class InProcessHints:
    """An asyncio queue of hints (``hubpilot serve``); :class:`NotificationWorker` drains it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Hint] = asyncio.Queue()
        self._later: set[asyncio.TimerHandle] = set()

    @property
    def delayed(self) -> int:
        """Hints pushed with a delay that are not in the queue yet."""
        return len(self._later)

    async def push(self, hint: Hint, *, delay_seconds: float = 0.0) -> None:
        if delay_seconds <= 0:
            self.queue.put_nowait(hint)
            return

        def put() -> None:
            self._later.discard(handle)
            self.queue.put_nowait(hint)

        handle = asyncio.get_running_loop().call_later(delay_seconds, put)
        self._later.add(handle)

    async def close(self) -> None:
        for handle in self._later:
            handle.cancel()
        self._later.clear()


class AzureHints:
    """Hints as messages on the Azure Storage queue the queue-triggered function drains."""

    def __init__(self, s: EntraSettings, *, credential: Any = None) -> None:
        from hubpilot.adapters.entra import AzureQueueHints

        self._queue = AzureQueueHints(
            s.queue_name,
            connection_string=s.queue_connection_string.get_secret_value() if s.queue_connection_string else None,
            account_url=s.queue_account_url,
            credential=credential,
        )

    async def push(self, hint: Hint, *, delay_seconds: float = 0.0) -> None:
        await self._queue.push_json(hint.to_json(), delay_seconds=delay_seconds)

    async def close(self) -> None:
        await self._queue.close()


def notification_queue(ctx: Context) -> NotificationQueue:
    """The process's queue of hints, built once per Context from ``directory.entra.queue`` and closed with it."""
    extra = _extra(ctx)
    if "queue" not in extra:
        s = entra_settings(ctx)
        credential: Any = None
        built: NotificationQueue
        if s.queue == "azure":
            if not s.queue_connection_string:
                from hubpilot.adapters.entra import build_credential

                # each token try bounded as Graph's are (azure-core's default: 300 s a try)
                credential = build_credential(s.credential, client_id=s.client_id, tenant_id=s.tenant_id,
                                              authority_host=s.authority_host, timeout=s.timeout_seconds)
            built = AzureHints(s, credential=credential)
        else:
            built = InProcessHints()

        async def close() -> None:
            # with the context (hubpilot serve's exit): the Storage queue client's session, else
            # its end logs "Unclosed client session"
            await built.close()
            if credential is not None:
                await credential.close()

        extra["queue"] = built
        ctx._closers.append(close)
    queue: NotificationQueue = extra["queue"]
    return queue


def set_notification_queue(ctx: Context, queue: NotificationQueue) -> None:
    _extra(ctx)["queue"] = queue


class NotificationWorker:
    """Drains an in-process queue: a burst of hints becomes one sync run; a held lock is retried
    after ``retry_seconds`` (at most ``max_attempts`` times — the scheduled sync is the safety net);
    a lifecycle event's failed manager round (:class:`RoundFailed`) after ``failed_retry_seconds``
    (at most ``max_failed_attempts`` tries, as the Functions host's host.json delivers a message)."""

    def __init__(self, ctx: Context, queue: InProcessHints, *, retry_seconds: float = 5.0,
                 max_attempts: int = 12, failed_retry_seconds: float = 30.0, max_failed_attempts: int = 3,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.ctx = ctx
        self.queue = queue
        self.retry_seconds = retry_seconds
        self.max_attempts = max_attempts
        self.failed_retry_seconds = failed_retry_seconds
        self.max_failed_attempts = max_failed_attempts
        self.sleep = sleep
        self.records: list[RunRecord] = []
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Take no more hints and retry none (a held lock, a failed round: a retry's wait ends at
        once); the run under way goes on (:meth:`run_forever` returns when it ends)."""
        self._stopping.set()

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` before a retry; False when :meth:`stop` came first."""
        return await sleep_unless_stopped(self.sleep, seconds, self._stopping)

    def _take_all(self, first: Hint) -> list[Hint]:
        hints = [first]
        while True:
            try:
                hints.append(self.queue.queue.get_nowait())
            except asyncio.QueueEmpty:
                return hints

    async def handle(self, hints: list[Hint]) -> None:
        pending = coalesce(hints)
        while pending:
            hint = pending.pop(0)
            held = failed = 0
            while True:
                try:
                    record = await process_hint(self.ctx, hint)
                except LockHeld as exc:
                    held += 1
                    if self._stopping.is_set():  # shutting down: the scheduled sync is the safety net;
                        # the other hints taken (a reauthorization) are still tried once
                        log.info("dropped a %s hint at shutdown: %s", hint.kind, exc)
                        break
                    if held == self.max_attempts:
                        follows = ("the next scheduled sync (sync.schedule) reads the change" if hint.kind == "sync"
                                   else "the subscription manager's next round renews only what is due")
                        log.warning("gave up on a %s hint after %d attempts, %.0f s apart: %s; %s", hint.kind, held,
                                    self.retry_seconds, exc, follows)
                        break
                    wait, level = self.retry_seconds, logging.INFO
                    dropped = f"dropped a {hint.kind} hint at shutdown: {exc}"
                except RoundFailed as exc:  # its run's line said why
                    self.records.append(exc.record)
                    failed += 1
                    if self._stopping.is_set():
                        log.warning("dropped a failed %s hint at shutdown: %s", hint.kind, exc)
                        break
                    if failed == self.max_failed_attempts:
                        log.warning("gave up on a %s hint after %d failed rounds, the last run %s; the next "
                                    "subscription manager round renews only what is due", hint.kind, failed,
                                    exc.record.run_id)
                        break
                    wait, level = self.failed_retry_seconds, logging.WARNING
                    dropped = f"dropped a failed {hint.kind} hint at shutdown: {exc}"
                except Exception:
                    log.exception("processing a %s hint failed", hint.kind)
                    break
                else:
                    if record is not None:
                        self.records.append(record)
                    break
                if not await self._wait(wait):
                    # shutdown began meanwhile: this hint is not retried, as above; those of another
                    # kind that arrived meanwhile are taken and tried once, as the others taken are
                    log.log(level, "%s", dropped)
                    pending = [h for h in coalesce(self._take_all(hint) + pending) if h.kind != hint.kind]
                    break
                # hints that arrived meanwhile: those of this kind join the run we are about to
                # make (a sync covers them; the manager takes their subscriptions too), the
                # others are handled after it
                merged = coalesce(self._take_all(hint) + pending)
                hint = next(h for h in merged if h.kind == hint.kind)
                pending = [h for h in merged if h.kind != hint.kind]

    async def drain_once(self) -> int:
        """Handle everything queued now; returns how many hints were taken."""
        try:
            first = self.queue.queue.get_nowait()
        except asyncio.QueueEmpty:
            return 0
        hints = self._take_all(first)
        await self.handle(hints)
        return len(hints)

    async def run_forever(self) -> None:
        """Handle hints as they come, until :meth:`stop` (or cancelled)."""
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                getter = asyncio.ensure_future(self.queue.queue.get())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    return
                await self.handle(self._take_all(getter.result()))
        finally:
            stopper.cancel()


def start_notification_worker(ctx: Context) -> asyncio.Task[None] | None:
    """For ``hubpilot serve``: start the worker when the directory is Entra with notifications on
    and the in-process queue; returns the task (cancel it on shutdown), or None (with the Azure
    queue, which only the Functions app drains, after a warning saying so)."""
    d = ctx.settings.directory
    if d is None or d.kind != "entra" or d.entra is None or not d.entra.notifications:
        return None
    queue = notification_queue(ctx)
    if not isinstance(queue, InProcessHints):
        # acknowledged to Graph and left on the Storage queue: only the Functions app drains it
        log.warning("directory.entra.queue is 'azure': Graph notifications are left on the Storage queue %r "
                    "for the Functions app's graph_hints function, which hubpilot serve does not run, so they "
                    "start no sync here (the schedule still does); with hubpilot serve set it to 'memory'",
                    d.entra.queue_name)
        return None
    worker = NotificationWorker(ctx, queue)
    task = asyncio.create_task(worker.run_forever(), name="hubpilot-graph-worker")
    _extra(ctx)["worker"] = worker
    return task


def notification_worker(ctx: Context) -> NotificationWorker | None:
    """The worker :func:`start_notification_worker` started for this Context, if any."""
    worker: NotificationWorker | None = _extra(ctx).get("worker")
    return worker


async def stop_notification_worker(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def stop_taking_hints(ctx: Context) -> None:
    """At shutdown: the worker takes no more hints; its task ends when the run under way does."""
    worker = notification_worker(ctx)
    if worker is not None:
        worker.stop()
