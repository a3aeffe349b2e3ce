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


async def test_a_signal_whose_server_ran_and_stopped_keeps_no_node(world: dict[str, Any]) -> None:  # noqa: F811
    """The pre-spawn signal stands for a server until its pod is there; once a run has seen the pod,
    the pod speaks for the server. A server stopped (or a spawn cancelled) after that leaves no
    signal that counts as a GPU server waiting for the rest of demand_ttl: its empty node is removed
    when idle, not kept (nor booted again) for nobody."""
    arm: ArmDouble = world["arm"]
    kube = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    clock = world["clock"]
    start = clock["now"]
    now = lambda: clock["now"]  # noqa: E731
    cap = ScaleCapability(world["pool"], world["cluster"], world["store"],
                          Policy(max_nodes=4, idle=timedelta(minutes=5), delay_after_up=timedelta(0),
                                 down_cooldown=timedelta(0)), clock=now)
    runner = Runner(world["store"], clock=now)
    await record_demand(world["store"], user="bob", server="", profile="gpu", at=start)
    kube.pod("bob", "gpu-0")  # bob's server runs on gpu-0
    clock["now"] = start + timedelta(minutes=1)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.facts["busy"] == ["gpu-0"], rec.render()

    kube.drop_pod("bob")  # bob stops his server two minutes in
    clock["now"] = start + timedelta(minutes=2)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.facts["pending"] == [], rec.render()
    clock["now"] = start + timedelta(minutes=8)  # gpu-0 idle for 6 minutes, the signal 8 minutes old
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert [a.kind for a in rec.plan.actions] == ["remove_nodes"], rec.render()
    assert arm.machines["gpu"] == []


async def test_a_signal_recorded_again_while_its_pods_run_settles_it_is_kept(
        world: dict[str, Any], racing: Any) -> None:  # noqa: F811
    """The signal of a server whose pod a run saw is deleted only as observed: bob stopping and
    starting his server again, the hook recording a new signal between the run's read of the old
    one and its delete, keeps the new one (his new server waits for it)."""
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    world["kube"].node("gpu-0")
    world["kube"].pod("bob", "gpu-0")
    clock = world["clock"]
    now = lambda: clock["now"]  # noqa: E731
    racing.spawns = Spawns("read")
    cap = ScaleCapability(world["pool"], world["cluster"], racing, Policy(max_nodes=4), clock=now)
    await record_demand(racing, user="bob", server="", profile="gpu", at=now())
    clock["now"] += timedelta(minutes=1)
    observed = await cap.observe()
    plan = cap.plan(observed, now())

    async def spawn_again() -> None:
        await record_demand(racing, user="bob", server="", profile="gpu", at=now())

    racing.spawns.hook = spawn_again
    await cap.apply(plan, observed, lambda *a: None)
    assert racing.spawns.fired == 1
    kept = await racing.get(DEMAND_PREFIX + "bob~")
    assert kept is not None and kept["at"] == now().isoformat(), kept
    await cap.apply(plan, observed, lambda *a: None)  # the same observation again: still kept
    assert await racing.get(DEMAND_PREFIX + "bob~") == kept


async def test_a_demand_whose_time_has_no_offset_is_utc_and_a_damaged_one_fails_no_run(
        world: dict[str, Any], racing: Any) -> None:  # noqa: F811
    """A demand document's ``at`` is read as every stored time (hubpilot.loop.stored_time): without
    an offset it is UTC (a hook that wrote utcnow().isoformat()), so it is scaled for and expires
    as any other; a damaged one is ignored (logged), and neither fails the scale runs."""
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=0, autoscaling=True, min_count=0, max_count=4, machines=[])
    clock = world["clock"]
    now = lambda: clock["now"]  # noqa: E731
    racing.spawns = Spawns("never")
    cap = ScaleCapability(world["pool"], world["cluster"], racing, Policy(max_nodes=4), clock=now)
    naive = now().replace(tzinfo=None).isoformat()
    await racing.put(DEMAND_PREFIX + "alice~", {"user": "alice", "server": "", "profile": "gpu", "at": naive})
    await racing.put(DEMAND_PREFIX + "bob~", {"user": "bob", "server": "", "profile": "gpu", "at": "yesterday"})

    rec = await Runner(racing, clock=now).run(cap, trigger="demand", actor="hub")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert arm.pools["gpu"]["minCount"] == 1, rec.render()

    clock["now"] += cap.policy.demand_ttl + timedelta(minutes=5)  # alice's signal expired: deleted
    rec = await Runner(racing, clock=now).run(cap, trigger="timer", actor="test")
    assert rec.outcome is not Outcome.FAILED, rec.render()
    assert sorted(await racing.list(DEMAND_PREFIX)) == [DEMAND_PREFIX + "bob~"]  # the damaged one is left


async def test_a_signal_without_an_offset_whose_pod_a_run_saw_is_settled(world: dict[str, Any]) -> None:  # noqa: F811
    """The signal's time is read as UTC where it is settled too, as where it was observed: one
    written without an offset whose pod a run saw is deleted like any other, not kept to count as a
    GPU server waiting once that server stops."""
    arm: ArmDouble = world["arm"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    world["kube"].node("gpu-0")
    world["kube"].pod("bob", "gpu-0")
    clock = world["clock"]
    now = lambda: clock["now"]  # noqa: E731
    store = world["store"]
    cap = ScaleCapability(world["pool"], world["cluster"], store, Policy(max_nodes=4), clock=now)
    await store.put(DEMAND_PREFIX + "bob~", {"user": "bob", "server": "", "profile": "gpu",
                                             "at": now().replace(tzinfo=None).isoformat()})
    clock["now"] += timedelta(minutes=1)
    rec = await Runner(store, clock=now).run(cap, trigger="timer", actor="test")
    assert rec.outcome is not Outcome.FAILED, rec.render()
    assert await store.list(DEMAND_PREFIX) == {}
