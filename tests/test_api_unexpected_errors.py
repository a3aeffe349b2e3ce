"""Review: an error the admin API does not expect (a bug, a stored document it cannot read as
what it should be) is answered on every host as one JSON 500 with the security headers, saying
in general terms what failed and a correlation id that the log holds with the traceback.

Before, ``hubpilot serve`` answered Starlette's plain-text "Internal Server Error" without the
security headers (no ``Cache-Control: no-store``), and the Functions function raised, which the
host answers with a bare 500 and no body.

The failure is a real one: a run document in the real SQLite store that is JSON but not a run
(a damaged or hand-edited state file), read through ``GET /api/v1/runs/{id}``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.http import HttpResponseConverter

import function_app
import functions
from hubpilot.wiring import Context
from tests.test_api_kit import asgi_client, auth, make_context, serve_client
from tests.test_functions import functions_by_name

RUN = "0123456789abcdef0123456789abcdef"
SECRET_LOOKING = "AccountKey=c2VjcmV0LXZhbHVlLWluLXRoZS1kb2N1bWVudA=="
READER = auth("reader")
SECURITY = {"cache-control": "no-store", "x-content-type-options": "nosniff", "x-frame-options": "DENY",
            "referrer-policy": "no-referrer"}


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[Context]:
    ctx, _ = make_context(tmp_path)
    # JSON, but not a run: its fields fail the response model (its text must not reach the caller)
    await ctx.store.put(f"runs/{RUN}", {"run_id": RUN, "outcome": SECRET_LOOKING})
    try:
        yield ctx
    finally:
        await ctx.close()


def check_answer(status: int, headers: dict[str, str], body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    assert status == 500, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    for k, v in SECURITY.items():
        assert headers.get(k) == v, (k, headers)
    doc = json.loads(body)
    cid = doc["correlation_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", cid), cid
    assert "unexpected" in doc["detail"] and "GET /api/v1/runs/" in doc["detail"] and cid in doc["detail"]
    text = body.decode()
    assert SECRET_LOOKING not in text and "Traceback" not in text and "ValidationError" not in text
    logged = [r for r in caplog.records if cid in r.getMessage()]
    assert logged and logged[0].levelno == logging.ERROR and logged[0].exc_info is not None, \
        "the log must hold the correlation id with the traceback"


async def test_the_asgi_app_answers_a_json_500_with_a_correlation_id(
        ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    async with asgi_client(ctx) as c:
        r = await c.get(f"/api/v1/runs/{RUN}", headers=READER)
        check_answer(r.status_code, dict(r.headers), r.content, caplog)
        # HEAD: the same status and headers, no body
        h = await c.head(f"/api/v1/runs/{RUN}", headers=READER)
        assert h.status_code == 500 and h.content == b"" and h.headers["cache-control"] == "no-store"


async def test_hubpilot_serve_answers_the_same(ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    async with serve_client(ctx) as c:
        r = await c.get(f"/api/v1/runs/{RUN}", headers=READER)
        check_answer(r.status_code, dict(r.headers), r.content, caplog)


async def test_the_functions_entry_point_answers_the_same(
        ctx: Context, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.ERROR)
    functions.set_context(ctx)
    monkeypatch.setattr(function_app.front, "_app", None)  # a cold start: the app is built for this context
    fn = functions_by_name()["admin_api"].get_user_function()
    try:
        req = func.HttpRequest("GET", f"http://localhost/api/v1/runs/{RUN}", headers=READER, params={},
                               route_params={"route": f"api/v1/runs/{RUN}"}, body=b"")
        resp: func.HttpResponse = await fn(req, None)  # the function must answer, not raise (host: bare 500)
        sent = HttpResponseConverter.encode(resp, expected_type=None).value  # what the worker returns
        headers = {k.lower(): v.value for k, v in sent["headers"].items()}
        check_answer(int(sent["status_code"].value), headers, sent["body"].value, caplog)
    finally:
        functions.set_context(None)
