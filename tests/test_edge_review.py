"""Review of the HTTP edge: the Functions bridge, the cheap front, the admin app's answers to bad input.

Each request goes through the real parts: the Functions app's ``admin_api`` function as the host
would call it, and ``hubpilot serve`` over HTTP (the table of ``tests/test_api_host_parity.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import azure.functions as func
import pytest

import function_app
import functions
import tests.test_api_host_parity as parity
from tests.test_api_host_parity import (
    DEMAND,
    HUB,
    JSON,
    READER,
    Hosts,
    Req,
    comparable,
    on_the_wire,
)
from tests.test_api_kit import make_context, make_settings
from tests.test_functions import functions_by_name

hosts = parity.hosts  # the fixture that starts hubpilot serve and the Functions app (both hosts)


async def _call(method: str, path: str, headers: dict[str, str] | None = None) -> func.HttpResponse:
    fn = functions_by_name()["admin_api"].get_user_function()
    req = func.HttpRequest(method, f"http://hubpilot.test{path}", headers=headers or {}, params={},
                           route_params={"route": path.lstrip("/")}, body=b"")
    resp: func.HttpResponse = await fn(req, None)
    return resp


async def test_an_admin_app_that_cannot_be_built_is_a_json_500_with_a_correlation_id(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """The Functions app builds the admin app on the first request that is not /healthz or the
    Graph handshake. When that build fails (a deployment missing a package: the import fails),
    the function raised and the host answered its bare 500, where the README promises a JSON 500
    naming the request and a correlation id under which the log holds the traceback. /healthz is
    still answered, and the next request builds the app again (a passing failure heals)."""
    monkeypatch.setattr(function_app.front, "_app", None)
    monkeypatch.setitem(sys.modules, "hubpilot.api.app", None)  # 'import hubpilot.api.app' fails
    caplog.set_level(logging.ERROR)

    r = await _call("GET", "/api/v1/status", dict(READER))
    assert r.status_code == 500, r.get_body()
    assert r.mimetype == "application/json" and r.headers["cache-control"] == "no-store"
    body = json.loads(r.get_body())
    correlation = body["correlation_id"]
    assert correlation in body["detail"] and "GET /api/v1/status" in body["detail"]
    assert "hubpilot.api.app" not in body["detail"]  # the error's text stays in the log
    logged = [rec for rec in caplog.records if correlation in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and "hubpilot.api.app" in str(logged[0].exc_info[1])

    head = await _call("HEAD", "/api/v1/status", dict(READER))
    assert head.status_code == 500 and head.get_body() == b""
    assert (await _call("GET", "/healthz")).status_code == 200
    assert not function_app.front.loaded

    monkeypatch.delitem(sys.modules, "hubpilot.api.app")  # the package is there again
    ctx, _ = make_context(tmp_path, make_settings(run_mode="queue"))
    functions.set_context(ctx)
    try:
        assert (await _call("GET", "/api/v1/status")).status_code == 401  # built: it authenticates
        assert (await _call("GET", "/api/v1/status", dict(READER))).status_code == 200
        assert function_app.front.loaded
    finally:
        functions.set_context(None)
        function_app.front._app = None
        await ctx.close()


NOT_UTF8: list[Req] = [
    Req("demand latin-1", 400, "POST", "/api/v1/scale/demand", (*HUB, *JSON), b'{"user": "zo\xeb"}'),
    Req("demand latin-1 declared", 400, "POST", "/api/v1/scale/demand",
        (*HUB, ("Content-Type", "application/json; charset=iso-8859-1")), b'{"user": "zo\xeb"}'),
    Req("demand byte ff", 400, "POST", "/api/v1/scale/demand", (*HUB, *JSON), b"\xff" + DEMAND),
]


@pytest.mark.parametrize("req", NOT_UTF8, ids=[r.name for r in NOT_UTF8])
async def test_a_json_body_that_is_not_utf8_is_refused_saying_so_on_both_hosts(hosts: Hosts, req: Req) -> None:
    """JSON is UTF-8 (RFC 8259). A body in another encoding was answered 400 "There was an error
    parsing the body" (FastAPI's own words), which says neither what is wrong nor what to send;
    the Graph webhook says it for the same body. Now: the body is not UTF-8, where, and to send it
    so; on both hosts alike."""
    served, fn = await hosts.both(req)
    assert comparable(on_the_wire(fn, req, served)) == comparable(served), req
    assert served.status == 400, served.body
    detail = json.loads(served.body)["detail"]
    assert "not valid JSON" in detail and "UTF-8" in detail, detail
    assert served.headers["content-type"] == "application/json"


async def test_other_http_errors_keep_their_answer(hosts: Hosts) -> None:
    """The handler that words the UTF-8 refusal leaves every other HTTPException as it was: a 401
    keeps its challenge, a 404 its detail."""
    anon, _ = await hosts.both(Req("status none", 401, "GET", "/api/v1/status"))
    assert anon.status == 401 and anon.headers["www-authenticate"] == 'Bearer realm="hubpilot"'
    run = "0123456789abcdef0123456789abcdef"
    missing, _ = await hosts.both(Req("run unknown", 404, "GET", f"/api/v1/runs/{run}", READER))
    assert missing.status == 404 and json.loads(missing.body) == {"detail": f"no run with id {run}"}


