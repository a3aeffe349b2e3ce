"""Review: a run started over HTTP with ``api.run_mode = "queue"`` whose run request cannot be put
on the ``hubpilot-runs`` queue (the identity lacks its Storage role, a wrong key, an outage).

The real app, Runner and SQLite state store, and a real Azurite that refuses the queue's
credentials, through the ASGI app and through the Functions entry point."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import azure.functions as func
import pytest

import function_app
import functions
from hubpilot.api.runs import drain_tasks
from hubpilot.wiring import Context
from tests.azurite import Azurite
from tests.test_api_kit import asgi_client, auth, make_context, make_settings
from tests.test_functions import functions_by_name

ADMIN, HUB = auth("admin"), auth("hub")


@pytest.fixture
async def ctx(azurite: Azurite, tmp_path: Path) -> AsyncIterator[Context]:
    refused = azurite.connection_string.replace(azurite.account_key, base64.b64encode(b"k" * 64).decode())
    ctx, _ = make_context(tmp_path, make_settings(run_mode="queue", queue_connection_string=refused))
    try:
        yield ctx
    finally:
        await drain_tasks()
        await ctx.close()


async def _queued(ctx: Context) -> list[str]:
    return [k for k, doc in (await ctx.store.list("runs/")).items() if doc.get("outcome") == "queued"]


@pytest.mark.azurite
async def test_a_run_that_cannot_be_queued_is_503_saying_so_and_leaves_no_queued_run(ctx: Context) -> None:
    async with asgi_client(ctx) as c:
        for _ in range(2):  # the reservation is released: the second POST is refused alike, not 409
            r = await c.post("/api/v1/sync", headers=ADMIN)
            assert r.status_code == 503, (r.status_code, r.text)
            assert r.headers["cache-control"] == "no-store"
            detail = r.json()["detail"]
            assert "hubpilot-runs" in detail and "AuthenticationFailed" in detail and "not started" in detail
            assert "AccountKey" not in r.text and "Eby8" not in r.text
        assert await _queued(ctx) == [], "a run nobody will run reads 'queued' for ever"
        assert (await c.get("/api/v1/status", headers=ADMIN)).json()["operations"][0]["last_run"] is None

        # the hub's demand is recorded all the same, and counts in the next timer run
        d = await c.post("/api/v1/scale/demand", headers=HUB, json={"user": "ana", "profile": "gpu"})
        assert d.status_code == 202, d.text
        assert d.json()["run_id"] is None and "next" in d.json()["detail"]
        assert "scale/demand/ana~" in await ctx.store.list("scale/demand/")
        assert await _queued(ctx) == []


@pytest.mark.azurite
async def test_the_functions_entry_point_answers_the_same(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    functions.set_context(ctx)
    monkeypatch.setattr(function_app.front, "_app", None)  # a cold start: the app is built for this context
    fn = functions_by_name()["admin_api"].get_user_function()
    try:
        req = func.HttpRequest("POST", "http://localhost/api/v1/cull", headers={**ADMIN, "content-length": "0"},
                               params={}, route_params={"route": "api/v1/cull"}, body=b"")
        resp: func.HttpResponse = await fn(req, None)  # the function must answer, not raise (host: bare 500)
        assert resp.status_code == 503
        assert "hubpilot-runs" in json.loads(resp.get_body())["detail"]
        assert resp.headers["cache-control"] == "no-store"
        assert await _queued(ctx) == []
    finally:
        functions.set_context(None)




async def test_a_queue_error_quoting_its_url_logs_no_shared_access_signature(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A queue connection string with a shared access signature puts it in every request's URL;
    the log line of a failed enqueue (an invalid endpoint quotes the URL) must not show it."""
    conn = ("QueueEndpoint=http://127.0.0.1:99999/devstoreaccount1;"
            "SharedAccessSignature=sv=2022-11-02&ss=q&srt=sco&sp=rwdlac&sig=Xq3vSECRETSIGNATURE%2Bk%3D")
    ctx, _ = make_context(tmp_path, make_settings(run_mode="queue", queue_connection_string=conn))
    try:
        async with asgi_client(ctx) as c:
            r = await c.post("/api/v1/sync", headers=ADMIN)
        assert r.status_code == 503, r.text
        assert "SECRETSIGNATURE" not in r.text
    finally:
        await drain_tasks()
        await ctx.close()
    assert "could not put sync run" in caplog.text
    assert "SECRETSIGNATURE" not in caplog.text, caplog.text
