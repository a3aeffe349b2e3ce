"""Review (found with the demo, which configures no GPU pool): asking the admin API for the plan of an
operation that is not configured answered ``500 Internal Server Error`` in plain text, and a run of
it logged a traceback. It is answered like a run that fails: the outcome ``failed`` with an error
that names the settings to set, and one log line."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.runs import drain_tasks
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from tests.test_api_kit import HUB_TOKEN, asgi_client, auth, token_settings

ADMIN, READER = auth("admin"), auth("reader")
NEEDS = "scale needs scale.subscription_id, scale.resource_group and scale.cluster"


def _context(tmp: Path) -> Context:
    """hubpilot's own wiring (no test capabilities) with no [scale] pool, as the demo runs it."""
    settings = Settings(hub={"api_url": "http://127.0.0.1:9/hub/api", "token": HUB_TOKEN},
                        api={"tokens": token_settings()})
    return Context(settings=settings, store=SqliteStore(tmp / f"state-{uuid.uuid4().hex[:8]}.sqlite3"))


async def test_the_plan_of_an_unconfigured_operation_names_what_to_set(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    ctx = _context(tmp_path)
    try:
        async with asgi_client(ctx) as client:
            for method, path, headers in (("GET", "/api/v1/plan/scale", READER),
                                          ("POST", "/api/v1/scale?dry_run=true", ADMIN)):
                r = await client.request(method, path, headers=headers)
                assert r.status_code == 200, (path, r.status_code, r.text)
                run = r.json()
                assert run["outcome"] == "failed" and run["dry_run"] is True, run
                assert NEEDS in run["error"], run
                assert run["operation"] == "scale" and run["plan"] is None, run

            caplog.clear()
            with caplog.at_level(logging.INFO):
                r = await client.post("/api/v1/scale?wait=10", headers=ADMIN)
                await drain_tasks()
            run = (await client.get(r.headers["location"], headers=READER)).json()
            assert run["outcome"] == "failed" and NEEDS in run["error"], run
            assert not [rec for rec in caplog.records if rec.exc_info], \
                "a configuration answer is logged with a traceback:\n" + caplog.text
            assert NEEDS in caplog.text
    finally:
        await drain_tasks()
        await ctx.close()
