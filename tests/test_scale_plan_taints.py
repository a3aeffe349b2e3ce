"""The pure plan: what counts as GPU capacity when nodes carry taints or are being deleted -- the
cluster autoscaler's marks, deletionTimestamp, node-condition taints, the pool's own taint that
the GPU profiles tolerate, and the unschedulable taint of a cordon (injected clock)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from hubpilot.config.scale import WarmWindow
from hubpilot.loop import Action, Plan
from hubpilot.ports.cluster import CORDON_ANNOTATION, ClusterView, NodeInfo, Taint, Toleration, UserPod
from hubpilot.ports.pool import PoolState
from hubpilot.scale import Memory, Observed, Policy, Schedule, guard_scale, plan_scale

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
LONG_AGO = T0 - timedelta(hours=1)
POLICY = Policy(max_nodes=8, max_step_up=3, max_step_down=2, idle=timedelta(minutes=10),
                delay_after_up=timedelta(minutes=10), down_cooldown=timedelta(minutes=2))
SPARE_1 = Policy(max_nodes=8, max_step_up=3, max_step_down=2, idle=timedelta(minutes=10),
                 schedule=Schedule.of([WarmWindow(days="mon-sun", start="00:00", end="23:59", spare=1)], "UTC", []))

TO_BE_DELETED = Taint("ToBeDeletedByClusterAutoscaler", str(int((T0 - timedelta(minutes=1)).timestamp())))
CANDIDATE = Taint("DeletionCandidateOfClusterAutoscaler", str(int(LONG_AGO.timestamp())), "PreferNoSchedule")
POOL_TAINT = Taint("sku", "gpu", "NoSchedule")
POOL_TOLERATION = Toleration("sku", "Equal", "gpu", "NoSchedule")
# what the DefaultTolerationSeconds admission plugin gives every pod
DEFAULTS = (Toleration("node.kubernetes.io/not-ready", "Exists", "", "NoExecute"),
            Toleration("node.kubernetes.io/unreachable", "Exists", "", "NoExecute"))


def pool(count: int, *, auto: bool = False, min_count: int | None = None) -> PoolState:
    return PoolState("gpu", count, min_count if auto else None, 8 if auto else None, auto, "Running",
                     "Succeeded", "Standard_NC4as_T4_v3", "e1", "Delete")


def node(name: str, *taints: Taint, deleting: bool = False, unschedulable: bool = False,
         cordoned_by: str | None = None, ready: bool = True) -> NodeInfo:
    ann = {CORDON_ANNOTATION: cordoned_by} if cordoned_by else {}
    return NodeInfo(name, ready, unschedulable or bool(cordoned_by), T0 - timedelta(days=1), name, {}, ann,
                    tuple(taints), deleting)


def upod(name: str, on: str | None, *tolerations: Toleration) -> UserPod:
    return UserPod(name, on, "Running" if on else "Pending", on is None, T0, name, "", True,
                   tuple(tolerations) + DEFAULTS)


def observed(p: PoolState, nodes: list[NodeInfo], pods: list[UserPod] | None = None, *,
             empty_since: dict[str, datetime] | None = None) -> Observed:
    return Observed(p, ClusterView(tuple(nodes), tuple(pods or [])), (), Memory(empty_since or {}), T0)


def kinds(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    return [(a.kind, dict(a.params)) for a in plan.actions]


# --- the cluster autoscaler's marks ---------------------------------------------------------------
def test_a_node_the_autoscaler_is_deleting_is_neither_picked_nor_counted_twice() -> None:
    """Autoscaler-assist: count 4 above the floor 3; the autoscaler is deleting the empty n3. The
    surplus is n3 itself: hubpilot removes neither n3 (the autoscaler's) nor n2 (the spare that
    stays when n3 is gone)."""
    policy = Policy(**{**POLICY.__dict__, "min_nodes": 3})
    nodes = [node("n0"), node("n1"), node("n2"), node("n3", TO_BE_DELETED, CANDIDATE)]
    for older in ("n2", "n3"):
        obs = observed(pool(4, auto=True, min_count=3), nodes, [upod("a", "n0"), upod("b", "n1")],
                       empty_since={"n2": LONG_AGO, "n3": LONG_AGO, older: LONG_AGO - timedelta(minutes=5)})
        plan = plan_scale(obs, policy, T0)
        assert plan.empty, kinds(plan)
        assert plan.facts["leaving"] == ["n3"]
        assert any("n3" in w and "autoscaler" in w for w in plan.facts["why"])


def test_the_guard_refuses_to_remove_a_node_that_is_being_deleted() -> None:
    nodes = [node("n0", TO_BE_DELETED), node("n1", deleting=True), node("n2")]
    obs = observed(pool(3), nodes, empty_since=dict.fromkeys(("n0", "n1", "n2"), LONG_AGO))
    plan = Plan.build("scale", [Action("remove_nodes", "gpu", 1, {"nodes": ["n0", "n1"], "from": 3})], [], {})
    reasons = guard_scale(obs, plan, POLICY)
    assert any("n0" in r and "being deleted" in r for r in reasons), reasons
    assert any("n1" in r and "being deleted" in r for r in reasons), reasons


def test_a_node_being_deleted_is_no_spare_and_is_never_uncordoned() -> None:
    """Direct mode, spare 1: n1 (deletionTimestamp, left cordoned by hubpilot) is on its way out:
    n2 is the spare and stays; n1 is not uncordoned; its machine leaves the count with it."""
    nodes = [node("n0"), node("n1", deleting=True, cordoned_by="hubpilot"), node("n2")]
    obs = observed(pool(3), nodes, [upod("a", "n0")], empty_since={"n1": LONG_AGO, "n2": LONG_AGO})
    plan = plan_scale(obs, SPARE_1, T0)
    assert plan.empty, kinds(plan)
    assert plan.facts["leaving"] == ["n1"]


def test_no_free_capacity_on_a_node_the_autoscaler_is_deleting_so_an_idle_server_is_reclaimed() -> None:
    policy = Policy(**{**POLICY.__dict__, "reclaim_after": timedelta(minutes=5)})
    nodes = [node("n0"), node("n1", TO_BE_DELETED)]
    obs = Observed(pool(2, auto=True, min_count=1), ClusterView(tuple(nodes), (upod("a", "n0"), upod("b", None))),
                   (), Memory(), T0, activity={"a~": LONG_AGO})
    plan = plan_scale(obs, policy, T0)
    assert [a.kind for a in plan.actions if a.kind == "reclaim_server"] == ["reclaim_server"], kinds(plan)


def test_a_stale_to_be_deleted_mark_is_an_unusable_node_not_a_leaving_one() -> None:
    """The autoscaler removes its mark when it gives up; one left for longer than a removal takes
    (a crashed autoscaler) marks a node that stays: it is unusable, and replaced."""
    stale = Taint("ToBeDeletedByClusterAutoscaler", str(int((T0 - timedelta(minutes=30)).timestamp())))
    obs = observed(pool(2), [node("n0"), node("n1", stale)], [upod("a", "n0")], empty_since={"n1": LONG_AGO})
    plan = plan_scale(obs, SPARE_1, T0)
    assert kinds(plan) == [("set_count", {"count": 3, "from": 2})]
    assert "leaving" not in plan.facts


# --- taints the GPU pods do not tolerate ---------------------------------------------------------------
def test_an_empty_node_with_a_taint_the_waiting_gpu_pod_does_not_tolerate_is_no_capacity() -> None:
    nodes = [node("n0", POOL_TAINT), node("n1", POOL_TAINT, Taint("maintenance", "true", "NoSchedule"))]
    obs = observed(pool(2), nodes, [upod("a", "n0", POOL_TOLERATION), upod("b", None, POOL_TOLERATION)])
    plan = plan_scale(obs, POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 3, "from": 2})]
    assert any("n1" in w and "maintenance" in w for w in plan.facts["why"])


def test_node_condition_taints_make_a_ready_node_no_spare() -> None:
    for key in ("node.kubernetes.io/network-unavailable", "node.kubernetes.io/memory-pressure",
                "node.kubernetes.io/disk-pressure", "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable"):
        obs = observed(pool(2), [node("n0"), node("n1", Taint(key, "", "NoSchedule"))], [upod("a", "n0")],
                       empty_since={"n1": LONG_AGO})
        plan = plan_scale(obs, SPARE_1, T0)
        assert kinds(plan) == [("set_count", {"count": 3, "from": 2})], key
        # and with no GPU pod in sight to ask
        alone = plan_scale(observed(pool(1), [node("n1", Taint(key, "", "NoSchedule"))]), SPARE_1, T0)
        assert kinds(alone) == [("set_count", {"count": 2, "from": 1})], key


def test_the_pools_own_taint_that_the_profiles_tolerate_stays_capacity() -> None:
    """AKS GPU pools are tainted (sku=gpu:NoSchedule, nvidia.com/gpu=present:NoSchedule) and the
    GPU profiles tolerate it: such a node is the spare, with GPU pods in sight or none."""
    gpu = Taint("nvidia.com/gpu", "present", "NoSchedule")
    tol = Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule")
    nodes = [node("n0", POOL_TAINT, gpu), node("n1", POOL_TAINT, gpu, CANDIDATE)]
    assert plan_scale(observed(pool(2), nodes, [upod("a", "n0", POOL_TOLERATION, tol)]), SPARE_1, T0).empty
    assert plan_scale(observed(pool(1), nodes[1:]), SPARE_1, T0).empty
    # a PreferNoSchedule taint the pods do not tolerate is no obstacle either
    soft = node("n1", Taint("team", "a", "PreferNoSchedule"))
    assert plan_scale(observed(pool(2), [node("n0"), soft], [upod("a", "n0")]), SPARE_1, T0).empty


# --- cordons and the unschedulable taint ------------------------------------------------------------
UNSCHED = Taint("node.kubernetes.io/unschedulable", "", "NoSchedule")


def test_the_unschedulable_taint_follows_the_cordon_it_mirrors() -> None:
    # hubpilot's own cordon (the node controller added the taint): ours to uncordon, not unusable
    ours = observed(pool(2), [node("n0"), node("n1", UNSCHED, cordoned_by="hubpilot")], [upod("a", "n0")])
    assert kinds(plan_scale(ours, SPARE_1, T0)) == [("uncordon", {})]
    # uncordoned, the taint not yet dropped by the controller: the spare, not an unusable node
    lag = observed(pool(2), [node("n0"), node("n1", UNSCHED)], [upod("a", "n0")])
    assert plan_scale(lag, SPARE_1, T0).empty
    # someone else's cordon, with its taint: one unusable node, replaced once
    others = observed(pool(2), [node("n0"), node("n1", UNSCHED, unschedulable=True)], [upod("a", "n0")])
    assert kinds(plan_scale(others, SPARE_1, T0)) == [("set_count", {"count": 3, "from": 2})]


def test_the_pools_own_taint_is_never_an_obstacle_even_to_a_pod_that_does_not_tolerate_it() -> None:
    """A waiting GPU pod without the pool's toleration is no pod for this pool (e.g. one for another
    GPU pool): the pool's nodeTaints do not make its nodes unusable, which would replace every node
    every round up to max_nodes."""
    p = PoolState("gpu", 2, None, None, False, "Running", "Succeeded", "Standard_NC4as_T4_v3", "e1", "Delete",
                  ("sku=gpu:NoSchedule",))
    obs = observed(p, [node("n0", POOL_TAINT), node("n1", POOL_TAINT)], [upod("a", "n0", POOL_TOLERATION),
                                                                          upod("b", None)])
    plan = plan_scale(obs, POLICY, T0)
    assert plan.empty, kinds(plan)  # b is no demand here; n1 is empty, not yet idle: no replacement
    assert not any("unusable" in w for w in plan.facts["why"])


def test_a_node_that_has_just_joined_with_start_up_taints_is_on_its_way_not_replaced() -> None:
    """Kubernetes taints a node that has just joined (cloud provider not initialised, network not
    up) for a few seconds: within node_join_grace_minutes it is no capacity yet, and not unusable."""
    young = NodeInfo("n1", True, False, T0 - timedelta(minutes=1), "n1", {}, {},
                     (Taint("node.cloudprovider.kubernetes.io/uninitialized", "true", "NoSchedule"),
                      Taint("node.kubernetes.io/network-unavailable", "", "NoSchedule")))
    obs = observed(pool(2), [node("n0"), young], [upod("a", "n0")])
    assert plan_scale(obs, SPARE_1, T0).empty


def test_a_taint_the_newer_nodes_carry_too_is_replaced_once_not_up_to_max_nodes() -> None:
    """A taint set outside the pool's nodeTaints on every node it boots (AKS node initialisation
    taints, an operator's taint) that a waiting GPU pod does not tolerate: a replacement carries it
    too. Replacing each such node added one node a round up to max_nodes; a taint a newer node also
    carries is the pool's, so the pool grows by one replacement at most and stops there."""
    init = Taint("example.com/gpu-init", "pending", "NoSchedule")

    def tainted(name: str, age: timedelta) -> NodeInfo:
        return NodeInfo(name, True, False, T0 - age, name, {}, {}, (init,))

    for n in range(1, 6):
        nodes = [tainted(f"n{i}", timedelta(days=1, minutes=-i)) for i in range(n)]  # n0 oldest
        plan = plan_scale(observed(pool(n), nodes, [upod("a", None)]), POLICY, T0)
        assert plan.facts["desired"] <= max(n, 2), (n, kinds(plan), plan.facts["why"])
        assert not any(k == "set_count" and p["count"] > max(n, 2) for k, p in kinds(plan)), (n, kinds(plan))
    # one node with a taint nobody else carries (a hand-set maintenance taint) is still replaced once
    plan = plan_scale(observed(pool(1), [tainted("n0", timedelta(days=1))], [upod("a", None)]), POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 2, "from": 1})]
    # its replacement came without the taint: the old node stays unusable (the new one is the capacity)
    fresh = NodeInfo("n1", True, False, T0 - timedelta(minutes=30), "n1", {}, {}, ())
    plan = plan_scale(observed(pool(2), [tainted("n0", timedelta(days=1)), fresh], [upod("a", None)]), POLICY, T0)
    assert plan.empty and "n0" in " ".join(plan.facts["why"]), (kinds(plan), plan.facts["why"])


def test_a_noexecute_taint_tolerated_only_for_a_while_is_no_capacity() -> None:
    """A pod that tolerates a NoExecute taint with tolerationSeconds is scheduled onto the node and
    evicted when that time is up: no place for a user server. Without the limit it stays: capacity."""
    drain = Taint("maintenance", "drain", "NoExecute")
    nodes = [node("n0"), node("n1", drain)]
    bounded = Toleration("maintenance", "Exists", "", "NoExecute", 60)
    plan = plan_scale(observed(pool(2), nodes, [upod("a", "n0", bounded), upod("b", None, bounded)]), POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 3, "from": 2})], plan.facts["why"]
    assert any("n1" in w and "maintenance=drain:NoExecute" in w for w in plan.facts["why"])
    forever = Toleration("maintenance", "Exists", "", "NoExecute")
    plan = plan_scale(observed(pool(2), nodes, [upod("a", "n0", forever), upod("b", None, forever)]), POLICY, T0)
    assert plan.empty, (kinds(plan), plan.facts["why"])


def test_a_stale_autoscaler_mark_on_a_node_the_pods_tolerate_is_not_removed_by_hubpilot() -> None:
    """A mark older than the settle time on an idle node the GPU pods tolerate (a toleration of
    everything): the plan must not pick it, since the guard never lets hubpilot remove a node the
    autoscaler marked. Picking it got every plan, scale-ups included, refused for good."""
    stale = Taint("ToBeDeletedByClusterAutoscaler", str(int((T0 - timedelta(hours=2)).timestamp())))
    everything = Toleration("", "Exists", "", "")
    nodes = [node("n0"), node("n1", stale)]
    obs = observed(pool(2), nodes, [upod("a", "n0", everything)],
                   empty_since={"n1": LONG_AGO - timedelta(hours=1)})
    plan = plan_scale(obs, POLICY, T0)
    assert guard_scale(obs, plan, POLICY) == [], kinds(plan)
    assert not any(a.kind == "remove_nodes" and "n1" in a.params["nodes"] for a in plan.actions), kinds(plan)


def test_a_stopped_vm_the_autoscaler_just_deallocated_is_not_subtracted_from_the_count_again() -> None:
    """Autoscaler-assist on a Deallocate pool: the autoscaler deallocated s0 a minute ago; its node
    stays registered, NotReady, still carrying the autoscaler's mark. AKS left it out of the count
    (3: n0 and n1 busy, n2 empty long past the idle limit), so it is a stopped VM, not a machine on
    its way out of the count: the surplus n2 is removed as it would be without the mark."""
    policy = Policy(**{**POLICY.__dict__, "min_nodes": 2})
    p = PoolState("gpu", 3, 2, 8, True, "Running", "Succeeded", "Standard_NC4as_T4_v3", "e1", "Deallocate")
    for marks in ((TO_BE_DELETED,), ()):
        nodes = [node("n0"), node("n1"), node("n2"), node("s0", *marks, ready=False)]
        obs = observed(p, nodes, [upod("a", "n0"), upod("b", "n1")], empty_since={"n2": LONG_AGO})
        plan = plan_scale(obs, policy, T0)
        assert plan.facts["stopped"] == 1
        assert ("remove_nodes", {"nodes": ["n2"], "from": 3}) in kinds(plan), (marks, kinds(plan), plan.notes)


def test_a_waiting_pod_that_does_not_tolerate_the_pools_own_taint_is_no_demand() -> None:
    """A waiting GPU pod without the toleration of the pool's nodeTaints can land on none of its
    nodes (one for another GPU pool, a profile without it): no pod for this pool. Counted as
    demand, it booted a node that stayed empty (and kept it) for as long as the pod waited."""
    p = PoolState("gpu", 1, None, None, False, "Running", "Succeeded", "Standard_NC4as_T4_v3", "e1", "Delete",
                  ("sku=gpu:NoSchedule",))
    plan = plan_scale(observed(p, [node("n0", POOL_TAINT)], [upod("a", "n0", POOL_TOLERATION), upod("b", None)]),
                      POLICY, T0)
    assert plan.empty, kinds(plan)
    assert plan.facts["pending"] == []
    # one that tolerates it is demand, as before
    plan = plan_scale(observed(p, [node("n0", POOL_TAINT)], [upod("a", "n0", POOL_TOLERATION),
                                                             upod("b", None, POOL_TOLERATION)]), POLICY, T0)
    assert kinds(plan) == [("set_count", {"count": 2, "from": 1})]
    # a NoExecute taint of the pool, tolerated only for a while, is no place for it either
    p2 = dataclasses.replace(p, node_taints=("maint=x:NoExecute",))
    brief = Toleration("maint", "Equal", "x", "NoExecute", 60)
    plan = plan_scale(observed(p2, [node("n0")], [upod("a", "n0"), upod("b", None, brief)]), POLICY, T0)
    assert plan.empty, kinds(plan)


def test_no_idle_server_is_reclaimed_for_a_pod_that_cannot_land_on_the_pool() -> None:
    """With reclaim on, a waiting pod counted as demand stopped a user's idle GPU server for a pod
    that does not tolerate the pool's taint and could not take the freed node."""
    p = PoolState("gpu", 1, None, None, False, "Running", "Succeeded", "Standard_NC4as_T4_v3", "e1", "Delete",
                  ("sku=gpu:NoSchedule",))
    policy = dataclasses.replace(POLICY, reclaim_after=timedelta(minutes=5))
    obs = dataclasses.replace(
        observed(p, [node("n0", POOL_TAINT)], [upod("a", "n0", POOL_TOLERATION), upod("b", None)]),
        activity={"a~": LONG_AGO})
    plan = plan_scale(obs, policy, T0)
    assert not [k for k, _ in kinds(plan) if k == "reclaim_server"], kinds(plan)
