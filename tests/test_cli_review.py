"""Review: the CLI as an admin uses it (Ctrl-C, exit codes, --json, the admin API's names)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Runner
from tests.test_loop import NOW, Shelf


async def test_a_run_cancelled_while_the_store_takes_its_lock_leaves_no_lock_held(tmp_path: Path) -> None:
    """Ctrl-C (or SIGTERM) while the state store was still taking the run's lock (a state file
    another process was writing, a slow Azure answer) cancelled the wait, not the store's work:
    the lock was taken all the same and stayed held for its whole lease (10 min), with no run and
    no audit entry, and every run of the operation meanwhile was refused with exit code 4."""
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    await store.get("warm-up")  # the file and its schema exist
    calls = 0
    taking = asyncio.Event()

    def clock() -> object:
        nonlocal calls
        calls += 1
        if calls == 2:  # the run's record, then the time of its lock: the lock is being taken
            taking.set()
        return NOW

    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer: the lock waits on SQLite's busy timeout
    try:
        runner = Runner(store, clock=clock, lock_ttl=timedelta(minutes=10))  # type: ignore[arg-type]
        task = asyncio.create_task(runner.run(Shelf({"a"}), trigger="manual", actor="cli:ann"))
        await asyncio.wait_for(taking.wait(), 30)
        await asyncio.sleep(0)
        task.cancel()  # Ctrl-C
        await asyncio.sleep(0)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    try:
        assert await store.read_lock("shelf", NOW) is None  # the next run can take it
    finally:
        await store.close()
