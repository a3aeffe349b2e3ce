"""Review (security): what the admin API's answers tell browsers and caches, and what a page of
another site can make a signed-in admin's browser do.

Through the ASGI app, through ``hubpilot serve`` and through the Functions entry point called
directly; the real app, the real Runner and a SQLite state store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest

import function_app
import functions
from hubpilot.api.app import MAX_BODY_BYTES
from hubpilot.api.runs import drain_tasks
from hubpilot.wiring import Context
from tests.test_api_kit import (
    World,
    asgi_client,
    auth,
    make_context,
    make_settings,
    principal_header,
    serve_client,
)
from tests.test_functions import functions_by_name

ADMIN, READER = auth("admin"), auth("reader")

SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _assert_secure(r: httpx.Response | func.HttpResponse, what: str) -> None:
    headers = {k.lower(): v for k, v in r.headers.items()}
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (what, name, dict(headers))


@pytest.fixture(params=["asgi", "serve"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    ctx, _ = make_context(tmp_path)
    opener = asgi_client if request.param == "asgi" else serve_client
    try:
        async with opener(ctx) as c:
            yield c
    finally:
        await drain_tasks()
        await ctx.close()


async def test_authenticated_answers_and_errors_are_never_cached_sniffed_or_framed(
        client: httpx.AsyncClient) -> None:
    """Status, audit, runs and the docs page carry what the caller's credentials opened: a shared
    cache (a proxy, the browser's disk cache) must not keep them, and the docs page (whose "Try it
    out" posts with the signed-in session) must not be framed by another site."""
    answers = {
        "status": await client.get("/api/v1/status", headers=READER),
        "audit": await client.get("/api/v1/audit", headers=READER),
        "docs": await client.get("/api/v1/docs", headers=READER),
        "openapi": await client.get("/api/v1/openapi.json", headers=READER),
        "401": await client.get("/api/v1/status"),
        "403": await client.post("/api/v1/sync", headers=READER),
        "404": await client.get("/api/v1/runs/" + "a" * 32, headers=READER),
        "422": await client.get("/api/v1/runs/nope", headers=READER),
        "413": await client.post("/api/v1/scale/demand", headers=auth("hub"),
                                 content=b" " * (MAX_BODY_BYTES + 1)),
    }
    assert answers["status"].status_code == 200 and answers["docs"].status_code == 200
    assert answers["413"].status_code == 413
    for what, r in answers.items():
        _assert_secure(r, what)


async def test_the_functions_entry_point_answers_with_the_same_headers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, _ = make_context(tmp_path)
    functions.set_context(ctx)
    monkeypatch.setattr(function_app.front, "_app", None)  # a cold start: the app is built for this context
    fn = functions_by_name()["admin_api"].get_user_function()
    try:
        for headers in (READER, {}):
            req = func.HttpRequest("GET", "http://localhost/api/v1/status", headers=headers, params={},
                                   route_params={"route": "api/v1/status"}, body=b"")
            resp: func.HttpResponse = await fn(req, None)
            assert resp.status_code == (200 if headers else 401)
            _assert_secure(resp, f"functions {resp.status_code}")
    finally:
        functions.set_context(None)
        await ctx.close()


# --- cross-site requests with App Service authentication's session -------------------------------

@pytest.fixture
async def easy_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> AsyncIterator[tuple[Context, dict[str, World], httpx.AsyncClient]]:
    """App Service authentication in front: it turns the browser's session cookie into the
    principal header on every request, also on one a page of another site makes the browser send."""
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    ctx, worlds = make_context(tmp_path, make_settings(app_service_auth=True))
    try:
        async with asgi_client(ctx) as c:
            yield ctx, worlds, c
    finally:
        await drain_tasks()
        await ctx.close()


SESSION = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.admin"], "bo@example.org")}
CROSS_SITE = [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://other.example.org", "Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},  # a browser that sends no Sec-Fetch-* headers
    {"Origin": "null"},  # a sandboxed frame, a data: URL
]


@pytest.mark.parametrize("browser", CROSS_SITE)
@pytest.mark.parametrize("method, path", [
    ("POST", "/api/v1/cull"), ("POST", "/api/v1/operations/sync/pause"),
    ("POST", "/api/v1/plans/" + "b" * 16 + "/approve"),
])
async def test_a_form_on_another_site_cannot_act_with_the_admins_session(
        easy_auth: tuple[Context, dict[str, World], httpx.AsyncClient], browser: dict[str, str],
        method: str, path: str) -> None:
    """A cross-site form POST needs no preflight and carries the App Service session cookie, so
    the platform adds the admin's principal: it is refused (403, saying why), nothing is started,
    paused or audited."""
    ctx, worlds, c = easy_auth
    r = await c.request(method, path, headers={**SESSION, **browser})
    assert r.status_code == 403, r.text
    assert "cross-site" in r.json()["detail"]
    await drain_tasks()
    assert worlds["cull"].applies == 0
    assert not await ctx.runner.is_paused("sync")
    assert await ctx.store.read_audit() == ([], None)


async def test_the_same_site_the_docs_page_and_programs_still_act_with_the_session(
        easy_auth: tuple[Context, dict[str, World], httpx.AsyncClient]) -> None:
    _, _, c = easy_auth
    same = [
        {"Origin": "http://hubpilot.test", "Sec-Fetch-Site": "same-origin"},  # the docs page's "Try it out"
        {"Origin": "http://hubpilot.test"},  # an older browser, same origin
        {"Sec-Fetch-Site": "none"},  # typed by the user
        {},  # a program with an Entra token that App Service turned into the principal
    ]
    for browser in same:
        r = await c.post("/api/v1/operations/sync/pause", headers={**SESSION, **browser})
        assert r.status_code == 200, (browser, r.text)
    # reading is not acting: a cross-site page cannot read the answer (no CORS), and GET changes nothing
    r = await c.get("/api/v1/status", headers={**SESSION, **CROSS_SITE[0]})
    assert r.status_code == 200
    # a bearer token is never sent by a browser on its own: a cross-site header does not matter
    r = await c.post("/api/v1/operations/sync/resume", headers={**ADMIN, **CROSS_SITE[0]})
    assert r.status_code == 200


# --- what an anonymous caller can put into the log -------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/runs/x%0A2026-11-26 12:00:00 INFO hubpilot: FAKE LOG LINE{pad}",
                                  "/api/v1/plans/x%0D%0AFAKE LOG LINE{pad}/approve"])
async def test_a_refused_request_cannot_write_lines_into_the_log(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str) -> None:
    """The path is the caller's text, percent-decoded: the refusal's log line shows it escaped
    and bounded, so a caller without credentials cannot forge log lines."""
    caplog.set_level("INFO", logger="hubpilot")
    for headers in ({}, READER):
        r = await client.request("POST" if "approve" in path else "GET", path.format(pad="x" * 5000),
                                 headers=headers)
        assert r.status_code in (401, 403, 422), r.text
    refused = [rec.getMessage() for rec in caplog.records if rec.name.startswith("hubpilot")]
    assert refused and all("\n" not in m and "\r" not in m and len(m) < 1000 for m in refused), refused
