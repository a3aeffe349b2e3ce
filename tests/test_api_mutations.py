"""Mutation review of the admin API (app, runs, scheduling): behaviour the other API tests did not hold.

Each test here kills a change to hubpilot/api that no test failed for (a bound not applied, a
parameter read the wrong way, a boundary moved). The API goes through the ASGI app over the real
Runner and SQLite store with the test capability of :mod:`tests.test_api_kit`, as the other API tests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hubpilot.api.runs import drain_tasks
from tests.test_api_kit import asgi_client, auth, make_context, make_settings

ADMIN, READER = auth("admin"), auth("reader")


async def test_wait_is_bounded_by_api_wait_max_seconds(tmp_path: Path) -> None:
    """?wait= waits at most api.wait_max_seconds (the README: "?wait= bounded"): a run still applying
    then is answered 202 (running) at the bound, not after the ?wait the client asked for."""
    ctx, worlds = make_context(tmp_path, make_settings(wait_max_seconds=0.5))
    w = worlds["sync"]
    w.gate = asyncio.Event()
    try:
        async with asgi_client(ctx) as client:
            began = time.monotonic()
            r = await client.post("/api/v1/sync?wait=20", headers=ADMIN)
            took = time.monotonic() - began
            assert r.status_code == 202, r.text
            assert r.json()["outcome"] == "running"
            assert took < 10, f"the answer came after {took:.1f}s: ?wait was not bounded"
    finally:
        w.gate.set()
        await drain_tasks()
        await ctx.close()


async def test_dry_run_false_runs_and_other_true_spellings_only_plan(tmp_path: Path) -> None:
    """?dry_run=false is a run (202, it applies); ?dry_run=1 and =yes are dry-runs (200, nothing applied)."""
    ctx, worlds = make_context(tmp_path)
    try:
        async with asgi_client(ctx) as client:
            for spelling in ("1", "yes", "on", "True"):
                r = await client.post(f"/api/v1/cull?dry_run={spelling}", headers=ADMIN)
                assert r.status_code == 200, (spelling, r.text)
                assert r.json()["dry_run"] is True and r.json()["outcome"] == "planned"
            assert worlds["cull"].applies == 0 and worlds["cull"].items == set()
            r = await client.post("/api/v1/cull?dry_run=false&wait=30", headers=ADMIN)
            assert r.status_code == 200, r.text
            assert r.json()["dry_run"] is False and r.json()["outcome"] == "applied"
            assert worlds["cull"].items == {"cull-a", "cull-b"}
    finally:
        await drain_tasks()
        await ctx.close()
