"""Review: every audit entry the admin API writes says how its caller authenticated.

The actor was the bare name: a bearer token's name from ``api.tokens`` or the App Service
principal's name, so an auditor could not tell a token named ``ana@example.org`` from the person
signed in as ana@example.org. Every route that records now writes ``token:<name>`` or
``app-service:<name>`` (the CLI writes ``cli:<user>``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubpilot.api.runs import drain_tasks
from hubpilot.wiring import OPERATIONS
from tests.test_api_kit import World, asgi_client, auth, make_context, make_settings, principal_header


@pytest.mark.parametrize("origin", ["token", "app-service"])
async def test_each_recording_route_names_the_callers_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             origin: str) -> None:
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")  # App Service authentication fronts the app
    worlds = {op: World(desired={f"{op}-a"}) for op in OPERATIONS}
    worlds["sync"] = World(items={"x1", "x2", "x3"}, desired=set())  # refused: three removals, limit two
    ctx, _ = make_context(tmp_path, make_settings(app_service_auth=True), worlds)
    if origin == "token":
        admin, hub = auth("admin"), auth("hub")
        name, hub_name = "admin-caller", "hub-caller"
    else:
        admin = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.admin"], "bo@example.org")}
        hub = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.hub"], "hub-app@example.org")}
        name, hub_name = "bo@example.org", "hub-app@example.org"
    try:
        async with asgi_client(ctx) as client:
            plan = (await client.get("/api/v1/plan/cull", headers=admin)).json()
            assert plan["actor"] == f"{origin}:{name}", plan
            refused = await client.post("/api/v1/sync?wait=30", headers=admin)
            assert refused.json()["outcome"] == "refused", refused.text
            approved = await client.post(f"/api/v1/plans/{refused.json()['plan_id']}/approve?wait=30",
                                         headers=admin)
            assert approved.json()["outcome"] == "applied", approved.text
            assert (await client.post("/api/v1/cull?wait=30", headers=admin)).status_code == 200
            for verb in ("pause", "resume"):
                assert (await client.post(f"/api/v1/operations/cull/{verb}", headers=admin)).status_code == 200
            demand = await client.post("/api/v1/scale/demand", headers=hub, json={"user": "ana"})
            assert demand.status_code == 202 and demand.json()["run_id"], demand.text
            await drain_tasks()
            entries = (await client.get("/api/v1/audit", headers=admin)).json()["entries"]
    finally:
        await drain_tasks()
        await ctx.close()
    actors = [(e["operation"], e.get("kind"), e.get("trigger"), e["actor"]) for e in entries]
    assert len(actors) == 6, actors  # refused, approval, cull run, pause, resume, demand's scale run
    expected = {("sync", "run", "api"), ("sync", "run", "approval"), ("cull", "run", "api"),
                ("cull", "pause", "admin"), ("cull", "resume", "admin"), ("scale", "run", "demand")}
    assert {a[:3] for a in actors} == expected, actors
    for op, kind, trigger, actor in actors:
        want = f"{origin}:{hub_name if trigger == 'demand' else name}"
        assert actor == want, (op, kind, trigger, actor)


async def test_app_only_callers_behind_app_service_authentication_are_told_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon app's token (client credentials) has no name claim: each app is named by its
    application id (``azp`` of v2 tokens, ``appid`` of v1), not all as one anonymous principal."""
    import base64
    import json

    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    ctx, _ = make_context(tmp_path, make_settings(app_service_auth=True), {op: World() for op in OPERATIONS})

    def app_only(claim: str, app_id: str) -> dict[str, str]:
        body = {"auth_typ": "aad", "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
                "role_typ": "roles", "claims": [{"typ": "roles", "val": "hubpilot.reader"},
                                                {"typ": claim, "val": app_id}]}
        return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(body).encode()).decode()}

    try:
        async with asgi_client(ctx) as client:
            actors = []
            for claim, app_id in (("azp", "11111111-2222-3333-4444-555555555555"),
                                  ("appid", "99999999-8888-7777-6666-555555555555")):
                plan = await client.get("/api/v1/plan/cull", headers=app_only(claim, app_id))
                assert plan.status_code == 200, plan.text
                actors.append(plan.json()["actor"])
    finally:
        await ctx.close()
    assert actors == ["app-service:app 11111111-2222-3333-4444-555555555555",
                      "app-service:app 99999999-8888-7777-6666-555555555555"], actors
