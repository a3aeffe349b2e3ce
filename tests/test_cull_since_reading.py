"""What happens to a server between a cull round's reading and its stop, on a real hub.

The stops run ``cull.concurrency`` at a time, each one waiting up to the hub's slow-stop answer,
so the last stop of a large round (or of an approved plan) comes minutes after the reading.
Meanwhile a user may come back to an idle server, or restart theirs: JupyterHub answers a
``DELETE`` of a server whose spawn is pending by cancelling that spawn. Each stop therefore reads
the server again and judges it with what the hub says now."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import Plan, Status, no_progress
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_cull_realhub import (  # noqa: F401 (fixtures)
    cull_hub,
    hub_client,
    hub_user,
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
