"""Review: the admin app bounds every request body itself, whatever the host in front of it.

``hubpilot serve`` (uvicorn) sets no body limit, and the Functions host accepts about 100 MB; the
app's own limit answered 413 for a declared (Content-Length) body on every route, but a streamed
(chunked) body only on the routes that read theirs: ``POST /sync`` with a 5 MiB chunked body
started a sync, ``POST /operations/cull/pause`` paused. Every POST now answers a body above the
limit with 413, without reading more of it than the limit, and nothing is run or recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest

import functions
from hubpilot.api.app import MAX_BODY_BYTES, create_app
from hubpilot.api.runs import drain_tasks
from hubpilot.wiring import OPERATIONS
from tests.test_api_kit import World, asgi_client, auth, make_context, serve_client
from tests.test_functions import functions_by_name

CHUNK = 1 << 20
TOTAL = MAX_BODY_BYTES + 4 * CHUNK


def _posts() -> list[str]:
    doc = create_app(lambda: None).openapi()  # type: ignore[arg-type, return-value]  # the routes only
    paths = [p for p, ops in doc["paths"].items() if "post" in ops]
    assert len(paths) >= 9, paths
    return [p.replace("{operation}", "cull").replace("{plan_id}", "0123456789abcdef") for p in paths]


def _headers(path: str) -> dict[str, str]:
    return {**auth("hub" if path.endswith("/demand") else "admin"), "Content-Type": "application/json"}


@pytest.mark.parametrize("path", _posts())
@pytest.mark.parametrize("host", ["asgi", "serve"])
@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_every_post_answers_an_oversized_body_413_without_reading_it(tmp_path: Path, path: str, host: str,
                                                                           streamed: bool) -> None:
    worlds = {op: World(desired={f"{op}-a"}) for op in OPERATIONS}
    ctx, _ = make_context(tmp_path, worlds=worlds)
    chunks_sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        for _ in range(TOTAL // CHUNK):
            chunks_sent += 1
            yield b" " * CHUNK

    opener = asgi_client if host == "asgi" else serve_client
    try:
        async with opener(ctx) as client:
            try:
                r = await client.post(path, headers=_headers(path), content=body() if streamed else b" " * TOTAL)
            except httpx.WriteError:  # the server answered and closed while the client still sent
                r = None
            await drain_tasks()
            if r is not None:
                assert r.status_code == 413, (path, r.status_code, r.text)
                assert f"larger than {MAX_BODY_BYTES} bytes" in r.json()["detail"], r.text
            assert (await ctx.store.read_audit()) == ([], None), path
            assert all(w.applies == 0 for w in worlds.values()), path
            assert not await ctx.runner.is_paused("cull")
    finally:
        await drain_tasks()
        await ctx.close()
    if streamed and host == "asgi":
        assert chunks_sent <= MAX_BODY_BYTES // CHUNK + 2, chunks_sent  # stopped at the limit


@pytest.mark.parametrize("path", _posts())
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
async def test_under_the_functions_host_too(tmp_path: Path, path: str, declared: bool) -> None:
    """The Functions host hands the app the whole body in one message, with or without its length."""
    worlds = {op: World(desired={f"{op}-a"}) for op in OPERATIONS}
    ctx, _ = make_context(tmp_path, worlds=worlds)
    functions.set_context(ctx)
    try:
        fn = functions_by_name()["admin_api"].get_user_function()
        headers = {**_headers(path), **({"Content-Length": str(TOTAL)} if declared else {})}
        req = func.HttpRequest("POST", f"http://localhost{path}", headers=headers, body=b" " * TOTAL,
                               route_params={"route": path.lstrip("/")})
        r: func.HttpResponse = await fn(req, None)
        await drain_tasks()
        assert r.status_code == 413, (path, r.status_code, r.get_body()[:200])
        assert f"larger than {MAX_BODY_BYTES} bytes".encode() in r.get_body()
        assert (await ctx.store.read_audit()) == ([], None), path
        assert all(w.applies == 0 for w in worlds.values()), path
    finally:
        functions.set_context(None)
        await drain_tasks()
        await ctx.close()
