"""A run that applied leaves its audit entry even when writing its run document fails."""

from __future__ import annotations

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
