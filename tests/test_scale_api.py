"""The scale endpoints of the admin API: the demand event path and the cost report, over HTTP,
with the real wiring (build_scale) against the ARM double and kmock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
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
from tests.fixtures.kmock import NS, Emulator
from tests.test_api_kit import HUB_TOKEN, asgi_client, auth, token_settings

ADMIN, READER, HUB = auth("admin"), auth("reader"), auth("hub")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def setup(kube: Emulator, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    kube.clear()
    arm = ArmDouble()
    await arm.start()
    arm.add_pool("gpu", count=0, machines=[])
    settings = Settings(hub={"api_url": "http://127.0.0.1:9/hub/api", "token": HUB_TOKEN},
                        api={"tokens": token_settings()},
                        scale={"gpu_profiles": [], "price_per_node_hour": 2.0, "currency": "EUR",
                               "enabled": True, "subscription_id": arm.subscription,
                               "resource_group": arm.resource_group, "cluster": arm.cluster})
    clock = {"now": NOW}
    ctx = Context(settings=settings, store=SqliteStore(tmp_path / f"s-{uuid.uuid4().hex[:6]}.sqlite3"),
                  clock=lambda: clock["now"])
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=1,
                   retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url)
    ctx.factories["scale"] = lambda c: build_scale(c, pool=pool, cluster=cluster)
    try:
        async with asgi_client(ctx) as client:
            yield {"client": client, "arm": arm, "ctx": ctx, "clock": clock}
    finally:
        await drain_tasks()
        await pool.close()
        await cluster.close()
        await ctx.close()
        await arm.stop()


async def test_demand_starts_a_scale_run_that_grows_the_pool(setup: dict[str, Any]) -> None:
    client, arm = setup["client"], setup["arm"]
    r = await client.post("/api/v1/scale/demand", json={"user": "alice", "profile": "gpu-t4"}, headers=HUB)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["recorded"] == "alice~" and body["run_id"]
    await drain_tasks()
    run = (await client.get(f"/api/v1/runs/{body['run_id']}", headers=READER)).json()
    assert run["outcome"] == "applied" and run["trigger"] == "demand", run
    assert arm.pools["gpu"]["count"] == 1
    # the same demand again: recorded once, the pool is already big enough
    r = await client.post("/api/v1/scale/demand", json={"user": "alice", "profile": "gpu-t4"}, headers=HUB)
    await drain_tasks()
    assert arm.pools["gpu"]["count"] == 1
    assert len([c for c in arm.calls if c.method == "PUT"]) == 1


async def test_demand_with_scale_off_is_recorded_but_starts_no_run(setup: dict[str, Any]) -> None:
    """``scale.enabled`` off: nothing scales on its own, not even on a demand; an admin's manual
    run still counts the recorded demand."""
    client, arm, ctx = setup["client"], setup["arm"], setup["ctx"]
    ctx.settings = ctx.settings.model_copy(update={"scale": ctx.settings.scale.model_copy(update={"enabled": False})})
    r = await client.post("/api/v1/scale/demand", json={"user": "alice", "profile": "gpu-t4"}, headers=HUB)
    assert r.status_code == 202, r.text
    assert r.json()["recorded"] == "alice~" and r.json()["run_id"] is None
    assert "scale.enabled" in r.json()["detail"]
    await drain_tasks()
    assert not [c for c in arm.calls if c.method == "PUT"] and arm.pools["gpu"]["count"] == 0
    r = await client.post("/api/v1/scale?wait=30", headers=ADMIN)
    assert r.status_code == 200 and r.json()["outcome"] == "applied", r.text
    assert arm.pools["gpu"]["count"] == 1


async def test_demand_needs_the_hub_role_and_a_valid_body(setup: dict[str, Any]) -> None:
    client = setup["client"]
    assert (await client.post("/api/v1/scale/demand", json={"user": "a"})).status_code == 401
    assert (await client.post("/api/v1/scale/demand", json={"user": "a"}, headers=READER)).status_code == 403
    for bad in ({}, {"user": ""}, {"user": "a/b"}, {"user": "a", "extra": 1}):
        r = await client.post("/api/v1/scale/demand", json=bad, headers=HUB)
        assert r.status_code == 422, (bad, r.text)
    assert not setup["arm"].writes()


async def test_cost_report_for_readers(setup: dict[str, Any]) -> None:
    client, clock = setup["client"], setup["clock"]
    await client.post("/api/v1/scale/demand", json={"user": "bob"}, headers=HUB)
    await drain_tasks()
    clock["now"] = NOW + timedelta(hours=3)
    assert (await client.get("/api/v1/cost", headers=HUB)).status_code == 403
    r = await client.get("/api/v1/cost?days=2", headers=READER)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["currency"] == "EUR" and [d["date"] for d in rep["days"]] == ["2026-03-01", "2026-03-02"]
    today = rep["days"][1]
    assert today["node_hours"] == pytest.approx(3.0, abs=0.01) and today["cost"] == pytest.approx(6.0, abs=0.05)
    assert today["peak_nodes"] == 1 and rep["total"]["always_on_node_hours"] == pytest.approx(3.0, abs=0.01)
    assert (await client.get("/api/v1/cost?days=0", headers=READER)).status_code == 422


async def test_cost_days_are_cut_in_the_configured_timezone(setup: dict[str, Any]) -> None:
    """scale.timezone Pacific/Honolulu (UTC-10): the run at 09:00 UTC is 23:00 on 1 March there, so
    the node's first hour belongs to the 1st and today (the 2nd, local) is two hours old."""
    client, clock, ctx = setup["client"], setup["clock"], setup["ctx"]
    ctx.settings = ctx.settings.model_copy(update={"scale": ctx.settings.scale.model_copy(
        update={"timezone": "Pacific/Honolulu"})})
    await client.post("/api/v1/scale/demand", json={"user": "dan"}, headers=HUB)
    await drain_tasks()
    clock["now"] = NOW + timedelta(hours=3)  # 02:00 on 2 March in Honolulu
    rep = (await client.get("/api/v1/cost?days=2", headers=READER)).json()
    assert rep["timezone"] == "Pacific/Honolulu"
    assert [(d["date"], d["partial"]) for d in rep["days"]] == [("2026-03-01", False), ("2026-03-02", True)]
    assert [d["node_hours"] for d in rep["days"]] == pytest.approx([1.0, 2.0], abs=0.01)
    assert rep["total"]["unobserved_hours"] == pytest.approx(3.0, abs=0.01)  # no timer ran since
    for bad in ("1.5", "abc", "367", "-3"):
        r = await client.get(f"/api/v1/cost?days={bad}", headers=READER)
        assert r.status_code == 422 and "days" in r.text, (bad, r.text)


async def test_cli_cost_report_function(setup: dict[str, Any]) -> None:
    import io
    import json

    from hubpilot.wiring.scale import cost_report

    client, clock, ctx = setup["client"], setup["clock"], setup["ctx"]
    await client.post("/api/v1/scale/demand", json={"user": "carol"}, headers=HUB)
    await drain_tasks()
    clock["now"] = NOW + timedelta(hours=1)
    text, js = io.StringIO(), io.StringIO()
    assert await cost_report(ctx, days=1, out=text) == 0
    assert "2026-03-02" in text.getvalue() and "EUR" in text.getvalue()
    assert await cost_report(ctx, days=1, as_json=True, out=js) == 0
    assert json.loads(js.getvalue())["total"]["cost"] == pytest.approx(2.0, abs=0.05)
    assert await cost_report(ctx, days=0, out=io.StringIO()) == 2


async def test_demand_during_a_run_starts_one_follow_up_when_the_lock_is_free(setup: dict[str, Any]) -> None:
    import asyncio

    from hubpilot.api.scale_routes import drain_follow_ups

    client, arm, ctx = setup["client"], setup["arm"], setup["ctx"]
    lease = await ctx.store.acquire_lock("scale", "another-run", timedelta(minutes=5), ctx.clock())
    assert lease is not None
    for user in ("dana", "eric"):
        r = await client.post("/api/v1/scale/demand", json={"user": user}, headers=HUB)
        assert r.status_code == 202 and r.json()["run_id"] is None
        assert "follow-up" in r.json()["detail"]
    assert not arm.writes()
    await ctx.store.release_lock(lease)
    await asyncio.wait_for(arm.write_event.wait(), 10)
    await drain_follow_ups()
    await drain_tasks()
    assert arm.pools["gpu"]["count"] == 2  # both demands, one run
    assert len([c for c in arm.calls if c.method == "PUT"]) == 1


async def test_a_gpu_spawn_the_hub_resolved_from_a_profile_option_is_not_dropped(setup: dict[str, Any]) -> None:
    """The hub's pre-spawn part resolves a GPU spawn fully (a ``profile_options`` choice, an
    ``unlisted_choice``, a profile whose override asks for the GPU) and sends the profile's slug,
    which need not be one of ``scale.gpu_profiles`` (the names for the hub's pending spawns): the
    signal is the hub's word that a GPU server is starting, and it grows the pool."""
    client, arm, ctx = setup["client"], setup["arm"], setup["ctx"]
    ctx.settings = ctx.settings.model_copy(update={"scale": ctx.settings.scale.model_copy(
        update={"gpu_profiles": ["gpu-t4"]})})
    r = await client.post("/api/v1/scale/demand", json={"user": "alice", "profile": "ml"}, headers=HUB)
    assert r.status_code == 202, r.text
    assert r.json()["recorded"] == "alice~" and r.json()["run_id"], r.json()
    await drain_tasks()
    assert arm.pools["gpu"]["count"] == 1


async def test_a_follow_up_that_stops_waiting_says_so_once(setup: dict[str, Any],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A run that holds the lock longer than the follow-up waits (scale.lro_wait_seconds + 60 s, on
    hubpilot's clock, which also tells the lock's expiry): the follow-up stops waiting and says so in
    one warning (the demands count in the next timer run), instead of leaving them without a word."""
    import logging

    from hubpilot.api.scale_routes import drain_follow_ups

    client, arm, ctx, clock = setup["client"], setup["arm"], setup["ctx"], setup["clock"]
    ctx.settings = ctx.settings.model_copy(update={"scale": ctx.settings.scale.model_copy(
        update={"lro_wait_seconds": 0.0})})
    lease = await ctx.store.acquire_lock("scale", "another-run", timedelta(minutes=5), ctx.clock())
    assert lease is not None
    with caplog.at_level(logging.WARNING, logger="hubpilot.api.scale_routes"):
        for user in ("dana", "eric"):
            r = await client.post("/api/v1/scale/demand", json={"user": user}, headers=HUB)
            assert r.status_code == 202 and "follow-up" in r.json()["detail"], r.text
        clock["now"] = NOW + timedelta(seconds=61)  # the other run still holds the lock (5 min)
        await asyncio.wait_for(drain_follow_ups(), 30)
    gave_up = [rec for rec in caplog.records if rec.name == "hubpilot.api.scale_routes"]
    assert len(gave_up) == 1 and gave_up[0].levelno == logging.WARNING, caplog.text
    assert "next" in gave_up[0].getMessage() and "60" in gave_up[0].getMessage(), gave_up[0].getMessage()
    assert not arm.writes()
    await ctx.store.release_lock(lease)


async def test_a_demand_covered_by_a_waiting_follow_up_gets_its_full_wait(setup: dict[str, Any]) -> None:
    """Several demands while one run holds the lock: one follow-up serves them all, and it waits for
    the lock as long as the last of them was told (not only as long as the first one's wait had left),
    then starts one run that counts every demand."""
    from hubpilot.api.scale_routes import FOLLOW_UP_POLL_SECONDS, drain_follow_ups

    client, arm, ctx, clock = setup["client"], setup["arm"], setup["ctx"], setup["clock"]
    ctx.settings = ctx.settings.model_copy(update={"scale": ctx.settings.scale.model_copy(
        update={"lro_wait_seconds": 0.0})})
    lease = await ctx.store.acquire_lock("scale", "another-run", timedelta(minutes=5), ctx.clock())
    assert lease is not None
    r = await client.post("/api/v1/scale/demand", json={"user": "dana"}, headers=HUB)
    assert r.status_code == 202 and "follow-up" in r.json()["detail"], r.text
    await asyncio.sleep(FOLLOW_UP_POLL_SECONDS * 2)  # the follow-up is waiting
    clock["now"] = NOW + timedelta(seconds=50)
    r = await client.post("/api/v1/scale/demand", json={"user": "eric"}, headers=HUB)
    assert r.status_code == 202 and "follow-up" in r.json()["detail"], r.text
    clock["now"] = NOW + timedelta(seconds=70)  # past the first demand's wait, within the second's
    await asyncio.sleep(FOLLOW_UP_POLL_SECONDS * 5)  # a few looks at the lock
    await ctx.store.release_lock(lease)
    await asyncio.wait_for(arm.write_event.wait(), 10)
    await drain_follow_ups()
    await drain_tasks()
    assert arm.pools["gpu"]["count"] == 2  # both demands, one run
    assert len([c for c in arm.calls if c.method == "PUT"]) == 1


async def test_a_follow_up_waiting_at_shutdown_starts_no_run_once_serve_has_stopped(setup: dict[str, Any]) -> None:
    """``hubpilot serve`` stopped (SIGTERM) while a demand's follow-up waits for another run's lock:
    shutdown starts no new run (as no new scheduled round), so the follow-up is given up (its demands
    are recorded and count in the next scale run), instead of starting a scale run once the lock is
    free, after the server has stopped and its state store is closed."""
    import httpx

    from hubpilot.api.scale_routes import FOLLOW_UP_POLL_SECONDS
    from hubpilot.serve import Server

    arm, ctx = setup["arm"], setup["ctx"]
    lease = await ctx.store.acquire_lock("scale", "another-run", timedelta(minutes=5), ctx.clock())
    assert lease is not None
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    task = asyncio.create_task(server.run())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
        r = await http.post("/api/v1/scale/demand", json={"user": "dana"}, headers=HUB)
    assert r.status_code == 202 and "follow-up" in r.json()["detail"], r.text
    await asyncio.sleep(FOLLOW_UP_POLL_SECONDS * 2)  # the follow-up is waiting
    server.stop()  # what SIGTERM does
    await asyncio.wait_for(task, 30)
    await ctx.store.release_lock(lease)  # the other run ends after serve has stopped
    await asyncio.sleep(FOLLOW_UP_POLL_SECONDS * 5)  # a few looks at the lock, had the follow-up lived on
    await drain_tasks()
    assert not arm.writes(), "a scale run started after serve had stopped"
    entries, _ = await ctx.store.read_audit(operation="scale")
    assert entries == [], entries
    assert await ctx.store.get("scale/demand/dana~") is not None, "the demand was lost"


class _StoreThatPausesAfterReserving(SqliteStore):
    """The real store; its write of the scale run's reservation (``pending/scale``) is done, then
    waits for ``go``: the moment a shutdown's cancellation can reach a follow-up inside
    ``start_run`` (a store write runs in a thread, awaited)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reserved = asyncio.Event()
        self.go = asyncio.Event()

    async def put(self, key: str, doc: Any, *, if_match: str | None = None) -> str:
        etag = await super().put(key, doc, if_match=if_match)
        if key == "pending/scale" and not self.reserved.is_set():
            self.reserved.set()
            await self.go.wait()
        return etag


async def test_a_follow_up_stopped_while_starting_its_run_leaves_no_reservation_behind(
        setup: dict[str, Any], tmp_path: Path) -> None:
    """Shutdown gives up the waiting follow-up by cancelling it; it reached it just as the lock was
    free and the follow-up was starting its run, after the run's reservation was written: the
    reservation stayed, and with no run to take it, every scale run started over HTTP or by a demand
    (the next ``hubpilot serve`` too, the store is shared) was refused as if a run held the lock,
    and GET /status showed that lock, until the reservation expired (the lock's 10 minutes)."""
    from hubpilot.api.runs import reservation
    from hubpilot.api.scale_routes import stop_follow_up

    base = setup["ctx"]
    store = _StoreThatPausesAfterReserving(tmp_path / "pausing.sqlite3")
    ctx = Context(settings=base.settings, store=store, clock=base.clock)
    ctx.factories["scale"] = base.factories["scale"]
    try:
        lease = await store.acquire_lock("scale", "another-run", timedelta(minutes=5), ctx.clock())
        assert lease is not None
        async with asgi_client(ctx) as client:
            r = await client.post("/api/v1/scale/demand", json={"user": "dana"}, headers=HUB)
        assert r.status_code == 202 and "follow-up" in r.json()["detail"], r.text
        await store.release_lock(lease)  # the other run ends: the follow-up starts its run
        await asyncio.wait_for(store.reserved.wait(), 30)  # a bound for the test only
        stopping = asyncio.create_task(stop_follow_up(ctx))  # what serve's shutdown does
        for _ in range(5):
            await asyncio.sleep(0)  # the cancellation reaches the follow-up
        store.go.set()
        await asyncio.wait_for(stopping, 30)
        await drain_tasks()
        assert await reservation(ctx, "scale", ctx.clock()) is None, "a reservation with no run stays"
        assert await store.read_lock("scale", ctx.clock()) is None
    finally:
        await drain_tasks()
        await ctx.close()
