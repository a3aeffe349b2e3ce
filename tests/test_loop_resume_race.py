"""Two resumes of one paused operation at the same instant (two admins, the CLI and the API), on
both state stores: one resumes it, the other is told it was not paused; one audit entry."""

from __future__ import annotations

import asyncio
from typing import Any

from hubpilot.loop import Runner
from hubpilot.ports.store import StateStore
from tests.test_loop import NOW
from tests.test_store import store  # noqa: F401  (the fixture: SQLite and Azurite)


class BothRead:
    """The store, but the first two reads of a pause flag return only once both were made."""

    def __init__(self, inner: StateStore) -> None:
        self._store = inner
        self.reads = 0
        self.both = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        got = await self._store.get_with_etag(key)
        if key.startswith("paused/") and self.reads < 2:
            self.reads += 1
            if self.reads == 2:
                self.both.set()
            await asyncio.wait_for(self.both.wait(), 30)
        return got


async def test_two_resumes_at_once_resume_once_and_audit_once(store: StateStore) -> None:  # noqa: F811
    """Both read the flag set; the write of one of them loses, reads it again and finds the
    operation resumed. (Before: the resume deleted the flag, a delete of a document already gone is
    no error, and both said "resumed" and wrote an audit entry.)"""
    await Runner(store, clock=lambda: NOW).set_paused("shelf", True, "alice")
    racing = BothRead(store)
    r = Runner(racing, clock=lambda: NOW)  # type: ignore[arg-type]
    bob, carol = await asyncio.gather(r.set_paused("shelf", False, "bob"), r.set_paused("shelf", False, "carol"))
    assert racing.reads == 2
    assert not bob.paused and not carol.paused
    assert [bob.changed, carol.changed].count(True) == 1, (bob, carol)
    loser = carol if bob.changed else bob
    assert "was not paused; nothing changed" in loser.describe()
    assert not await r.is_paused("shelf")
    entries, _ = await store.read_audit(operation="shelf")
    winner = "bob" if bob.changed else "carol"
    assert [(e["outcome"], e["actor"]) for e in entries] == [("resumed", winner), ("paused", "alice")]
    # and paused again, then resumed again, as before
    again = Runner(store, clock=lambda: NOW)
    assert (await again.set_paused("shelf", True, "dave")).changed and await again.is_paused("shelf")
    assert (await again.set_paused("shelf", False, "erin")).changed and not await again.is_paused("shelf")
