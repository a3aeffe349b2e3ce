"""Mutation review of the admin API (app, runs, scheduling): behaviour the other API tests did not hold.

Each test here kills a change to hubpilot/api that no test failed for (a bound not applied, a
parameter read the wrong way, a boundary moved). The API goes through the ASGI app over the real
Runner and SQLite store with the test capability of :mod:`tests.test_api_kit`, as the other API tests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hubpilot.api.runs import drain_tasks
from tests.azurite import Azurite
from tests.test_api_kit import asgi_client, auth, make_context, make_settings

ADMIN, READER = auth("admin"), auth("reader")


async def test_wait_is_bounded_by_api_wait_max_seconds(tmp_path: Path) -> None:
    """?wait= waits at most api.wait_max_seconds (the README: "?wait= bounded"): a run still applying
    then is answered 202 (running) at the bound, not after the ?wait the client asked for."""
    ctx, worlds = make_context(tmp_path, make_settings(wait_max_seconds=0.5))
    w = worlds["sync"]
    w.gate = asyncio.Event()
    try:
        async with asgi_client(ctx) as client:
            began = time.monotonic()
            r = await client.post("/api/v1/sync?wait=20", headers=ADMIN)
            took = time.monotonic() - began
            assert r.status_code == 202, r.text
            assert r.json()["outcome"] == "running"
            assert took < 10, f"the answer came after {took:.1f}s: ?wait was not bounded"
    finally:
        w.gate.set()
        await drain_tasks()
        await ctx.close()


async def test_dry_run_false_runs_and_other_true_spellings_only_plan(tmp_path: Path) -> None:
    """?dry_run=false is a run (202, it applies); ?dry_run=1 and =yes are dry-runs (200, nothing applied)."""
    ctx, worlds = make_context(tmp_path)
    try:
        async with asgi_client(ctx) as client:
            for spelling in ("1", "yes", "on", "True"):
                r = await client.post(f"/api/v1/cull?dry_run={spelling}", headers=ADMIN)
                assert r.status_code == 200, (spelling, r.text)
                assert r.json()["dry_run"] is True and r.json()["outcome"] == "planned"
            assert worlds["cull"].applies == 0 and worlds["cull"].items == set()
            r = await client.post("/api/v1/cull?dry_run=false&wait=30", headers=ADMIN)
            assert r.status_code == 200, r.text
            assert r.json()["dry_run"] is False and r.json()["outcome"] == "applied"
            assert worlds["cull"].items == {"cull-a", "cull-b"}
    finally:
        await drain_tasks()
        await ctx.close()


async def test_a_409_says_in_retry_after_when_the_holders_lease_expires(tmp_path: Path) -> None:
    """Retry-After of a 409 is the seconds until the holder's lease expires (rounded up), not a fixed
    guess: a client that honours it neither hammers the API nor waits past the lease."""
    from datetime import UTC, datetime

    ctx, worlds = make_context(tmp_path)
    w = worlds["scale"]
    w.gate = asyncio.Event()
    try:
        async with asgi_client(ctx) as client:
            first = await client.post("/api/v1/scale", headers=ADMIN)
            assert first.status_code == 202, first.text
            await asyncio.wait_for(w.entered.wait(), 10)
            second = await client.post("/api/v1/scale", headers=ADMIN)
            assert second.status_code == 409, second.text
            left = (datetime.fromisoformat(second.json()["expires_at"]) - datetime.now(UTC)).total_seconds()
            assert left > 60  # the lock's time to live (minutes)
            assert abs(int(second.headers["retry-after"]) - left) <= 5, (second.headers["retry-after"], left)
    finally:
        w.gate.set()
        await drain_tasks()
        await ctx.close()


@pytest.mark.azurite
async def test_wait_in_queue_mode_answers_the_run_the_queue_function_finished(azurite: Azurite, tmp_path: Path) -> None:
    """api.run_mode = queue (the Functions app): ?wait= waits for the run the queue function runs and
    answers 200 with it finished; the queued document alone (written before the answer) is not the answer."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import TextBase64DecodePolicy
    from azure.storage.queue.aio import QueueClient

    from hubpilot.api.runs import QUEUE_NAME, execute_queued, parse_queue_message

    ctx, worlds = make_context(tmp_path, make_settings(run_mode="queue",
                                                       queue_connection_string=azurite.connection_string))
    queue = QueueClient.from_connection_string(azurite.connection_string, QUEUE_NAME,
                                               message_decode_policy=TextBase64DecodePolicy())

    async def deliver() -> str:
        """What the Functions host does with the run request, once it is on the queue."""
        for _ in range(200):
            async for m in queue.receive_messages(max_messages=1):
                req = parse_queue_message(m.content)
                await queue.delete_message(m)
                await asyncio.sleep(0.5)  # the POST has answered by now if it does not wait
                await execute_queued(ctx, req)
                return req.run_id
            await asyncio.sleep(0.05)
        raise AssertionError("no run request reached the queue")

    try:
        async with queue:
            try:
                await queue.create_queue()
            except ResourceExistsError:
                await queue.clear_messages()
            async with asgi_client(ctx) as client:
                delivered = asyncio.create_task(deliver())
                r = await client.post("/api/v1/sync?wait=20", headers=ADMIN)
                run_id = await delivered
                assert r.status_code == 200, r.text
                assert r.json()["run_id"] == run_id and r.json()["outcome"] == "applied"
                assert r.headers["location"] == f"/api/v1/runs/{run_id}"
                assert worlds["sync"].items == {"sync-a", "sync-b"}
    finally:
        await drain_tasks()
        await ctx.close()


async def test_audit_since_keeps_the_offset_it_is_given_and_reads_none_as_utc(tmp_path: Path) -> None:
    """GET /audit?since= is "at or after" the instant given: an offset is kept (+05:00 is five hours
    before the same clock time in UTC), a time without one is UTC, and the boundary is inclusive."""
    from datetime import datetime, timedelta, timezone

    ctx, _ = make_context(tmp_path)
    try:
        async with asgi_client(ctx) as client:
            assert (await client.post("/api/v1/sync?wait=30", headers=ADMIN)).status_code == 200
            entries = (await client.get("/api/v1/audit", headers=READER)).json()["entries"]
            assert len(entries) == 1
            at = datetime.fromisoformat(entries[0]["at"])

            async def count(since: datetime | str) -> int:
                text = since if isinstance(since, str) else since.isoformat()
                r = await client.get("/api/v1/audit", params={"since": text}, headers=READER)
                assert r.status_code == 200, r.text
                return len(r.json()["entries"])

            east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-3))
            assert await count(at) == 1  # inclusive
            assert await count(at.astimezone(east)) == 1
            assert await count(at.astimezone(west)) == 1
            assert await count((at + timedelta(seconds=1)).astimezone(east)) == 0
            assert await count((at + timedelta(seconds=1)).astimezone(west)) == 0
            assert await count(at.astimezone(east).replace(tzinfo=None).isoformat()) == 0  # read as UTC: later
            assert await count(at.replace(tzinfo=None).isoformat()) == 1
    finally:
        await drain_tasks()
        await ctx.close()


async def test_audit_by_user_applies_the_since_and_operation_filters_too(tmp_path: Path) -> None:
    """GET /audit?user= with since= and operation=: only the entries naming the user that also pass
    the other filters (a search by user that dropped them answered entries the admin excluded)."""
    from datetime import timedelta

    from hubpilot.loop import Action
    from tests.test_audit_user import T0, entry

    ctx, _ = make_context(tmp_path)
    try:
        await ctx.store.append_audit(entry("sync", [Action("create_user", "bob", 0, {}, "in the group")], at=T0))
        later = T0 + timedelta(hours=1)
        await ctx.store.append_audit(entry("cull", [Action("stop_server", "bob/", 0, {"user": "bob"}, "idle")],
                                           at=later))
        async with asgi_client(ctx) as client:
            async def ops(**params: str) -> list[str]:
                r = await client.get("/api/v1/audit", params={"user": "bob", **params}, headers=READER)
                assert r.status_code == 200, r.text
                return [e["operation"] for e in r.json()["entries"]]

            assert await ops() == ["cull", "sync"]
            assert await ops(operation="sync") == ["sync"]
            assert await ops(operation="cull") == ["cull"]
            assert await ops(since=(T0 + timedelta(minutes=30)).isoformat()) == ["cull"]
            assert await ops(since=later.isoformat()) == ["cull"]
            assert await ops(since=(later + timedelta(microseconds=1)).isoformat()) == []
    finally:
        await ctx.close()


async def test_an_approval_while_another_run_holds_the_lock_is_409_and_stays_usable(tmp_path: Path) -> None:
    """POST /plans/{id}/approve while a run of the plan's operation holds its lock answers 409 naming the
    holder with Retry-After (not a 500), applies nothing and does not use up the approval: once the lock is
    free the same approval applies the plan, and only once."""
    from datetime import UTC, datetime

    ctx, worlds = make_context(tmp_path)
    w = worlds["cull"]
    w.items, w.desired = {"a", "b", "c"}, set()
    try:
        async with asgi_client(ctx) as client:
            refused = (await client.post("/api/v1/cull?wait=30", headers=ADMIN)).json()
            assert refused["outcome"] == "refused", refused
            plan_id = refused["plan_id"]
            lease = await ctx.store.acquire_lock("cull", "cli:ana:run", ctx.runner.lock_ttl, datetime.now(UTC))
            assert lease is not None
            r = await client.post(f"/api/v1/plans/{plan_id}/approve?wait=30", headers=ADMIN)
            assert r.status_code == 409, r.text
            assert r.json()["holder"] == "cli:ana:run" and int(r.headers["retry-after"]) >= 1
            assert w.items == {"a", "b", "c"} and w.applies == 0
            await ctx.store.release_lock(lease)
            ok = await client.post(f"/api/v1/plans/{plan_id}/approve?wait=30", headers=ADMIN)
            assert ok.status_code == 200, ok.text
            assert ok.json()["outcome"] == "applied" and ok.json()["approved_plan"] == plan_id
            assert w.items == set() and w.applies == 1
            # the audit log says who approved it (the caller), under the approval trigger
            audit = (await client.get("/api/v1/audit?operation=cull", headers=READER)).json()["entries"]
            assert [(e["trigger"], e["actor"], e["outcome"]) for e in audit] == [
                ("approval", "token:admin-caller", "applied"), ("api", "token:admin-caller", "refused")]
            again = await client.post(f"/api/v1/plans/{plan_id}/approve?wait=30", headers=ADMIN)
            assert again.status_code == 404 and w.applies == 1
    finally:
        await drain_tasks()
        await ctx.close()


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_413(tmp_path: Path, streamed: bool) -> None:
    """The README: a body *above* 4 MiB is 413. One of exactly MAX_BODY_BYTES (valid JSON padded with
    spaces) is read and acted on, declared or chunked; one byte more is refused and records nothing."""
    from collections.abc import AsyncIterator

    from hubpilot.api.app import MAX_BODY_BYTES

    ctx, _ = make_context(tmp_path)
    doc = b'{"user": "alice"}'

    def sent(size: int) -> bytes | AsyncIterator[bytes]:
        data = doc + b" " * (size - len(doc))
        if not streamed:
            return data

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1 << 20):
                yield data[i:i + (1 << 20)]
        return chunks()

    headers = {**auth("hub"), "Content-Type": "application/json"}
    try:
        async with asgi_client(ctx) as client:
            over = await client.post("/api/v1/scale/demand", headers=headers, content=sent(MAX_BODY_BYTES + 1))
            assert over.status_code == 413, over.text
            assert await ctx.store.list("scale/demand/") == {}
            r = await client.post("/api/v1/scale/demand", headers=headers, content=sent(MAX_BODY_BYTES))
            assert r.status_code == 202, r.text
            assert r.json()["recorded"] == "alice~"
            assert list(await ctx.store.list("scale/demand/")) == ["scale/demand/alice~"]
    finally:
        await drain_tasks()
        await ctx.close()


async def test_an_unreadable_state_store_is_503_naming_no_path_or_error_text(tmp_path: Path) -> None:
    """A state store that cannot be opened answers 503 "the state store is unavailable" with the error's
    type only: its text (here the state file's path, elsewhere an account URL) stays in the log."""
    from hubpilot.adapters.store_sqlite import SqliteStore

    blocker = tmp_path / "not-a-directory-7f3e"
    blocker.write_text("a file where the state file's folder should be")
    ctx, worlds = make_context(tmp_path)
    await ctx.store.close()
    ctx.store = SqliteStore(blocker / "state.sqlite3")
    try:
        async with asgi_client(ctx) as client:
            for method, path in (("GET", "/api/v1/status"), ("POST", "/api/v1/sync"), ("GET", "/api/v1/audit")):
                r = await client.request(method, path, headers=ADMIN)
                assert r.status_code == 503, (path, r.text)
                assert r.json() == {"detail": "the state store is unavailable: StoreError"}, r.text
                assert "7f3e" not in r.text
            assert worlds["sync"].applies == 0
    finally:
        await drain_tasks()
        await ctx.close()


async def test_a_500_carries_no_text_of_the_error_even_a_short_one(tmp_path: Path) -> None:
    """An unexpected error's answer holds neither the exception's text nor the data it quotes, however
    short (a long value is cut in the exception's own text, which hid a body that quoted it)."""
    run = "0123456789abcdef0123456789abcdef"
    ctx, _ = make_context(tmp_path)
    await ctx.store.put(f"runs/{run}", {"run_id": run, "outcome": "Key=s3cr3t"})
    try:
        async with asgi_client(ctx) as client:
            r = await client.get(f"/api/v1/runs/{run}", headers=READER)
            assert r.status_code == 500, r.text
            assert set(r.json()) == {"detail", "correlation_id"}
            assert "s3cr3t" not in r.text and "outcome" not in r.text and "validation" not in r.text.lower()
    finally:
        await ctx.close()


async def test_a_damaged_reservation_blocks_nothing_and_is_overwritten(tmp_path: Path) -> None:
    """A reservation document whose 'until' is not a time (damaged, hand-edited) holds nothing: status shows
    no lock, and a POST starts the run (202), whose reservation replaces it (not a 500 on every POST)."""
    from hubpilot.api.runs import PENDING_KEY

    ctx, worlds = make_context(tmp_path)
    key = PENDING_KEY.format(operation="sync")
    await ctx.store.put(key, {"run_id": "f" * 32, "holder": "someone:" + "f" * 32, "until": "next tuesday"})
    try:
        async with asgi_client(ctx) as client:
            status = await client.get("/api/v1/status", headers=READER)
            assert status.status_code == 200, status.text
            assert next(o for o in status.json()["operations"] if o["operation"] == "sync")["lock"] is None
            r = await client.post("/api/v1/sync?wait=30", headers=ADMIN)
            assert r.status_code == 200, r.text
            assert r.json()["outcome"] == "applied" and worlds["sync"].items == {"sync-a", "sync-b"}
            assert await ctx.store.get(key) is None  # released: the damaged one is gone with it
    finally:
        await drain_tasks()
        await ctx.close()


async def test_an_audit_entry_the_search_cannot_read_is_a_500_not_a_bad_cursor(tmp_path: Path) -> None:
    """A search by user that meets an audit entry it cannot read (damaged, hand-edited) is an error of
    hubpilot's (500 with a correlation id, as the README says of a stored document it cannot read), not
    a 400 blaming a cursor the caller never sent; a cursor that is not one is still 400 naming it."""
    ctx, _ = make_context(tmp_path)
    for day in (1, 2):
        await ctx.store.append_audit({"at": f"2026-11-0{day}T00:00:00+00:00", "operation": "sync", "kind": "run",
                                      "outcome": "applied", "results": 3})
    try:
        async with asgi_client(ctx) as client:
            r = await client.get("/api/v1/audit", params={"user": "bob"}, headers=READER)
            assert r.status_code == 500, r.text
            assert "cursor" not in r.json()["detail"] and r.json()["correlation_id"]
            # a good cursor (the search's own form: one entry of the newest page read) meeting the
            # second damaged entry is not blamed either
            after = await client.get("/api/v1/audit", params={"user": "bob", "cursor": "u1."}, headers=READER)
            assert after.status_code == 500 and "cursor" not in after.json()["detail"], after.text
            bad = await client.get("/api/v1/audit", params={"user": "bob", "cursor": "zzz"}, headers=READER)
            assert bad.status_code == 400 and "cursor" in bad.json()["detail"], bad.text
            plain = await client.get("/api/v1/audit", headers=READER)
            assert plain.status_code == 200 and len(plain.json()["entries"]) == 2
    finally:
        await ctx.close()


async def test_a_pause_and_a_resume_name_the_caller_in_the_audit_and_the_detail(tmp_path: Path) -> None:
    """Who paused an operation is the caller: its audit entry's actor, and what a second pause says."""
    ctx, _ = make_context(tmp_path)
    try:
        async with asgi_client(ctx) as client:
            assert (await client.post("/api/v1/operations/scale/pause", headers=ADMIN)).json()["changed"] is True
            again = (await client.post("/api/v1/operations/scale/pause", headers=ADMIN)).json()
            assert "already paused by token:admin-caller" in again["detail"], again
            assert (await client.post("/api/v1/operations/scale/resume", headers=ADMIN)).json()["changed"] is True
            audit = (await client.get("/api/v1/audit?operation=scale", headers=READER)).json()["entries"]
            assert [(e["outcome"], e["actor"]) for e in audit] == [
                ("resumed", "token:admin-caller"), ("paused", "token:admin-caller")]
    finally:
        await ctx.close()
