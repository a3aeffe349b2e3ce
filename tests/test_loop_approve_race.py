"""Two approvals of one refused plan apply it once, even when the second read the refused plan
before the first consumed it (two processes on one state file)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import ActionResult, Outcome, Plan, Progress, Runner, Status, UnknownPlan
from hubpilot.ports.store import Lease
from tests.test_loop import NOW, Shelf


class Stops(Shelf):
    """Its actions are accepted but not finished (a slow server stop, 202): observing right after
    still yields the same plan."""

    def __init__(self) -> None:
        super().__init__({"a", "b"}, limit=0)
        self.applied = 0

    async def apply(self, plan: Plan, observed: set[str], progress: Progress) -> list[ActionResult]:
        self.applied += 1
        return [ActionResult(a, Status.PENDING) for a in plan.actions]


class LateLock(SqliteStore):
    """Its lock request reaches the store only once ``go`` is set (a slow instance)."""

    def __init__(self, path: str, go: asyncio.Event) -> None:
        super().__init__(path)
        self.go = go
        self.waiting = asyncio.Event()

    async def acquire_lock(self, name: str, holder: str, ttl: timedelta, now: datetime) -> Lease | None:
        self.waiting.set()
        await self.go.wait()
        return await super().acquire_lock(name, holder, ttl, now)


async def test_a_second_approval_after_the_first_applied_does_not_apply_again(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite3")
    go = asyncio.Event()
    first, second = SqliteStore(path), LateLock(path, go)
    cap = Stops()
    try:
        refused = await Runner(first, clock=lambda: NOW).run(cap, trigger="t", actor="timer")
        assert refused.outcome is Outcome.REFUSED and refused.plan is not None
        plan_id = refused.plan.id
        late = asyncio.create_task(Runner(second, clock=lambda: NOW).approve(cap, plan_id, actor="bob"))
        await asyncio.wait_for(second.waiting.wait(), 30)  # bob's approval has read the refused plan
        done = await Runner(first, clock=lambda: NOW).approve(cap, plan_id, actor="alice")
        assert done.outcome is Outcome.APPLIED and cap.applied == 1
        go.set()
        with pytest.raises(UnknownPlan):
            await late
        assert cap.applied == 1, "one approval applied the plan twice"
    finally:
        await first.close()
        await second.close()
