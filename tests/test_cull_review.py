"""Cull edge cases on a real hub: what the round did not do itself must not count as its own."""

from __future__ import annotations

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
    running,
    wait_for,
)

pytestmark = pytest.mark.hub


async def test_a_user_who_stopped_their_own_server_since_the_reading_is_not_deleted(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """A long-inactive user with an idle server: the round plans the server's stop and then the
    user's deletion. Before the stop is sent, the user comes back (logs in) and stops the server
    themselves (to start it again with other options, say). The round's stop finds it stopped
    (noop): the round stopped nothing of theirs, so the user's activity is theirs, and the user,
    judged again, is active, not long-inactive. They were deleted (in z2jh with their volume)."""
    name = unique_name("back")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    settings = CullSettings(inactivity_timeout=3600, cull_users=True, delete_users=True)
    cap = CullCapability(hub_client, settings, SqliteStore(tmp_path / "state.db"))  # sync manages nobody
    observed = await cap.observe()
    t = datetime.now(UTC)
    plan = cap.plan(observed, t + timedelta(hours=1, minutes=5))
    mine = Plan.build("cull", [a for a in plan.actions if a.target == name], facts=plan.facts)
    assert [(a.kind, a.target) for a in mine.actions] == [("stop_server", name), ("delete_user", name)]

    async with cull_hub.admin() as admin:  # the user stops their server, and the hub notes their login
        await admin.delete(f"/users/{name}/server")

        async def stopped() -> bool:
            return running(await hub_user(cull_hub, name)) == set()

        await wait_for(stopped)
        r = await admin.post(f"/users/{name}/activity", json={"last_activity": iso(t + timedelta(minutes=59))})
        assert r.status_code == 200, r.text

    results = [(r.action.kind, r.status, r.detail) for r in await cap.apply(mine, observed, no_progress)]
    assert results[0][:2] == ("stop_server", Status.NOOP), results
    assert results[1][:2] == ("delete_user", Status.SKIPPED), results
    assert "active 6m ago" in results[1][2], results
    assert await hub_user(cull_hub, name)  # still there


async def test_a_named_server_stopped_by_its_user_since_the_reading_is_not_removed(
    cull_hub: RealHub, hub_client: HubClient  # noqa: F811 (the imported fixtures)
) -> None:
    """With cull.remove_named_servers, the round removes the idle named servers it stops (on z2jh
    with their own volume). A named server its user stopped between the round's reading and the
    round's stop (back at work: on JupyterHub 6 a server is stopped to change its options or its
    name) was not the round's to cull: it stays, volume and all. It was removed and reported
    "done: stopped; removed", though the round stopped nothing."""
    name = unique_name("named")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name, "big")
    cap = CullCapability(hub_client, CullSettings(inactivity_timeout=3600, remove_named_servers=True))
    observed = await cap.observe()
    plan = cap.plan(observed, datetime.now(UTC) + timedelta(hours=1, minutes=5))
    mine = Plan.build("cull", [a for a in plan.actions if a.target == f"{name}/big"], facts=plan.facts)
    assert [a.kind for a in mine.actions] == ["remove_server"]

    async with cull_hub.admin() as admin:  # the user stops it (and does not remove it)
        await admin.delete(f"/users/{name}/servers/big")

    async def stopped() -> bool:
        return running(await hub_user(cull_hub, name)) == set()

    await wait_for(stopped)
    (result,) = await cap.apply(mine, observed, no_progress)
    assert result.status is Status.NOOP, result
    assert "not removed" in result.detail, result
    assert "big" in (await hub_user(cull_hub, name, include_stopped_servers="1"))["servers"]
