"""The event path in a REAL hub: the pre-spawn part posts the GPU demand to ``hubpilot serve``,
which starts a scale run that calls ARM (the double) — and a failing hubpilot never blocks a spawn."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.aks import AksPool
from hubpilot.adapters.kube import KubeCluster
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.runs import drain_tasks
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.scale import build_scale
from tests.doubles.arm import ArmDouble, StaticToken
from tests.fixtures.hub import unique_name
from tests.fixtures.kmock import NS, Emulator
from tests.realhub import RealHub
from tests.test_api_kit import HUB_TOKEN, TOKENS, token_settings

pytestmark = pytest.mark.hub


def hub_config(port: int) -> str:
    return f"""
from hubpilot_hub.scale_demand import configure_scale_demand
configure_scale_demand(c, url="http://127.0.0.1:{port}/api/v1", token={TOKENS['hub']!r},
                       gpu_profiles=["gpu"], gpu_start_timeout=900, timeout=2)
"""


async def test_gpu_spawn_requests_a_node_and_never_waits_for_hubpilot(
    kube: Emulator, tmp_path: Path, hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    from hubpilot.serve import Server

    kube.clear()
    arm = ArmDouble()
    await arm.start()
    arm.add_pool("gpu", count=0, machines=[])
    settings = Settings(hub={"api_url": "http://127.0.0.1:9/hub/api", "token": HUB_TOKEN},
                        api={"tokens": token_settings()},
                        scale={"enabled": True, "subscription_id": arm.subscription,
                               "resource_group": arm.resource_group, "cluster": arm.cluster})
    ctx = Context(settings=settings, store=SqliteStore(tmp_path / f"s-{uuid.uuid4().hex[:6]}.sqlite3"))
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=1,
                   retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url)
    ctx.factories["scale"] = lambda c: build_scale(c, pool=pool, cluster=cluster)
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    task = asyncio.create_task(server.run())
    stopped = False
    try:
        while not server.started:
            assert not task.done(), "hubpilot serve did not start"
            await asyncio.sleep(0.01)
        hub = await hub_factory(extra_config=hub_config(server.port))

        cpu_user, gpu_user, late_user = unique_name("cpu"), unique_name("gpu"), unique_name("gpu")
        async with hub.admin() as admin:
            for u in (cpu_user, gpu_user, late_user):
                assert (await admin.post(f"/users/{u}")).status_code in (201, 409)

        await hub.spawn(cpu_user, user_options={"profile": "cpu"})
        await hub.spawn(gpu_user, user_options={"profile": "gpu"})
        await asyncio.wait_for(arm.write_event.wait(), 30)
        put = next(c for c in arm.calls if c.method == "PUT")
        assert put.body["properties"]["count"] == 1
        await drain_tasks()
        demands = await ctx.store.list("scale/demand/")
        assert set(demands) == {f"scale/demand/{gpu_user}~"}  # the CPU profile sent nothing
        assert demands[f"scale/demand/{gpu_user}~"]["profile"] == "gpu"

        # hubpilot goes away: a GPU spawn still starts
        server.stop()
        await task
        stopped = True
        r = await hub.spawn(late_user, user_options={"profile": "gpu"}, timeout=60)
        assert r.status_code in (201, 202)
        assert f"hubpilot gpu-demand for {late_user}" in hub.log_tail(200)  # the failed call was only logged
    finally:
        if not stopped:
            server.stop()
            await task
        await drain_tasks()
        await pool.close()
        await cluster.close()
        await ctx.close()
        await arm.stop()


def test_configure_raises_only_the_gpu_profiles_start_timeout() -> None:
    from traitlets.config import Config

    from hubpilot_hub import hooks
    from hubpilot_hub.scale_demand import PART_NAME, START_TIMEOUT_PART_NAME, configure_scale_demand

    c = Config()
    c.KubeSpawner.profile_list = [
        {"slug": "cpu", "display_name": "CPU"},
        {"slug": "gpu", "display_name": "GPU", "kubespawner_override": {"start_timeout": 300}},
    ]
    try:
        part = configure_scale_demand(c, url="https://hubpilot.example.org/api/v1", token="t",
                                      gpu_profiles=["gpu"], gpu_start_timeout=900)
        assert c.KubeSpawner.profile_list[1]["kubespawner_override"]["start_timeout"] == 900
        assert "kubespawner_override" not in c.KubeSpawner.profile_list[0]
        assert c.Spawner.pre_spawn_hook is hooks.pre_spawn_hook
        assert (PART_NAME, False) in hooks.registered_parts()  # non-essential: never blocks
        assert part.endpoint == "https://hubpilot.example.org/api/v1/scale/demand"
    finally:
        hooks.unregister_pre_spawn(PART_NAME)
        hooks.unregister_pre_spawn(START_TIMEOUT_PART_NAME)
    with pytest.raises(ValueError, match="http"):
        configure_scale_demand(Config(), url="hubpilot.example.org", token="t")


class _Spawner:
    def __init__(self, profile: str, limits: dict[str, Any] | None = None) -> None:
        self.user_options = {"profile": profile}
        self.extra_resource_limits = limits or {}
        self.name = ""
        self.user = type("U", (), {"name": "ana"})()


async def test_gpu_detection_by_profile_or_resource() -> None:
    from hubpilot_hub.scale_demand import gpu_spawn

    gpu = frozenset({"gpu"})
    assert (await gpu_spawn(_Spawner("gpu"), gpu))[0]
    assert not (await gpu_spawn(_Spawner("cpu"), gpu))[0]
    assert (await gpu_spawn(_Spawner("", {"nvidia.com/gpu": 1}), gpu))[0]


async def test_send_to_an_unreachable_hubpilot_returns_quietly() -> None:
    from hubpilot_hub.scale_demand import ScaleDemand

    part = ScaleDemand("http://127.0.0.1:9/api/v1", "t", gpu_profiles=["gpu"], timeout=1)
    assert part(_Spawner("gpu")) is None  # returns at once
    await asyncio.gather(*part._tasks)
    assert part.sent and part.sent[0][1] == "ana~" and part.sent[0][2] in (None, 599)



async def test_waiting_gpu_server_reclaims_an_idle_one_in_a_real_hub(
    kube: Emulator, tmp_path: Path, real_hub: RealHub,
) -> None:
    """An idle GPU server is stopped in the real hub for one that waits (no ready node is free);
    an active one is kept, and one that became active after the plan is kept by apply's re-check."""
    from datetime import UTC, datetime, timedelta

    from hubpilot.loop import Runner, Status, no_progress

    idle, busy, late = unique_name("idle"), unique_name("busy"), unique_name("late")
    waiter = unique_name("wait")
    async with real_hub.admin() as admin:
        for u in (idle, busy, late, waiter):
            assert (await admin.post(f"/users/{u}")).status_code in (201, 409)
    for u in (idle, busy, late):
        await real_hub.spawn(u, user_options={"profile": "gpu"})
    now = datetime.now(UTC) + timedelta(minutes=10)  # the hub's activity is ~10 min old at "now"

    async def touch(user: str, at: datetime) -> None:
        stamp = at.isoformat().replace("+00:00", "Z")
        async with real_hub.admin() as admin:
            r = await admin.post(f"/users/{user}/activity",
                                 json={"last_activity": stamp, "servers": {"": {"last_activity": stamp}}})
            assert r.status_code == 200, r.text

    await touch(busy, now - timedelta(minutes=1))
    kube.clear()
    for i, u in enumerate((idle, busy, late)):
        kube.node(f"gpu-{i}")
        kube.pod(f"jupyter-{u}", f"gpu-{i}", user=u)
    kube.pod(f"jupyter-{waiter}", None, user=waiter)  # waits: no ready node is free
    kube.pod("jupyter-cpu-only", "gpu-0", gpu=False, user=unique_name("cpu"))  # not a GPU server
    arm = ArmDouble()
    await arm.start()
    arm.add_pool("gpu", count=3, machines=["gpu-0", "gpu-1", "gpu-2"])
    settings = Settings(hub={"api_url": real_hub.api_url, "token": real_hub.hubpilot_token},
                        scale={"reclaim_idle_minutes": 6, "max_reclaim": 1}, cull={"activity_interval": 60})
    ctx = Context(settings=settings, store=SqliteStore(tmp_path / "reclaim.sqlite3"), clock=lambda: now)
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=1,
                   retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url)
    try:
        cap = build_scale(ctx, pool=pool, cluster=cluster)
        runner = Runner(ctx.store, clock=lambda: now)
        # idle and late are both idle 10 min; the longest idle (by the hub's own times) goes first
        async with real_hub.admin() as admin:
            users = {u: (await admin.get(f"/users/{u}")).json() for u in (idle, late)}
        first = min((idle, late), key=lambda u: users[u]["servers"][""]["last_activity"])
        other = late if first == idle else idle

        dry = await runner.run(cap, trigger="test", actor="t", dry_run=True)
        assert [(a.kind, a.target) for a in dry.plan.actions] == [("reclaim_server", first)]
        assert set(dry.plan.facts["reclaimable"]) == {f"{idle}~", f"{late}~"}  # not busy, not the CPU pod
        async with real_hub.admin() as admin:
            assert (await admin.get(f"/users/{first}")).json()["servers"][""]["ready"]  # dry-run stopped nothing

        # between plan and apply the chosen server becomes active: apply reads it again and keeps it
        observed = await cap.observe()
        plan = cap.plan(observed, now)
        await touch(first, now - timedelta(seconds=30))
        (kept,) = await cap.apply(plan, observed, no_progress)
        assert kept.status is Status.SKIPPED and "active since" in kept.detail

        rec = await runner.run(cap, trigger="test", actor="t")
        assert [(r.action.kind, r.action.target, r.status) for r in rec.results] == [
            ("reclaim_server", other, Status.DONE)]
        async with real_hub.admin() as admin:
            servers = {u: (await admin.get(f"/users/{u}")).json()["servers"] for u in (idle, busy, late)}
        assert servers[other] == {} and servers[first][""]["ready"] and servers[busy][""]["ready"]
        assert [c for c in arm.calls if c.method == "PUT"] == []  # the waiter takes the reclaimed node
    finally:
        await pool.close()
        await cluster.close()
        await ctx.close()
        await arm.stop()
        for u in (idle, busy, late):
            async with real_hub.admin() as admin:
                await admin.delete(f"/users/{u}/server")


async def test_no_idle_gpu_server_is_reclaimed_until_the_activity_reports_caught_up_after_a_hub_outage(
    kube: Emulator, tmp_path: Path, real_hub: RealHub,
) -> None:
    """A scale round that cannot read the hub (no answer) records the outage, as a cull round does
    (one record, hub_outage.py); the rounds after the hub answers again judge no GPU server idle
    until the servers' activity reports have caught up (cull.activity_lag later), so a server in
    use whose last report predates the outage is not reclaimed for a waiting one; then the idle
    server is reclaimed as before and the record is gone."""
    from datetime import UTC, datetime, timedelta

    idle, waiter = unique_name("idle"), unique_name("wait")
    async with real_hub.admin() as admin:
        for u in (idle, waiter):
            assert (await admin.post(f"/users/{u}")).status_code in (201, 409)
    await real_hub.spawn(idle, user_options={"profile": "gpu"})
    kube.clear()
    kube.node("gpu-0")
    kube.pod(f"jupyter-{idle}", "gpu-0", user=idle)
    kube.pod(f"jupyter-{waiter}", None, user=waiter)  # waits: no ready node is free
    arm = ArmDouble()
    await arm.start()
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    clock = [datetime.now(UTC) + timedelta(minutes=10)]  # the idle server's activity is ~10 min old
    store = SqliteStore(tmp_path / "outage.sqlite3")
    contexts = []
    for api_url in ("http://127.0.0.1:9/hub/api", real_hub.api_url):  # a hub that is down, then the hub
        settings = Settings(hub={"api_url": api_url, "token": real_hub.hubpilot_token, "retries": 0},
                            scale={"reclaim_idle_minutes": 6, "max_reclaim": 1}, cull={"activity_interval": 60})
        contexts.append(Context(settings=settings, store=store, clock=lambda: clock[0]))
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=1,
                   retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url)
    try:
        down, up = (build_scale(c, pool=pool, cluster=cluster) for c in contexts)
        lag = contexts[1].settings.cull.activity_lag
        observed = await down.observe()
        assert any("the hub could not be read" in n for n in observed.notes), observed.notes
        assert await store.get("hub/outage") is not None

        clock[0] += timedelta(minutes=1)  # the hub answers again
        back = clock[0]
        observed = await up.observe()
        plan = up.plan(observed, clock[0])
        assert observed.activity is None and "reclaim_server" not in plan.counts(), plan.render()
        assert any("no server is reclaimed" in n for n in observed.notes), observed.notes
        clock[0] = back + timedelta(seconds=lag - 1)
        assert "reclaim_server" not in up.plan(await up.observe(), clock[0]).counts()

        clock[0] = back + timedelta(seconds=lag)
        observed = await up.observe()
        plan = up.plan(observed, clock[0])
        assert [(a.kind, a.target) for a in plan.actions if a.kind == "reclaim_server"] == [
            ("reclaim_server", idle)], plan.render()
        assert await store.get("hub/outage") is None
    finally:
        await pool.close()
        await cluster.close()
        for c in contexts:
            if c._hub is not None:
                await c._hub.close()
        await store.close()
        await arm.stop()
        async with real_hub.admin() as admin:
            await admin.delete(f"/users/{idle}/server")
