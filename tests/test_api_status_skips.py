"""``GET /status`` says which schedules' rounds the settings skip (and why), on both hosts.

A schedule whose every round is skipped by the settings (scale with ``scale.enabled`` off, the
default; sync without groups; the Entra subscription manager without
notifications) still has a next fire time: status must not let an admin believe it runs. The
contexts here use hubpilot's own factories (no test capability), as a deployment does, and each
reason status gives is checked against what the scheduled round itself does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.scheduling import run_scheduled
from hubpilot.serve import _entra_subscriptions
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from tests.test_api_kit import asgi_client, auth, serve_client, token_settings

READER = auth("reader")
HUB = {"api_url": "http://127.0.0.1:9/hub/api", "token": "t" * 32}
POOL = {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg", "cluster": "aks"}
ENTRA_NOTIFYING = {"notifications": True, "client_state": "s" * 32,
                   "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications"}
SUBSCRIPTIONS = "directory.entra.subscription_schedule"

CASES: dict[str, tuple[dict[str, Any], dict[str, str | None]]] = {
    # settings beyond hub and api → the expected `skipped` (a fragment of the reason) per schedule
    "nothing configured": ({}, {"sync": "sync.users_groups", "cull": None, "scale": "scale.enabled"}),
    "a directory without groups": ({"directory": {"kind": "file", "file": {"path": "people.yaml"}}},
                                   {"sync": "sync.users_groups", "scale": "scale.enabled"}),
    "everything configured": (
        {"directory": {"kind": "file", "file": {"path": "people.yaml"}}, "sync": {"users_groups": ["staff"]},
         "scale": {"enabled": True, **POOL}},
        {"sync": None, "cull": None, "scale": None}),
    "entra without notifications": (
        {"directory": {"kind": "entra", "entra": {}}, "sync": {"users_groups": ["staff"]}},
        {"sync": None, SUBSCRIPTIONS: "directory.entra.notifications"}),
    "entra with notifications": (
        {"directory": {"kind": "entra", "entra": ENTRA_NOTIFYING}, "sync": {"users_groups": ["staff"]}},
        {"sync": None, SUBSCRIPTIONS: None}),
    "an entra section while the directory is ldap": (
        {"directory": {"kind": "ldap", "ldap": {"url": "ldap://ldap.example.org", "base_dn": "dc=example,dc=org"},
                       "entra": ENTRA_NOTIFYING}, "sync": {"users_groups": ["staff"]}},
        {"sync": None, SUBSCRIPTIONS: "directory.kind"}),
}

Opener = Callable[[Context], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(params=["asgi", "serve"])
def opener(request: pytest.FixtureRequest) -> Opener:
    return asgi_client if request.param == "asgi" else serve_client


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], Context]]:
    made: list[Context] = []

    def build(extra: dict[str, Any]) -> Context:
        settings = Settings(hub=HUB, api={"tokens": token_settings()}, **extra)
        ctx = Context(settings=settings, store=SqliteStore(tmp_path / f"state-{len(made)}.sqlite3"))
        made.append(ctx)
        return ctx

    yield build
    for ctx in made:
        await ctx.close()


@pytest.mark.parametrize("case", list(CASES))
async def test_status_says_which_schedules_the_settings_skip_and_why(
        case: str, opener: Opener, make: Callable[[dict[str, Any]], Context],
        caplog: pytest.LogCaptureFixture) -> None:
    extra, expected = CASES[case]
    ctx = make(extra)
    async with opener(ctx) as client:
        r = await client.get("/api/v1/status", headers=READER)
    assert r.status_code == 200, r.text
    schedules = {s["name"]: s for s in r.json()["schedules"]}
    for name, fragment in expected.items():
        entry = schedules[name]
        assert entry["next_fire"], entry
        if fragment is None:
            assert entry["skipped"] is None, (name, entry)
        else:
            assert fragment in (entry["skipped"] or ""), (name, entry)
    for name, entry in schedules.items():  # what status says is what the round does
        if entry["skipped"] is None:
            continue
        with caplog.at_level(logging.DEBUG, logger="hubpilot"):
            caplog.clear()
            if entry["runs_operation"]:
                assert await run_scheduled(ctx, name) is None, name
                said = " ".join(r.getMessage() for r in caplog.records)
                assert entry["skipped"] in said, (entry, said)
            else:
                assert name == SUBSCRIPTIONS
                assert await _entra_subscriptions(ctx) is None


async def test_the_functions_host_shows_the_subscription_managers_own_hourly_timer(
        make: Callable[[dict[str, Any]], Context]) -> None:
    """The Functions app's graph_subscriptions timer runs hourly at :05 whatever
    directory.entra.subscription_schedule says (every 6 h here): its GET /status entry shows the
    timer's expression and next fire, and no app setting (none changes it); hubpilot serve's shows
    the setting's. The operations' schedules are their app settings on both."""

    from functions.graph import SUBSCRIPTION_SCHEDULE

    extra = {"directory": {"kind": "entra", "entra": ENTRA_NOTIFYING}, "sync": {"users_groups": ["staff"]}}
    served = make(extra)
    async with serve_client(served) as client:
        by_serve = {s["name"]: s for s in (await client.get("/api/v1/status", headers=READER)).json()["schedules"]}
    assert by_serve[SUBSCRIPTIONS]["expression"] == "0 0 */6 * * *"
    assert by_serve[SUBSCRIPTIONS]["app_setting"] == "HUBPILOT_DIRECTORY__ENTRA__SUBSCRIPTION_SCHEDULE"

    body = await _status_on_functions(make(extra))
    by_fn = {s["name"]: s for s in body["schedules"]}
    entry = by_fn[SUBSCRIPTIONS]
    assert entry["expression"] == SUBSCRIPTION_SCHEDULE == "0 5 * * * *" and entry["app_setting"] is None
    fire = datetime.fromisoformat(entry["next_fire"])
    now = datetime.fromisoformat(body["now"])
    assert (fire.minute, fire.second) == (5, 0) and timedelta(0) < fire - now <= timedelta(hours=1), entry
    # the Functions app fires its schedules (its timers); this serve was started with them off
    assert {e["fired_here"] for e in by_fn.values()} == {True} and {e["fired_here"] for e in by_serve.values()} == {
        False}
    assert entry["skipped"] is None and by_fn["sync"] == {**by_serve["sync"], "next_fire": by_fn["sync"]["next_fire"],
                                                          "fired_here": True}
    assert by_fn["sync"]["app_setting"] == "HUBPILOT_SYNC_SCHEDULE"


async def test_the_functions_host_shows_a_timer_switched_off_by_its_disabled_setting(
        make: Callable[[dict[str, Any]], Context], monkeypatch: pytest.MonkeyPatch) -> None:
    """The portal's Disable button sets AzureWebJobs.<function>.Disabled: the host does not fire
    that timer. GET /status on the Functions app says so for that schedule (not fired here, skipped
    naming the setting) and for no other; the name as Linux passes it (a dot as '_') counts too."""


    monkeypatch.setenv("AzureWebJobs.cull_timer.Disabled", "True")
    monkeypatch.setenv("AzureWebJobs_sync_timer_Disabled", "1")
    monkeypatch.setenv("AzureWebJobs.scale_timer.Disabled", "false")
    body = await _status_on_functions(make(CASES["everything configured"][0]))  # no schedule skipped by settings
    by_fn = {s["name"]: s for s in body["schedules"]}
    assert by_fn["cull"]["fired_here"] is False and "AzureWebJobs.cull_timer.Disabled is 'True'" in \
        by_fn["cull"]["skipped"], by_fn["cull"]
    assert by_fn["sync"]["fired_here"] is False and "AzureWebJobs_sync_timer_Disabled" in by_fn["sync"]["skipped"]
    assert by_fn["scale"]["fired_here"] is True and by_fn["scale"]["skipped"] is None  # "false": enabled


async def _status_on_functions(ctx: Context) -> dict[str, Any]:
    """GET /status through the Functions app's admin_api function, on ``ctx`` (a cold start)."""
    import azure.functions as func

    import function_app
    import functions
    from tests.test_functions import functions_by_name  # the app's functions are indexed once a process

    functions.set_context(ctx)
    function_app.front._app = None  # a cold start: the admin app is built for this context
    try:
        fn = functions_by_name()["admin_api"].get_user_function()
        req = func.HttpRequest("GET", "http://localhost/api/v1/status", headers=READER, params={},
                               route_params={"route": "api/v1/status"}, body=b"")
        resp = await fn(req, None)
    finally:
        functions.set_context(None)
        function_app.front._app = None
    assert resp.status_code == 200, resp.get_body()
    body: dict[str, Any] = json.loads(resp.get_body())
    return body
