"""``hubpilot serve`` after SIGTERM while uvicorn still answers the requests under way: what a
demand's follow-up scale run does then (a real server on a loopback port, the test API's context)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hubpilot.api.runs import drain_tasks
from hubpilot.api.scale_routes import FOLLOW_UP_POLL_SECONDS, stop_follow_up, stop_taking_follow_ups
from hubpilot.serve import Server
from tests.test_api_kit import TOKENS, asgi_client, make_context
from tests.test_serve import _until

ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}
HUB = {"Authorization": f"Bearer {TOKENS['hub']}"}


async def test_a_follow_up_waiting_for_the_lock_starts_no_run_once_shutdown_began(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A demand came while another process (the CLI) held the scale lock: a follow-up waits for it.
    SIGTERM comes while uvicorn still waits to answer a client (POST /api/v1/sync?wait=...), and the
    lock is freed meanwhile: the follow-up starts no scale run after the signal (its demand is
    recorded and counts in the next scale run), and nothing of it (lock, reservation) is left behind."""
    caplog.set_level("INFO", logger="hubpilot.api.scale_routes")
    ctx, worlds = make_context(tmp_path)
    worlds["sync"].gate = asyncio.Event()  # the run started over HTTP applies until the test opens it
    lease = await ctx.store.acquire_lock("scale", "hubpilot-cli", timedelta(minutes=5), datetime.now(UTC))
    assert lease is not None
    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    task = asyncio.create_task(server.run())
    try:
        await _until(lambda: server.started, "the server listens")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
            r = await client.post("/api/v1/scale/demand", json={"user": "dana"}, headers=HUB)
            assert r.status_code == 202 and "follow-up" in r.json()["detail"], r.text
            post = asyncio.create_task(client.post("/api/v1/sync", params={"wait": 20}, headers=ADMIN))
            await asyncio.wait_for(worlds["sync"].entered.wait(), 10)  # the client waits for its run
            server.stop()  # what SIGTERM does
            await asyncio.sleep(0.3)
            assert not task.done()  # uvicorn waits for that answer
            await ctx.store.release_lock(lease)  # the CLI's run ends
            await asyncio.sleep(FOLLOW_UP_POLL_SECONDS * 5)  # the follow-up looks at the lock
            worlds["sync"].gate.set()
            assert (await asyncio.wait_for(post, 10)).status_code == 200
        await asyncio.wait_for(task, 10)
    finally:
        worlds["sync"].gate.set()
        server.stop()
        await asyncio.wait_for(task, 10)
    entries, _ = await ctx.store.read_audit(operation="scale")
    assert entries == [], f"a scale run started after SIGTERM: {entries}"
    assert worlds["scale"].applies == 0
    assert "follow-up scale run that waited for the lock is not started" in caplog.text, caplog.text
    assert await ctx.store.acquire_lock("scale", "next", timedelta(minutes=1), datetime.now(UTC)) is not None
    await ctx.close()


async def test_a_demand_answered_after_the_signal_is_promised_no_follow_up(tmp_path: Path) -> None:
    """A demand still answered after the signal while a scale run holds the lock: it is recorded and
    told that it counts in the next run, not promised a follow-up that shutdown will not start; once
    the shutdown is over, a context used on takes follow-ups again, also after a shutdown that gave
    up a follow-up before it ever ran (none left behind that would seem to cover later demands)."""
    ctx, worlds = make_context(tmp_path)
    lease = await ctx.store.acquire_lock("scale", "hubpilot-cli", timedelta(minutes=5), ctx.clock())
    assert lease is not None
    async with asgi_client(ctx) as client:
        stop_taking_follow_ups(ctx)  # what serve's stop() does at the signal
        r = await client.post("/api/v1/scale/demand", json={"user": "dana"}, headers=HUB)
        assert r.status_code == 202 and r.json()["recorded"] == "dana~", r.text
        assert r.json()["detail"] == "a scale run is in progress; the demand counts in the next run", r.text
        await stop_follow_up(ctx)  # serve's shutdown ends
        r = await client.post("/api/v1/scale/demand", json={"user": "eric"}, headers=HUB)
        assert "a follow-up run starts when it ends" in r.json()["detail"], r.text
        await stop_follow_up(ctx)  # a second shutdown, before that follow-up even looked at the lock
        r = await client.post("/api/v1/scale/demand", json={"user": "fay"}, headers=HUB)
        assert "a follow-up run starts when it ends" in r.json()["detail"], r.text
        await ctx.store.release_lock(lease)
        await _until(lambda: worlds["scale"].applies == 1, "the follow-up run for fay's demand applies")
        await drain_tasks()
    entries, _ = await ctx.store.read_audit(operation="scale")
    assert [(e["trigger"], e["outcome"]) for e in entries] == [("demand", "applied")]
    await ctx.close()
