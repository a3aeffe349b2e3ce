"""The scale memory is written conditionally on its eTag and never drops what another apply
recorded meanwhile: however many times another writer gets in first, its record is merged, and a
write that keeps losing fails the record step with a clear error instead of overwriting (kmock + the
ARM double + a real SQLite store, whose conditional writes really conflict)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome, Status
from hubpilot.scale import ScaleCapability
from hubpilot.scale.capability import MEMORY_KEY
from hubpilot.scale.plan import Memory
from tests.test_scale_kube import past_the_idle_limit, world  # noqa: F401  (fixture)

OTHER_AT = datetime(2026, 3, 2, 9, 5, tzinfo=UTC)


class Contended(SqliteStore):
    """A real SQLite store where another apply writes the scale memory between each of this apply's
    reads of it and its conditional write, ``times`` times (None: every time): it records a node
    it removed (``other-<n>``) and its scale-up time."""

    def __init__(self, path: Path, times: int | None) -> None:
        super().__init__(path)
        self.times = times
        self.raced = 0
        self._racing = False

    async def get(self, key: str) -> dict[str, Any] | None:  # a plain read (observe): no race
        was, self._racing = self._racing, True
        try:
            return await super().get(key)
        finally:
            self._racing = was

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        got = await super().get_with_etag(key)
        if key == MEMORY_KEY and not self._racing and (self.times is None or self.raced < self.times):
            self._racing = True
            try:
                self.raced += 1
                other = Memory.from_json(got[0] if got else None)
                other = replace(other, removed={**other.removed, f"other-{self.raced}": OTHER_AT},
                                last_up=OTHER_AT)
                await super().put(MEMORY_KEY, other.to_json())  # the other apply's own write
            finally:
                self._racing = False
        return got


async def contended_removal(w: dict[str, Any], tmp_path: Path, times: int | None,
                            seconds: float = 0.5) -> tuple[Any, Contended]:
    cap, _ = await past_the_idle_limit(w, mode="Delete")
    store = Contended(tmp_path / "contended.sqlite3", times)  # the memory the first run left, copied
    await store.put(MEMORY_KEY, await w["store"].get(MEMORY_KEY) or {})
    racing = ScaleCapability(cap.pool, cap.cluster, store, cap.policy, clock=cap.clock)
    racing.memory_write_seconds = seconds
    return racing, store


async def test_many_conflicts_in_a_row_keep_every_record_of_the_other_apply(
        world: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    cap, store = await contended_removal(world, tmp_path, 8, seconds=60)  # a bound never reached
    try:
        observed = await cap.observe()
        plan = cap.plan(observed, world["clock"]["now"])
        assert [a.kind for a in plan.actions] == ["remove_nodes"], plan
        results = await cap.apply(plan, observed, lambda *a: None)
        assert [r.status for r in results] == [Status.DONE], results
        assert store.raced == 8
        memory = Memory.from_json(await store.get(MEMORY_KEY))
        # ours and every one of the other apply's removals: lost, a node would be uncordoned under its VM
        assert sorted(memory.removed) == ["gpu-1", *sorted(f"other-{n}" for n in range(1, 9))], memory
        assert memory.last_up == OTHER_AT and memory.last_down == world["clock"]["now"]
    finally:
        await store.close()


async def test_a_write_that_always_loses_fails_the_record_step_and_overwrites_nothing(
        world: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    cap, store = await contended_removal(world, tmp_path, None)
    try:
        observed = await cap.observe()
        plan = cap.plan(observed, world["clock"]["now"])
        results = await cap.apply(plan, observed, lambda *a: None)
        statuses = [(r.action.kind, r.status) for r in results]
        assert statuses == [("remove_nodes", Status.DONE), ("record_memory", Status.FAILED)], results
        detail = results[-1].detail
        assert "scale memory" in detail and "gpu-1" in detail and "0.5 s" in detail, detail
        memory = Memory.from_json(await store.get(MEMORY_KEY))
        # nothing of the other apply's was overwritten
        assert sorted(memory.removed) == sorted(f"other-{n}" for n in range(1, store.raced + 1)), memory
        assert memory.last_up == OTHER_AT
    finally:
        await store.close()


async def test_the_run_of_a_failed_record_step_is_failed_with_its_results(
        world: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    from hubpilot.loop import Runner

    cap, store = await contended_removal(world, tmp_path, None)
    try:
        rec = await Runner(store, clock=cap.clock).run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.FAILED, rec.render()
        assert [r.action.kind for r in rec.results] == ["remove_nodes", "record_memory"], rec.render()
        assert rec.results[0].status is Status.DONE
    finally:
        await store.close()
