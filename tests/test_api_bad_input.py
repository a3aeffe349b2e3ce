"""Review: bad input to the admin API gets a clear error with the documented status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


async def test_an_oversized_body_is_413_before_it_is_read_or_parsed(tmp_path: Path) -> None:
    """The Graph webhooks are anonymous: a huge body must not be read into memory and parsed."""
    ctx, _ = make_context(tmp_path)
    big = b'{"value": [' + b" " * (5 << 20) + b"]}"  # 5 MiB, above the 4 MiB limit

    async def chunks():  # no Content-Length: the limit must hold for a streamed body too
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    try:
        async with asgi_client(ctx) as client:
            for path, headers in (("/api/v1/graph/notifications", {}), ("/api/v1/scale/demand", HUB)):
                r = await client.post(path, headers={**headers, "Content-Type": "application/json"}, content=big)
                assert r.status_code == 413 and "larger than" in r.json()["detail"], (path, r.status_code)
                r = await client.post(path, headers={**headers, "Content-Type": "application/json"},
                                      content=chunks())
                assert r.status_code == 413 and "larger than" in r.json()["detail"], (path, r.status_code)
            ok = await client.post("/api/v1/scale/demand", headers=HUB, json={"user": "ana"})
            assert ok.status_code == 202, ok.text
            doc = (await client.get("/api/v1/openapi.json", headers=READER)).json()
            assert all("413" in doc["paths"][p]["post"]["responses"]
                       for p in ("/api/v1/scale/demand", "/api/v1/graph/notifications", "/api/v1/graph/lifecycle"))
    finally:
        await drain_tasks()
        await ctx.close()


async def test_a_stale_run_releases_only_its_own_reservation(tmp_path: Path) -> None:
    """A run whose reservation expired and was taken by a newer POST must not delete the newer one
    when it ends (a read, then an unconditional delete, did): the newer run keeps its 409 guard."""
    from datetime import UTC, datetime, timedelta

    from hubpilot.api.runs import PENDING_KEY, RunRequest, _release, _reserve

    ctx, _ = make_context(tmp_path)
    clock = {"now": datetime(2026, 11, 26, 9, 0, tzinfo=UTC)}
    ctx.clock = lambda: clock["now"]
    try:
        old, new = RunRequest("a" * 32, "sync", "api", "ann"), RunRequest("b" * 32, "sync", "api", "bo")
        await _reserve(ctx, old)
        clock["now"] += ctx.runner.lock_ttl + timedelta(seconds=1)  # old's reservation has expired
        key = PENDING_KEY.format(operation="sync")
        stale = await ctx.store.get_with_etag(key)
        assert stale is not None and stale[0]["run_id"] == old.run_id
        await _reserve(ctx, new)  # the newer POST takes the operation

        class Interleaved:
            """old's release read its reservation before new's write landed (the race)."""
            def __init__(self, store: Any) -> None:
                self.store, self.first = store, True

            async def get_with_etag(self, k: str) -> Any:
                if self.first:
                    self.first = False
                    return stale
                return await self.store.get_with_etag(k)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.store, name)

        real = ctx.store
        ctx.store = Interleaved(real)  # type: ignore[assignment]
        await _release(ctx, old)
        ctx.store = real
        held = await ctx.store.get(key)
        assert held is not None and held["run_id"] == new.run_id, "the newer run's reservation was deleted"
    finally:
        await ctx.close()
