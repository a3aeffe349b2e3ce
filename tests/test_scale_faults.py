"""Scale runs cut short by the network, and two runs at once: kmock (with the real kubernetes
client) and the ARM double (with the real Azure SDK), each behind ``tests/faultproxy.py``.

Every request a run makes, to the cluster or to ARM, is cut in turn, before it reaches the server
and after the server acted (its answer lost), each in a world of its own. After the cut the run
reports no removal or scale-up that did not happen; clean runs then converge to the end state of
an uncut run, with no node left cordoned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from hubpilot.adapters.aks import AksPool, NoResendTransport
from hubpilot.adapters.kube import KubeCluster
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.loop import Outcome, Runner, Status
from hubpilot.scale import Policy, ScaleCapability
from hubpilot.scale.capability import MEMORY_KEY
from hubpilot.scale.plan import REMOVAL_SETTLE, Memory
from tests.doubles.arm import ArmDouble, StaticToken
from tests.faultproxy import FaultProxy
from tests.fixtures.kmock import NS, Emulator

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


class World:
    """One scale world: a pool in the ARM double, its nodes in kmock, a state store, a clock."""

    def __init__(self, kube: Emulator, arm: ArmDouble, kproxy: FaultProxy, aproxy: FaultProxy,
                 tmp: Path) -> None:
        self.kube, self.arm, self.kproxy, self.aproxy = kube, arm, kproxy, aproxy
        self.now = START
        self.store = SqliteStore(tmp / "state.sqlite3")
        self.caps: list[ScaleCapability] = []
        self.closing: list[Any] = []

    def capability(self, store: SqliteStore | None = None, **pool_kw: Any) -> tuple[ScaleCapability, Runner[Any]]:
        cluster = KubeCluster(namespace=NS, pool="gpu", api_url=f"http://127.0.0.1:{self.kproxy.port}")
        pool = AksPool(StaticToken(), subscription_id=self.arm.subscription,
                       resource_group=self.arm.resource_group, cluster=self.arm.cluster, pool="gpu",
                       base_url=f"http://127.0.0.1:{self.aproxy.port}", retry_total=1, retry_backoff=0.01,
                       polling_interval=0.01, lro_wait=5.0, **pool_kw)
        self.closing += [cluster, pool]
        policy = Policy(max_nodes=6, idle=timedelta(minutes=10), delay_after_up=timedelta(minutes=10),
                        down_cooldown=timedelta(0))
        cap = ScaleCapability(pool, cluster, store or self.store, policy, clock=lambda: self.now)
        return cap, Runner(store or self.store, clock=lambda: self.now)

    def state(self) -> tuple[Any, ...]:
        """What a run leaves: the pool's machines and count, and each node's cordon."""
        nodes = {k[2]: v for k, v in self.kube.k.objects.items() if k[0] == "v1/nodes"}
        return (tuple(self.arm.machines["gpu"]), self.arm.pools["gpu"]["count"],
                tuple(sorted((n, bool(o["spec"].get("unschedulable"))) for n, o in nodes.items())))

    async def close(self) -> None:
        for c in self.closing:
            await c.close()
        await self.store.close()


@pytest.fixture
async def world(kube: Emulator, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[tuple[World, list[Any]]] = []

    async def make(name: str) -> World:
        kube.clear()
        arm = ArmDouble()
        await arm.start()
        kurl, aurl = urlsplit(kube.url), urlsplit(arm.base_url)
        kp = FaultProxy(kurl.hostname or "127.0.0.1", kurl.port or 80)
        ap = FaultProxy(aurl.hostname or "127.0.0.1", aurl.port or 80)
        await kp.start()
        await ap.start()
        tmp = tmp_path / name
        tmp.mkdir()
        w = World(kube, arm, kp, ap, tmp)
        made.append((w, [kp, ap, arm]))
        return w

    yield make
    for w, parts in made:
        await w.close()
        for p in parts:
            await p.stop()


async def removal(w: World) -> tuple[ScaleCapability, Runner[Any]]:
    """gpu-0 runs alice; gpu-1 has stood empty past the idle limit: the next run removes it."""
    w.arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    w.arm.pools["gpu"]["scaleDownMode"] = "Delete"
    w.kube.node("gpu-0")
    w.kube.node("gpu-1")
    w.kube.pod("alice", "gpu-0")
    cap, runner = w.capability()
    await runner.run(cap, trigger="timer", actor="test")
    w.now += timedelta(minutes=11)
    return cap, runner


async def scale_up(w: World) -> tuple[ScaleCapability, Runner[Any]]:
    """gpu-0 runs alice, bob's GPU pod waits: the next run asks for a second node."""
    w.arm.add_pool("gpu", count=1, machines=["gpu-0"])
    w.kube.node("gpu-0")
    w.kube.pod("alice", "gpu-0")
    w.kube.pod("bob", None)
    return w.capability()


def arm_goes_on(w: World) -> None:
    """What Azure does whether anybody polls or not: ARM finishes the operations it accepted, and
    the node of a deleted machine leaves the cluster."""
    w.arm.release()
    for op in w.arm.operations.values():
        while op.status == "InProgress":
            w.arm._advance(op)
    for key in [k for k in w.kube.k.objects.keys() if k[0] == "v1/nodes"]:
        if key[2] not in w.arm.machines["gpu"]:
            del w.kube.k.objects[key]


async def settle(w: World, runner: Runner[Any], cap: ScaleCapability) -> None:
    """Clean runs, past the time a removal that may have been accepted is watched."""
    for step in (timedelta(minutes=1), REMOVAL_SETTLE + timedelta(minutes=1), timedelta(minutes=11),
                 timedelta(minutes=11)):
        arm_goes_on(w)
        w.now += step
        w.kproxy.reset()
        w.aproxy.reset()
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.APPLIED, rec.render()


async def reference(world: Any, setup: Any) -> tuple[tuple[Any, ...], int, int]:
    """The uncut run: its end state, and how many requests it sent to kmock and to ARM."""
    w = await world("reference-" + setup.__name__)
    cap, runner = await setup(w)
    w.kproxy.reset()
    w.aproxy.reset()
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED and rec.results, rec.render()
    counts = w.kproxy.count, w.aproxy.count
    await settle(w, runner, cap)
    return w.state(), *counts


def reported_truly(w: World, rec: Any) -> None:
    """No success reported for what did not happen."""
    for r in rec.results:
        if r.status is not Status.DONE:
            continue
        if r.action.kind == "remove_nodes":
            assert not set(r.action.params["removed_nodes"]) & set(w.arm.machines["gpu"]), rec.render()
        if r.action.kind == "set_count":
            assert w.arm.pools["gpu"]["count"] == r.action.params["count"], rec.render()
            assert len(w.arm.machines["gpu"]) == r.action.params["count"], rec.render()


@pytest.mark.parametrize("sticky", [False, True], ids=["once", "route-down"])
@pytest.mark.parametrize("setup", [removal, scale_up])
async def test_every_request_cut_before_or_after_then_clean_runs_converge(
        world: Any, setup: Any, sticky: bool) -> None:
    """``once``: only that request is cut (the clients' retries may absorb it); ``route-down``: its
    retries too, and the run must say that something did not happen."""
    want, kube_requests, arm_requests = await reference(world, setup)
    cuts = [(side, n, mode) for side, total in (("kube", kube_requests), ("arm", arm_requests))
            for n in range(1, total + 1) for mode in ("before", "after")]
    assert len(cuts) >= 8
    for side, n, mode in cuts:
        w = await world(f"{side}-{n}-{mode}")
        cap, runner = await setup(w)
        w.kproxy.reset()
        w.aproxy.reset()
        proxy = w.kproxy if side == "kube" else w.aproxy
        proxy.cut(n, mode, sticky=sticky)
        rec = await runner.run(cap, trigger="timer", actor="test")
        where = f"{side} request {n} cut {mode}: {proxy.seen[n - 1:n]}\n{rec.render()}"
        reported_truly(w, rec)
        if rec.outcome is Outcome.APPLIED:  # no action failed: then nothing may be missing
            assert all(r.status is not Status.FAILED for r in rec.results), where
        if sticky and proxy.count >= n:  # the route stayed down: the run cannot have done it all
            assert rec.outcome is Outcome.FAILED or any(
                r.status is not Status.DONE for r in rec.results), where
        await settle(w, runner, cap)
        assert w.state() == want, where


async def test_two_removals_at_once_never_uncordon_a_node_being_removed(world: Any) -> None:
    """Two runs that do not share a lock (two deployments, or a lease lost): one gets ARM's
    deleteMachines, the other its 409. The loser must not put the node back in service while the
    winner's deletion runs: a user pod would land on a VM being deleted."""
    w = await world("two-removals")
    cap, runner = await removal(w)
    other_store = SqliteStore(Path(w.store.path).parent / "other.sqlite3")
    try:
        cap2, runner2 = w.capability(other_store)
        w.now -= timedelta(minutes=11)
        await runner2.run(cap2, trigger="timer", actor="other")  # its own memory of the empty node
        w.now += timedelta(minutes=11)
        for c in (cap, cap2):
            c.pool.lro_wait = 0.3  # type: ignore[attr-defined]
        w.arm.hold_operations = True
        recs = await asyncio.gather(runner.run(cap, trigger="timer", actor="a"),
                                    runner2.run(cap2, trigger="timer", actor="b"))
        removing = [op for op in w.arm.operations.values() if op.kind == "deleteMachines"]
        assert len(removing) == 1, [r.render() for r in recs]
        node = w.kube.node_obj("gpu-1")
        assert node["spec"]["unschedulable"] is True, [r.render() for r in recs]
        w.arm.release()
    finally:
        await other_store.close()


async def test_two_scale_ups_at_once_add_the_planned_nodes_once(world: Any) -> None:
    w = await world("two-ups")
    cap, runner = await scale_up(w)
    other_store = SqliteStore(Path(w.store.path).parent / "other.sqlite3")
    try:
        cap2, runner2 = w.capability(other_store)
        recs = await asyncio.gather(runner.run(cap, trigger="timer", actor="a"),
                                    runner2.run(cap2, trigger="timer", actor="b"))
        assert w.arm.pools["gpu"]["count"] == 2 and len(w.arm.machines["gpu"]) == 2, [r.render() for r in recs]
        for rec in recs:
            assert rec.outcome is Outcome.APPLIED, rec.render()
        # the other interleaving: both read the pool, then one applies to the end before the other
        w.kube.pod("carol", None)
        seen = [await c.observe() for c in (cap, cap2)]
        plans = [c.plan(o, w.now) for c, o in zip((cap, cap2), seen, strict=True)]
        assert [a.params["count"] for p in plans for a in p.actions] == [3, 3]
        first = await cap.apply(plans[0], seen[0], lambda *a: None)
        second = await cap2.apply(plans[1], seen[1], lambda *a: None)
        assert [r.status for r in first] == [Status.DONE], first
        assert [r.status for r in second] in ([Status.NOOP], [Status.SKIPPED]), second
        assert w.arm.pools["gpu"]["count"] == 3 and len(w.arm.machines["gpu"]) == 3
    finally:
        await other_store.close()


@pytest.mark.parametrize("what", ["list", "cordon"])
async def test_an_api_server_that_never_answers(world: Any, what: str) -> None:
    """The API server accepts the connection and never answers (the reading of the nodes, or the
    cordon of a removal): the run ends within the client's timeout with a clear error, instead of
    holding the scale lock for ever; a node it may have cordoned is the next run's to mend."""
    w = await world(f"hang-{what}")
    cap, runner = await removal(w)
    w.kproxy.reset()
    if what == "list":  # the run's first request to the cluster: every one has the short timeout
        cap.cluster.request_timeout = 0.5  # type: ignore[attr-defined]
        w.kproxy.rule(lambda m, path: m == "GET" and path.startswith("/api/v1/nodes?"), "hang")
    else:
        # the reads before the cordon keep the ordinary timeout (0.5 s for them too failed the run
        # at a read on a loaded machine): it drops to 0.5 s once the cordon's read of the node was
        # sent (its timeout already set), so the cordon's PATCH is the request that has it
        def hang_the_cordon(m: str, path: str) -> bool:
            if m == "GET" and path.startswith("/api/v1/nodes/gpu-1"):
                cap.cluster.request_timeout = 0.5  # type: ignore[attr-defined]
            return m == "PATCH"

        w.kproxy.rule(hang_the_cordon, "hang")
    async with asyncio.timeout(30):  # a guard against a hang, not a timing assert
        rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.FAILED, rec.render()
    error = rec.error if what == "list" else rec.results[0].detail
    assert error and "within 0.5 s" in error, rec.render()
    assert len(w.kproxy.faulted()) <= 4  # the request and the client's retries, no storm
    cap.cluster.request_timeout = 30  # type: ignore[attr-defined]
    await settle(w, runner, cap)
    assert w.state() == ((("gpu-0",), 1, (("gpu-0", False),)))


@pytest.mark.parametrize("what", ["read", "remove"])
async def test_an_arm_that_never_answers(world: Any, what: str) -> None:
    """ARM accepts the connection and never answers (the reading of the pool, or the deletion of
    machines): the run ends within the client's timeout and retries instead of azure-core's default
    of 300 s a try; a removal that may have been accepted keeps its node cordoned, and the next runs
    converge."""
    w = await world(f"arm-hang-{what}")
    await removal(w)
    if what == "read":  # the run's first request to ARM: every one has the short timeout
        cap, runner = w.capability(timeout=0.5)
        w.aproxy.reset()
        w.aproxy.rule(lambda m, path: m == "GET", "hang")
    else:
        # the pool's read before the deletion keeps an ordinary timeout (0.5 s for it too failed
        # the run at the read on a loaded machine): the transport's timeouts drop to the pool's
        # 0.5 s once that read was sent (its timeout already set), so the deletion is what has them
        transport = NoResendTransport(connection_timeout=30, read_timeout=30)
        cap, runner = w.capability(timeout=0.5, transport=transport)

        def hang_the_deletion(m: str, path: str) -> bool:
            if m == "GET":
                transport.connection_config.timeout = transport.connection_config.read_timeout = 0.5
            return m == "POST"

        w.aproxy.reset()
        w.aproxy.rule(hang_the_deletion, "hang")
    async with asyncio.timeout(30):  # a guard against a hang, not a timing assert
        rec = await runner.run(cap, trigger="timer", actor="test")
    # a read and its one retry; a deleteMachines is never sent twice (it is no idempotent request)
    assert len(w.aproxy.faulted()) == (2 if what == "read" else 1), w.aproxy.seen
    if what == "read":
        assert rec.outcome is Outcome.FAILED and rec.error and "0.5 s" in rec.error, rec.render()
    else:
        assert [r.status for r in rec.results] == [Status.PENDING], rec.render()
        assert "0.5 s" in rec.results[0].detail, rec.render()
        assert w.kube.node_obj("gpu-1")["spec"]["unschedulable"] is True
    cap, runner = w.capability()
    await settle(w, runner, cap)
    assert w.state() == (("gpu-0",), 1, (("gpu-0", False),))


@pytest.mark.parametrize("how", ["once", "route-down", "gateway-504"])
async def test_a_scale_up_whose_answer_was_lost_is_reported_applied_and_recorded(world: Any, how: str) -> None:
    """ARM took the PUT of the count, and its answer never came back (the connection dropped, once
    or for every try; or a gateway answered 504 after ARM accepted it). The pool read again shows
    the new count: the scale-up is reported applied, sent once, and its time is in the scale memory
    (the scale-down delay after a scale-up counts from it)."""
    w = await world(f"lost-put-{how}")
    cap, runner = await scale_up(w)
    w.aproxy.reset()
    fired: list[str] = []

    def first_put(method: str, path: str) -> bool:
        if method == "PUT" and not fired:
            fired.append(path)
            return True
        return False

    if how == "once":
        w.aproxy.rule(first_put, "after")
    elif how == "route-down":
        w.aproxy.rule(lambda m, path: m == "PUT", "after")
    else:
        w.arm.answer_failed("PUT", 504)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert [c.status for c in w.arm.calls if c.method == "PUT"][:1] in ([201], [504]), rec.render()
    assert len(w.arm.operations) == 1, rec.render()  # the count was sent once
    [result] = rec.results
    assert result.action.kind == "set_count" and result.status in (Status.PENDING, Status.DONE), rec.render()
    assert "answer" in result.detail, rec.render()
    assert rec.outcome is Outcome.APPLIED, rec.render()
    memory = Memory.from_json(await w.store.get(MEMORY_KEY))
    assert memory.last_up == w.now, rec.render()


async def test_a_scale_up_that_never_reached_arm_is_reported_failed(world: Any) -> None:
    """Every try of the PUT is cut before it reaches ARM: the pool read again does not show the
    count, so the scale-up is reported failed, and no scale-up time is recorded."""
    w = await world("put-never-arrives")
    cap, runner = await scale_up(w)
    w.aproxy.reset()
    w.aproxy.rule(lambda m, path: m == "PUT", "before")
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert not w.arm.operations and w.arm.pools["gpu"]["count"] == 1
    [result] = rec.results
    assert result.status is Status.FAILED and "does not show" in result.detail, rec.render()
    assert rec.outcome is Outcome.FAILED
    memory = Memory.from_json(await w.store.get(MEMORY_KEY))
    assert memory.last_up is None


async def test_a_raised_min_count_whose_answer_was_lost_is_recorded_as_a_scale_up(world: Any) -> None:
    """Autoscaler-assist: the PUT raising minCount is accepted and its answer lost; the pool read
    again shows the new minCount: reported applied, its time recorded as a scale-up."""
    w = await world("lost-min-count")
    w.arm.add_pool("gpu", count=1, autoscaling=True, min_count=1, max_count=4, machines=["gpu-0"])
    w.kube.node("gpu-0")
    w.kube.pod("alice", "gpu-0")
    w.kube.pod("bob", None)
    cap, runner = w.capability()
    w.aproxy.reset()
    w.aproxy.rule(lambda m, path: m == "PUT", "after")
    rec = await runner.run(cap, trigger="timer", actor="test")
    [result] = rec.results
    assert result.action.kind == "set_min_count" and result.status is Status.PENDING, rec.render()
    assert w.arm.pools["gpu"]["minCount"] == 2 and len(w.arm.operations) == 1
    memory = Memory.from_json(await w.store.get(MEMORY_KEY))
    assert memory.last_up == w.now, rec.render()
