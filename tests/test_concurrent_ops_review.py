"""Sync, cull and scale's reclaim on one hub at the same time (each operation has its own lock, so
they do run concurrently): each run reports what it did, against the session's real hub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from hubpilot.cull import CullCapability
from hubpilot.loop import Outcome, Plan, Status, no_progress
from hubpilot.settings import load_settings
from hubpilot.wiring import Context
from tests.fixtures.syncworld import World
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


@pytest.fixture
async def cull_ctx(world: World, real_hub: RealHub) -> AsyncIterator[Context]:
    """A cull round three hours ahead (every server and user of the test idle), deleting long-inactive
    users (cull.delete_users), on the sync world's store."""
    settings = load_settings(
        hub={"api_url": real_hub.api_url, "token": real_hub.hubpilot_token},
        cull={"cull_users": True, "delete_users": True, "max_stops_per_round": 10000,
              "max_user_deletions_per_round": 10000},
    )
    now = datetime.now(UTC) + timedelta(hours=3)
    ctx = Context(settings=settings, store=world.store, clock=lambda: now)
    yield ctx
    await ctx.hub.close()


async def cull_round(ctx: Context, users: set[str]) -> list[tuple[str, Status]]:
    """A cull round's apply, cut to ``users`` (the session's hub holds every test's users)."""
    cap = ctx.capability("cull")
    assert isinstance(cap, CullCapability)
    observed = await cap.observe()
    now = ctx.clock()
    plan = cap.plan(observed, now)
    ours = Plan.build("cull", [a for a in plan.actions if str(a.params.get("user", a.target)) in users])
    return [(r.action.kind, r.status) for r in await cap.apply(ours, observed, no_progress)]


async def test_sync_does_not_report_done_a_stop_cull_made_since_its_reading(
    world: World, real_hub: RealHub, cull_ctx: Context
) -> None:
    """bob leaves the directory with a server running; a cull round stops that server between
    sync's reading and sync's stop. The hub answers 204 to a DELETE of a stopped server too, so
    sync must not take that answer for its own stop: cull reports the stop done, sync a no-op."""
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob = world.user("bob")
    await real_hub.spawn(bob)

    world.set("analysts", "alice")
    sync = world.capability()
    observed = await sync.observe()
    plan = sync.plan(observed, datetime.now(UTC))
    assert plan.counts().get("stop_servers") == 1, plan.counts()

    assert await cull_round(cull_ctx, {bob}) == [("stop_server", Status.DONE)]

    by_kind = {r.action.kind: r for r in await sync.apply(plan, observed, no_progress)}
    stop = by_kind["stop_servers"]
    assert stop.status is Status.NOOP, (stop.status, stop.detail)
    assert "already stopped" in stop.detail
    assert by_kind["deprovision"].status is Status.DONE


async def test_a_user_cull_deletes_before_syncs_group_addition_does_not_fail_the_others(
    world: World, real_hub: RealHub, cull_ctx: Context
) -> None:
    """carl and dora, hub users sync does not manage yet (long-inactive), join a synced group: sync
    reads them and plans to take them on and add them to its group; a cull round (cull.delete_users)
    that read sync's records before sync took them on deletes dora meanwhile. The hub refuses a
    group addition naming a user it does not have as a whole (400, nobody added): carl still goes in
    the group, and dora's addition says why it did not happen instead of failing the run."""
    world.set("analysts", "alice")
    assert (await world.run()).outcome is Outcome.APPLIED
    carl, dora = world.user("carl"), world.user("dora")
    async with real_hub.admin() as admin:
        for name in (carl, dora):
            (await admin.post(f"/users/{name}")).raise_for_status()

    world.set("analysts", "alice", "carl", "dora")
    sync = world.capability()
    observed = await sync.observe()
    plan = sync.plan(observed, datetime.now(UTC))
    assert plan.counts() == {"manage_user": 2, "add_to_group": 2}, plan.counts()

    assert await cull_round(cull_ctx, {dora}) == [("delete_user", Status.DONE)]

    results = {(r.action.kind, str(r.action.params.get("user", r.action.target))): r
               for r in await sync.apply(plan, observed, no_progress)}
    added = results["add_to_group", carl]
    assert added.status is Status.DONE, (added.status, added.detail)
    missed = results["add_to_group", dora]
    assert missed.status is Status.SKIPPED, (missed.status, missed.detail)
    assert f"no user {dora}" in missed.detail and "next run" in missed.detail
    assert (await world.hub_state())["groups"][f"{world.prefix}analysts"] == sorted([world.user("alice"), carl])
    # the next run takes dora on again: created and added
    again = await world.run()
    assert again.outcome is Outcome.APPLIED and again.plan is not None, again.render()
    assert again.plan.counts() == {"create_user": 1, "add_to_group": 1}, again.render()
