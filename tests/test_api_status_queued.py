"""Review: ``GET /api/v1/status`` while a run started over HTTP waits on the run queue
(``api.run_mode = "queue"``, the Functions app). Until the queue function takes the operation's
lock, the run holds the operation's reservation (``pending/{op}``): a second ``POST`` answers 409
"a run is in progress" naming it, but status showed ``lock: null``, as if the operation were free.

The real app, Runner and SQLite state store, and a real Azurite run queue (nothing consumes it:
the queue function is not running)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.queue.aio import QueueClient

from hubpilot.api.runs import QUEUE_NAME, drain_tasks
from hubpilot.wiring import Context
from tests.azurite import Azurite
from tests.test_api_kit import asgi_client, auth, make_context, make_settings

ADMIN = auth("admin")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def ctx(azurite: Azurite, tmp_path: Path) -> AsyncIterator[Context]:
    ctx, _ = make_context(tmp_path, make_settings(run_mode="queue",
                                                  queue_connection_string=azurite.connection_string))
    try:
        yield ctx
    finally:
        await drain_tasks()
        await ctx.close()
        async with QueueClient.from_connection_string(azurite.connection_string, QUEUE_NAME) as q:
            await q.clear_messages()  # the request left for a queue function nobody runs here


def _op(status: dict, name: str) -> dict:
    return next(o for o in status["operations"] if o["operation"] == name)


@pytest.mark.azurite
async def test_status_shows_the_reservation_of_a_queued_run_as_its_lock(ctx: Context) -> None:
    async with asgi_client(ctx) as c:
        r = await c.post("/api/v1/sync", headers=ADMIN)
        assert r.status_code == 202 and r.json()["outcome"] == "queued", r.text
        run_id = r.json()["run_id"]

        again = await c.post("/api/v1/sync", headers=ADMIN)
        assert again.status_code == 409, again.text
        refused = again.json()

        status = (await c.get("/api/v1/status", headers=ADMIN)).json()
        lock = _op(status, "sync")["lock"]
        assert lock is not None, "status says the operation is free while POST answers 409"
        assert lock["holder"] == refused["holder"] and run_id in lock["holder"]
        assert datetime.fromisoformat(lock["expires_at"]) == datetime.fromisoformat(refused["expires_at"])
        assert _op(status, "cull")["lock"] is None  # the other operations stay free


@pytest.mark.azurite
async def test_cli_status_shows_the_same_reservation_as_the_api(ctx: Context, tmp_path: Path) -> None:
    """``hubpilot status`` on the same state store said the operation was free (no lock) while
    ``GET /status`` and a second POST named the queued run that holds it."""
    async with asgi_client(ctx) as c:
        r = await c.post("/api/v1/sync", headers=ADMIN)
        assert r.status_code == 202 and r.json()["outcome"] == "queued", r.text
        api = _op((await c.get("/api/v1/status", headers=ADMIN)).json(), "sync")["lock"]
    assert api is not None
    config = tmp_path / "cli.toml"
    config.write_text('[hub]\napi_url = "http://127.0.0.1:9/hub/api"\ntoken = "t"\n'
                      f'[state]\nsqlite_path = "{Path(ctx.store.path).as_posix()}"\n')  # type: ignore[attr-defined]

    async def status(*extra: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBPILOT_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hubpilot.cli", "--config", str(config), "status", *extra, cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    cli = json.loads(await status("--json"))
    assert cli["sync"]["lock"] == api, "the CLI's status differs from the API's"
    assert cli["cull"]["lock"] is None
    assert f"locked by {api['holder']}" in await status()


@pytest.mark.azurite
async def test_a_reservation_whose_until_has_no_offset_is_utc(ctx: Context) -> None:
    """A reservation's ``until`` is read as every stored time: without an offset it is UTC. One
    still held refuses a second POST (409 naming its holder) and shows in status; an expired one
    is replaced by the next POST (202). A naive ``until`` made every POST of the operation and the
    status fail (naive compared with aware)."""
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    ctx.clock = lambda: now
    held = (now + timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    await ctx.store.put("pending/sync", {"run_id": "r1", "holder": "admin:r1", "until": held})
    gone = (now - timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    await ctx.store.put("pending/cull", {"run_id": "r2", "holder": "admin:r2", "until": gone})
    async with asgi_client(ctx) as c:
        r = await c.post("/api/v1/sync", headers=ADMIN)
        assert r.status_code == 409 and r.json()["holder"] == "admin:r1", r.text
        status = await c.get("/api/v1/status", headers=ADMIN)
        assert status.status_code == 200, status.text
        assert _op(status.json(), "sync")["lock"]["holder"] == "admin:r1"
        assert _op(status.json(), "cull")["lock"] is None
        r = await c.post("/api/v1/cull", headers=ADMIN)
        assert r.status_code == 202 and r.json()["outcome"] == "queued", r.text
