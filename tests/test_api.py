"""The admin API over HTTP: the same tests through the ASGI app and through ``hubpilot serve``."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hubpilot.api.runs import drain_tasks
from hubpilot.loop import RUN_KEY
from hubpilot.wiring import Context
from tests.realhub import RealHub
from tests.test_api_kit import (
    HUB_TOKEN,
    TOKENS,
    World,
    asgi_client,
    auth,
    make_context,
    make_settings,
    principal_header,
    serve_client,
)

ADMIN, READER, HUB = auth("admin"), auth("reader"), auth("hub")


@dataclass
class Api:
    client: httpx.AsyncClient
    ctx: Context
    worlds: dict[str, World]


@pytest.fixture(params=["asgi", "serve"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    ctx, worlds = make_context(tmp_path)
    opener = asgi_client if request.param == "asgi" else serve_client
    try:
        async with opener(ctx) as client:
            yield Api(client, ctx, worlds)
    finally:
        for w in worlds.values():
            if w.gate is not None:
                w.gate.set()
        await drain_tasks()
        await ctx.close()


async def _finished(api: Api, run_id: str) -> dict:
    await drain_tasks()
    r = await api.client.get(f"/api/v1/runs/{run_id}", headers=READER)
    assert r.status_code == 200, r.text
    return r.json()


# --- health ------------------------------------------------------------------------------------

async def test_healthz_needs_no_credentials_and_says_nothing_secret(api: Api) -> None:
    for path in ("/healthz", "/api/v1/healthz"):
        r = await api.client.get(path)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert HUB_TOKEN not in r.text


async def test_readyz_reports_an_unreachable_hub_without_leaking_its_token(api: Api) -> None:
    r = await api.client.get("/api/v1/readyz", headers=READER)
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False
    assert body["checks"]["config"]["ok"] and body["checks"]["state_store"]["ok"]
    assert body["checks"]["hub"]["ok"] is False and "127.0.0.1:9" in body["checks"]["hub"]["detail"]
    assert HUB_TOKEN not in r.text


# --- runs --------------------------------------------------------------------------------------

async def test_post_starts_a_run_202_with_location_and_the_run_applies(api: Api) -> None:
    r = await api.client.post("/api/v1/sync", headers=ADMIN)
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert r.headers["location"] == f"/api/v1/runs/{run_id}"
    assert r.json()["outcome"] in ("queued", "running", "applied")
    run = await _finished(api, run_id)
    assert run["outcome"] == "applied" and run["trigger"] == "api" and run["actor"] == "token:admin-caller"
    assert {x["action"]["target"] for x in run["results"]} == {"sync-a", "sync-b"}
    assert api.worlds["sync"].items == {"sync-a", "sync-b"}


async def test_wait_returns_the_finished_run_with_200(api: Api) -> None:
    r = await api.client.post("/api/v1/cull?wait=30", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "applied" and r.json()["result_counts"] == {"done": 2}
    assert r.headers["location"].endswith(r.json()["run_id"])


async def test_dry_run_returns_the_plan_and_applies_nothing(api: Api) -> None:
    r = await api.client.post("/api/v1/scale?dry_run=true", headers=ADMIN)
    assert r.status_code == 200
    body = r.json()
    assert body["outcome"] == "planned" and body["dry_run"] is True
    assert [a["target"] for a in body["plan"]["actions"]] == ["scale-a", "scale-b"]
    assert api.worlds["scale"].items == set() and api.worlds["scale"].applies == 0
    assert await api.ctx.store.get(RUN_KEY.format(run_id=body["run_id"])) is None


async def test_plan_shows_reasons_and_id_of_the_next_run(api: Api) -> None:
    r = await api.client.get("/api/v1/plan/sync", headers=READER)
    assert r.status_code == 200
    plan = r.json()["plan"]
    assert plan["counts"] == {"add": 2} and len(plan["id"]) == 16
    assert all(a["reason"] == "wanted but missing" for a in plan["actions"])
    assert api.worlds["sync"].applies == 0


async def test_refused_plan_is_reported_and_applies_after_approval(api: Api) -> None:
    w = api.worlds["sync"]
    w.items, w.desired = {"a", "b", "c", "d"}, set()
    run = (await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)).json()
    assert run["outcome"] == "refused" and "more than the limit of 2" in run["refusal"][0]
    assert w.items == {"a", "b", "c", "d"}
    plan = (await api.client.get("/api/v1/plan/sync", headers=READER)).json()
    assert plan["outcome"] == "refused" and plan["plan_id"] == run["plan_id"]

    r = await api.client.post(f"/api/v1/plans/{run['plan_id']}/approve?wait=30", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "applied" and r.json()["approved_plan"] == run["plan_id"]
    assert r.json()["trigger"] == "approval" and w.items == set()
    again = await api.client.post(f"/api/v1/plans/{run['plan_id']}/approve", headers=ADMIN)
    assert again.status_code == 404


async def test_approval_of_a_plan_the_world_has_moved_away_from_is_refused(api: Api) -> None:
    w = api.worlds["cull"]
    w.items, w.desired = {"a", "b", "c"}, set()
    run = (await api.client.post("/api/v1/cull?wait=30", headers=ADMIN)).json()
    w.items.add("z")
    r = await api.client.post(f"/api/v1/plans/{run['plan_id']}/approve?wait=30", headers=ADMIN)
    assert r.json()["outcome"] == "refused"
    assert "fresh observation yields plan" in r.json()["refusal"][0]
    assert w.items == {"a", "b", "c", "z"}


async def test_unknown_plan_is_404(api: Api) -> None:
    r = await api.client.post("/api/v1/plans/0123456789abcdef/approve", headers=ADMIN)
    assert r.status_code == 404 and "0123456789abcdef" in r.json()["detail"]


async def test_second_post_while_a_run_holds_the_lock_is_409_with_holder_and_retry_after(api: Api) -> None:
    w = api.worlds["scale"]
    w.gate = asyncio.Event()
    first = await api.client.post("/api/v1/scale", headers=ADMIN)
    assert first.status_code == 202
    await asyncio.wait_for(w.entered.wait(), 10)
    second = await api.client.post("/api/v1/scale", headers=ADMIN)
    assert second.status_code == 409
    assert second.json()["holder"] == f"token:admin-caller:{first.json()['run_id']}"
    assert int(second.headers["retry-after"]) >= 1
    running = (await api.client.get(f"/api/v1/runs/{first.json()['run_id']}", headers=READER)).json()
    assert running["outcome"] == "running"
    status = (await api.client.get("/api/v1/status", headers=READER)).json()
    lock = next(o for o in status["operations"] if o["operation"] == "scale")["lock"]
    assert lock["holder"].endswith(first.json()["run_id"])
    w.gate.set()
    assert (await _finished(api, first.json()["run_id"]))["outcome"] == "applied"
    assert w.applies == 1
    third = await api.client.post("/api/v1/scale?wait=30", headers=ADMIN)
    assert third.status_code == 200 and third.json()["result_counts"] == {}


async def test_back_to_back_posts_never_apply_twice_in_parallel(api: Api) -> None:
    w = api.worlds["sync"]
    w.gate = asyncio.Event()
    answers = await asyncio.gather(*(api.client.post("/api/v1/sync", headers=ADMIN) for _ in range(5)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) == 1 and codes.count(409) == 4, codes
    w.gate.set()
    await drain_tasks()
    assert w.applies == 1


async def test_pause_makes_runs_report_paused_until_resumed(api: Api) -> None:
    r = await api.client.post("/api/v1/operations/cull/pause", headers=ADMIN)
    assert r.json()["paused"] is True and r.json()["operation"] == "cull"
    run = (await api.client.post("/api/v1/cull?wait=30", headers=ADMIN)).json()
    assert run["outcome"] == "paused" and run["plan"]["counts"] == {"add": 2}
    assert api.worlds["cull"].items == set()
    status = (await api.client.get("/api/v1/status", headers=READER)).json()
    assert next(o for o in status["operations"] if o["operation"] == "cull")["paused"] is True
    r = await api.client.post("/api/v1/operations/cull/resume", headers=ADMIN)
    assert r.json()["paused"] is False and r.json()["operation"] == "cull"
    run = (await api.client.post("/api/v1/cull?wait=30", headers=ADMIN)).json()
    assert run["outcome"] == "applied"


async def test_a_second_pause_says_already_paused_and_is_not_audited_again(api: Api) -> None:
    first = await api.client.post("/api/v1/operations/scale/pause", headers=ADMIN)
    assert first.status_code == 200 and first.json()["changed"] is True
    second = await api.client.post("/api/v1/operations/scale/pause", headers=ADMIN)
    assert second.status_code == 200, second.text
    assert second.json()["paused"] is True and second.json()["changed"] is False
    assert "already paused" in second.json()["detail"]
    audit = (await api.client.get("/api/v1/audit?operation=scale", headers=READER)).json()
    assert [e["outcome"] for e in audit["entries"]] == ["paused"]
    await api.client.post("/api/v1/operations/scale/resume", headers=ADMIN)
    again = (await api.client.post("/api/v1/operations/scale/resume", headers=ADMIN)).json()
    assert again["paused"] is False and again["changed"] is False and "was not paused" in again["detail"]


async def test_a_failed_observation_is_a_failed_run_that_changes_nothing(api: Api) -> None:
    api.worlds["sync"].fail_observe = True
    run = (await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)).json()
    assert run["outcome"] == "failed" and "directory unreachable" in run["error"]
    assert api.worlds["sync"].applies == 0


async def test_status_lists_last_runs_and_schedules_with_next_fire(api: Api) -> None:
    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    status = (await api.client.get("/api/v1/status", headers=READER)).json()
    sync = next(o for o in status["operations"] if o["operation"] == "sync")
    assert sync["last_run"]["outcome"] == "applied" and sync["last_run"]["trigger"] == "api"
    assert sync["last_run"]["result_counts"] == {"done": 2} and sync["lock"] is None
    schedules = {s["name"]: s for s in status["schedules"]}
    assert schedules["sync"]["expression"] == api.ctx.settings.sync.schedule
    assert schedules["sync"]["app_setting"] == "HUBPILOT_SYNC_SCHEDULE"
    assert schedules["sync"]["next_fire"] > status["now"]
    assert {"sync", "cull", "scale"} <= set(schedules)


async def test_status_says_why_the_last_run_failed_or_was_refused(api: Api) -> None:
    """An admin reading GET /status sees why an operation's last run did not apply, without
    looking the run up: its error, or the guard's reasons (both null/empty once a run applies)."""
    async def last() -> dict:
        status = (await api.client.get("/api/v1/status", headers=READER)).json()
        return next(o for o in status["operations"] if o["operation"] == "sync")["last_run"]

    w = api.worlds["sync"]
    w.fail_observe = True
    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    got = await last()
    assert got["outcome"] == "failed" and "directory unreachable" in got["error"] and got["refusal"] == []
    w.fail_observe, w.items, w.desired = False, {"a", "b", "c", "d"}, set()
    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    got = await last()
    assert got["outcome"] == "refused" and got["error"] is None
    assert len(got["refusal"]) == 1 and "more than the limit of 2" in got["refusal"][0]
    w.desired = {"a", "b", "c"}
    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    got = await last()
    assert got["outcome"] == "applied" and got["error"] is None and got["refusal"] == []


async def test_status_shows_a_run_that_ended_without_finishing(api: Api) -> None:
    """A run stopped part-way (here cancelled in its apply, as a host stopping past its grace does;
    a killed process: test_state_crash.py) writes no last run: status shows it as the operation's
    unfinished run while the last run stays the one before, and not once a later run finished."""
    async def sync_status() -> dict:
        status = (await api.client.get("/api/v1/status", headers=READER)).json()
        return next(o for o in status["operations"] if o["operation"] == "sync")

    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    before = (await sync_status())["last_run"]
    assert before["outcome"] == "applied" and (await sync_status())["unfinished_run"] is None
    w = api.worlds["sync"]
    w.items, w.desired, w.gate, w.entered = set(), {"x"}, asyncio.Event(), asyncio.Event()
    cap = api.ctx.capability("sync")
    run = asyncio.ensure_future(api.ctx.runner.run(cap, trigger="timer", actor="timer"))
    await w.entered.wait()
    during = await sync_status()
    assert during["lock"] is not None and during["unfinished_run"] is None  # under way, not unfinished
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    after = await sync_status()
    assert after["last_run"] == before and after["lock"] is None
    gone = after["unfinished_run"]
    assert gone is not None and gone["outcome"] == "failed" and "without finishing" in gone["error"], after
    doc = (await api.client.get(f"/api/v1/runs/{gone['run_id']}", headers=READER)).json()
    assert doc["outcome"] == "failed" and doc["started"] == gone["started"] and doc["trigger"] == "timer"
    w.gate = None
    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    final = await sync_status()
    assert final["last_run"]["outcome"] == "applied" and final["unfinished_run"] is None


async def test_status_reads_a_last_run_recorded_before_error_and_refusal(api: Api) -> None:
    """A last-run document written by an earlier version has neither field: read as none."""
    await api.ctx.store.put("last_run/sync", {
        "run_id": "0" * 32, "at": "2026-11-01T00:00:00+00:00", "trigger": "timer", "actor": "timer",
        "outcome": "applied", "plan_id": None, "counts": {}, "result_counts": {}})
    r = await api.client.get("/api/v1/status", headers=READER)
    assert r.status_code == 200, r.text
    got = next(o for o in r.json()["operations"] if o["operation"] == "sync")["last_run"]
    assert got["error"] is None and got["refusal"] == [] and got["outcome"] == "applied"


async def test_unknown_run_is_404_and_malformed_id_is_422_naming_the_field(api: Api) -> None:
    assert (await api.client.get("/api/v1/runs/" + "0" * 32, headers=READER)).status_code == 404
    r = await api.client.get("/api/v1/runs/not-a-run", headers=READER)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "run_id"]


@pytest.mark.parametrize("query, field", [("wait=-1", "wait"), ("wait=201", "wait"), ("wait=soon", "wait"),
                                          ("dry_run=perhaps", "dry_run")])
async def test_bad_query_parameters_are_422_naming_field_and_rule(api: Api, query: str, field: str) -> None:
    r = await api.client.post(f"/api/v1/sync?{query}", headers=ADMIN)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", field] and field in r.json()["message"]
    assert api.worlds["sync"].applies == 0


# --- audit -------------------------------------------------------------------------------------

async def test_audit_pages_filters_and_rejects_a_bad_cursor(api: Api) -> None:
    for op in ("sync", "cull", "sync"):
        await api.client.post(f"/api/v1/{op}?wait=30", headers=ADMIN)
    page = (await api.client.get("/api/v1/audit?operation=sync&limit=1", headers=READER)).json()
    assert len(page["entries"]) == 1 and page["next_cursor"]
    nxt = (await api.client.get("/api/v1/audit", params={"operation": "sync", "limit": 5,
                                                            "cursor": page["next_cursor"]},
                                headers=READER)).json()
    assert len(nxt["entries"]) == 1 and nxt["next_cursor"] is None
    assert {e["operation"] for e in page["entries"] + nxt["entries"]} == {"sync"}
    later = (await api.client.get("/api/v1/audit", params={"since": "2999-01-01T00:00:00"},
                                  headers=READER)).json()
    assert later == {"entries": [], "next_cursor": None, "scanned": None}  # scanned: with user only
    bad = await api.client.get("/api/v1/audit?cursor=nonsense", headers=READER)
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]
    huge = await api.client.get("/api/v1/audit?cursor=99999999999999999999999:1", headers=READER)
    assert huge.status_code == 400
    assert (await api.client.get("/api/v1/audit?limit=501", headers=READER)).status_code == 422


async def test_api_run_and_cli_run_leave_the_same_audit_entry_shape(api: Api) -> None:
    from hubpilot import cli

    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    api.worlds["sync"].desired.add("sync-c")
    assert await cli._run_operation(api.ctx, "sync", False, True, io.StringIO()) == 0
    entries = (await api.client.get("/api/v1/audit?operation=sync", headers=READER)).json()["entries"]
    runs = [e for e in entries if e.get("kind") == "run"]
    assert [e["trigger"] for e in runs] == ["manual", "api"]
    assert set(runs[0]) == set(runs[1])
    assert runs[0]["outcome"] == runs[1]["outcome"] == "applied"


# --- authentication ----------------------------------------------------------------------------

ENDPOINTS = [
    # (method, path, role that may call it)
    ("POST", "/api/v1/sync?dry_run=true", "admin"),
    ("POST", "/api/v1/cull?dry_run=true", "admin"),
    ("POST", "/api/v1/scale?dry_run=true", "admin"),
    ("GET", "/api/v1/runs/" + "a" * 32, "reader"),
    ("GET", "/api/v1/plan/sync", "reader"),
    ("POST", "/api/v1/plans/" + "b" * 16 + "/approve", "admin"),
    ("POST", "/api/v1/operations/scale/pause", "admin"),
    ("POST", "/api/v1/operations/scale/resume", "admin"),
    ("GET", "/api/v1/status", "reader"),
    ("GET", "/api/v1/audit", "reader"),
    ("GET", "/api/v1/readyz", "reader"),
    ("GET", "/readyz", "reader"),
    ("GET", "/api/v1/openapi.json", "reader"),
    ("GET", "/api/v1/docs", "reader"),
    ("GET", "/api/v1/cost", "reader"),
    ("POST", "/api/v1/scale/demand", "hub"),
]
WRONG = {"admin": ["reader", "hub"], "reader": ["hub"], "hub": ["reader"]}


PUBLIC = {"/api/v1/healthz"}
WEBHOOKS = ("/api/v1/graph/",)  # they verify the caller by content (clientState, validation token)


def _concrete(path: str) -> str:
    return (path.replace("{run_id}", "a" * 32).replace("{plan_id}", "b" * 16)
            .replace("{operation}", "sync" if "/plan/" in path else "scale"))


async def test_every_documented_endpoint_needs_credentials(api: Api) -> None:
    """Also the endpoints other routers add: none but /healthz and the webhooks is open."""
    doc = (await api.client.get("/api/v1/openapi.json", headers=READER)).json()
    in_matrix = {(m, p.split("?")[0]) for m, p, _ in ENDPOINTS}
    for path, ops in doc["paths"].items():
        if path in PUBLIC or path.startswith(WEBHOOKS):
            continue
        for method in ops:
            concrete = _concrete(path)
            if (method.upper(), concrete) in in_matrix:
                continue
            none = await api.client.request(method.upper(), concrete)
            assert none.status_code == 401, f"{method.upper()} {path}: {none.status_code} without credentials"
    for _method, path, _ in ENDPOINTS:
        assert path.split("?")[0] in {_concrete(p) for p in doc["paths"]} or path.startswith(
            ("/readyz", "/api/v1/openapi.json", "/api/v1/docs")), path


@pytest.mark.parametrize("method, path, role", ENDPOINTS)
async def test_auth_matrix(api: Api, method: str, path: str, role: str) -> None:
    none = await api.client.request(method, path)
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    bad = await api.client.request(method, path, headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401
    basic = await api.client.request(method, path, headers={"Authorization": f"Basic {TOKENS['admin']}"})
    assert basic.status_code == 401
    for wrong in WRONG[role]:
        r = await api.client.request(method, path, headers=auth(wrong))
        assert r.status_code == 403, (wrong, r.text)
        assert TOKENS[wrong] not in r.text
    for right in ["admin"] + ([role] if role != "admin" else []):
        r = await api.client.request(method, path, headers=auth(right))
        assert r.status_code not in (401, 403), (right, r.status_code, r.text)


async def test_app_service_principal_is_trusted_only_when_enabled(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")  # what App Service injects with its authentication on
    for enabled in (False, True):
        ctx, _ = make_context(tmp_path, make_settings(app_service_auth=enabled))
        async with asgi_client(ctx) as client:
            reader_hdr = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.reader"])}
            admin_hdr = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.admin"], "bo@example.org")}
            none_hdr = {"X-MS-CLIENT-PRINCIPAL": principal_header(["some.other.role"])}
            garbage = {"X-MS-CLIENT-PRINCIPAL": "%%%not base64%%%"}
            if not enabled:
                assert (await client.get("/api/v1/status", headers=admin_hdr)).status_code == 401
                assert (await client.get("/api/v1/status", headers={**admin_hdr, **READER})).status_code == 200
                continue
            assert (await client.get("/api/v1/status", headers=reader_hdr)).status_code == 200
            assert (await client.post("/api/v1/sync", headers=reader_hdr)).status_code == 403
            assert (await client.get("/api/v1/status", headers=none_hdr)).status_code == 403
            assert (await client.get("/api/v1/status", headers=garbage)).status_code == 401
            r = await client.post("/api/v1/sync?wait=30", headers=admin_hdr)
            assert r.status_code == 200 and r.json()["actor"] == "app-service:bo@example.org"
        await drain_tasks()
        await ctx.close()


async def test_the_principal_header_is_refused_where_app_service_authentication_is_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``api.app_service_auth`` on but no App Service authentication in front (the platform
    injects WEBSITE_AUTH_ENABLED=True only when it is on), anyone could send the header: it is refused,
    with what to fix; API tokens still work."""
    admin_hdr = {"X-MS-CLIENT-PRINCIPAL": principal_header(["hubpilot.admin"], "mallory@example.org")}
    for env in (None, "False", ""):
        if env is None:
            monkeypatch.delenv("WEBSITE_AUTH_ENABLED", raising=False)
        else:
            monkeypatch.setenv("WEBSITE_AUTH_ENABLED", env)
        ctx, _ = make_context(tmp_path, make_settings(app_service_auth=True))
        async with asgi_client(ctx) as client:
            r = await client.post("/api/v1/sync", headers=admin_hdr)
            assert r.status_code == 401, (env, r.text)
            assert "WEBSITE_AUTH_ENABLED" in r.json()["detail"] and "app_service_auth" in r.json()["detail"]
            assert (await client.get("/api/v1/status", headers={**admin_hdr, **READER})).status_code == 200
        await ctx.close()


async def test_audit_and_status_never_carry_tokens_or_their_hashes(api: Api) -> None:
    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    await api.client.post("/api/v1/operations/sync/pause", headers=ADMIN)
    texts = [(await api.client.get(p, headers=READER)).text
             for p in ("/api/v1/status", "/api/v1/audit", "/api/v1/openapi.json", "/api/v1/readyz")]
    secrets = [*TOKENS.values(), HUB_TOKEN, *(t.sha256 for t in api.ctx.settings.api.tokens)]
    for text in texts:
        for s in secrets:
            assert s not in text


async def test_head_answers_a_run_as_its_get_without_the_body(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """HEAD on a GET route: the GET's status and headers (Content-Length too), no body, the same
    auth; the log names the method sent; the OpenAPI document lists the GET operation alone."""
    caplog.set_level(logging.INFO)
    run_id = (await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)).json()["run_id"]
    get = await api.client.get(f"/api/v1/runs/{run_id}", headers=READER)
    head = await api.client.head(f"/api/v1/runs/{run_id}", headers=READER)
    assert (head.status_code, head.content) == (200, b"") and get.status_code == 200
    assert head.headers["content-length"] == str(len(get.content)) == get.headers["content-length"]
    assert head.headers["content-type"] == get.headers["content-type"] == "application/json"
    assert (await api.client.head(f"/api/v1/runs/{run_id}", headers=HUB)).status_code == 403
    anonymous = await api.client.head(f"/api/v1/runs/{run_id}")
    assert (anonymous.status_code, anonymous.content) == (401, b"") and "www-authenticate" in anonymous.headers
    assert f"refused HEAD /api/v1/runs/{run_id}" in caplog.text
    assert f"forbidden HEAD /api/v1/runs/{run_id} for hub-caller" in caplog.text
    post_only = await api.client.head("/api/v1/sync", headers=ADMIN)
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"
    not_head = await api.client.post("/api/v1/status", headers=ADMIN)
    assert not_head.status_code == 405 and not_head.headers["allow"] == "GET, HEAD"
    doc = (await api.client.get("/api/v1/openapi.json", headers=READER)).json()
    assert [m for ops in doc["paths"].values() for m in ops if m not in ("get", "post")] == []
    assert "also answers HEAD" in doc["info"]["description"]


async def test_openapi_document_describes_the_endpoints_and_bearer_auth(api: Api) -> None:
    doc = (await api.client.get("/api/v1/openapi.json", headers=READER)).json()
    assert {"/api/v1/sync", "/api/v1/runs/{run_id}", "/api/v1/plan/{operation}", "/api/v1/status",
            "/api/v1/audit", "/api/v1/plans/{plan_id}/approve", "/api/v1/operations/{operation}/pause",
            "/api/v1/healthz", "/api/v1/readyz"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"
    html = await api.client.get("/api/v1/docs", headers=READER)
    assert html.status_code == 200 and "/api/v1/openapi.json" in html.text


@pytest.mark.hub
async def test_readyz_is_ready_against_a_real_hub(tmp_path: Path, real_hub: RealHub) -> None:
    ctx, _ = make_context(tmp_path, make_settings(hub_url=real_hub.api_url, hub_token=real_hub.hubpilot_token))
    async with asgi_client(ctx) as client:
        r = await client.get("/readyz", headers=READER)
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["hub"]["detail"].startswith("JupyterHub ")
        assert real_hub.hubpilot_token not in r.text
    ctx2, _ = make_context(tmp_path, make_settings(hub_url=real_hub.api_url, hub_token="wrong-token"))
    async with asgi_client(ctx2) as client:
        r = await client.get("/api/v1/readyz", headers=READER)
        detail = r.json()["checks"]["hub"]["detail"]
        assert r.status_code == 503 and "does not accept hub.token" in detail and "wrong-token" not in detail
    await ctx.close()
    await ctx2.close()


async def test_refused_credentials_are_logged_without_the_token(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await api.client.get("/api/v1/status", headers={"Authorization": "Bearer leaked-candidate-0f3c"})
    await api.client.post("/api/v1/sync", headers=READER)
    await api.client.post("/api/v1/sync?wait=30", headers=ADMIN)
    text = caplog.text
    assert "refused GET /api/v1/status" in text and "forbidden POST /api/v1/sync for reader-caller" in text
    for secret in ("leaked-candidate-0f3c", *TOKENS.values(), HUB_TOKEN):
        assert secret not in text


async def test_invalid_settings_answer_503_and_name_the_problem_only_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    from hubpilot.api.app import create_app
    from hubpilot.settings import load_settings
    from hubpilot.wiring import build_context

    bad = {"tokens": [{"name": "x", "role": "admin", "sha256": "abc"}]}
    app = create_app(lambda: build_context(load_settings(api=bad)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/api/v1/status", headers=ADMIN)
        assert r.status_code == 503 and "the log says what to fix" in r.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200
    assert "api.tokens.0.sha256" in caplog.text and "64-character hex" in caplog.text


async def test_a_pause_whose_audit_entry_fails_answers_that_it_is_in_force(tmp_path: Path) -> None:
    """It answered 503 (state store unavailable) though the pause had been written: an admin
    took the operation for running. The answer is 200, paused, naming the audit failure."""
    from tests.test_loop_audit_always import NoAudit

    ctx, _ = make_context(tmp_path)
    await ctx.store.close()
    ctx.store = NoAudit(str(tmp_path / "no-audit.sqlite3"))
    try:
        async with asgi_client(ctx) as client:
            r = await client.post("/api/v1/operations/cull/pause", headers=ADMIN)
            assert r.status_code == 200, r.text
            assert r.json()["paused"] is True and "audit entry could not be written" in r.json()["detail"]
            status = (await client.get("/api/v1/status", headers=READER)).json()
            assert next(o for o in status["operations"] if o["operation"] == "cull")["paused"] is True
    finally:
        await ctx.close()
