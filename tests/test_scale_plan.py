"""The pure scale plan, guard, schedule and cost arithmetic, with an injected clock."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hubpilot.config.scale import ScaleSettings, WarmWindow
from hubpilot.loop import Action, Plan
from hubpilot.ports.cluster import CORDON_ANNOTATION, ClusterView, NodeInfo, UserPod
from hubpilot.ports.pool import PoolState
from hubpilot.scale import Demand, Memory, Observed, Policy, Schedule, guard_scale, plan_scale
from hubpilot.scale.cost import day_costs, node_hours

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Monday 10:00 in Berlin


def pool(count: int, *, auto: bool = False, min_count: int | None = None, max_count: int | None = None,
         state: str = "Succeeded", power: str = "Running") -> PoolState:
    return PoolState("gpu", count, min_count if auto else None, max_count if auto else None, auto, power, state,
                     "Standard_NC4as_T4_v3", "e1")


def node(name: str, *, cordoned_by: str | None = None, unschedulable: bool = False) -> NodeInfo:
    ann = {CORDON_ANNOTATION: cordoned_by} if cordoned_by else {}
    return NodeInfo(name, True, unschedulable or bool(cordoned_by), T0 - timedelta(days=1), name, {}, ann)


def upod(name: str, node_name: str | None, gpu: bool = True) -> UserPod:
    return UserPod(name, node_name, "Running" if node_name else "Pending", node_name is None, T0, name, "", gpu)


def observed(p: PoolState, nodes: list[str], pods: list[UserPod] | None = None, *,
             empty_since: dict[str, datetime] | None = None, last_up: datetime | None = None,
             last_down: datetime | None = None, demand: list[Demand] | None = None,
             extra_nodes: list[NodeInfo] | None = None) -> Observed:
    ns = tuple([node(n) for n in nodes] + (extra_nodes or []))
    return Observed(p, ClusterView(ns, tuple(pods or [])), tuple(demand or []),
                    Memory(empty_since or {}, last_up, last_down), T0)


POLICY = Policy(max_nodes=8, max_step_up=3, max_step_down=2, idle=timedelta(minutes=10),
                delay_after_up=timedelta(minutes=10), down_cooldown=timedelta(minutes=2))
LONG_AGO = T0 - timedelta(hours=1)


def kinds(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    return [(a.kind, dict(a.params)) for a in plan.actions]


# --- direct mode ----------------------------------------------------------------------------------
def test_pending_gpu_pod_scales_up_by_one() -> None:
    obs = observed(pool(1), ["n0"], [upod("a", "n0"), upod("b", None)])
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 2, "from": 1})]
    assert guard_scale(obs, plan, POLICY) == []


def test_hook_demand_counts_until_its_pod_appears_and_expires() -> None:
    d = Demand("bob~", T0 - timedelta(seconds=5))
    plan = plan_scale(observed(pool(0), [], demand=[d]), POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 1, "from": 0})]
    # the pod now exists (pending): counted once, not twice
    twice = plan_scale(observed(pool(0), [], [upod("bob", None)], demand=[d]), POLICY, T0)
    assert kinds(twice) == [("set_count", {"count": 1, "from": 0})]
    stale = Demand("bob~", T0 - POLICY.demand_ttl - timedelta(seconds=1))
    assert plan_scale(observed(pool(0), [], demand=[stale]), POLICY, T0).empty


def test_scale_up_is_step_limited_and_capped() -> None:
    pods = [upod(f"p{i}", None) for i in range(20)]
    plan = plan_scale(observed(pool(0), [], pods), POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 3, "from": 0})]
    plan = plan_scale(observed(pool(7), [f"n{i}" for i in range(7)],
                               [upod(f"q{i}", f"n{i}") for i in range(7)] + pods), POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 8, "from": 7})]
    assert "capped at 8" in plan.facts["why"]


def test_machines_still_booting_count_as_capacity() -> None:
    # count 2, one node registered and busy, one booting: the pending pod waits for it
    obs = observed(pool(2), ["n0"], [upod("a", "n0"), upod("b", None)])
    assert plan_scale(obs, POLICY, T0).empty


def test_empty_node_is_removed_only_after_the_idle_limit() -> None:
    pods = [upod("a", "n0")]
    fresh = observed(pool(2), ["n0", "n1"], pods, empty_since={"n1": T0 - timedelta(minutes=9, seconds=59)})
    plan = plan_scale(fresh, POLICY, T0)
    assert plan.empty and any("not yet idle" in n for n in plan.notes)
    idle = observed(pool(2), ["n0", "n1"], pods, empty_since={"n1": T0 - timedelta(minutes=10)})
    plan = plan_scale(idle, POLICY, T0)
    assert kinds(plan) == [("remove_nodes", {"nodes": ["n1"], "from": 2})]
    assert guard_scale(idle, plan, POLICY) == []


def test_first_sight_of_an_empty_node_starts_its_idle_clock() -> None:
    plan = plan_scale(observed(pool(1), ["n0"]), POLICY, T0)
    assert plan.empty
    assert plan.facts["memory"]["empty_since"] == {"n0": T0.isoformat()}


def test_busy_node_is_never_removed_even_when_over_target() -> None:
    pods = [upod("a", "n0"), upod("b", "n1", gpu=False)]  # a CPU-only user pod on a GPU node is a user too
    obs = observed(pool(3), ["n0", "n1", "n2"], pods, empty_since={"n2": LONG_AGO})
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("remove_nodes", {"nodes": ["n2"], "from": 3})]


def test_scale_down_waits_after_a_scale_up_and_between_scale_downs() -> None:
    args: dict[str, Any] = {"empty_since": {"n0": LONG_AGO, "n1": LONG_AGO}}
    after_up = observed(pool(2), ["n0", "n1"], last_up=T0 - timedelta(minutes=9), **args)
    plan = plan_scale(after_up, POLICY, T0)
    assert plan.empty and any("of a scale-up" in n for n in plan.notes)
    after_down = observed(pool(2), ["n0", "n1"], last_down=T0 - timedelta(minutes=1), **args)
    assert plan_scale(after_down, POLICY, T0).empty
    # one second short of either wait is still within it
    short = observed(pool(2), ["n0", "n1"], last_up=T0 - timedelta(minutes=10, seconds=-1), **args)
    assert plan_scale(short, POLICY, T0).empty
    short = observed(pool(2), ["n0", "n1"], last_down=T0 - timedelta(minutes=2, seconds=-1), **args)
    assert plan_scale(short, POLICY, T0).empty
    later = observed(pool(2), ["n0", "n1"], last_up=T0 - timedelta(minutes=10),
                     last_down=T0 - timedelta(minutes=2), **args)
    assert kinds(plan_scale(later, POLICY, T0)) == [("remove_nodes", {"nodes": ["n0", "n1"], "from": 2})]


def test_scale_down_is_step_limited_oldest_empty_first() -> None:
    since = {"n0": T0 - timedelta(minutes=30), "n1": T0 - timedelta(minutes=50), "n2": T0 - timedelta(minutes=40)}
    plan = plan_scale(observed(pool(3), ["n0", "n1", "n2"], empty_since=since), POLICY, T0)
    assert kinds(plan) == [("remove_nodes", {"nodes": ["n1", "n2"], "from": 3})]


def test_a_node_cordoned_by_someone_else_is_left_alone() -> None:
    other = node("n1", unschedulable=True)
    plan = plan_scale(observed(pool(1), [], extra_nodes=[other], empty_since={"n1": LONG_AGO}), POLICY, T0)
    assert plan.empty


def test_a_node_cordoned_by_someone_else_is_no_capacity() -> None:
    other = node("n1", unschedulable=True)
    obs = observed(pool(1), [], [upod("b", None)], extra_nodes=[other])
    assert kinds(plan_scale(obs, POLICY, T0)) == [("set_count", {"count": 2, "from": 1})]
    broken = NodeInfo("n2", False, False, T0 - timedelta(minutes=11), "n2", {}, {})
    obs = observed(pool(1), [], [upod("b", None)], extra_nodes=[broken])
    assert kinds(plan_scale(obs, POLICY, T0)) == [("set_count", {"count": 2, "from": 1})]
    joining = NodeInfo("n3", False, False, T0 - timedelta(seconds=40), "n3", {}, {})
    obs = observed(pool(1), [], [upod("b", None)], extra_nodes=[joining])
    assert plan_scale(obs, POLICY, T0).empty  # not ready yet, but just joined: no second node


def stopped_vm(name: str) -> NodeInfo:
    """A node of a stopped VM in a Deallocate pool: registered, NotReady, joined long ago."""
    return NodeInfo(name, False, False, T0 - timedelta(days=3), name, {}, {})


def deallocating(count: int) -> PoolState:
    return dataclasses.replace(pool(count), scale_down_mode="Deallocate")


def test_stopped_vms_of_a_deallocate_pool_are_neither_capacity_nor_unusable_nor_removed() -> None:
    stopped = [stopped_vm(f"s{i}") for i in range(3)]
    since = {n.name: LONG_AGO for n in stopped}
    # one busy node, three stopped VMs, one GPU server waits: start one VM (count 1 -> 2), no more
    obs = observed(deallocating(1), ["n0"], [upod("a", "n0"), upod("b", None)], extra_nodes=stopped,
                   empty_since=since)
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 2, "from": 1})]
    assert plan.facts["stopped"] == 3 and plan.facts["booting"] == 0
    assert any("3 stopped VM(s)" in w for w in plan.facts["why"])
    # nothing waits: the stopped VMs are long "empty", yet nothing is removed and nothing added
    idle = observed(deallocating(1), ["n0"], [upod("a", "n0")], extra_nodes=stopped, empty_since=since)
    assert plan_scale(idle, POLICY, T0).empty
    # in a Delete pool the same nodes would be machines that never became ready: no capacity
    delete = observed(pool(4), ["n0"], [upod("a", "n0"), upod("b", None)], extra_nodes=stopped, empty_since=since)
    assert kinds(plan_scale(delete, POLICY, T0)) == [("set_count", {"count": 5, "from": 4})]


def test_whether_aks_kept_or_deleted_the_removed_vms_is_learned_from_their_nodes() -> None:
    """deleteMachines in a Deallocate pool: the node of a stopped VM stays registered, a deleted
    VM's node goes. Nothing is concluded before the settle time, unless the node is gone or ready."""
    watched = Memory(removed={"s1": T0})

    def plan_at(nodes: list[NodeInfo], memory: Memory, at: datetime, p: PoolState | None = None) -> Plan:
        obs = Observed(p or deallocating(1), ClusterView(tuple([node("n0"), *nodes]), (upod("a", "n0"),)), (),
                       memory, at)
        return plan_scale(obs, POLICY, at)

    early = plan_at([stopped_vm("s1")], watched, T0 + timedelta(minutes=5))
    assert "removal_keeps_vms" not in early.facts
    assert Memory.from_json(early.facts["memory"]).removed == {"s1": T0}  # still watched
    kept = plan_at([stopped_vm("s1")], watched, T0 + timedelta(minutes=10))
    assert kept.facts["removal_keeps_vms"] is True and not kept.notes
    assert Memory.from_json(kept.facts["memory"]).removed == {}
    restarted = plan_at([node("s1")], watched, T0 + timedelta(minutes=1))  # a scale-up restarted it
    assert restarted.facts["removal_keeps_vms"] is True

    deleted = plan_at([], watched, T0 + timedelta(minutes=1))
    assert deleted.facts["removal_keeps_vms"] is False
    assert any("AKS deleted the VMs hubpilot removed" in n for n in deleted.notes)
    after = Memory.from_json(deleted.facts["memory"])
    assert after.removed == {} and after.vm_kept is False
    again = plan_at([], after, T0 + timedelta(minutes=2))
    assert again.facts["removal_keeps_vms"] is False and not again.notes  # said once, kept in the facts
    # a Delete pool deletes by design: nothing to learn or say
    assert "removal_keeps_vms" not in plan_at([], watched, T0 + timedelta(minutes=1), pool(1)).facts


def test_a_restarting_vm_of_a_deallocate_pool_is_booting_then_broken() -> None:
    nodes = [stopped_vm(f"s{i}") for i in range(3)]  # count 2: n0 and one of them restarting
    pods = [upod("a", "n0"), upod("b", None)]
    since = {"n9": LONG_AGO}
    extra = [*nodes, node("n9")]  # and an idle ready node, removable in a Delete pool
    starting = observed(deallocating(3), ["n0"], pods, extra_nodes=extra, empty_since=since,
                        last_up=T0 - timedelta(minutes=1))
    plan = plan_scale(starting, POLICY, T0)
    assert plan.facts["stopped"] == 2 and plan.facts["booting"] == 1
    # the waiting server takes the idle ready node; the restart counts as coming capacity and
    # holds every scale-down back (the idle limit is long past, but a node is still joining)
    assert plan.empty and any("still joining" in n for n in plan.notes)
    later = observed(deallocating(3), ["n0", "n9"], [upod("a", "n0"), upod("b", "n9"), upod("c", None)],
                     extra_nodes=nodes, last_up=T0 - timedelta(minutes=11))
    plan = plan_scale(later, POLICY, T0)
    assert plan.facts["booting"] == 0
    assert any("1 running machine(s) whose node is still NotReady" in w for w in plan.facts["why"])
    # two busy, one waiting, one broken: 4 machines wanted
    assert kinds(plan) == [("set_count", {"count": 4, "from": 3})]


def test_a_vm_restarted_by_the_autoscaler_is_booting_not_broken() -> None:
    # autoscaler-assist: the autoscaler (not hubpilot) raised the count 1 -> 2 by starting a stopped VM
    auto = dataclasses.replace(pool(2, auto=True, min_count=1, max_count=6), scale_down_mode="Deallocate")
    nodes = [stopped_vm("s0"), stopped_vm("s1")]  # one of them is restarting, one stays stopped
    obs = Observed(auto, ClusterView((node("n0"), *nodes), (upod("a", "n0"), upod("b", None))), (),
                   Memory({}, None, None, count=1), T0)
    plan = plan_scale(obs, POLICY, T0)
    assert plan.facts["booting"] == 1 and plan.facts["stopped"] == 1
    assert plan.facts["desired"] == 2  # a, and b on the restarting VM: min_count 2, nothing extra
    assert plan.facts["memory"]["count"] == 2 and plan.facts["memory"]["count_rose"] == T0.isoformat()
    # the memory it leaves: 11 min on, still NotReady -- now a broken machine, replaced
    later = Observed(auto, obs.cluster, (), Memory.from_json(plan.facts["memory"]), T0 + timedelta(minutes=11))
    plan = plan_scale(later, POLICY, T0 + timedelta(minutes=11))
    assert plan.facts["booting"] == 0 and plan.facts["desired"] == 3


def test_a_removed_node_that_lingers_in_a_delete_pool_is_leaving_not_unusable() -> None:
    """A Delete pool's removed node stays registered (NotReady, cordoned by us) for a while after its
    VM is gone: counted as unusable it would make every scale-down boot a replacement."""
    lingering = NodeInfo("n1", False, True, T0 - timedelta(days=1), "n1", {}, {CORDON_ANNOTATION: "hubpilot"})
    obs = observed(pool(1), ["n0"], [upod("a", "n0")], extra_nodes=[lingering], last_down=T0 - timedelta(minutes=1))
    # not known as removed by hubpilot (someone else's removal): an unusable node, replaced
    assert kinds(plan_scale(obs, POLICY, T0)) == [("set_count", {"count": 2, "from": 1}), ("uncordon", {})]
    removed = {"n1": T0 - timedelta(minutes=1)}
    watched = dataclasses.replace(obs, memory=dataclasses.replace(obs.memory, removed=removed))
    plan = plan_scale(watched, POLICY, T0)
    assert plan.empty and plan.facts["leaving"] == ["n1"] and "removal_keeps_vms" not in plan.facts
    assert Memory.from_json(plan.facts["memory"]).removed == {"n1": T0 - timedelta(minutes=1)}
    # gone: no longer watched; still there after the settle time: an ordinary (unusable) node again
    gone = dataclasses.replace(watched, cluster=ClusterView((node("n0"),), watched.cluster.pods))
    assert Memory.from_json(plan_scale(gone, POLICY, T0).facts["memory"]).removed == {}
    late = T0 + timedelta(minutes=11)
    assert ("set_count", {"count": 2, "from": 1}) in kinds(plan_scale(watched, POLICY, late))


def test_guard_refuses_removing_a_notready_node_of_a_deallocate_pool() -> None:
    obs = observed(deallocating(1), ["n0"], extra_nodes=[stopped_vm("s0")])
    plan = Plan.build("scale", [Action("remove_nodes", "gpu", 1, {"nodes": ["s0"], "from": 1}, "")], [], {})
    assert any("may be a stopped VM" in r for r in guard_scale(obs, plan, POLICY))
    ready = Plan.build("scale", [Action("remove_nodes", "gpu", 1, {"nodes": ["n0"], "from": 1}, "")], [], {})
    assert guard_scale(obs, ready, POLICY) == []


def test_a_node_left_cordoned_by_us_is_uncordoned_or_removed() -> None:
    ours = node("n1", cordoned_by="hubpilot")
    busy = observed(pool(1), [], [upod("a", "n1")], extra_nodes=[ours])
    assert kinds(plan_scale(busy, POLICY, T0)) == [("uncordon", {})]
    idle = observed(pool(1), [], extra_nodes=[ours], empty_since={"n1": LONG_AGO})
    assert kinds(plan_scale(idle, POLICY, T0)) == [("remove_nodes", {"nodes": ["n1"], "from": 1})]


def test_pool_busy_or_stopped_plans_nothing() -> None:
    for p, word in ((pool(1, state="Scaling"), "Scaling"), (pool(1, power="Stopped"), "Stopped")):
        plan = plan_scale(observed(p, [], [upod("b", None)]), POLICY, T0)
        assert plan.empty and any(word in n for n in plan.notes)


def test_a_failed_pools_count_above_its_machines_is_no_capacity_on_the_way() -> None:
    """ARM keeps a failed (or canceled) operation's count as the pool's, with fewer machines than it
    says (Azure/AKS#671): those are not booting. A waiting server gets the count sent again, never
    a lower one; a scale-down counts only the machines that exist."""
    for state in ("Failed", "Canceled"):
        waits = observed(pool(3, state=state), ["n0", "n1"], [upod("a", "n0"), upod("b", "n1"), upod("c", None)])
        plan = plan_scale(waits, POLICY, T0)
        assert kinds(plan) == [("set_count", {"count": 3, "from": 3})], plan.notes
        assert plan.facts["booting"] == 0 and plan.facts["missing"] == 1
        assert guard_scale(waits, plan, POLICY) == []
    # nobody waits: nothing is sent; the empty idle node is the one surplus machine (not two)
    idle = observed(pool(3, state="Failed"), ["n0", "n1"], [upod("a", "n0")], empty_since={"n1": LONG_AGO})
    plan = plan_scale(idle, POLICY, T0)
    assert kinds(plan) == [("remove_nodes", {"nodes": ["n1"], "from": 3})]
    # the same pool after a successful operation: the third machine is still joining
    joining = observed(pool(3), ["n0", "n1"], [upod("a", "n0"), upod("b", "n1"), upod("c", None)])
    assert plan_scale(joining, POLICY, T0).empty


def test_the_guards_min_nodes_counts_a_failed_pools_machines_not_its_count() -> None:
    """A failed pool's count (3) is above its machines (2): removing both leaves none, below
    scale.min_nodes 1, though the count less two is 1. The guard refuses it; the plan keeps one."""
    pol = Policy(min_nodes=1, max_nodes=8, max_step_down=2, idle=timedelta(minutes=10))
    obs = observed(pool(3, state="Failed"), ["n0", "n1"], empty_since={"n0": LONG_AGO, "n1": LONG_AGO})
    both = Plan.build("scale", [Action("remove_nodes", "gpu", 1, {"nodes": ["n0", "n1"], "from": 3})], [], {})
    assert guard_scale(obs, both, pol) == ["removing 2 nodes goes below scale.min_nodes 1"]
    plan = plan_scale(obs, pol, T0)
    assert kinds(plan) == [("remove_nodes", {"nodes": ["n0"], "from": 3})], plan.notes
    assert guard_scale(obs, plan, pol) == []


def test_the_guards_step_up_counts_the_machines_a_count_adds() -> None:
    """A count sent to a failed pool adds the machines it names beyond those that exist: count 6
    with 2 machines, a count of 8 (or 6 again) adds 6 (4), checked against scale.max_step_up 3."""
    obs = observed(pool(6, state="Failed"), ["n0", "n1"], [upod("a", "n0"), upod("b", "n1")])
    more = Plan.build("scale", [Action("set_count", "gpu", 0, {"count": 8, "from": 6})])
    assert guard_scale(obs, more, POLICY) == ["adding 6 nodes exceeds scale.max_step_up 3"]
    again = Plan.build("scale", [Action("set_count", "gpu", 0, {"count": 6, "from": 6})])
    assert guard_scale(obs, again, POLICY) == ["adding 4 nodes exceeds scale.max_step_up 3"]
    five = observed(pool(5, state="Failed"), ["n0", "n1"], [upod("a", "n0"), upod("b", "n1")])
    assert guard_scale(five, Plan.build("scale", [Action("set_count", "gpu", 0, {"count": 5, "from": 5})]),
                       POLICY) == []


def test_a_resent_count_that_would_add_more_than_max_step_up_is_left_out_with_a_note() -> None:
    """Someone's scale-up to 10 failed with 3 machines: sending 10 again would add 7 nodes, above
    scale.max_step_up 3, and a lower count is never sent. It is left out, the note says what to do,
    and the rest of the plan (here an uncordon) passes the guard."""
    obs = observed(pool(10, state="Failed"), ["n0", "n1"],
                   [upod("a", "n0"), upod("b", "n1"), upod("c", None), upod("d", None)],
                   extra_nodes=[node("n2", cordoned_by="hubpilot")])
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("uncordon", {})], plan.actions
    assert any("would add 7 nodes, above scale.max_step_up 3" in n for n in plan.notes), plan.notes
    assert guard_scale(obs, plan, POLICY) == []


def test_a_resent_count_above_max_nodes_is_left_out_with_a_note() -> None:
    """Someone's scale-up to 9 (above scale.max_nodes 8) failed with 7 machines, and a server waits:
    the count sent again would be refused by the guard every round, and with it the whole plan
    (here an uncordon). It is left out with a note; the rest of the plan goes on."""
    names = [f"n{i}" for i in range(6)]
    obs = observed(pool(9, state="Failed"), names, [upod(f"u{i}", n) for i, n in enumerate(names)]
                   + [upod("w0", None), upod("w1", None)], extra_nodes=[node("n6", cordoned_by="hubpilot")])
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("uncordon", {})], plan.actions
    assert any("count 9 is above scale.max_nodes 8" in n for n in plan.notes), plan.notes
    assert guard_scale(obs, plan, POLICY) == []


def test_min_nodes_is_a_floor() -> None:
    pol = Policy(min_nodes=2, max_nodes=4)
    assert kinds(plan_scale(observed(pool(0), []), pol, T0)) == [("set_count", {"count": 2, "from": 0})]
    obs = observed(pool(2), ["n0", "n1"], empty_since={"n0": LONG_AGO, "n1": LONG_AGO})
    assert plan_scale(obs, pol, T0).empty


# --- autoscaler-assist mode -------------------------------------------------------------------------
def test_assist_mode_raises_min_count_and_never_sets_count() -> None:
    obs = observed(pool(1, auto=True, min_count=0, max_count=5), ["n0"], [upod("a", "n0"), upod("b", None)])
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("set_min_count", {"min_count": 2, "from": 0})]
    assert guard_scale(obs, plan, POLICY) == []


def test_assist_mode_lowers_min_count_after_the_delay_and_removes_idle_nodes() -> None:
    p = pool(3, auto=True, min_count=3, max_count=5)
    since = {"n0": LONG_AGO, "n1": LONG_AGO, "n2": LONG_AGO}
    soon = observed(p, ["n0", "n1", "n2"], empty_since=since, last_up=T0 - timedelta(minutes=5))
    assert plan_scale(soon, POLICY, T0).empty
    later = observed(p, ["n0", "n1", "n2"], empty_since=since, last_up=T0 - timedelta(minutes=30))
    plan = plan_scale(later, POLICY, T0)
    assert kinds(plan) == [("set_min_count", {"min_count": 1, "from": 3}),
                           ("remove_nodes", {"nodes": ["n0", "n1"], "from": 3})]
    assert guard_scale(later, plan, POLICY) == []


def test_assist_mode_steps_are_nodes_added_not_the_floors_jump() -> None:
    """The autoscaler grew the pool to 5 busy nodes over a floor of 0: a floor of 6 adds one node,
    within max_step_up; the guard measures the step as the plan does (refused, the whole round --
    uncordons and removals too -- would be lost each minute the pool stays busy)."""
    obs = observed(pool(5, auto=True, min_count=0, max_count=10), [f"n{i}" for i in range(5)],
                   [upod(f"p{i}", f"n{i}") for i in range(5)] + [upod("w", None)])
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("set_min_count", {"min_count": 6, "from": 0})]
    assert guard_scale(obs, plan, POLICY) == []
    # a floor that would add more nodes than max_step_up at once is still refused
    four = observed(pool(4, auto=True, min_count=0, max_count=10), [f"n{i}" for i in range(4)])
    jump = Plan.build("scale", [Action("set_min_count", "gpu", 0, {"min_count": 8, "from": 0}, "")])
    assert guard_scale(four, jump, POLICY) == ["raising min_count to 8 adds 4 nodes, above scale.max_step_up 3"]
    # lowering the floor is bounded by max_step_down
    high = observed(pool(5, auto=True, min_count=5, max_count=10), [f"n{i}" for i in range(5)])
    drop = Plan.build("scale", [Action("set_min_count", "gpu", 0, {"min_count": 2, "from": 5}, "")])
    assert guard_scale(high, drop, POLICY) == ["lowering min_count by 3 exceeds scale.max_step_down 2"]


def test_assist_mode_respects_the_pool_max_count() -> None:
    obs = observed(pool(2, auto=True, min_count=0, max_count=2), ["n0", "n1"],
                   [upod("a", "n0"), upod("b", "n1"), upod("c", None)])
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("set_min_count", {"min_count": 2, "from": 0})]


# --- guard ------------------------------------------------------------------------------------
def test_guard_refuses_removing_a_busy_node_and_setting_count_under_the_autoscaler() -> None:
    obs = observed(pool(2), ["n0", "n1"], [upod("a", "n0")])
    bad = Plan.build("scale", [plan_scale(observed(pool(2), ["n0", "n1"], empty_since={"n0": LONG_AGO,
                                                                                    "n1": LONG_AGO}),
                                          POLICY, T0).actions[0]])
    assert any("n0 runs a user pod" in r for r in guard_scale(obs, bad, POLICY))
    direct_plan = plan_scale(observed(pool(1), ["n0"], [upod("a", "n0"), upod("b", None)]), POLICY, T0)
    assert kinds(direct_plan) == [("set_count", {"count": 2, "from": 1})]
    auto = observed(pool(1, auto=True, min_count=0, max_count=3), ["n0"], [upod("b", None)])
    assert any("autoscaler is on" in r for r in guard_scale(auto, direct_plan, POLICY))
    tight = Policy(max_nodes=1, max_step_up=3)
    assert any("above scale.max_nodes" in r for r in guard_scale(observed(pool(1), ["n0"]), direct_plan, tight))
    jump = Plan.build("scale", [Action("set_count", "gpu", 0, {"count": 6, "from": 1})])
    assert any("max_step_up" in r for r in guard_scale(observed(pool(1), ["n0"]), jump, POLICY))
    lower = Plan.build("scale", [Action("set_count", "gpu", 0, {"count": 1, "from": 2})])
    assert any("must name the empty nodes" in r for r in guard_scale(obs, lower, POLICY))



def test_the_guard_refuses_a_node_whose_user_pod_is_placed_but_not_running_yet() -> None:
    # a pod bound to the node and still Pending (pulling its image) or of an unknown phase holds
    # the node as a running one does
    for phase in ("Pending", "Unknown"):
        placed = UserPod("a", "n0", phase, False, T0, "a", "", True)
        obs = observed(pool(2), ["n0", "n1"], [placed])
        bad = Plan.build("scale", [Action("remove_nodes", "gpu", 1, {"nodes": ["n0"], "from": 2}, "")])
        assert any("n0 runs a user pod" in r for r in guard_scale(obs, bad, POLICY)), phase


def test_the_guard_holds_every_bound_it_names() -> None:
    # one node more than scale.max_step_down, and a floor one above scale.max_nodes
    three = observed(pool(4), ["n0", "n1", "n2", "n3"])
    remove = Plan.build("scale", [Action("remove_nodes", "gpu", 1, {"nodes": ["n0", "n1", "n2"], "from": 4})])
    assert any("exceeds scale.max_step_down 2" in r for r in guard_scale(three, remove, POLICY))
    two = Plan.build("scale", [Action("remove_nodes", "gpu", 1, {"nodes": ["n0", "n1"], "from": 4})])
    assert guard_scale(three, two, POLICY) == []
    auto = observed(pool(8, auto=True, min_count=8, max_count=20), [f"n{i}" for i in range(8)])
    floor = Plan.build("scale", [Action("set_min_count", "gpu", 0, {"min_count": 9, "from": 8})])
    assert any("min_count 9 is above the pool's bound" in r for r in guard_scale(auto, floor, POLICY))
    at_max = Plan.build("scale", [Action("set_min_count", "gpu", 0, {"min_count": 8, "from": 7})])
    assert guard_scale(observed(pool(7, auto=True, min_count=7, max_count=20), [f"n{i}" for i in range(7)]),
                       at_max, POLICY) == []


def test_a_node_that_got_a_user_pod_since_the_last_round_is_not_removed() -> None:
    # remembered empty for an hour, a CPU-only user pod landed on it since: busy, never named
    pods = [upod("a", "n0"), upod("b", "n1", gpu=False)]
    obs = observed(pool(3), ["n0", "n1", "n2"], pods, empty_since={"n1": LONG_AGO - timedelta(hours=1),
                                                                   "n2": LONG_AGO})
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("remove_nodes", {"nodes": ["n2"], "from": 3})]
    assert "n1" in plan.facts["busy"]


def test_a_node_cordoned_by_someone_else_is_not_removed_when_the_pool_is_over_target() -> None:
    # the cordoned node has been empty longest, so it would be the first named were it not left alone
    other = node("n1", unschedulable=True)
    obs = observed(pool(2), ["n0"], extra_nodes=[other],
                   empty_since={"n0": LONG_AGO, "n1": LONG_AGO - timedelta(hours=1)})
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("remove_nodes", {"nodes": ["n0"], "from": 2})]


# --- schedule, holidays, DST -----------------------------------------------------------------
BERLIN = Schedule.of([WarmWindow(days="mon-fri", start="08:00", end="18:00", spare=1)], "Europe/Berlin",
                     [date(2026, 4, 6)])  # Easter Monday


@pytest.mark.parametrize(("utc", "active"), [
    (datetime(2026, 3, 2, 6, 59), False),  # Mon 07:59 CET
    (datetime(2026, 3, 2, 7, 0), True),  # Mon 08:00 CET
    (datetime(2026, 3, 2, 16, 59), True),  # 17:59
    (datetime(2026, 3, 2, 17, 0), False),  # 18:00: the end is exclusive
    (datetime(2026, 3, 7, 9, 0), False),  # Saturday
    (datetime(2026, 3, 27, 7, 0), True),  # Fri before spring-forward: 08:00 CET = 07:00 UTC
    (datetime(2026, 3, 30, 5, 59), False),  # Mon after: 07:59 CEST
    (datetime(2026, 3, 30, 6, 0), True),  # 08:00 CEST = 06:00 UTC
    (datetime(2026, 4, 6, 9, 0), False),  # holiday
    (datetime(2026, 10, 23, 6, 0), True),  # Fri before fall-back, CEST
    (datetime(2026, 10, 26, 6, 30), False),  # Mon after: 07:30 CET
    (datetime(2026, 10, 26, 7, 0), True),  # 08:00 CET
])
def test_schedule_boundaries_and_dst(utc: datetime, active: bool) -> None:
    assert BERLIN.at(utc.replace(tzinfo=UTC)).active is active


def test_dst_change_night_windows() -> None:
    night = Schedule.of([WarmWindow(days="sun", start="02:00", end="03:00", spare=2)], "Europe/Berlin", [])
    # 2026-03-29 02:00-03:00 does not exist in Berlin: 00:59 UTC is 01:59 CET, 01:00 UTC is 03:00 CEST
    assert not night.at(datetime(2026, 3, 29, 0, 59, tzinfo=UTC)).active
    assert not night.at(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)).active
    # 2026-10-25 02:00-03:00 happens twice: 00:00-01:00 UTC (CEST) and 01:00-02:00 UTC (CET)
    assert night.at(datetime(2026, 10, 25, 0, 30, tzinfo=UTC)).active
    assert night.at(datetime(2026, 10, 25, 1, 30, tzinfo=UTC)).active
    assert not night.at(datetime(2026, 10, 25, 2, 0, tzinfo=UTC)).active


def test_overnight_window_belongs_to_its_start_day() -> None:
    s = Schedule.of([WarmWindow(days="fri", start="22:00", end="02:00", spare=1)], "UTC", [])
    assert s.at(datetime(2026, 3, 6, 23, 0, tzinfo=UTC)).active  # Fri 23:00
    assert s.at(datetime(2026, 3, 7, 1, 59, tzinfo=UTC)).active  # Sat 01:59, the Friday window
    assert not s.at(datetime(2026, 3, 7, 2, 0, tzinfo=UTC)).active
    assert not s.at(datetime(2026, 3, 5, 23, 0, tzinfo=UTC)).active  # Thursday


def test_a_holiday_switches_off_all_day_and_overnight_windows_of_its_date() -> None:
    christmas = date(2026, 12, 25)  # a Friday
    s = Schedule.of([WarmWindow(days="mon-fri", start="08:00", end="08:00", spare=1),  # start = end: all day
                     WarmWindow(days="fri", start="22:00", end="02:00", spare=2)], "UTC", [christmas])
    # the all-day window covers the whole of its own days, midnight to midnight
    assert s.at(datetime(2026, 12, 14, 7, 0, tzinfo=UTC)).spare == 1  # Monday 07:00
    assert s.at(datetime(2026, 12, 18, 23, 0, tzinfo=UTC)).spare == 2  # Friday 23:00: both, the larger
    assert not s.at(datetime(2026, 12, 19, 7, 0, tzinfo=UTC)).active  # Saturday 07:00
    # on the holiday neither window applies, nor the night that began on it (Sat 01:00)
    for hour in (0, 12, 23):
        assert not s.at(datetime(2026, 12, 25, hour, 0, tzinfo=UTC)).active
    assert not s.at(datetime(2026, 12, 26, 1, 0, tzinfo=UTC)).active
    # a holiday on the Saturday after does not take the Friday night's hours past midnight away
    s2 = Schedule.of([WarmWindow(days="fri", start="22:00", end="02:00", spare=2)], "UTC", [date(2026, 12, 19)])
    assert s2.at(datetime(2026, 12, 19, 1, 0, tzinfo=UTC)).spare == 2


def test_overlapping_windows_take_the_largest_spare_and_floor_in_any_order() -> None:
    a = WarmWindow(days="mon-fri", start="08:00", end="18:00", spare=2, min_nodes=1)
    b = WarmWindow(days="mon", start="09:00", end="12:00", spare=1, min_nodes=3)
    for windows in ([a, b], [b, a]):
        warm = Schedule.of(windows, "UTC", []).at(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
        assert (warm.spare, warm.min_nodes) == (2, 3)
        assert warm.window.count(";") == 1  # both named


def test_a_naive_time_is_refused_not_read_as_the_hosts_zone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        BERLIN.at(datetime(2026, 3, 2, 7, 0))


def test_warm_window_keeps_a_spare_node_then_lets_it_go() -> None:
    pol = Policy(schedule=BERLIN, max_nodes=4)
    morning = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
    assert kinds(plan_scale(observed(pool(0), []), pol, morning)) == [("set_count", {"count": 1, "from": 0})]
    evening = datetime(2026, 3, 2, 17, 30, tzinfo=UTC)
    obs = observed(pool(1), ["n0"], empty_since={"n0": evening - timedelta(hours=3)})
    assert kinds(plan_scale(obs, pol, evening)) == [("remove_nodes", {"nodes": ["n0"], "from": 1})]
    noon = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    assert plan_scale(obs, pol, noon).empty  # the spare is kept however long it is empty


def test_settings_validate_windows_timezone_and_bounds() -> None:
    s = ScaleSettings(timezone="Europe/Berlin", warm=[WarmWindow(days="mon-fri")], holidays=["2026-12-25"])
    assert s.schedule == "0 * * * * *" and s.holidays == [date(2026, 12, 25)]
    with pytest.raises(ValidationError, match="IANA timezone"):
        ScaleSettings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="no day"):
        WarmWindow(days="weekdays")
    with pytest.raises(ValidationError, match="HH:MM"):
        WarmWindow(start="8am")
    with pytest.raises(ValidationError, match="min_nodes"):
        ScaleSettings(min_nodes=3, max_nodes=2)
    with pytest.raises(ValidationError, match="https"):
        ScaleSettings(arm_endpoint="http://management.example.org")


# --- properties --------------------------------------------------------------------------------
@st.composite
def worlds(draw: st.DrawFn) -> tuple[Observed, Policy, datetime]:
    n = draw(st.integers(0, 8))
    names = [f"n{i}" for i in range(n)]
    booting = draw(st.integers(0, 2))
    auto = draw(st.booleans())
    pods = [upod(f"p{i}", nm) for i, nm in enumerate(names) if draw(st.booleans())]
    pods += [upod(f"w{i}", None) for i in range(draw(st.integers(0, 5)))]
    since = {nm: T0 - timedelta(minutes=draw(st.integers(0, 120))) for nm in names if draw(st.booleans())}
    count = n + booting
    pol = Policy(min_nodes=draw(st.integers(0, 2)), max_nodes=draw(st.integers(2, 10)),
                 max_step_up=draw(st.integers(1, 4)), max_step_down=draw(st.integers(1, 3)),
                 idle=timedelta(minutes=draw(st.integers(0, 60))))
    p = pool(count, auto=auto, min_count=draw(st.integers(0, 3)) if auto else None,
             max_count=max(count, draw(st.integers(1, 10))) if auto else None)
    last_up = T0 - timedelta(minutes=draw(st.integers(0, 60))) if draw(st.booleans()) else None
    stopped: list[NodeInfo] = []
    if draw(st.booleans()):  # a Deallocate pool with stopped VMs (NotReady nodes outside the count)
        p = dataclasses.replace(p, scale_down_mode="Deallocate")
        stopped = [stopped_vm(f"s{i}") for i in range(draw(st.integers(0, 4)))]
        since |= {v.name: T0 - timedelta(minutes=draw(st.integers(0, 120))) for v in stopped}
    return observed(p, names, pods, empty_since=since, last_up=last_up, extra_nodes=stopped), pol, T0


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_plans_pass_their_own_guard_and_never_touch_busy_nodes(w: tuple[Observed, Policy, datetime]) -> None:
    obs, pol, now = w
    plan = plan_scale(obs, pol, now)
    busy = {p.node for p in obs.cluster.pods if p.node}
    not_ready = {n.name for n in obs.cluster.nodes if not n.ready}
    for a in plan.actions:
        if a.kind == "remove_nodes":
            assert not set(a.params["nodes"]) & busy
            assert not set(a.params["nodes"]) & not_ready  # never a stopped VM of a Deallocate pool
            assert len(a.params["nodes"]) <= pol.max_step_down
            assert obs.pool.count - len(a.params["nodes"]) >= pol.min_nodes
        if a.kind == "set_count":
            assert not obs.pool.autoscaling
            assert obs.pool.count < a.params["count"] <= min(pol.max_nodes, obs.pool.count + pol.max_step_up)
    # a plan that raises the pool never also removes nodes in the same run
    assert not ({a.kind for a in plan.actions} >= {"set_count", "remove_nodes"})
    assert guard_scale(obs, plan, pol) == []
    assert plan_scale(obs, pol, now) == plan  # pure: same input, same plan


def simulate(arrivals: list[tuple[int, int]], pol: Policy, minutes: int) -> list[int]:
    """Run the plan each minute against a tiny world model; return the count per minute."""
    count, nodes, pods, memory = 0, [], {}, Memory()
    sizes = []
    for m in range(minutes):
        now = T0 + timedelta(minutes=m)
        for start, dur in arrivals:
            if m == start:
                pods[f"s{start}"] = (m + dur, None)
        for k, (end, _nd) in list(pods.items()):
            if m >= end:
                del pods[k]
        free = [n for n in nodes if n not in {nd for _, nd in pods.values()}]
        for k, (end, nd) in list(pods.items()):
            if nd is None and free:
                pods[k] = (end, free.pop(0))
        upods = [upod(k, nd) for k, (_, nd) in pods.items()]
        obs = Observed(pool(count), ClusterView(tuple(node(n) for n in nodes), tuple(upods)), (), memory, now)
        plan = plan_scale(obs, pol, now)
        memory = Memory.from_json(plan.facts["memory"])
        for a in plan.actions:
            if a.kind == "set_count":
                nodes += [f"m{m}-{i}" for i in range(a.params["count"] - count)]  # joins at once
                count = a.params["count"]
                memory = dataclasses.replace(memory, last_up=now)
            if a.kind == "remove_nodes":
                nodes = [n for n in nodes if n not in a.params["nodes"]]
                count -= len(a.params["nodes"])
                memory = dataclasses.replace(memory, last_down=now)
        sizes.append(count)
    return sizes


def test_bursty_demand_does_not_flap() -> None:
    # sessions come and go every few minutes: the pool must not go up and down each time
    arrivals = [(m, 3) for m in range(0, 120, 5)]
    sizes = simulate(arrivals, POLICY, 180)
    changes = sum(1 for a, b in itertools.pairwise(sizes) if a != b)
    assert max(sizes) == 1 and changes <= 2, sizes
    assert sizes[-1] == 0  # and it does come down once the demand is gone


# --- cost arithmetic ----------------------------------------------------------------------------
def test_node_hours_integrates_the_size_steps() -> None:
    start = datetime(2026, 3, 2, tzinfo=UTC)
    pts = [(start + timedelta(hours=8), 2), (start + timedelta(hours=10), 1), (start + timedelta(hours=18), 0)]
    hours, peak = node_hours(pts, start, start + timedelta(days=1), before=0)
    assert hours == pytest.approx(2 * 2 + 8 * 1) and peak == 2
    days = day_costs(pts, [start.date(), (start + timedelta(days=1)).date()], price=3.0, always_on_nodes=2,
                     until=start + timedelta(days=2))
    assert [round(d.node_hours, 6) for d in days] == [12.0, 0.0]
    assert days[0].cost == pytest.approx(36.0)
    assert days[0].always_on_node_hours == pytest.approx(2 * 16)  # from the first record (08:00) on
    assert days[1].always_on_node_hours == pytest.approx(48.0)
