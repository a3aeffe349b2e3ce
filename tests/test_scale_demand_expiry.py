"""Expired demand signals are deleted only as they were read: a demand the hub's pre-spawn hook
records again for the same user and server while a scale apply expires the old one (between its
read and its delete) is kept, and the next run scales up for it. kmock + the ARM double + a real
state store (SQLite and Azurite), whose conditional deletes really conflict."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_azure import AzureStore
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome, Runner
from hubpilot.scale import Policy, ScaleCapability, record_demand
from hubpilot.scale.capability import DEMAND_PREFIX
from tests.doubles.arm import ArmDouble
from tests.test_scale_kube import world  # noqa: F401  (fixture)

Hook = Callable[[], Awaitable[Any]]


class Spawns:
    """The hub's pre-spawn hook firing again for a demand while an apply expires it: once, right
    after the apply listed the demand (``list``) or read one of them (``read``)."""

    def __init__(self, at: str) -> None:
        self.at = at
        self.hook: Hook | None = None
        self.fired = 0

    async def after(self, where: str) -> None:
        if where == self.at and self.hook is not None:
            hook, self.hook = self.hook, None
            self.fired += 1
            await hook()


class Racing:
    """Lets the hook fire right after the demand listing or the demand's re-read (a store mixin)."""

    spawns: Spawns

    async def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = await super().list(prefix)
        if prefix == DEMAND_PREFIX:
            await self.spawns.after("list")
        return found

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        got: tuple[dict[str, Any], str] | None = await super().get_with_etag(key)
        if key.startswith(DEMAND_PREFIX):
            await self.spawns.after("read")
        return got


class RacingSqlite(Racing, SqliteStore):
    pass


class RacingAzure(Racing, AzureStore):
    pass


@pytest.fixture(params=["sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
async def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def racing(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if kind == "sqlite":
        store: Any = RacingSqlite(tmp_path / "racing.sqlite3")
    else:
        unique = uuid.uuid4().hex[:12]
        store = RacingAzure.from_settings(connection_string=request.getfixturevalue("azurite").connection_string,
                                          table_prefix=f"t{unique}", container=f"c{unique}")
    yield store
    await store.close()


@pytest.mark.parametrize("at", ["list", "read"])
async def test_a_demand_recorded_again_while_the_old_one_expires_is_kept_and_scaled_for(
        world: dict[str, Any], racing: Any, at: str) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=0, autoscaling=True, min_count=0, max_count=4, machines=[])
    clock = world["clock"]
    now = lambda: clock["now"]  # noqa: E731
    racing.spawns = Spawns(at)
    cap = ScaleCapability(world["pool"], world["cluster"], racing, Policy(max_nodes=4), clock=now)
    start = clock["now"]
    await record_demand(racing, user="alice", server="", profile="gpu", at=start)  # a spawn long ago
    clock["now"] = start + cap.policy.demand_ttl + timedelta(minutes=5)

    observed = await cap.observe()
    plan = cap.plan(observed, now())
    assert observed.demand == () and plan.empty, plan  # the old signal has expired

    async def spawn_again() -> None:  # alice starts her GPU server again
        await record_demand(racing, user="alice", server="", profile="gpu", at=now())

    racing.spawns.hook = spawn_again
    await cap.apply(plan, observed, lambda *a: None)
    assert racing.spawns.fired == 1
    kept = await racing.get(DEMAND_PREFIX + "alice~")
    assert kept is not None and kept["at"] == now().isoformat(), kept  # the new signal, not deleted

    rec = await Runner(racing, clock=now).run(cap, trigger="demand", actor="hub")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert arm.pools["gpu"]["minCount"] == 1, rec.render()

    clock["now"] += cap.policy.demand_ttl + timedelta(minutes=5)  # expired, nobody spawning: deleted
    await Runner(racing, clock=now).run(cap, trigger="timer", actor="test")
    assert await racing.list(DEMAND_PREFIX) == {}
