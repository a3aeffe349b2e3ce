"""The demo's terminal follows the audit log: an entry that is no run (a refused Graph
notification's) does not end the following (it raised KeyError, and again at Ctrl-C)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.demo import _follow_runs
from hubpilot.loop import Outcome, RunRecord
from hubpilot.settings import Settings
from hubpilot.wiring import Context


async def test_an_entry_that_is_no_run_does_not_end_the_following(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    ctx = Context(settings=Settings(), store=store)
    since = datetime.now(UTC) - timedelta(minutes=1)
    try:
        await store.append_audit({"at": datetime.now(UTC).isoformat(), "operation": "graph-notifications",
                                  "kind": "notification", "trigger": "webhook", "actor": "graph",
                                  "outcome": "refused", "refusal": ["wrong or missing clientState"]})
        later = datetime.now(UTC)  # a run after it, which the follower shows only past that entry
        record = RunRecord(run_id="r-after", operation="sync", trigger="timer", actor="timer", started=later,
                           outcome=Outcome.FAILED, finished=later, error="DirectoryError: broken")
        await store.append_audit({**record.to_json(), "at": later.isoformat(), "kind": "run"})
        follow = asyncio.ensure_future(_follow_runs(ctx, since, every=0.01))
        out = ""
        async with asyncio.timeout(30):  # a guard against a hang, not a timing assert
            while "DirectoryError: broken" not in out:
                assert not follow.done(), follow.exception()
                await asyncio.sleep(0.01)
                out += capsys.readouterr().out
        assert not follow.done(), follow.exception()
        follow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follow
    finally:
        await store.close()
