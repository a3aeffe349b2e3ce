"""Review: ``POST /api/v1/scale/demand`` with a hub user or server name the state store cannot
hold as a key. JupyterHub accepts a '\\' in a user name (``Authenticator.validate_username``
refuses only '/', empty, '.'/'..' and surrounding spaces); the demand's key is built from it.
Azure refused that key (ValueError: a 500), SQLite stored it: the same signal behaved otherwise
on each store. Now both stores refuse such a key alike and the API answers 422 naming the field,
before anything is stored or started.

The real app and Runner, on the real SQLite store and on Azurite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubpilot.adapters.store_azure import AzureStore
from hubpilot.api.runs import drain_tasks
from hubpilot.wiring import Context
from tests.azurite import Azurite
from tests.test_api_kit import asgi_client, auth, make_context
from tests.test_store import azure_store

HUB = auth("hub")


@pytest.fixture(params=["sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
async def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Context]:
    ctx, _ = make_context(tmp_path)
    if request.param == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        await ctx.store.close()
        ctx.store = azure_store(azurite)
        assert isinstance(ctx.store, AzureStore)
    try:
        yield ctx
    finally:
        await drain_tasks()
        await ctx.close()


@pytest.mark.parametrize("body", [{"user": "CORP\\ana", "profile": "gpu"},
                                  {"user": "ana", "server": "gpu\\1", "profile": "gpu"}])
async def test_a_name_no_store_can_hold_is_422_on_every_store(ctx: Context, body: dict[str, str]) -> None:
    field = "server" if "server" in body else "user"
    async with asgi_client(ctx) as c:
        r = await c.post("/api/v1/scale/demand", headers=HUB, json=body)
        assert r.status_code == 422, (r.status_code, r.text)
        assert f"body.{field}" in r.json()["message"]
        assert await ctx.store.list("scale/demand/") == {}
        assert await ctx.store.list("runs/") == {}, "no scale run was started for it"

        ok = await c.post("/api/v1/scale/demand", headers=HUB, json={"user": "ana.b@corp", "profile": "gpu"})
        assert ok.status_code == 202, ok.text
        assert list(await ctx.store.list("scale/demand/")) == ["scale/demand/ana.b@corp~"]
