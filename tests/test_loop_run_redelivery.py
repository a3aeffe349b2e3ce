"""A run request delivered twice (the Storage queue delivers at least once: a worker that stops
after the run but before the message is deleted) runs once; its run document keeps what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.runs import RunRequest, _queued_doc, execute_run
from hubpilot.loop import RUN_KEY, new_run_id
from hubpilot.wiring import Context
from tests.test_loop import NOW, Shelf, runner


async def test_a_redelivered_run_request_does_not_run_again_or_overwrite_the_run(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.sqlite3"))
    cap = Shelf({"a"})
    ctx = Context(settings=None, store=store, clock=lambda: NOW,  # type: ignore[arg-type]
                  factories={"shelf": lambda c: cap})
    ctx._runner = runner(store)
    try:
        req = RunRequest(new_run_id(), "shelf", "api", "alice")
        await store.put(RUN_KEY.format(run_id=req.run_id), _queued_doc(ctx, req))
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
