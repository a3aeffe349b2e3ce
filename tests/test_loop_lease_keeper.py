"""The runner's lease keeper: a renewal in flight when the run ends, a renewal that fails once, and
a lease another run took over meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import ActionResult, Outcome, Plan, Progress, Runner
from hubpilot.ports.store import Lease, StoreError
from tests.test_loop import Shelf


class SlowRenewals(SqliteStore):
    """The renewal reaches the store at once, its answer comes back ``lag`` seconds later (a slow
    network), ``late``: only once the run's audit entry is written (the run's last write), so
    that the run ends while the answer is on its way; ``fail_first`` renewals raise a StoreError
    (a transient Storage error)."""

    def __init__(self, path: str, *, lag: float = 0.0, late: bool = False, fail_first: int = 0) -> None:
        super().__init__(path)
        self.lag, self.late = lag, late
        self.fail_first = fail_first
        self.renewals = 0
        self.renewing, self.audited = asyncio.Event(), asyncio.Event()

    async def renew_lock(self, lease: Lease, ttl: timedelta, now: datetime) -> Lease | None:
        self.renewals += 1
        self.renewing.set()
        if self.renewals <= self.fail_first:
            raise StoreError("state file: disk I/O error (transient)")
        renewed = await super().renew_lock(lease, ttl, now)
        if self.late:
            await self.audited.wait()
        await asyncio.sleep(self.lag)
        return renewed

    async def append_audit(self, entry: dict[str, Any]) -> str:
        written = await super().append_audit(entry)
        self.audited.set()
        return written


class UntilRenewing(Shelf):
    """Its apply lasts until the store has a renewal of the lock under way (however loaded the
    machine, not a time guessed to outlast the keeper's interval)."""

    def __init__(self, wanted: set[str], store: SlowRenewals) -> None:
        super().__init__(wanted)
        self.store = store

    async def apply(self, plan: Plan, observed: set[str], progress: Progress) -> list[ActionResult]:
        await self.store.renewing.wait()
        return await super().apply(plan, observed, progress)


async def test_a_run_ending_during_a_renewal_releases_the_lock(tmp_path: Path) -> None:
    store = SlowRenewals(str(tmp_path / "s.sqlite3"), lag=0.6, late=True)
    try:
        r: Runner[set[str]] = Runner(store, lock_ttl=timedelta(seconds=3))  # renews after 1 s
        record = await r.run(UntilRenewing({"a"}, store), trigger="t", actor="me")  # ends mid-renewal
        assert record.outcome is Outcome.APPLIED
        assert store.renewals == 1
        assert await store.read_lock("shelf", datetime.now(UTC)) is None, "the lock was left held"
        assert (await r.run(Shelf({"b"}), trigger="t", actor="me")).outcome is Outcome.APPLIED
    finally:
        await store.close()


class UntilRenewedTwice(UntilRenewing):
    """Its apply lasts until the store has seen a second renewal (the one after the failed one),
    not a time guessed to outlast two intervals of the keeper; if none comes (a keeper that gave
    up after the error) it ends after a generous bound and the test says so."""

    async def apply(self, plan: Plan, observed: set[str], progress: Progress) -> list[ActionResult]:
        async def second() -> None:
            while self.store.renewals < 2:
                self.store.renewing.clear()
                await self.store.renewing.wait()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(second(), 30)
        return await Shelf.apply(self, plan, observed, progress)


async def test_a_failed_renewal_is_retried_and_the_run_still_releases(tmp_path: Path) -> None:
    store = SlowRenewals(str(tmp_path / "s.sqlite3"), fail_first=1)
    try:
        r: Runner[set[str]] = Runner(store, lock_ttl=timedelta(seconds=1.5))  # renews every second
        record: Any = await r.run(UntilRenewedTwice({"a"}, store), trigger="t", actor="me")
        assert record.outcome is Outcome.APPLIED
        assert store.renewals >= 2, "the keeper stopped renewing after one error"
        assert await store.read_lock("shelf", datetime.now(UTC)) is None
    finally:
        await store.close()


class TakenOver(SqliteStore):
    """Before the first renewal reaches the store, the lease lapses and another run takes the lock
    (a run stalled past its lease, e.g. a paused VM): the renewal finds another holder."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.renewed = asyncio.Event()
        self.other: Lease | None = None

    async def renew_lock(self, lease: Lease, ttl: timedelta, now: datetime) -> Lease | None:
        if self.other is None:
            self.other = await self.acquire_lock(lease.name, "other:run", ttl, lease.expires_at)
        answer = await super().renew_lock(lease, ttl, now)
        self.renewed.set()
        return answer


class UntilRenewed(Shelf):
    def __init__(self, wanted: set[str], store: TakenOver) -> None:
        super().__init__(wanted)
        self.store = store

    async def apply(self, plan: Plan, observed: set[str], progress: Progress) -> list[ActionResult]:
        await self.store.renewed.wait()
        return await super().apply(plan, observed, progress)


async def test_a_run_that_lost_its_lease_ends_and_leaves_the_new_holders_lock(tmp_path: Path) -> None:
    store = TakenOver(str(tmp_path / "s.sqlite3"))
    try:
        r: Runner[set[str]] = Runner(store, lock_ttl=timedelta(seconds=3))  # renews after 1 s
        record = await r.run(UntilRenewed({"a"}, store), trigger="t", actor="me")
        assert record.outcome is Outcome.APPLIED and record.error is None
        assert store.other is not None, "the other run did not take the lock"
        held = await store.read_lock("shelf", datetime.now(UTC))
        assert held is not None and held.holder == "other:run" and held.token == store.other.token, \
            "the run released the lock another run holds"
        entries, _ = await store.read_audit(operation="shelf")
        assert [e["run_id"] for e in entries] == [record.run_id]
    finally:
        await store.close()
