"""A run request delivered twice (the Storage queue delivers at least once: a worker that stops
after the run but before the message is deleted) runs once; its run document keeps what it did."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.runs import RunRequest, _queued_doc, _reserve, execute_run, read_run, reservation
from hubpilot.loop import RUN_KEY, new_run_id
from hubpilot.ports.store import StoreError
from hubpilot.wiring import Context, NotConfigured
from tests.test_loop import NOW, Shelf, runner


def shelf_context(store: SqliteStore, cap: Shelf | None = None) -> Context:
    """A context whose capability ``shelf`` is ``cap``, with the tests' runner on ``store``."""
    ctx = Context(settings=None, store=store, clock=lambda: NOW,  # type: ignore[arg-type]
                  factories={"shelf": lambda c: cap} if cap is not None else {})
    ctx._runner = runner(store)
    return ctx


async def queue_shelf_run(ctx: Context) -> RunRequest:
    """A run request of ``shelf`` as the API queues it (its run document written "queued")."""
    req = RunRequest(new_run_id(), "shelf", "api", "alice")
    await ctx.store.put(RUN_KEY.format(run_id=req.run_id), _queued_doc(ctx, req))
    return req


async def test_a_redelivered_run_request_does_not_run_again_or_overwrite_the_run(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    cap = Shelf({"a"})
    ctx = shelf_context(store, cap)
    try:
        req = await queue_shelf_run(ctx)
        first = await execute_run(ctx, req)
        assert first is not None and first.outcome == "applied"
        cap.items.clear()  # the world drifted meanwhile: a second run would act again
        await execute_run(ctx, req)  # the same message again
        assert cap.observed == 1, "the redelivered request ran again"
        doc: Any = await store.get(RUN_KEY.format(run_id=req.run_id))
        assert [r["action"]["target"] for r in doc["results"]] == ["a"]
        entries, _ = await store.read_audit(operation="shelf")
        assert [e["run_id"] for e in entries] == [req.run_id]
    finally:
        await store.close()


async def test_a_run_killed_while_running_reads_as_failed_once_its_lock_is_gone(tmp_path: Path) -> None:
    """A run whose process was killed leaves its document "running"; without the lock it held it
    reads as failed and says why, while a run that still holds its lock reads as running."""
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    ctx = shelf_context(store)
    try:
        run_id = new_run_id()
        doc = {"run_id": run_id, "operation": "shelf", "trigger": "api", "actor": "alice",
               "started": NOW.isoformat(), "outcome": "running"}
        await store.put(RUN_KEY.format(run_id=run_id), doc)
        lease = await store.acquire_lock("shelf", f"alice:{run_id}", timedelta(minutes=10), NOW)
        assert lease is not None
        running = await read_run(ctx, run_id)
        assert running is not None and running["outcome"] == "running"
        await store.release_lock(lease)  # as when the lease of a killed run expires
        killed = await read_run(ctx, run_id)
        assert killed is not None and killed["outcome"] == "failed" and "no longer holds" in killed["error"]
        other = await store.acquire_lock("shelf", f"bob:{new_run_id()}", timedelta(minutes=10), NOW)
        assert other is not None  # the next run holds the lock: still not ours
        assert (await read_run(ctx, run_id) or {})["outcome"] == "failed"
        await store.release_lock(other)
        # the queue delivers the killed run's request again: it runs (only a finished run is not)
        cap = Shelf({"a"})
        again = await execute_run(shelf_context(store, cap), RunRequest(run_id, "shelf", "api", "alice"))
        assert again is not None and again.outcome == "applied" and cap.observed == 1
    finally:
        await store.close()


class Held(Shelf):
    """A shelf whose apply waits until the test lets it go (or cancels the run)."""

    def __init__(self, wanted: set[str]) -> None:
        super().__init__(wanted)
        self.entered = asyncio.Event()

    async def apply(self, plan: Any, observed: set[str], progress: Any) -> Any:
        self.entered.set()
        await asyncio.Event().wait()  # until cancelled
        return []


async def test_a_run_cancelled_mid_apply_is_audited_and_its_queued_request_runs_again(tmp_path: Path) -> None:
    """A run cancelled mid-way (the host stopping) gets an audit entry saying so, frees its lock,
    and reads as failed; its document is not final, so the queue's second delivery runs it."""
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    held = Held({"a"})
    ctx = shelf_context(store, held)
    try:
        req = await queue_shelf_run(ctx)
        task = asyncio.create_task(execute_run(ctx, req))
        await asyncio.wait_for(held.entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        entries, _ = await store.read_audit(operation="shelf")
        assert [(e["run_id"], e["outcome"]) for e in entries] == [(req.run_id, "failed")]
        assert "cancelled" in entries[0]["error"]
        killed = await read_run(ctx, req.run_id)
        assert killed is not None and killed["outcome"] == "failed"
        cap = Shelf({"a"})
        ctx.factories["shelf"] = lambda c: cap
        again = await execute_run(ctx, req)  # delivered again
        assert again is not None and again.outcome == "applied" and cap.items == {"a"}
        entries, _ = await store.read_audit(operation="shelf")
        assert [e["outcome"] for e in entries] == ["applied", "failed"]
    finally:
        await store.close()


async def test_a_request_delivered_again_while_its_run_runs_leaves_the_running_document(tmp_path: Path) -> None:
    """The same run request delivered a second time while its first delivery still runs (the lock
    is held by this very run) neither runs it again nor records it as failed over the running
    document: ``GET /runs/{id}`` keeps reading "running" and the run's lock stays held."""
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    held = Held({"a"})
    ctx = shelf_context(store, held)
    try:
        req = await queue_shelf_run(ctx)
        task = asyncio.create_task(execute_run(ctx, req))
        await asyncio.wait_for(held.entered.wait(), 10)
        await execute_run(ctx, req)  # the second delivery, while the first is in apply
        doc: Any = await store.get(RUN_KEY.format(run_id=req.run_id))
        assert doc["outcome"] == "running", doc
        seen = await read_run(ctx, req.run_id)
        assert seen is not None and seen["outcome"] == "running"
        assert await store.read_lock("shelf", NOW) is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await store.close()


async def test_a_queued_run_locked_out_by_another_run_is_audited_once(tmp_path: Path) -> None:
    """A run accepted over HTTP (202, its id given) that finds the operation's lock taken when it
    starts (a CLI run took it meanwhile) reads as failed, but the audit log said nothing of it;
    "the audit log keeps every run" (run documents are pruned): it holds one entry now, failed,
    naming the holder, and the queue's second delivery adds none."""
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    ctx = shelf_context(store, Shelf({"a"}))
    try:
        req = await queue_shelf_run(ctx)
        cli = await store.acquire_lock("shelf", "cli:bob:0123", timedelta(minutes=10), NOW)
        assert cli is not None
        assert await execute_run(ctx, req) is None
        doc = await read_run(ctx, req.run_id)
        assert doc is not None and doc["outcome"] == "failed" and "cli:bob" in doc["error"]
        entries, _ = await store.read_audit(operation="shelf")
        assert [(e["run_id"], e["outcome"], e["actor"], e["trigger"]) for e in entries] == \
            [(req.run_id, "failed", "alice", "api")], "a run accepted over HTTP left no audit entry"
        assert entries[0]["error"] == doc["error"] and entries[0]["at"] == doc["finished"]
        await store.release_lock(cli)
        await execute_run(ctx, req)  # delivered again: its run has finished (failed), not run again
        again, _ = await store.read_audit(operation="shelf")
        assert len(again) == 1
    finally:
        await store.close()


async def test_a_queued_run_that_cannot_start_is_audited(tmp_path: Path) -> None:
    """The same for a run whose capability cannot be built (an operation not configured)."""
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    ctx = shelf_context(store)  # no capability "shelf"
    try:
        req = await queue_shelf_run(ctx)
        assert await execute_run(ctx, req) is None
        entries, _ = await store.read_audit(operation="shelf")
        assert [(e["run_id"], e["outcome"]) for e in entries] == [(req.run_id, "failed")]
    finally:
        await store.close()


async def test_a_queued_run_whose_operation_is_not_configured_is_recorded_as_failed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run accepted over HTTP whose operation turns out not configured when it starts (its
    settings changed between the POST and the queue's delivery) reads as failed, saying what is
    missing, and has its audit entry, as any run that cannot start; the queue's second delivery
    neither runs it nor audits it again."""
    store = SqliteStore(str(tmp_path / "state.sqlite3"))

    def not_configured(ctx: Context) -> Any:
        raise NotConfigured("no [scale.pool] is configured")

    ctx = Context(settings=None, store=store, clock=lambda: NOW,  # type: ignore[arg-type]
                  factories={"shelf": not_configured})
    ctx._runner = runner(store)
    try:
        req = await queue_shelf_run(ctx)
        assert await execute_run(ctx, req) is None
        doc = await read_run(ctx, req.run_id)
        assert doc is not None and doc["outcome"] == "failed", doc
        assert doc["error"] == "NotConfigured: no [scale.pool] is configured"
        entries, _ = await store.read_audit(operation="shelf")
        assert [(e["run_id"], e["outcome"], e["error"]) for e in entries] == \
            [(req.run_id, "failed", doc["error"])]
        assert "Traceback" not in caplog.text  # the settings' answer, not a fault
        await execute_run(ctx, req)  # delivered again: finished (failed), not run or audited again
        assert len((await store.read_audit(operation="shelf"))[0]) == 1
    finally:
        await store.close()


async def test_a_late_run_leaves_the_reservation_of_the_run_queued_after_it(tmp_path: Path) -> None:
    """A queued run whose reservation expired (its message came late) and was taken by the next
    run's POST frees only its own when it ends: the next run's reservation stays, so a third POST
    still gets its 409 while that run waits in the queue."""
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    ctx = shelf_context(store, Shelf({"a"}))
    try:
        late = await queue_shelf_run(ctx)
        queued = RunRequest(new_run_id(), "shelf", "api", "bob")
        await _reserve(ctx, queued)  # the late run's reservation has expired: the next POST's
        first = await execute_run(ctx, late)
        assert first is not None and first.outcome == "applied"
        held = await reservation(ctx, "shelf", NOW)
        assert held is not None and held.holder == f"bob:{queued.run_id}", held
    finally:
        await store.close()


async def test_a_queued_run_that_applied_but_could_not_write_its_document_has_one_audit_entry(
        tmp_path: Path) -> None:
    """A run that got under way and raised after its audit entry (its run document could not be
    written) is not audited a second time as a run that could not start."""
    from tests.test_loop_audit_always import FailingFinish

    store = FailingFinish(str(tmp_path / "state.sqlite3"))
    cap = Shelf({"a"})
    ctx = shelf_context(store, cap)
    try:
        req = await queue_shelf_run(ctx)  # the first run document write
        store.run_puts = 0  # the run's "running" document is written, its finished one fails
        assert await execute_run(ctx, req) is None
        assert cap.items == {"a"}
        entries, _ = await store.read_audit(operation="shelf")
        assert [(e["run_id"], e["outcome"]) for e in entries] == [(req.run_id, "applied")]
    finally:
        await store.close()


class FailingLastRun(SqliteStore):
    """The run's finished document is written; the operation's last-run document is not."""

    async def put(self, key: str, doc: Any, *, if_match: str | None = None) -> str:
        if key.startswith("last_run/"):
            raise StoreError("Azure Storage: cannot write document: HTTP 503 ServerBusy")
        return await super().put(key, doc, if_match=if_match)


async def test_a_queued_run_that_applied_reads_as_applied_though_finishing_it_failed(tmp_path: Path) -> None:
    """A run that applied and wrote its "applied" audit entry, and then could not write its run
    document (or the last-run document after it), was recorded as a run that could not start:
    ``GET /runs/{id}`` read "failed" (its plan and results gone) while the audit log said
    "applied". Its document now says what the run did, as its audit entry does."""
    from tests.test_loop_audit_always import FailingFinish

    for store in (FailingFinish(str(tmp_path / "finish.sqlite3")), FailingLastRun(str(tmp_path / "last.sqlite3"))):
        cap = Shelf({"a"})
        ctx = shelf_context(store, cap)
        try:
            req = await queue_shelf_run(ctx)
            if isinstance(store, FailingFinish):
                store.run_puts = 0  # the run's "running" document is written, its finished one fails
            await execute_run(ctx, req)
            entries, _ = await store.read_audit(operation="shelf")
            assert [(e["run_id"], e["outcome"]) for e in entries] == [(req.run_id, "applied")]
            doc = await read_run(ctx, req.run_id)
            assert doc is not None
            assert (doc["outcome"], doc["plan_id"], doc["result_counts"]) == \
                ("applied", entries[0]["plan_id"], entries[0]["result_counts"]), doc
            assert doc["finished"] == entries[0]["at"]
        finally:
            await store.close()


async def test_a_run_whose_audit_log_cannot_be_read_is_not_audited_twice(tmp_path: Path) -> None:
    """The run applied and wrote its audit entry, its finished document failed, and then the audit
    log could not be read either to find that entry: the run document says the run failed and
    why, and no second entry ("could not start") is added over the one that may be there (an entry
    is never written blind); the one entry stays the run's "applied"."""
    from tests.test_loop_audit_always import FailingFinish

    class Unreadable(FailingFinish):
        audit_readable = True

        async def read_audit(self, **kw: Any) -> Any:
            if not self.audit_readable:
                raise StoreError("Azure Storage: cannot read the audit log: HTTP 503 ServerBusy")
            return await super().read_audit(**kw)

    store = Unreadable(str(tmp_path / "state.sqlite3"))
    cap = Shelf({"a"})
    ctx = shelf_context(store, cap)
    try:
        req = await queue_shelf_run(ctx)
        store.run_puts = 0  # the run's "running" document is written, its finished one fails
        store.audit_readable = False
        assert await execute_run(ctx, req) is None
        store.audit_readable = True
        entries, _ = await store.read_audit(operation="shelf")
        assert [(e["run_id"], e["outcome"]) for e in entries] == [(req.run_id, "applied")]
        doc = await read_run(ctx, req.run_id)
        assert doc is not None and doc["outcome"] == "failed" and "503 ServerBusy" in doc["error"], doc
    finally:
        await store.close()



class StoreDown(SqliteStore):
    """A state store whose reads or writes fail (an Azure Storage outage)."""

    reads_down = writes_down = False

    async def get(self, key: str) -> Any:
        if self.reads_down:
            raise StoreError("Azure Storage: cannot read document: HTTP 503 ServerBusy")
        return await super().get(key)

    async def put(self, key: str, doc: Any, *, if_match: str | None = None) -> str:
        if self.writes_down:
            raise StoreError("Azure Storage: cannot write document: HTTP 503 ServerBusy")
        return await super().put(key, doc, if_match=if_match)


async def test_a_queued_run_the_store_kept_from_starting_and_recording_is_delivered_again(tmp_path: Path) -> None:
    """The queue trigger's delivery met a state store that failed before the run started, and
    could not record that either: the run's document still read "queued" and the message was
    consumed, so the run never ran. The delivery now raises (the host delivers the message again,
    then to the poison queue), and the next delivery runs it once; one that could not start and
    says so (its operation not configured) is consumed."""
    from hubpilot.api.runs import RunNotRecorded, execute_queued

    store = StoreDown(str(tmp_path / "state.sqlite3"))
    cap = Shelf({"a"})
    ctx = shelf_context(store, cap)
    try:
        req = await queue_shelf_run(ctx)
        store.reads_down = store.writes_down = True
        with pytest.raises(RunNotRecorded, match=rf"shelf run {req.run_id} did not start and the state store "
                                                 "cannot be read"):
            await execute_queued(ctx, req)
        store.reads_down = False  # the document reads again, but nothing could be written
        with pytest.raises(RunNotRecorded, match="did not start and could not be recorded"):
            await execute_queued(ctx, req)
        assert cap.observed == 0 and (await read_run(ctx, req.run_id) or {}).get("outcome") == "queued"
        store.writes_down = False
        record = await execute_queued(ctx, req)  # delivered again
        assert record is not None and record.outcome == "applied" and cap.observed == 1, record
        assert await execute_queued(ctx, req) is not None and cap.observed == 1  # once more: not run again
    finally:
        await store.close()

    store = StoreDown(str(tmp_path / "other.sqlite3"))
    ctx = shelf_context(store)  # no capability "shelf": it cannot start, and that is recorded
    try:
        req = await queue_shelf_run(ctx)
        assert await execute_queued(ctx, req) is None
        assert (await read_run(ctx, req.run_id) or {}).get("outcome") == "failed"
    finally:
        await store.close()
