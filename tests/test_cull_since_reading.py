"""What happens to a server between a cull round's reading and its stop, on a real hub.

The stops run ``cull.concurrency`` at a time, each one waiting up to the hub's slow-stop answer,
so the last stop of a large round (or of an approved plan) comes minutes after the reading.
Meanwhile a user may come back to an idle server, or restart theirs: JupyterHub answers a
``DELETE`` of a server whose spawn is pending by cancelling that spawn. Each stop therefore reads
the server again and judges it with what the hub says now."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import Plan, Status, no_progress
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_cull_realhub import (  # noqa: F401 (fixtures)
    cull_hub,
    hub_client,
    hub_user,
    iso,
    make_user,
    report_activity,
    running,
    wait_for,
)

pytestmark = pytest.mark.hub


async def test_a_server_used_or_restarted_since_the_reading_is_not_stopped(
    cull_hub: RealHub, hub_client: HubClient  # noqa: F811 (the imported fixtures)
) -> None:
    back, restarted, idle = unique_name("back"), unique_name("slowstart"), unique_name("idle")
    for name in (back, restarted, idle):
        await make_user(cull_hub, name)
    await asyncio.gather(*(cull_hub.spawn(n) for n in (back, restarted, idle)))  # slowstart-: 30 s

    cap = CullCapability(hub_client, CullSettings(inactivity_timeout=3600))
    observed = await cap.observe()
    t = datetime.now(UTC)
    plan = cap.plan(observed, t + timedelta(hours=1, minutes=5))
    mine = Plan.build("cull", [a for a in plan.actions if a.target in (back, restarted, idle)],
                      facts=plan.facts)
    assert sorted(a.target for a in mine.actions) == sorted((back, restarted, idle))

    # before the stops: one user is back at work (their server reports activity), another
    # stopped their server and starts it again (the spawn is pending)
    await report_activity(cull_hub, back, "", t + timedelta(minutes=59))
    async with cull_hub.admin() as admin:
        await admin.delete(f"/users/{restarted}/server")

    async def stopped() -> bool:
        return running(await hub_user(cull_hub, restarted)) == set()

    await wait_for(stopped)
    r = await cull_hub.spawn(restarted, wait=False)
    assert r.status_code == 202, r.text

    results = {r.action.target: r for r in await cap.apply(mine, observed, no_progress)}
    assert results[idle].status is Status.DONE
    assert results[back].status is Status.SKIPPED, results[back]
    assert "active 6m ago" in results[back].detail
    assert results[restarted].status is Status.SKIPPED, results[restarted]
    assert "pending spawn" in results[restarted].detail
    assert running(await hub_user(cull_hub, back)) == {""}

    async def ready() -> bool:
        return bool((await hub_user(cull_hub, restarted))["servers"].get("", {}).get("ready"))

    await wait_for(ready, timeout=60)  # the user's spawn was not cancelled


async def test_a_user_active_since_the_reading_is_not_deleted(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """A user found long-inactive who comes back (logs in, opens the spawn page) before the
    deletion runs, without starting a server yet, is not deleted: the user read again just
    before the deletion is judged again, as a server is before its stop."""
    back, gone = unique_name("back"), unique_name("gone")
    for name in (back, gone):
        await make_user(cull_hub, name)
    settings = CullSettings(inactivity_timeout=3600, cull_users=True, delete_users=True)
    cap = CullCapability(hub_client, settings, SqliteStore(tmp_path / "state.db"))  # sync manages nobody
    observed = await cap.observe()
    t = datetime.now(UTC)
    plan = cap.plan(observed, t + timedelta(hours=1, minutes=5))
    mine = Plan.build("cull", [a for a in plan.actions if a.target in (back, gone)], facts=plan.facts)
    assert sorted((a.kind, a.target) for a in mine.actions) == sorted(
        [("delete_user", back), ("delete_user", gone)])

    async with cull_hub.admin() as admin:  # the hub records the user's activity (a login)
        r = await admin.post(f"/users/{back}/activity",
                             json={"last_activity": iso(t + timedelta(minutes=59))})
        assert r.status_code == 200, r.text

    results = {r.action.target: r for r in await cap.apply(mine, observed, no_progress)}
    assert results[gone].status is Status.DONE, results[gone]
    assert results[back].status is Status.SKIPPED, results[back]
    assert "active 6m ago" in results[back].detail, results[back]
    assert await hub_user(cull_hub, back)  # still there


async def test_a_user_whose_servers_the_round_stops_is_still_deleted_in_that_round(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """The hub marks a user active when it stops their server (``User.stop`` sets the user's
    ``last_activity`` to the stop's time): the round's own stop is not the user coming back, so
    a long-inactive user whose idle servers the round stops is deleted after the stops. The plan
    is made at the real time here (the stop's mark is then later than the plan's time)."""
    name = unique_name("idle")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    settings = CullSettings(inactivity_timeout=2, activity_interval=1, activity_check_seconds=0,
                            schedule="* * * * * *", cull_users=True, delete_users=True)
    cap = CullCapability(hub_client, settings, SqliteStore(tmp_path / "state.db"))  # sync manages nobody
    mine = Plan.build("cull", [])

    async def idle_at_the_real_time() -> bool:  # the server idle past its 2 s, by the real clock
        nonlocal mine, observed
        observed = await cap.observe()
        plan = cap.plan(observed, datetime.now(UTC))
        mine = Plan.build("cull", [a for a in plan.actions if a.target == name], facts=plan.facts)
        return [(a.kind, a.target) for a in mine.actions] == [("stop_server", name), ("delete_user", name)]

    observed = await cap.observe()
    await wait_for(idle_at_the_real_time)
    results = [(r.action.kind, r.status) for r in await cap.apply(mine, observed, no_progress)]
    assert results == [("stop_server", Status.DONE), ("delete_user", Status.DONE)], results
    async with cull_hub.admin() as admin:
        assert (await admin.get(f"/users/{name}")).status_code == 404
