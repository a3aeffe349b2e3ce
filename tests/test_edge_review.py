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
from tests.test_api_host_parity import READER
from tests.test_api_kit import make_context, make_settings
from tests.test_functions import functions_by_name


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
