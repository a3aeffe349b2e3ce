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


@pytest.mark.parametrize("headers, body, says", [
    ({"Content-Type": "application/json"}, b'{"user": "ana"', "not valid JSON"),
    ({"Content-Type": "text/plain"}, b'{"user": "ana"}', "Content-Type: application/json"),
    ({}, b'{"user": "ana"}', "Content-Type: application/json"),
])
async def test_a_body_that_is_not_json_is_400_saying_so(tmp_path: Path, headers: dict[str, str], body: bytes,
                                                        says: str) -> None:
    """The OpenAPI document promises 400 for a body that is not JSON; the detail says what to fix."""
    ctx, worlds = make_context(tmp_path)
    try:
        async with asgi_client(ctx) as client:
            r = await client.post("/api/v1/scale/demand", headers={**HUB, **headers}, content=body)
            assert r.status_code == 400, r.text
            assert says in r.json()["detail"]
            doc = (await client.get("/api/v1/openapi.json", headers=READER)).json()
            assert "400" in doc["paths"]["/api/v1/scale/demand"]["post"]["responses"]
            assert worlds["scale"].applies == 0 and await ctx.store.read_audit() == ([], None)
    finally:
        await drain_tasks()
        await ctx.close()


async def test_json_of_the_wrong_shape_is_still_422_naming_the_field(tmp_path: Path) -> None:
    ctx, _ = make_context(tmp_path)
    try:
        async with asgi_client(ctx) as client:
            for body, loc in (([], ["body"]), ({"user": None}, ["body", "user"]),
                              ({"user": "a", "x": 1}, ["body", "x"])):
                r = await client.post("/api/v1/scale/demand", headers=HUB, json=body)
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
    finally:
        await ctx.close()
