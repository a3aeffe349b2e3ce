"""Subscription lifecycle and faults: the subscription manager and the webhook through the real
msgraph-sdk against the HTTP-level Graph double, with the real admin app serving the webhook."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.entra import EntraSettings
from hubpilot.loop import Outcome, Status
from hubpilot.wiring import Context
from hubpilot.wiring.entra import InProcessHints, notification_queue, run_subscription_manager
from tests.doubles.graph import MSI_SECRET, GraphDouble
from tests.fixtures.webhook import Webhook
from tests.test_entra_graph import entra_settings


@pytest.fixture
def fresh(fresh: GraphDouble) -> GraphDouble:
    fresh.subscriptions.clear()  # these tests count the subscriptions the manager makes
    return fresh


def queued(queue: object) -> list[str]:
    assert isinstance(queue, InProcessHints)
    out = []
    while not queue.queue.empty():
        out.append(queue.queue.get_nowait().kind)
    return out


async def test_a_vanished_subscription_whose_replacement_failed_still_brings_the_sync_when_replaced(
        fresh: GraphDouble, webhook: Webhook) -> None:
    """Graph dropped a subscription without a lifecycle event reaching hubpilot: the round that
    replaces it queues a delta sync for the changes never notified. When the first round's creation
    fails (403: Group.Read.All withdrawn meanwhile, a validation that timed out), the round that
    does replace it later must still queue that sync: the gap only grew."""
    g = fresh.add_group()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [g]))
    first = await run_subscription_manager(ctx)
    assert first is not None and first.outcome is Outcome.APPLIED
    (sid,) = fresh.subscriptions
    queue = notification_queue(ctx)
    assert queued(queue) == []

    del fresh.subscriptions[sid]  # gone on Graph's side, no lifecycle event
    fresh.refuse.append(("POST", "/subscriptions", 403))
    failed = await run_subscription_manager(ctx)
    assert failed is not None and failed.outcome is Outcome.FAILED, failed.render()
    assert failed.plan is not None and failed.plan.facts["vanished"] == [sid]
    assert [(r.action.kind, r.status) for r in failed.results] == [("create", Status.FAILED)]
    assert queued(queue) == []  # nothing replaced yet
    assert fresh.subscriptions == {}

    replaced = await run_subscription_manager(ctx)
    assert replaced is not None and replaced.outcome is Outcome.APPLIED, replaced.render()
    assert [(r.action.kind, r.status) for r in replaced.results] == [("create", Status.DONE)]
    assert replaced.plan is not None and replaced.plan.facts.get("vanished") == [sid], replaced.render()
    assert queued(queue) == ["sync"]  # the changes since the subscription vanished

    settled = await run_subscription_manager(ctx)
    assert settled is not None and settled.plan is not None and settled.plan.empty, settled.render()
    assert "vanished" not in settled.plan.facts and queued(queue) == []


async def test_a_token_graph_refuses_in_a_subscription_round_says_which_settings_to_fix(
        fresh: GraphDouble, webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graph's 401 to the subscription manager (a token for another cloud's Graph: graph_scope
    naming the global Graph while graph_base_url names another, the real ManagedIdentityCredential
    through the double's identity endpoint) fails the round with the scope asked for and the
    settings that make the token, as a directory read does, not with Graph's text alone; so does a
    401 to each of its writes (POST, PATCH, DELETE /subscriptions)."""
    settings = ("directory.entra.graph_scope", "directory.entra.authority_host", "directory.entra.graph_base_url")
    a, b = fresh.add_group(), fresh.add_group()
    fresh.audience = fresh.base_url[: -len("/v1.0")]
    monkeypatch.setenv("IDENTITY_ENDPOINT", fresh.base_url.replace("/v1.0", "/msi/token"))
    monkeypatch.setenv("IDENTITY_HEADER", MSI_SECRET)
    ctx = Context(settings=entra_settings(fresh, webhook.url, [a], entra={
        "credential": "managed_identity", "graph_scope": "https://graph.microsoft.com/.default"}),
        store=SqliteStore(webhook.tmp / "refused.sqlite3"))
    try:
        rec = await run_subscription_manager(ctx)
    finally:
        await ctx.close()
    assert rec is not None and rec.outcome is Outcome.FAILED, rec.render()
    assert "401" in rec.render() and "https://graph.microsoft.com/.default" in rec.render(), rec.render()
    assert all(name in rec.render() for name in settings), rec.render()
    assert fresh.subscriptions == {}

    ctx = webhook.use(entra_settings(fresh, webhook.url, [a]))  # a good token
    fresh.refuse.append(("POST", "/subscriptions", 401))
    created = await run_subscription_manager(ctx)
    assert created is not None and [(r.action.kind, r.status) for r in created.results] == [
        ("create", Status.FAILED)], created.render()
    assert all(name in created.results[0].detail for name in settings), created.render()
    assert (await run_subscription_manager(ctx)).outcome is Outcome.APPLIED  # type: ignore[union-attr]
    (sid,) = fresh.subscriptions
    fresh.refuse.append(("PATCH", f"/subscriptions/{sid}", 401))
    renewed = await run_subscription_manager(ctx, force_renew=[sid])
    assert renewed is not None and [(r.action.kind, r.status) for r in renewed.results] == [
        ("renew", Status.FAILED)], renewed.render()
    assert all(name in renewed.results[0].detail for name in settings), renewed.render()
    fresh.refuse.append(("DELETE", f"/subscriptions/{sid}", 401))
    moved = webhook.use(entra_settings(fresh, webhook.url, [b]), store=ctx.store)  # a's is no longer wanted
    deleted = await run_subscription_manager(moved)
    assert deleted is not None and ("delete", Status.FAILED) in [
        (r.action.kind, r.status) for r in deleted.results], deleted.render()
    failed = next(r for r in deleted.results if r.action.kind == "delete")
    assert all(name in failed.detail for name in settings), deleted.render()
    assert sid in fresh.subscriptions  # refused: still there


WEBHOOK = {"notifications": True, "client_state": "s3cret",
           "notification_url": "https://hub.example.org/api/v1/graph/notifications"}


@pytest.mark.parametrize(("extra", "gap"), [
    ({"renew_before_minutes": 30}, "60 min"),  # the Functions timer graph_subscriptions: hourly
    ({"subscription_schedule": "0 0 0 * * 0"}, "10080 min"),  # hubpilot serve, weekly rounds
])
def test_a_renewal_window_shorter_than_the_time_between_manager_rounds_is_refused(
        extra: dict[str, object], gap: str) -> None:
    """A subscription is renewed only by a manager round that finds it expiring within
    renew_before_minutes: with rounds further apart than that, it expires between two rounds,
    Graph drops it and changes go unnotified until the next round recreates it."""
    with pytest.raises(ValidationError, match=rf"renew_before_minutes.*{gap}"):
        EntraSettings(**WEBHOOK, **extra)
    # the defaults (2 days; hourly in Azure, every 6 hours with hubpilot serve) and a window
    # longer than the rounds' gap are fine; with notifications off no round runs at all
    EntraSettings(**WEBHOOK)
    EntraSettings(**WEBHOOK, renew_before_minutes=400)
    EntraSettings(**extra)


def test_the_functions_gap_the_settings_check_is_the_functions_timers() -> None:
    from functions.graph import SUBSCRIPTION_SCHEDULE
    from hubpilot.config.entra import FUNCTIONS_SUBSCRIPTION_GAP_MINUTES
    from hubpilot.schedule import longest_gap

    assert longest_gap(SUBSCRIPTION_SCHEDULE).total_seconds() / 60 == FUNCTIONS_SUBSCRIPTION_GAP_MINUTES
