"""Subscription lifecycle and faults: the subscription manager and the webhook through the real
msgraph-sdk against the HTTP-level Graph double, with the real admin app serving the webhook."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hubpilot.config.entra import EntraSettings
from hubpilot.loop import Outcome, Status
from hubpilot.wiring.entra import InProcessHints, notification_queue, run_subscription_manager
from tests.doubles.graph import GraphDouble
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
