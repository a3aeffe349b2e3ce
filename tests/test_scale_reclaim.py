"""Reclaiming idle GPU servers for waiting ones: the pure plan and guard, with an injected clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hubpilot.config.scale import WarmWindow
from hubpilot.loop import Action, Plan
from hubpilot.ports.cluster import ClusterView, NodeInfo, UserPod
from hubpilot.ports.pool import PoolState
from hubpilot.scale import Memory, Observed, Policy, Schedule, guard_scale, plan_scale
from hubpilot.scale.plan import RECLAIM

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
POLICY = Policy(max_nodes=8, max_step_up=3, max_step_down=2, idle=timedelta(minutes=10),
                delay_after_up=timedelta(minutes=10), down_cooldown=timedelta(minutes=2),
                reclaim_after=timedelta(minutes=5), max_reclaim=2)
WARM = Schedule.of([WarmWindow(days="mon-fri", start="08:00", end="18:00", spare=1)], "UTC", [])


def pool(count: int, *, busy: bool = False) -> PoolState:
    return PoolState("gpu", count, None, None, False, "Running", "Updating" if busy else "Succeeded",
                     "Standard_NC4as_T4_v3", "e1")


def node(name: str, *, ready: bool = True) -> NodeInfo:
    return NodeInfo(name, ready, False, T0 - timedelta(days=1), name)


def running(user: str, on: str, *, gpu: bool = True, server: str = "") -> UserPod:
    return UserPod(f"jupyter-{user}", on, "Running", False, T0, user, server, gpu)


def waiting(user: str) -> UserPod:
    return UserPod(f"jupyter-{user}", None, "Pending", True, T0, user, "", True)


def idle_for(minutes: float) -> datetime:
    return T0 - timedelta(minutes=minutes)


def observed(count: int, nodes: list[NodeInfo], pods: list[UserPod],
             activity: dict[str, datetime] | None) -> Observed:
    return Observed(pool(count), ClusterView(tuple(nodes), tuple(pods)), (), Memory(), T0, activity=activity)


def reclaims(plan: Plan) -> list[str]:
    return [a.target for a in plan.actions if a.kind == RECLAIM]


def counts(plan: Plan) -> list[int]:
    return [int(a.params["count"]) for a in plan.actions if a.kind == "set_count"]


def test_waiting_server_reclaims_the_longest_idle_one_instead_of_a_new_node() -> None:
    obs = observed(3, [node("n0"), node("n1"), node("n2")],
                   [running("ann", "n0"), running("bob", "n1"), running("cy", "n2"), waiting("dee")],
                   {"ann~": idle_for(2), "bob~": idle_for(30), "cy~": idle_for(9)})
    plan = plan_scale(obs, POLICY, T0)
    assert reclaims(plan) == ["bob"]  # idle longest; ann (2 min) is below the limit
    (action,) = [a for a in plan.actions if a.kind == RECLAIM]
    assert action.params == {"user": "bob", "server": "", "node": "n1", "idle_since": idle_for(30).isoformat()}
    assert "idle for 30 min on n1" in action.reason
    assert counts(plan) == []  # dee takes bob's node: no new node for her
    assert guard_scale(obs, plan, POLICY) == []


def test_no_reclaim_while_a_ready_node_is_free_or_below_the_limit() -> None:
    free = observed(2, [node("n0"), node("n1")], [running("bob", "n0"), waiting("dee")], {"bob~": idle_for(30)})
    assert reclaims(plan_scale(free, POLICY, T0)) == []
    recent = observed(1, [node("n0")], [running("bob", "n0"), waiting("dee")], {"bob~": idle_for(4.9)})
    plan = plan_scale(recent, POLICY, T0)
    assert reclaims(plan) == [] and counts(plan) == [2]


def test_a_booting_node_does_not_stop_a_reclaim() -> None:
    # the pool counts 2 machines, one not registered yet: it takes minutes, the idle server is there now
    obs = observed(2, [node("n0")], [running("bob", "n0"), waiting("dee")], {"bob~": idle_for(30)})
    assert reclaims(plan_scale(obs, POLICY, T0)) == ["bob"]
    not_ready = observed(2, [node("n0"), node("n1", ready=False)], [running("bob", "n0"), waiting("dee")],
                         {"bob~": idle_for(30)})
    assert reclaims(plan_scale(not_ready, POLICY, T0)) == ["bob"]


def test_only_gpu_servers_on_the_pools_ready_nodes_and_at_most_max_reclaim() -> None:
    pods = [running("cpu", "n1", gpu=False), running("elsewhere", "other-node"), running("a", "n1"),
            running("b", "n2"), running("c", "n3"), waiting("w1"), waiting("w2"), waiting("w3")]
    activity = {f"{u}~": idle_for(60) for u in ("cpu", "elsewhere", "a", "b", "c")}
    obs = observed(3, [node("n1"), node("n2"), node("n3")], pods, activity)
    plan = plan_scale(obs, POLICY, T0)
    assert sorted(reclaims(plan)) == ["a", "b"]  # max_reclaim 2; the third waits for a new node
    assert counts(plan) == [4]
    assert guard_scale(obs, plan, POLICY) == []


def test_named_servers_are_reclaimed_by_their_own_activity() -> None:
    obs = observed(1, [node("n0")], [running("ann", "n0", server="big"), waiting("dee")],
                   {"ann~big": idle_for(20), "ann~": idle_for(60)})
    plan = plan_scale(obs, POLICY, T0)
    (action,) = [a for a in plan.actions if a.kind == RECLAIM]
    assert action.target == "ann/big" and action.params["server"] == "big"


def test_unknown_activity_or_reclaim_off_reclaims_nothing() -> None:
    unknown = observed(1, [node("n0")], [running("bob", "n0"), waiting("dee")], None)
    plan = plan_scale(unknown, POLICY, T0)
    assert reclaims(plan) == [] and counts(plan) == [2]
    assert any("activity is unknown" in n for n in plan.notes)
    off = replace(POLICY, reclaim_after=None)
    known = observed(1, [node("n0")], [running("bob", "n0"), waiting("dee")], {"bob~": idle_for(60)})
    assert reclaims(plan_scale(known, off, T0)) == []


def test_idle_servers_count_as_the_warm_spare() -> None:
    policy = replace(POLICY, schedule=WARM)
    # one busy node whose server is idle: it is the spare, no empty node is booted
    idle = observed(1, [node("n0")], [running("bob", "n0")], {"bob~": idle_for(6)})
    plan = plan_scale(idle, policy, T0)
    assert plan.empty
    assert any("covered by idle GPU server" in w for w in plan.facts["why"])
    # the same server in use: a spare node is booted
    active = observed(1, [node("n0")], [running("bob", "n0")], {"bob~": idle_for(1)})
    assert counts(plan_scale(active, policy, T0)) == [2]
    # unknown activity: the spare is kept (never traded for a guess)
    assert counts(plan_scale(observed(1, [node("n0")], [running("bob", "n0")], None), policy, T0)) == [2]


def test_an_empty_spare_goes_when_an_idle_server_covers_it() -> None:
    policy = replace(POLICY, schedule=WARM, idle=timedelta(minutes=1))
    obs = Observed(pool(2), ClusterView((node("n0"), node("n1")), (running("bob", "n0"),)), (),
                   Memory({"n1": T0 - timedelta(minutes=5)}), T0, activity={"bob~": idle_for(7)})
    plan = plan_scale(obs, policy, T0)
    assert [(a.kind, a.params["nodes"]) for a in plan.actions] == [("remove_nodes", ["n1"])]


def test_reclaim_still_planned_while_the_pool_is_busy() -> None:
    obs = Observed(pool(1, busy=True), ClusterView((node("n0"),), (running("bob", "n0"), waiting("dee"))), (),
                   Memory(), T0, activity={"bob~": idle_for(30)})
    plan = plan_scale(obs, POLICY, T0)
    assert reclaims(plan) == ["bob"] and counts(plan) == []


def test_guard_refuses_reclaims_it_cannot_vouch_for() -> None:
    obs = observed(1, [node("n0")], [running("bob", "n0"), running("cpu", "n0", gpu=False), waiting("dee")],
                   {"bob~": idle_for(30), "cpu~": idle_for(30)})

    def plan_of(*targets: str) -> Plan:
        return Plan.build("scale", [Action(RECLAIM, t, 0, {"user": t, "server": "", "node": "n0",
                                                            "idle_since": idle_for(30).isoformat()}, "")
                                    for t in targets], [], {})

    assert guard_scale(obs, plan_of("bob"), POLICY) == []
    assert any("not an idle GPU server" in r for r in guard_scale(obs, plan_of("cpu"), POLICY))
    assert any("not an idle GPU server" in r for r in guard_scale(obs, plan_of("ghost"), POLICY))
    assert any("is off" in r for r in guard_scale(obs, plan_of("bob"), replace(POLICY, reclaim_after=None)))
    tight = replace(POLICY, max_reclaim=1)
    obs2 = observed(2, [node("n0"), node("n1")], [running("a", "n0"), running("b", "n1")],
                    {"a~": idle_for(30), "b~": idle_for(30)})
    assert any("exceeds scale.max_reclaim" in r for r in guard_scale(obs2, plan_of("a", "b"), tight))
    unknown = observed(1, [node("n0")], [running("bob", "n0")], None)
    assert guard_scale(unknown, plan_of("bob"), POLICY) != []


def test_reclaim_limit_must_exceed_the_activity_interval() -> None:
    import pytest
    from pydantic import ValidationError

    from hubpilot.settings import Settings
    from hubpilot.wiring.scale import policy_from

    with pytest.raises(ValidationError, match=r"reclaim_idle_minutes .* must exceed the hub's activity interval"):
        Settings(scale={"reclaim_idle_minutes": 5}, cull={"activity_interval": 300})
    ok = Settings(scale={"reclaim_idle_minutes": 3, "max_reclaim": 4}, cull={"activity_interval": 60})
    policy = policy_from(ok.scale)
    assert policy.reclaim_after == timedelta(minutes=3) and policy.max_reclaim == 4
    assert policy_from(Settings().scale).reclaim_after is None  # off by default
    # a silent busy server's activity reaches the hub up to the interval plus hubpilot_activity's
    # check interval late: 2 min is not above 60 s + 60 s, and would reclaim a running computation
    with pytest.raises(ValidationError,
                       match=r"reclaim_idle_minutes \(2 min\) must exceed .*activity_check_seconds=60"):
        Settings(scale={"reclaim_idle_minutes": 2}, cull={"activity_interval": 60})
    assert Settings(scale={"reclaim_idle_minutes": 2}, cull={"activity_interval": 60, "activity_check_seconds": 30})
    # jupyterhub-singleuser reports up to 10% later than its interval: 100 s + 10 s + 10 s > 2 min
    with pytest.raises(ValidationError, match=r"reclaim_idle_minutes \(2 min\) must exceed .*up to 10% later.*120 s"):
        Settings(scale={"reclaim_idle_minutes": 2}, cull={"activity_interval": 100, "activity_check_seconds": 10})
