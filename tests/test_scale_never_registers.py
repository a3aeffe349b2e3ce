"""A machine of the pool's count that never registers a Kubernetes node (a kubelet that never joins,
a node deleted with ``kubectl delete node`` while its VM runs), in a pool whose last operation
succeeded: booting for the join grace from the first round that finds it, then unregistered -- no
capacity (a waiting GPU server gets a machine more), no longer holding every scale-down back."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from hubpilot.loop import Outcome
from hubpilot.ports.cluster import ClusterView
from hubpilot.scale import Memory, Observed, cost_report, guard_scale, plan_scale
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_scale_kube import capability, world  # noqa: F401 - the fixture
from tests.test_scale_plan import LONG_AGO, POLICY, T0, kinds, node, observed, pool, upod

GRACE = POLICY.join_grace


def _rounds(obs: Observed, *minutes: float) -> list[Any]:
    """The plans of rounds ``minutes`` after T0, each with the memory the one before left."""
    plans = []
    memory = obs.memory
    for m in minutes:
        at = T0 + timedelta(minutes=m)
        plan = plan_scale(dataclasses.replace(obs, memory=memory, at=at), POLICY, at)
        memory = Memory.from_json(plan.facts["memory"])
        plans.append(plan)
    return plans


@pytest.mark.parametrize("mode", ["Delete", "Deallocate"])
def test_a_waiting_server_gets_a_machine_more_once_the_join_grace_is_past(mode: str) -> None:
    """Count 2, one ready busy node, a GPU server waiting, 30 min after the last scale-up: the
    second machine has no node. It is booting for the join grace from the first round that finds
    it (it may have just been created), then no capacity: count 3 is asked for, never a removal."""
    p = dataclasses.replace(pool(2), scale_down_mode=mode)
    obs = observed(p, ["n0"], [upod("a", "n0"), upod("b", None)], last_up=T0 - timedelta(minutes=30))
    first, within, past = _rounds(obs, 0, GRACE.total_seconds() / 60, GRACE.total_seconds() / 60 + 1)
    assert kinds(past) == [("set_count", {"count": 3, "from": 2})], past.facts["why"]
    assert first.empty and first.facts["booting"] == 1
    assert within.empty and within.facts["booting"] == 1
    assert past.facts["booting"] == 0 and past.facts["unregistered"] == 1
    assert any("1 machine(s) of the count still without a node" in w for w in past.facts["why"])
    assert any("no Kubernetes node for more than 10 min" in n for n in past.notes)
    at = T0 + GRACE + timedelta(minutes=1)
    assert guard_scale(dataclasses.replace(obs, at=at), past, POLICY) == []


def test_it_no_longer_holds_scale_down_back_and_is_never_a_removal() -> None:
    """Count 3: a busy node, an idle empty one, a machine without a node. Past the join grace the
    idle node is removed (before, 'still joining' held every scale-down for good); the busy node
    and the count's machine without a node stay."""
    obs = observed(pool(3), ["n0", "n1"], [upod("a", "n0")], empty_since={"n1": LONG_AGO})
    first, past = _rounds(obs, 0, 11)
    assert first.empty and any("still joining" in n for n in first.notes)
    assert kinds(past) == [("remove_nodes", {"nodes": ["n1"], "from": 3})], past.notes
    assert past.facts["desired"] == 1  # the busy node; the machine without one is no capacity


def test_where_no_new_machine_joins_the_count_rises_once_not_each_round() -> None:
    """One machine more for those without a node, one at most: where no new VM joins (a bootstrap
    that fails on every VM) the pool does not grow by one a round up to max_nodes."""
    obs = observed(pool(2), ["n0"], [upod("a", "n0"), upod("b", None)], last_up=T0 - timedelta(minutes=30))
    memory = obs.memory
    counts = []
    for m in range(0, 80, 11):
        at = T0 + timedelta(minutes=m)
        plan = plan_scale(dataclasses.replace(obs, memory=memory, at=at), POLICY, at)
        memory = Memory.from_json(plan.facts["memory"])
        for a in plan.actions:
            assert a.kind == "set_count", plan.actions
            obs = dataclasses.replace(obs, pool=dataclasses.replace(obs.pool, count=int(a.params["count"])))
            memory = dataclasses.replace(memory, last_up=at)
        counts.append(obs.pool.count)
    assert counts == [2, 3, 3, 3, 3, 3, 3, 3], counts


def test_a_rise_of_the_count_or_an_operation_on_the_pool_restarts_the_clock() -> None:
    """Machines added by a rise of the count are booting for the join grace, whenever the first
    shortfall was seen; while an operation runs on the pool (or it is stopped) nothing is timed."""
    since = T0 - timedelta(hours=1)
    risen = Observed(pool(3), ClusterView((node("n0"),), (upod("a", "n0"), upod("b", None))), (),
                     Memory(count=2, short_since=since), T0)
    plan = plan_scale(risen, POLICY, T0)
    assert plan.facts["booting"] == 2 and "unregistered" not in plan.facts
    assert plan.facts["memory"]["short_since"] == since.isoformat()
    for busy in (dataclasses.replace(pool(3), provisioning_state="Scaling"),
                 dataclasses.replace(pool(3), power_state="Stopped")):
        plan = plan_scale(dataclasses.replace(risen, pool=busy, memory=Memory(count=3, short_since=since)),
                          POLICY, T0)
        assert plan.facts["memory"]["short_since"] is None
    # all nodes there: the clock is off
    whole = Observed(pool(1), ClusterView((node("n0"),), ()), (), Memory(count=1, short_since=since), T0)
    assert plan_scale(whole, POLICY, T0).facts["memory"]["short_since"] is None


def test_assist_mode_raises_the_floor_for_it_and_never_sets_the_count() -> None:
    auto = pool(2, auto=True, min_count=2, max_count=6)
    obs = observed(auto, ["n0"], [upod("a", "n0"), upod("b", None)])
    first, past = _rounds(obs, 0, 11)
    assert first.empty
    assert kinds(past) == [("set_min_count", {"min_count": 3, "from": 2})]
    assert guard_scale(dataclasses.replace(obs, at=T0 + timedelta(minutes=11)), past, POLICY) == []


def test_a_failed_pool_keeps_its_missing_machines_not_unregistered() -> None:
    """A failed pool's count above its nodes: machines never created (``missing``), as before."""
    failed = observed(pool(3, state="Failed"), ["n0", "n1"], [upod("a", "n0"), upod("b", "n1"), upod("c", None)])
    for plan in _rounds(failed, 0, 11, 30):
        assert kinds(plan) == [("set_count", {"count": 3, "from": 3})]
        assert plan.facts["missing"] == 1 and "unregistered" not in plan.facts


async def test_through_arm_and_kubernetes_a_waiting_server_gets_a_machine(
        world: dict[str, Any]) -> None:  # noqa: F811
    """Two machines in the pool, one node (the other VM's kubelet never joined): a GPU server waits.
    The rounds within the join grace send nothing; the first past it raises the count to 3. The
    cost report counts the machine without a node as running (its VM is billed)."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=2, machines=["gpu-0", "gpu-1"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    cap, runner = capability(world)
    start: datetime = world["clock"]["now"]
    for minutes in (0, 5, 10):
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.APPLIED and rec.plan is not None and rec.plan.empty, rec.render()
    rep = await cost_report(world["store"], now=start + timedelta(minutes=10), days=1, price=None, currency="EUR")
    assert sum(d.node_hours for d in rep.days) == pytest.approx(2 * 10 / 60)
    kube.pod("bob", None)
    world["clock"]["now"] = start + timedelta(minutes=11)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert arm.pools["gpu"]["count"] == 3
