"""Sync follow-ups of a review of concurrent runs, against the session's real hub: a deprovisioned
person's servers, a rename with a server started since the reading, and cull's reading of sync's
records before each deletion."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from hubpilot.cull import CullCapability
from hubpilot.loop import Outcome, Plan, Status, no_progress
from hubpilot.settings import load_settings
from hubpilot.wiring import Context
from tests.faultproxy import FaultProxy
from tests.fixtures.syncworld import World
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


async def running(real_hub: RealHub, name: str) -> list[str]:
    async with real_hub.admin() as admin:
        user = (await admin.get(f"/users/{name}")).json()
    return sorted(n for n, s in user["servers"].items() if s.get("ready") or s.get("pending"))


@pytest.mark.parametrize("admin_mode", ["role", "flag"])
async def test_a_server_a_deprovisioned_person_runs_is_stopped_by_the_next_run(
    world: World, real_hub: RealHub, admin_mode: str
) -> None:
    """bob leaves; sync reads him without a server, then he (or an admin for him) starts one before
    sync's apply deprovisions him: the server runs on after he lost access. The next run, and every
    later one that finds a server of his running, stops it; the person stays deprovisioned."""
    world.policy = world.policy.model_copy(update={"admin_mode": admin_mode})
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob = world.user("bob")

    world.set("analysts", "alice")
    sync = world.capability()
    observed = await sync.observe()
    plan = sync.plan(observed, datetime.now(UTC))
    assert plan.counts().get("deprovision") == 1 and "stop_servers" not in plan.counts(), plan.counts()
    await real_hub.spawn(bob)  # after the reading
    assert {r.action.kind: r.status for r in await sync.apply(plan, observed, no_progress)}["deprovision"] \
        is Status.DONE
    assert await running(real_hub, bob) == [""]

    after = await world.run()
    assert after.outcome is Outcome.APPLIED and after.plan is not None, after.render()
    stops = [r for r in after.results if r.action.kind == "stop_servers"]
    assert [(r.action.target, r.status) for r in stops] in ([(bob, Status.DONE)], [(bob, Status.PENDING)]), \
        after.render()
    assert "deprovisioned" in stops[0].action.reason
    assert "deprovision" not in after.plan.counts() and "manage_user" not in after.plan.counts()
    assert await running(real_hub, bob) == [] or stops[0].status is Status.PENDING

    # an admin starts it again later: the next run stops it again; a run without one plans nothing
    if stops[0].status is Status.DONE:
        await real_hub.spawn(bob)
        again = await world.run()
        assert again.plan is not None and again.plan.counts() == {"stop_servers": 1}, again.render()
        assert await running(real_hub, bob) == []
        quiet = await world.run()
        assert quiet.plan is not None and quiet.plan.counts() == {}, quiet.render()


async def test_a_rename_waits_for_a_server_started_since_the_reading(world: World, real_hub: RealHub) -> None:
    """bob is robert in the directory now (same entry) and joins gpu: sync reads him without a
    server and plans the rename. He starts a server before the rename: KubeSpawner names the pod
    and the volume after the user, so renaming under a running server leaves them behind. The
    rename is not made this run (it says why), nor anything of the new name; the next run stops
    the server (sync.stop_servers), and the one after renames."""
    world.set("analysts", "alice", "bob")
    assert (await world.run()).outcome is Outcome.APPLIED
    bob, robert = world.user("bob"), world.user("robert")
    world.set("gpu", "bob")
    world.people["bob"]["username"] = robert
    world.write()

    sync = world.capability()
    observed = await sync.observe()
    plan = sync.plan(observed, datetime.now(UTC))
    assert plan.counts() == {"rename_user": 1, "add_to_group": 1}, plan.counts()
    await real_hub.spawn(bob)  # after the reading

    results = {(r.action.kind, str(r.action.params.get("user", r.action.target))): r
               for r in await sync.apply(plan, observed, no_progress)}
    rename = results["rename_user", bob]
    assert rename.status is Status.SKIPPED, (rename.status, rename.detail)
    assert "not renamed" in rename.detail and "running" in rename.detail and "next run" in rename.detail
    added = results["add_to_group", robert]
    assert added.status is Status.SKIPPED, (added.status, added.detail)
    assert f"not renamed to {robert}" in added.detail
    state = await world.hub_state()
    assert robert not in state["users"] and state["users"][bob]["groups"] == [f"{world.prefix}analysts"]
    assert await running(real_hub, bob) == [""]

    stop = await world.run()
    assert stop.plan is not None and stop.plan.counts() == {"stop_servers": 1}, stop.render()
    assert stop.results[0].status in (Status.DONE, Status.PENDING), stop.render()
    if stop.results[0].status is Status.DONE:
        renamed = await world.run()
        assert renamed.outcome is Outcome.APPLIED and renamed.plan is not None, renamed.render()
        assert renamed.plan.counts() == {"rename_user": 1, "add_to_group": 1}, renamed.render()
        state = await world.hub_state()
        assert bob not in state["users"]
        assert state["users"][robert]["groups"] == sorted([f"{world.prefix}analysts", f"{world.prefix}gpu"])


async def test_cull_reads_syncs_records_again_before_each_deletion(world: World, real_hub: RealHub) -> None:
    """carl and dora are long-inactive hub users sync does not manage; a cull round
    (cull.delete_users, one request at a time) deletes carl first. While carl's deletion is under way
    (the hub slow to answer), dora joins a synced group and a sync run takes her on. docs/cull.md
    says the records are read again just before the deletions: dora, whom sync manages by then, is
    not deleted (the next sync would only create her again)."""
    world.set("analysts", "alice")
    assert (await world.run()).outcome is Outcome.APPLIED
    carl, dora = world.user("carl"), world.user("dora")
    async with real_hub.admin() as admin:
        for name in (carl, dora):
            (await admin.post(f"/users/{name}")).raise_for_status()

    where = urlsplit(real_hub.api_url)
    proxy = FaultProxy(where.hostname or "127.0.0.1", where.port or 80)
    await proxy.start()
    proxy.rule(lambda method, path: method == "DELETE" and path.endswith(f"/users/{carl}"), "hold")
    settings = load_settings(
        hub={"api_url": f"http://127.0.0.1:{proxy.port}{where.path}", "token": real_hub.hubpilot_token},
        cull={"cull_users": True, "delete_users": True, "max_stops_per_round": 10000,
              "max_user_deletions_per_round": 10000, "concurrency": 1},
    )
    now = datetime.now(UTC) + timedelta(hours=3)
    ctx = Context(settings=settings, store=world.store, clock=lambda: now)
    try:
        cap = ctx.capability("cull")
        assert isinstance(cap, CullCapability)
        observed = await cap.observe()
        plan = cap.plan(observed, now)
        ours = Plan.build("cull", [a for a in plan.actions if a.target in (carl, dora)])
        assert [(a.kind, a.target) for a in ours.actions] == [("delete_user", carl), ("delete_user", dora)]
        round_ = asyncio.ensure_future(cap.apply(ours, observed, no_progress))
        while not any(s.method == "DELETE" for s in proxy.seen):  # carl's deletion is held
            assert not round_.done(), round_.result()
            await asyncio.sleep(0.05)
        world.set("analysts", "alice", "dora")
        took = await world.run()
        assert took.plan is not None and took.plan.counts() == {"manage_user": 1, "add_to_group": 1}, took.render()
        proxy.release()
        results = {r.action.target: r for r in await round_}
    finally:
        proxy.release()
        await ctx.hub.close()
        await proxy.stop()
    assert results[carl].status is Status.DONE, results[carl]
    assert results[dora].status is Status.SKIPPED, (results[dora].status, results[dora].detail)
    assert "sync manages them" in results[dora].detail
    assert (await world.hub_state())["users"][dora]["groups"] == [f"{world.prefix}analysts"]


# a leaver's server whose stop outlasts the hub's slow_stop_timeout: the hub answers 202
SLOW_STOP_CONFIG = """
import asyncio
from jupyterhub.spawner import SimpleLocalProcessSpawner


class SlowStopSpawner(SimpleLocalProcessSpawner):
    async def stop(self, now=False):
        if self.user.name.endswith("-bob"):
            await asyncio.sleep(4)  # a pod that takes long to terminate
        return await super().stop(now=now)


c.JupyterHub.spawner_class = SlowStopSpawner
c.JupyterHub.tornado_settings = {"slow_stop_timeout": 1}
"""


async def test_a_leavers_server_still_stopping_is_reported_pending_not_stopped(
    hub_factory: Any, tmp_path: Path
) -> None:
    """bob leaves while his server runs; its stop takes longer than the hub's slow_stop_timeout, and
    the hub answers 202 (still stopping). The run reports the stop pending, as cull does, not done:
    his server still runs when the run ends."""
    hub: RealHub = await hub_factory(extra_config=SLOW_STOP_CONFIG)
    world = World(hub, tmp_path)
    try:
        world.set("analysts", "alice", "bob")
        assert (await world.run()).outcome is Outcome.APPLIED
        bob = world.user("bob")
        await hub.spawn(bob)
        world.set("analysts", "alice")
        record = await world.run()
        assert record.outcome is Outcome.APPLIED, record.render()
        stops = [(r.action.target, r.status) for r in record.results if r.action.kind == "stop_servers"]
        assert stops == [(bob, Status.PENDING)], record.render()
    finally:
        await world.close()
