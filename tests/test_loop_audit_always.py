"""A run that applied leaves its audit entry even when writing its run document fails."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.ports.store import StoreError
from tests.test_loop import Shelf, runner


class FailingFinish(SqliteStore):
    """The second write of a run document (the finished record) fails, as a Storage outage would."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.run_puts = 0

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        if key.startswith("runs/"):
            self.run_puts += 1
            if self.run_puts == 2:
                raise StoreError("Azure Storage: cannot write document: HTTP 503 ServerBusy")
        return await super().put(key, doc, if_match=if_match)


async def test_the_audit_entry_is_appended_when_the_run_document_cannot_be_written(tmp_path: Path) -> None:
    store = FailingFinish(str(tmp_path / "state.sqlite3"))
    cap = Shelf({"a"})
    try:
        with pytest.raises(StoreError):
            await runner(store).run(cap, trigger="t", actor="me")
        assert cap.items == {"a"}  # applied
        entries, _ = await store.read_audit(operation="shelf")
        assert [e["outcome"] for e in entries] == ["applied"], "an applied run left no audit entry"
    finally:
        await store.close()


class NoAudit(SqliteStore):
    """The audit log cannot be written (an outage of its table), the documents can."""

    async def append_audit(self, entry: Mapping[str, Any]) -> str:
        raise StoreError("Azure Storage: cannot append the audit entry: HTTP 503 ServerBusy")


async def test_a_pause_whose_audit_entry_fails_is_in_force_and_says_so(tmp_path: Path) -> None:
    """The pause was written, then its audit entry failed: the caller got an error (503 over
    HTTP) though the operation was paused. The answer now says the pause is in force and that
    its audit entry could not be written."""
    store = NoAudit(str(tmp_path / "state.sqlite3"))
    try:
        r = runner(store)
        state = await r.set_paused("shelf", True, "admin")
        assert state.paused and state.changed and await r.is_paused("shelf")
        assert state.audit_error is not None and "ServerBusy" in state.audit_error
        assert "audit entry could not be written" in state.describe()
        resumed = await r.set_paused("shelf", False, "admin")
        assert not resumed.paused and resumed.audit_error is not None and not await r.is_paused("shelf")
    finally:
        await store.close()


class AuditDownOnce(SqliteStore):
    """The audit log's first append fails (an outage of its table); the later ones go through."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.failed = False

    async def append_audit(self, entry: Mapping[str, Any]) -> str:
        if not self.failed:
            self.failed = True
            raise StoreError("Azure Storage: cannot append the audit entry: HTTP 503 ServerBusy")
        return await super().append_audit(entry)


async def test_a_throttled_entry_that_could_not_be_written_loses_no_count(tmp_path: Path) -> None:
    """The refused posts an entry stood for were forgotten when its append failed: the next entry
    counted only the posts after it. They are counted by the next entry now."""
    from datetime import UTC, datetime, timedelta

    from hubpilot.loop import AuditThrottle

    store = AuditDownOnce(str(tmp_path / "state.sqlite3"))
    t0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    entry = {"at": t0.isoformat(), "operation": "graph-notifications", "outcome": "refused"}
    throttle = AuditThrottle(store, "graph-notifications", timedelta(minutes=1))
    try:
        with pytest.raises(StoreError):
            await throttle.record(entry, t0)
        assert not await throttle.record(entry, t0 + timedelta(seconds=10))  # within the minute: held
        assert await throttle.record(entry, t0 + timedelta(seconds=61))
        entries, _ = await store.read_audit(operation="graph-notifications")
        assert [e["refused_posts"] for e in entries] == [3], "posts counted by the failed entry were lost"
        assert entries[0]["since"] is None  # no entry was written before it
    finally:
        await store.close()


class SlowAudit(SqliteStore):
    """An audit append takes a while (a request to Azure Storage): it waits until the test lets
    it go, and says when it has begun."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.appending = asyncio.Event()
        self.go = asyncio.Event()

    async def append_audit(self, entry: Mapping[str, Any]) -> str:
        self.appending.set()
        await self.go.wait()
        return await super().append_audit(entry)


async def test_a_run_cancelled_while_its_audit_entry_is_written_keeps_its_entry(tmp_path: Path) -> None:
    """A run that applied was cancelled (the host stopping) while its final audit entry was being
    written: the append was abandoned, and the cancelled run's own entry is written only for a run
    that had not begun to finish, so the run that applied left no audit entry at all. The append
    now finishes (once), then the cancellation goes on."""
    store = SlowAudit(str(tmp_path / "state.sqlite3"))
    cap = Shelf({"a"})
    try:
        r = runner(store)
        task = asyncio.create_task(r.run(cap, trigger="t", actor="me"))
        await asyncio.wait_for(store.appending.wait(), 10)
        task.cancel()
        store.go.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cap.items == {"a"}  # applied
        entries, _ = await store.read_audit(operation="shelf")
        assert [e["outcome"] for e in entries] == ["applied"], "the run that applied left no audit entry"
        assert await store.read_lock("shelf", r.clock()) is None  # the lock is released as ever
    finally:
        await store.close()


async def test_a_throttle_claim_from_a_clock_that_was_once_far_ahead_does_not_silence_the_entries(
        tmp_path: Path) -> None:
    """A claim written by a clock a day ahead (a host before NTP fixed it) held every process's
    entries until the wall clock caught up with it: refused posts went unaudited for a day. A
    claim more than an interval ahead of this clock is no claim; one within it still is."""
    from datetime import UTC, datetime, timedelta

    from hubpilot.loop import AuditThrottle

    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    t0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    entry = {"at": t0.isoformat(), "operation": "graph-notifications", "outcome": "refused"}
    try:
        await store.put("audit-throttle/graph-notifications", {"at": (t0 + timedelta(seconds=30)).isoformat()})
        assert not await AuditThrottle(store, "graph-notifications", timedelta(minutes=1)).record(entry, t0)
        await store.put("audit-throttle/graph-notifications", {"at": (t0 + timedelta(days=1)).isoformat()})
        throttle = AuditThrottle(store, "graph-notifications", timedelta(minutes=1))
        assert await throttle.record(entry, t0), "a claim a day ahead silenced the audit entries"
        entries, _ = await store.read_audit(operation="graph-notifications")
        assert [e["refused_posts"] for e in entries] == [1]
        assert await store.get("audit-throttle/graph-notifications") == {"at": t0.isoformat()}
    finally:
        await store.close()
