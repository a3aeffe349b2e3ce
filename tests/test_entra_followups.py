"""The Graph notification path's runs in both hosts: what they log (loop.log_outcome, the one line
of a run a host started) and what they do when a lifecycle event's manager round fails. Real
parts: the msgraph-sdk against the HTTP-level Graph double, the admin app serving the webhook, the
Functions app's own trigger functions called as the host calls them."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import httpx
import pytest
from azure.functions.timer import TimerRequest

import functions
from hubpilot.entra.notifications import Hint
from hubpilot.loop import Outcome
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.entra import InProcessHints, NotificationWorker, notification_queue, run_subscription_manager
from tests.doubles.graph import GraphDouble, start_graph_double
from tests.fixtures.webhook import Webhook
from tests.test_entra_graph import SECRET, entra_settings
from tests.test_functions import functions_by_name


@pytest.fixture(scope="module")
async def graph_double() -> AsyncIterator[GraphDouble]:
    double, served = await start_graph_double(page_size=50)
    yield double
    await served.stop()


@pytest.fixture
async def graph(graph_double: GraphDouble) -> AsyncIterator[GraphDouble]:
    def clear() -> None:
        for faults in (graph_double.faults, graph_double.script, graph_double.fail_paths, graph_double.refuse,
                       graph_double.fail_after, graph_double.subscriptions):
            faults.clear()
        graph_double.reset_log()

    clear()
    yield graph_double
    clear()


def settings(graph: GraphDouble, webhook: Webhook, group: str) -> Settings:
    """Entra with notifications, a hub that is down (no retries: the run fails at once)."""
    s = entra_settings(graph, webhook.url, [group])
    return s.model_copy(update={"hub": s.hub.model_copy(update={"retries": 0})})


def trigger(name: str) -> Any:
    """The Functions app's trigger function ``name``, as the host calls it."""
    return functions_by_name()[name].get_user_function()


def message(hint: Hint) -> func.QueueMessage:
    return func.QueueMessage(id=uuid.uuid4().hex, body=json.dumps(hint.to_json()).encode())


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level]


def said(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in lines(caplog, level) if text in r.getMessage()]


def one(found: list[logging.LogRecord], caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    assert len(found) == 1, caplog.text
    return found[0]


def worker_of(ctx: Context) -> NotificationWorker:
    queue = notification_queue(ctx)
    assert isinstance(queue, InProcessHints)
    return NotificationWorker(ctx, queue, retry_seconds=0)


# --- lead: the notified runs write the run's one line ----------------------------------------------

async def test_serves_worker_says_how_a_notified_sync_ended(
        graph: GraphDouble, webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    """A sync a notification started under hubpilot serve that fails (the hub is down) says so in
    one WARNING line with its run id, trigger and cause, as a timer's or an API run does."""
    g = graph.add_group()
    ctx = webhook.use(settings(graph, webhook, g))
    worker = worker_of(ctx)
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=webhook.url) as http:
        r = await http.post("/api/v1/graph/notifications", json=graph.notification(g, client_state=SECRET))
    assert r.status_code == 202
    caplog.clear()
    assert await worker.drain_once() == 1
    (record,) = worker.records
    assert record.operation == "sync" and record.outcome is Outcome.FAILED
    line = one(said(caplog, record.run_id), caplog)
    assert line.levelno == logging.WARNING and not line.exc_info, caplog.text
    text = line.getMessage()
    assert "sync" in text and "notification by graph" in text and "failed" in text and record.error
    assert record.error in text, text


async def test_the_functions_hint_and_timer_write_the_runs_line(
        graph: GraphDouble, webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    """Under Functions the graph_hints message and the graph_subscriptions timer each write the
    run's one line (run id, trigger, outcome and cause), not 'graph hint <message id>: failed'."""
    g = graph.add_group()
    ctx = webhook.use(settings(graph, webhook, g))
    functions.set_context(ctx)
    caplog.set_level(logging.INFO)
    try:
        await trigger("graph_hints")(message(Hint("sync", (g,), received=datetime.now(UTC).isoformat())))
        last = await ctx.runner.last_run("sync")
        assert last is not None and last["outcome"] == "failed"
        run_lines = said(caplog, str(last["run_id"]))
        assert len(run_lines) == 1 and run_lines[0].levelno == logging.WARNING, caplog.text
        assert "notification by graph" in run_lines[0].getMessage() and "failed" in run_lines[0].getMessage()
        assert not said(caplog, "graph hint"), caplog.text  # not one more line, without the run id

        caplog.clear()
        graph.fail_paths["/subscriptions"] = 500  # the manager's listing fails
        await trigger("graph_subscriptions")(TimerRequest())
        last = await ctx.runner.last_run("graph-subscriptions")
        assert last is not None and last["outcome"] == "failed"
        run_lines = said(caplog, str(last["run_id"]))
        assert len(run_lines) == 1 and run_lines[0].levelno == logging.WARNING, caplog.text
        assert "500" in run_lines[0].getMessage() or "internal error" in run_lines[0].getMessage(), caplog.text
        assert not said(caplog, "graph subscriptions"), caplog.text
    finally:
        functions.set_context(None)


async def test_serves_subscription_round_says_how_it_ended(
        graph: GraphDouble, webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    """hubpilot serve's subscription_schedule round (serve.JOBS) writes the run's line too."""
    from hubpilot.serve import JOBS

    g = graph.add_group()
    ctx = webhook.use(settings(graph, webhook, g))
    caplog.set_level(logging.INFO)
    graph.fail_paths["/subscriptions"] = 500
    record = await JOBS["directory.entra.subscription_schedule"](ctx)
    assert record is not None and record.outcome is Outcome.FAILED
    line = one(said(caplog, record.run_id), caplog)
    assert line.levelno == logging.WARNING and "schedule by timer" in line.getMessage(), line.getMessage()
    graph.fail_paths.clear()
    caplog.clear()
    record = await run_subscription_manager(ctx)
    assert record is not None and record.outcome is Outcome.APPLIED
    line = one(said(caplog, record.run_id), caplog)
    assert line.levelno == logging.INFO and "1 done" in line.getMessage(), line.getMessage()


# --- lead: a lifecycle event whose manager round fails is retried, boundedly -------------------------

async def reauthorization_due(graph: GraphDouble, webhook: Webhook) -> tuple[Context, str]:
    """A group's subscription made by the manager, then Graph's reauthorizationRequired for it."""
    g = graph.add_group()
    ctx = webhook.use(settings(graph, webhook, g))
    made = await run_subscription_manager(ctx)
    assert made is not None and made.outcome is Outcome.APPLIED
    (sid,) = graph.subscriptions
    async with httpx.AsyncClient(base_url=webhook.url) as http:
        r = await http.post("/api/v1/graph/lifecycle", json=graph.lifecycle(sid, "reauthorizationRequired"))
    assert r.status_code == 202
    graph.reset_log()
    return ctx, sid


async def test_serves_worker_retries_a_reauthorization_whose_round_graph_failed(
        graph: GraphDouble, webhook: Webhook) -> None:
    """Graph answers the renewal 500 (msgraph retries 429/503/504 only): the round fails. The
    subscription is not due for renewal for weeks, so no timer round would reauthorize it, and
    Graph pauses delivery meanwhile: the worker tries the round again after a wait."""
    ctx, sid = await reauthorization_due(graph, webhook)
    graph.refuse.append(("PATCH", f"/subscriptions/{sid}", 500))
    worker = worker_of(ctx)
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    worker.sleep = sleep
    assert await worker.drain_once() == 1
    manager = [r for r in worker.records if r.operation == "graph-subscriptions"]
    assert [r.outcome for r in manager] == [Outcome.FAILED, Outcome.APPLIED], [r.render() for r in manager]
    assert [r.status for r in graph.requests(f"/subscriptions/{sid}", "PATCH")] == [500, 200]
    assert len(waited) == 1 and waited[0] > 0


async def test_serves_worker_gives_up_on_a_failing_round_after_a_few_tries_and_says_so(
        graph: GraphDouble, webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = await reauthorization_due(graph, webhook)
    graph.fail_paths["/subscriptions"] = 500  # Graph fails every request of the manager
    worker = worker_of(ctx)
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    worker.sleep = sleep
    caplog.set_level(logging.INFO)
    assert await worker.drain_once() == 1
    manager = [r for r in worker.records if r.operation == "graph-subscriptions"]
    assert len(manager) == worker.max_failed_attempts > 1 and len(waited) == len(manager) - 1
    assert all(r.outcome is Outcome.FAILED for r in manager)
    gave_up = one(said(caplog, "gave up", logging.WARNING), caplog)
    assert "subscriptions" in gave_up.getMessage() and manager[-1].run_id in gave_up.getMessage()


async def test_the_functions_host_delivers_a_reauthorization_whose_round_failed_again(
        graph: GraphDouble, webhook: Webhook) -> None:
    """graph_hints raises when a lifecycle event's round failed, so the Functions host makes the
    message visible again and delivers it again (host.json queues.maxDequeueCount, then the
    poison queue) instead of deleting it: the second delivery reauthorizes the subscription."""
    ctx, sid = await reauthorization_due(graph, webhook)
    queue = notification_queue(ctx)
    assert isinstance(queue, InProcessHints)
    hint = queue.queue.get_nowait()  # what the webhook queued: the Storage queue's message
    assert hint.kind == "subscriptions" and hint.renew == (sid,)
    graph.refuse.append(("PATCH", f"/subscriptions/{sid}", 500))
    functions.set_context(ctx)
    try:
        msg = message(hint)
        with pytest.raises(Exception, match="retr"):
            await trigger("graph_hints")(msg)
        await trigger("graph_hints")(msg)  # delivered again
    finally:
        functions.set_context(None)
    assert [r.status for r in graph.requests(f"/subscriptions/{sid}", "PATCH")] == [500, 200]
    last = await ctx.runner.last_run("graph-subscriptions")
    assert last is not None and last["outcome"] == "applied"


async def test_the_functions_host_delivers_a_sync_hint_whose_lock_was_held_again(
        graph: GraphDouble, webhook: Webhook) -> None:
    """graph_hints raises when another sync holds the lock, so the Functions host delivers the
    message again (host.json visibilityTimeout, maxDequeueCount) instead of deleting it with no run
    made: the second delivery, once the lock is free, runs the sync (here it fails: no hub)."""
    from datetime import timedelta

    from hubpilot.loop import LockHeld

    g = graph.add_group()
    ctx = webhook.use(settings(graph, webhook, g))
    lease = await ctx.store.acquire_lock("sync", "timer:other-run", timedelta(minutes=5), ctx.clock())
    assert lease is not None
    functions.set_context(ctx)
    try:
        msg = message(Hint("sync", (g,), received=ctx.clock().isoformat()))
        with pytest.raises(LockHeld):
            await trigger("graph_hints")(msg)
        assert await ctx.runner.last_run("sync") is None
        await ctx.store.release_lock(lease)
        await trigger("graph_hints")(msg)  # delivered again
    finally:
        functions.set_context(None)
    last = await ctx.runner.last_run("sync")
    assert last is not None and last["trigger"] == "notification"


async def test_a_failed_sync_that_started_after_a_notification_does_not_cover_it(
        graph: GraphDouble, webhook: Webhook) -> None:
    """A sync that failed read or applied nothing for sure: a hint received before it started is
    not covered by it (as an applied one would), but runs a sync of its own."""
    from hubpilot.entra.notifications import COVER_MARGIN

    g = graph.add_group()
    ctx = webhook.use(settings(graph, webhook, g))
    received = (ctx.clock() - COVER_MARGIN * 2).isoformat()
    failed = await ctx.runner.run(ctx.capability("sync"), trigger="schedule", actor="timer")
    assert failed.outcome is Outcome.FAILED  # the hub is down
    worker = worker_of(ctx)
    await notification_queue(ctx).push(Hint("sync", (g,), received=received))
    assert await worker.drain_once() == 1
    (own,) = worker.records
    assert own.trigger == "notification" and own.started > failed.started


# --- lead: the worker's bound on a held lock, said where an operator reads it -----------------------

async def test_serves_worker_giving_up_on_a_held_sync_lock_says_what_follows(
        graph: GraphDouble, webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    """Another sync holds the lock longer than the worker waits (a first read of a large group):
    the worker gives up on the hint with a warning that says the change waits for the scheduled
    sync, so an operator who sees it knows nothing more is needed (and why it took a while)."""
    from datetime import timedelta

    g = graph.add_group()
    ctx = webhook.use(settings(graph, webhook, g))
    lease = await ctx.store.acquire_lock("sync", "timer:other-run", timedelta(minutes=10), ctx.clock())
    assert lease is not None
    worker = worker_of(ctx)
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    worker.sleep = sleep
    caplog.set_level(logging.INFO)
    await notification_queue(ctx).push(Hint("sync", (g,), received=ctx.clock().isoformat()))
    assert await worker.drain_once() == 1
    assert not worker.records and len(waited) == worker.max_attempts - 1
    gave_up = one(said(caplog, "gave up", logging.WARNING), caplog).getMessage()
    assert "sync" in gave_up and "timer:other-run" in gave_up, gave_up
    assert "sync.schedule" in gave_up, gave_up  # what follows the change now
    await ctx.store.release_lock(lease)
