"""Review: bad input to the admin API gets a clear error with the documented status."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubpilot.api.runs import drain_tasks
from tests.test_api_kit import asgi_client, auth, make_context, make_settings

ADMIN, READER, HUB = auth("admin"), auth("reader"), auth("hub")


async def test_docs_page_is_not_served_when_api_docs_is_off(tmp_path: Path) -> None:
    ctx, _ = make_context(tmp_path, make_settings(docs=False))
    try:
        async with asgi_client(ctx) as client:
            r = await client.get("/api/v1/docs", headers=READER)
            assert r.status_code == 404 and "api.docs" in r.json()["detail"]
            assert (await client.get("/api/v1/docs")).status_code == 401
            assert (await client.get("/api/v1/openapi.json", headers=READER)).status_code == 200
    finally:
        await ctx.close()
