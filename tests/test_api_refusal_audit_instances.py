"""Review: the audit of refused Graph webhook posts is rate-limited across instances, not per process.

Once a minute at most, counting the posts it stands for: but the counter lived in each process, so
the Functions app's instances (up to ``maximumInstanceCount``, 40) each wrote their own entry
every minute of a flood. The claim on the minute is now a conditional write in the state store
all instances share; each instance still counts its own refused posts and writes them with its
next entry, so no post goes uncounted and a flood costs each instance one store round a minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.app import create_app
from hubpilot.wiring import Context
from tests.test_security_webhook import item, settings


async def test_two_instances_write_one_entry_a_minute_and_lose_no_count(tmp_path: Path) -> None:
    now = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]
    # two processes of one deployment: each its own app and store client, one state store
    ctxs = [Context(settings=settings(), store=SqliteStore(tmp_path / "state.sqlite3"), clock=lambda: now[0])
            for _ in range(2)]
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(c)), base_url="http://hubpilot.test")
               for c in ctxs]
    a, b = clients

    async def forge(client: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            r = await client.post("/api/v1/graph/notifications", json={"value": [item("guessed")]})
            assert r.status_code == 403, r.text

    async def entries() -> list[dict]:
        return (await ctxs[0].store.read_audit(operation="graph-notifications", limit=50))[0]

    try:
        await forge(a, 5)
        await forge(b, 5)
        first = await entries()
        assert len(first) == 1 and first[0]["refused_posts"] == 1, first  # one entry for the minute, not one each
        now[0] += timedelta(seconds=61)
        await forge(b, 1)  # b's turn: the five it held and this one
        await forge(a, 1)  # within b's minute: a holds its own
        later = await entries()
        assert len(later) == 2 and later[0]["refused_posts"] == 6, later
        now[0] += timedelta(seconds=61)
        await forge(a, 1)
        final = await entries()
        assert len(final) == 3 and sum(e["refused_posts"] for e in final) == 5 + 5 + 1 + 1 + 1, final
    finally:
        for c in clients:
            await c.aclose()
        for ctx in ctxs:
            await ctx.close()
