"""Adversarial checks of the anonymous Graph webhook (handshake, clientState, what a forger can cost)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.app import MAX_BODY_BYTES, create_app
from hubpilot.api.front import Front
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.entra import InProcessHints, notification_queue

SECRET = "client-state-" + uuid.uuid4().hex
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"
GROUP = "11111111-2222-3333-4444-555555555555"


def settings(**entra: Any) -> Settings:
    return Settings(
        hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
        directory={"kind": "entra", "entra": {
            "graph_base_url": "http://127.0.0.1:9/v1.0", "notifications": True, "client_state": SECRET,
            "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications", **entra}},
        sync={"users_groups": [GROUP]},
    )


def item(client_state: str | None = SECRET, **extra: Any) -> dict[str, Any]:
    return {"subscriptionId": str(uuid.uuid4()), "clientState": client_state, "changeType": "updated",
            "resource": f"Groups/{GROUP}", "tenantId": TENANT,
            "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "id": GROUP}, **extra}


@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[tuple[Context, httpx.AsyncClient]]:
    ctx = Context(settings=settings(), store=SqliteStore(tmp_path / "state.sqlite3"))
    front = Front(lambda: create_app(ctx))  # what both hosts serve
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://hubpilot.test") as c:
        yield ctx, c
    await ctx.close()


def queued(ctx: Context) -> list[Any]:
    q = notification_queue(ctx)
    assert isinstance(q, InProcessHints)
    out = []
    while not q.queue.empty():
        out.append(q.queue.get_nowait())
    return out


@pytest.mark.parametrize("query", ["validationToken=%3Cscript%3Ealert(1)%3C/script%3E",
                                   "validation%54oken=%3Cscript%3Ealert(1)%3C/script%3E"])
async def test_the_echoed_validation_token_is_never_sniffed_or_cached(
        hook: tuple[Context, httpx.AsyncClient], query: str) -> None:
    ctx, c = hook
    for path in ("notifications", "lifecycle"):
        r = await c.post(f"/api/v1/graph/{path}?{query}")
        assert r.status_code == 200 and r.text == "<script>alert(1)</script>"
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers.get("x-content-type-options") == "nosniff", dict(r.headers)
        assert r.headers.get("cache-control") == "no-store"
        # the front's own answer carries the app's headers too (it answers before the app)
        assert r.headers.get("x-frame-options") == "DENY" and r.headers.get("referrer-policy") == "no-referrer"
    assert queued(ctx) == []


async def test_one_forged_item_in_a_batch_is_refused_and_audited_the_valid_one_only_hints(
        hook: tuple[Context, httpx.AsyncClient]) -> None:
    ctx, c = hook
    r = await c.post("/api/v1/graph/notifications", json={"value": [item(), item(SECRET + "x")]})
    assert r.status_code == 202
    hints = queued(ctx)
    assert [h.kind for h in hints] == ["sync"]
    audit, _ = await ctx.store.read_audit(operation="graph-notifications")
    assert len(audit) == 1 and len(audit[0]["refusal"]) == 1 and SECRET not in json.dumps(audit)


async def test_a_forger_cannot_make_the_audit_log_or_the_answer_larger_than_a_bound(
        hook: tuple[Context, httpx.AsyncClient], caplog: pytest.LogCaptureFixture) -> None:
    ctx, c = hook
    sid = "S" * 100_000 + "\nFAKE LOG LINE"
    many = [item("wrong", subscriptionId=sid, tenantId="t" * 100_000)] + [item("wrong") for _ in range(5000)]
    r = await c.post("/api/v1/graph/notifications", json={"value": many})
    assert r.status_code == 403
    assert len(r.content) < 20_000, len(r.content)
    audit, _ = await ctx.store.read_audit(operation="graph-notifications")
    assert len(json.dumps(audit)) < 20_000, len(json.dumps(audit))
    assert "\nFAKE LOG LINE" not in caplog.text and len(caplog.text) < 20_000
    assert queued(ctx) == []


async def test_a_lifecycle_event_at_the_notification_url_is_taken_as_one(
        hook: tuple[Context, httpx.AsyncClient]) -> None:
    """Graph allows lifecycleNotificationUrl to be the notificationUrl (and effective_lifecycle_url
    is the notification URL when it does not end in /notifications): its verified lifecycle events
    are acted on there, not refused (Graph would retry them and the subscription would lapse)."""
    ctx, c = hook
    event = {"lifecycleEvent": "reauthorizationRequired", "subscriptionId": str(uuid.uuid4()),
             "subscriptionExpirationDateTime": "2019-09-18T00:52:45.9696658+00:00",
             "clientState": SECRET, "tenantId": TENANT}
    r = await c.post("/api/v1/graph/notifications", json={"value": [event, item()]})
    assert r.status_code == 202
    hints = queued(ctx)
    assert sorted(h.kind for h in hints) == ["subscriptions", "sync"]
    assert next(h for h in hints if h.kind == "subscriptions").renew == (event["subscriptionId"],)
    r = await c.post("/api/v1/graph/notifications", json={"value": [{**event, "clientState": "guessed"}]})
    assert r.status_code == 403 and queued(ctx) == []


@pytest.mark.parametrize("path", ["notifications", "lifecycle"])
async def test_a_deeply_nested_body_is_400_not_a_server_error(
        hook: tuple[Context, httpx.AsyncClient], path: str) -> None:
    """Anyone may post to the webhook: JSON nested deeper than the parser's recursion (well within
    the body limit) is no Graph notification and is answered as one (400), not with a 500 and a
    traceback in the log for every such request."""
    ctx, c = hook
    depth = 100_000
    for body in (b'{"value": ' + b"[" * depth + b"]" * depth + b"}",
                 b'{"value": [' + b'{"a": ' * depth + b"1" + b"}" * depth + b"]}"):
        r = await c.post(f"/api/v1/graph/{path}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert "nest" in r.json()["detail"]
    assert queued(ctx) == [] and await ctx.store.read_audit() == ([], None)


async def test_a_flood_of_forged_posts_is_audited_once_a_minute_with_a_count(tmp_path: Path) -> None:
    """Each forged POST is bounded (above), but their number is the forger's: one audit entry
    per minute at most, the next one counting the refused posts it stands for, so a flood cannot
    fill the state store or push the real entries out of the audit's first pages."""
    now = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]
    ctx = Context(settings=settings(), store=SqliteStore(tmp_path / "state.sqlite3"), clock=lambda: now[0])
    front = Front(lambda: create_app(ctx))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://hubpilot.test") as c:
            for _ in range(40):
                r = await c.post("/api/v1/graph/notifications", json={"value": [item("guessed")]})
                assert r.status_code == 403
            audit, _ = await ctx.store.read_audit(operation="graph-notifications")
            assert len(audit) == 1 and audit[0]["refused_posts"] == 1
            now[0] += timedelta(seconds=59)
            await c.post("/api/v1/graph/lifecycle", json={"value": [item("guessed")]})
            assert len((await ctx.store.read_audit(operation="graph-notifications"))[0]) == 1
            now[0] += timedelta(seconds=2)
            await c.post("/api/v1/graph/notifications", json={"value": [item("guessed"), item("again")]})
            audit, _ = await ctx.store.read_audit(operation="graph-notifications")
            assert len(audit) == 2
            newest = audit[0]
            assert newest["refused_posts"] == 41 and len(newest["refusal"]) == 2  # 39 + 1 held back, and this one
            assert "since" in newest and newest["outcome"] == "refused"
            # a genuine notification is never held back
            assert (await c.post("/api/v1/graph/notifications", json={"value": [item()]})).status_code == 202
            assert [h.kind for h in queued(ctx)] == ["sync"]
    finally:
        await ctx.close()


async def test_the_front_reads_no_unbounded_body_for_a_handshake(hook: tuple[Context, httpx.AsyncClient]) -> None:
    """The front answers the handshake before the app's body limit: it applies the same limit
    (a handshake's body is empty), declared or streamed, instead of reading whatever is sent."""
    _, c = hook

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    for kwargs in ({"content": b" " * (MAX_BODY_BYTES + 1)}, {"content": stream()}):
        r = await c.post("/api/v1/graph/notifications?validationToken=abc", **kwargs)
        assert r.status_code == 413, r.text
        assert r.headers.get("cache-control") == "no-store"
    r = await c.post("/api/v1/graph/notifications?validationToken=abc", content=b"")
    assert r.status_code == 200 and r.text == "abc"


@pytest.mark.parametrize("forged", ["", SECRET[:-1], SECRET.upper(), SECRET + "0"],
                         ids=["empty", "short", "upper-case", "longer"])
async def test_a_client_state_that_only_resembles_the_secret_is_refused(
        hook: tuple[Context, httpx.AsyncClient], forged: str) -> None:
    """Only the whole secret, as configured, verifies a notification: not an empty clientState,
    not the secret short of its last character, in another letter case or with one added."""
    ctx, c = hook
    for path in ("notifications", "lifecycle"):
        extra = {"lifecycleEvent": "reauthorizationRequired"} if path == "lifecycle" else {}
        r = await c.post(f"/api/v1/graph/{path}", json={"value": [item(forged, **extra)]})
        assert r.status_code == 403, (path, r.text)
    assert queued(ctx) == []


async def test_a_validation_token_longer_than_the_bound_is_not_echoed(hook: tuple[Context, httpx.AsyncClient]) -> None:
    """A validationToken above 4096 characters is echoed neither by the front nor by the app (a
    query key the front does not recognise reaches the app): it is no handshake, and an empty
    body is no notification (400)."""
    ctx, c = hook
    long = "a" * 4097
    for key in ("validationToken", "validation%54oken"):
        r = await c.post(f"/api/v1/graph/notifications?{key}={long}")
        assert r.status_code == 400 and long not in r.text, (key, r.status_code)
        bounded = await c.post(f"/api/v1/graph/notifications?{key}={long[:-1]}")
        assert bounded.status_code == 200 and bounded.text == long[:-1]
    assert queued(ctx) == []


@pytest.mark.parametrize("path", ["/api/v1/sync", "/api/v1/operations/sync/pause", "/api/v1/scale/demand"])
async def test_a_validation_token_on_another_route_is_no_handshake(
        hook: tuple[Context, httpx.AsyncClient], path: str) -> None:
    """Only the webhook paths answer Graph's handshake: elsewhere a validationToken is an unknown
    query parameter, and an anonymous POST is answered 401 (nothing echoed)."""
    _, c = hook
    r = await c.post(f"{path}?validationToken=echo-me")
    assert r.status_code == 401 and "echo-me" not in r.text, r.text
