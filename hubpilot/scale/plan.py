"""Scale plan and guard: pure functions of the observed pool, cluster, demand, memory and now."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hubpilot.loop import Action, Plan, stored_time
from hubpilot.ports.cluster import (
    AUTOSCALER_DELETING,
    CORDON_ANNOTATION,
    ClusterView,
    NodeInfo,
    Taint,
    Toleration,
    UserPod,
    marked_for_removal,
)
from hubpilot.ports.pool import PoolState
from hubpilot.scale.forecast import Forecast, ForecastPolicy, forecast_spare
from hubpilot.scale.schedule import Schedule

OPERATION = "scale"
CORDON_MARK = CORDON_ANNOTATION

SET_COUNT = "set_count"
SET_MIN_COUNT = "set_min_count"
REMOVE_NODES = "remove_nodes"
UNCORDON = "uncordon"
RECLAIM = "reclaim_server"

# The cluster autoscaler marks a node it is removing (NoSchedule; the value is the Unix time of the
# mark). Its candidates for a later removal (DeletionCandidateOfClusterAutoscaler, PreferNoSchedule)
# are still capacity, as is any PreferNoSchedule taint.
# mirrors spec.unschedulable (the node lifecycle controller adds and drops it): a cordon is read
# from the spec and the cordon annotation alone
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
# taints Kubernetes puts on nodes that cannot take pods now: with no GPU pod in sight to ask, these
# (and only these) are taken as not tolerated; any other taint is taken as the pool's own, which
# the GPU profiles tolerate (e.g. sku=gpu:NoSchedule)
CONDITION_TAINTS = frozenset({
    "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/network-unavailable",
    "node.kubernetes.io/memory-pressure", "node.kubernetes.io/disk-pressure", "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/out-of-service", "node.cloudprovider.kubernetes.io/uninitialized",
    "node.cloudprovider.kubernetes.io/shutdown", AUTOSCALER_DELETING,
})
HARD_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Demand:
    """A GPU server the hub is starting (from the pre-spawn hook or the hub's pending spawns)."""

    key: str  # "<user>~<server>"
    at: datetime
    source: str = "hook"


@dataclass(frozen=True)
class Memory:
    """What the scale capability remembers between runs (kept in the state store)."""

    empty_since: Mapping[str, datetime] = field(default_factory=dict)
    last_up: datetime | None = None  # hubpilot's last scale-up
    last_down: datetime | None = None
    count: int | None = None  # the pool's count at the last observation
    count_rose: datetime | None = None  # when an observation last found the count higher (anyone's scale-up)
    # Deallocate pools: nodes hubpilot removed, watched until it is known whether AKS stopped their
    # VMs (the node stays registered) or deleted them (the node goes); and the last such verdict
    removed: Mapping[str, datetime] = field(default_factory=dict)
    vm_kept: bool | None = None
    # when a round first found machines of the count without a node, the pool running and its last
    # operation done (None: none such at the last observation): after the join grace they are unregistered
    short_since: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "empty_since": {k: v.isoformat() for k, v in sorted(self.empty_since.items())},
            "last_up": self.last_up.isoformat() if self.last_up else None,
            "last_down": self.last_down.isoformat() if self.last_down else None,
            "count": self.count,
            "count_rose": self.count_rose.isoformat() if self.count_rose else None,
            "removed": {k: v.isoformat() for k, v in sorted(self.removed.items())},
            "vm_kept": self.vm_kept,
            "short_since": self.short_since.isoformat() if self.short_since else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Memory:
        """Read the stored memory (fields it does not know are ignored); a damaged one is a
        ValueError that says what to do."""
        if not data:
            return cls()

        def times(name: str) -> dict[str, datetime]:
            value = data.get(name)
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                raise ValueError(f"{name!r} is {type(value).__name__}, not an object")
            return {str(k): t for k, v in value.items() if (t := stored_time(v, f"{name}[{k!r}]")) is not None}

        try:
            count = data.get("count")
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
                raise ValueError(f"'count' is {count!r}, not a node count")
            return cls(
                empty_since=times("empty_since"),
                last_up=stored_time(data.get("last_up"), "'last_up'"),
                last_down=stored_time(data.get("last_down"), "'last_down'"),
                count=count,
                count_rose=stored_time(data.get("count_rose"), "'count_rose'"),
                removed=times("removed"),
                vm_kept=data.get("vm_kept") if isinstance(data.get("vm_kept"), bool) else None,
                short_since=stored_time(data.get("short_since"), "'short_since'"),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"the stored scale memory is damaged ({exc}): fix it, or delete it to start afresh "
                "(idle nodes then wait the full idle time again)"
            ) from exc

    def count_rose_at(self, count: int, now: datetime) -> datetime | None:
        """When the count last rose between two observations, ``count`` being observed ``now``."""
        return now if self.count is not None and count > self.count else self.count_rose

    def rose(self, count: int, now: datetime) -> datetime | None:
        """The last scale-up known: hubpilot's own, or a rise of the count (the autoscaler's, a
        person's)."""
        return max((t for t in (self.last_up, self.count_rose_at(count, now)) if t is not None), default=None)


@dataclass(frozen=True)
class Observed:
    pool: PoolState
    cluster: ClusterView
    demand: tuple[Demand, ...] = ()
    memory: Memory = field(default_factory=Memory)
    at: datetime | None = None
    notes: tuple[str, ...] = ()
    holder: str = "hubpilot"
    forecast: Forecast = field(default_factory=Forecast)
    # last activity of the hub's ready servers by "<user>~<server>" (read only with reclaim on);
    # None: not read or unknown this round -- then nothing is reclaimed and no idle server is spare
    activity: Mapping[str, datetime] | None = None


@dataclass(frozen=True)
class Policy:
    schedule: Schedule = field(default_factory=lambda: Schedule(()))
    min_nodes: int = 0
    max_nodes: int = 10
    max_step_up: int = 4
    max_step_down: int = 2
    idle: timedelta = timedelta(minutes=10)
    delay_after_up: timedelta = timedelta(minutes=10)
    down_cooldown: timedelta = timedelta(minutes=2)
    demand_ttl: timedelta = timedelta(minutes=15)
    pods_per_node: int = 1
    join_grace: timedelta = timedelta(minutes=10)  # a NotReady node younger than this is booting
    forecast: ForecastPolicy | None = None  # warm spare from learned arrivals (None: windows only)
    # a GPU server idle this long may be stopped for a GPU server that waits and finds no ready
    # node, and counts as warm capacity meanwhile (None: off)
    reclaim_after: timedelta | None = None
    max_reclaim: int = 2


@dataclass(frozen=True)
class Occupancy:
    busy: frozenset[str]  # nodes running at least one user pod
    empty: frozenset[str]
    pending: frozenset[str]  # keys of GPU servers waiting for a node
    gpu_pods_on: Mapping[str, int]
    booting: int  # machines in the pool's count not (yet) registered, or (Deallocate) restarting
    stopped: int = 0  # stopped VMs of a Deallocate pool: their nodes stay registered, NotReady
    broken: int = 0  # (Deallocate) machines in the count whose nodes stay NotReady past the join grace
    missing: int = 0  # machines in the count of a failed pool whose operation never created them
    # machines in the count of a pool whose last operation succeeded that have had no node longer than
    # the join grace (a kubelet that never joined, a node deleted while its VM runs): no capacity, and
    # not on their way either (counted as booting, they would hold scale-ups and scale-downs for ever)
    unregistered: int = 0
    short: int = 0  # machines in the count without a node (booting or unregistered; not a failed pool's)
    # empty nodes on their way out (deletionTimestamp, the cluster autoscaler's removal mark), by
    # why: no capacity, no node to replace (their machines leave the count), never removed or uncordoned
    leaving: Mapping[str, str] = field(default_factory=dict)
    # (Deallocate) how many of them AKS already left out of the count: NotReady ones, as many as
    # there are stopped VMs (the autoscaler's mark stays on the node of a VM it deallocated)
    leaving_stopped: int = 0
    # ready empty nodes with NoSchedule/NoExecute taints the GPU pods do not tolerate, by taint:
    # no capacity, replaced, not ours to remove (like a cordon by someone else)
    blocked: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # ready empty nodes that list no allocatable GPU longer than the join grace after they became
    # Ready, while other nodes of the pool list the GPU resource (``without_gpus``): no capacity
    no_gpu: tuple[str, ...] = ()


def without_gpus(nodes: Sequence[NodeInfo], empty: frozenset[str], now: datetime,
                 join_grace: timedelta) -> tuple[str, ...]:
    """Empty ready nodes a GPU pod cannot land on: no allocatable GPU (``NodeInfo.gpus`` 0 or not
    listed) longer than ``join_grace`` after they became Ready (the device plugin registers GPUs a
    few minutes after Ready; a GPU it marks unhealthy is gone from allocatable for good). Only when
    a node of the pool lists the GPU resource at all: in a pool where none does (GPUs under another
    resource name, a driver failing on every node) a replacement would be no different."""
    if not any(n.gpus is not None for n in nodes):
        return ()
    out = []
    for n in nodes:
        since = n.ready_since or n.created
        if (n.name in empty and n.ready and not n.gpus and not n.unschedulable
                and since is not None and now - since > join_grace):
            out.append(n.name)
    return tuple(sorted(out))


def deallocates(pool: PoolState) -> bool:
    """The pool stops VMs on scale-down and restarts them on scale-up (scaleDownMode Deallocate)."""
    return (pool.scale_down_mode or "").lower() == "deallocate"


def _mark_time(taint: Taint) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(taint.value), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def being_deleted(node: NodeInfo, now: datetime) -> str | None:
    """Why the node is on its way out, or None: its object is being deleted (deletionTimestamp), or
    the cluster autoscaler marked it for removal within ``REMOVAL_SETTLE`` (a mark it left for longer,
    or one without a readable time, is treated as stale: the node stays, and is unusable)."""
    if node.deleting:
        return "being deleted (deletionTimestamp)"
    for t in node.taints:
        if t.key == AUTOSCALER_DELETING and t.effect in HARD_EFFECTS:
            at = _mark_time(t)
            if at is not None and now - at < REMOVAL_SETTLE:
                return "being removed by the cluster autoscaler"
    return None


def pool_taints(pool: PoolState) -> tuple[Taint, ...]:
    """The pool's own NoSchedule/NoExecute taints (its nodeTaints, "key=value:Effect")."""
    out = []
    for text in pool.node_taints:
        head, _, effect = text.rpartition(":")
        key, _, value = head.partition("=")
        if key and effect in HARD_EFFECTS:
            out.append(Taint(key, value, effect))
    return tuple(out)


def fits_pool(pod: UserPod, taints: Sequence[Taint]) -> bool:
    """Whether the pod tolerates the pool's own hard taints (``pool_taints``), as it must to land
    on any of its nodes: one that does not is no pod for this pool, and no demand for it."""
    return all(any(tol.stays(t) for tol in pod.tolerations) for t in taints)


def gpu_tolerations(observed: Observed) -> list[tuple[Toleration, ...]] | None:
    """The tolerations of the GPU user pods that capacity is for: the waiting ones that may land on
    the pool, else every GPU pod in sight; None when there is none (then only node-condition taints
    count as untolerated)."""
    pods = [p for p in observed.cluster.pods if p.gpu and p.phase not in ("Succeeded", "Failed")]
    own = pool_taints(observed.pool)
    chosen = [p for p in pods if p.node is None and not p.deleting and fits_pool(p, own)] or pods
    return [p.tolerations for p in chosen] or None


def _taint_text(t: Taint) -> str:
    return f"{t.key}={t.value}:{t.effect}" if t.value else f"{t.key}:{t.effect}"


def untolerated(node: NodeInfo, tolerations: Sequence[tuple[Toleration, ...]] | None,
                pool_taints: Sequence[str] = ()) -> tuple[str, ...]:
    """The node's NoSchedule/NoExecute taints that no GPU pod in sight tolerates (with none in
    sight: the node-condition taints), as key=value:effect. The pool's own taints (its nodeTaints)
    are never an obstacle: the GPU profiles target the pool, and a pod that does not tolerate them
    is no pod for this pool (counted as one, every node would look unusable and be replaced, up to
    max_nodes). PreferNoSchedule is no obstacle; the unschedulable taint is the cordon's mirror and
    read as the cordon."""
    own = {p.replace("=:", ":") for p in pool_taints}
    out = []
    for t in node.taints:
        if t.effect not in HARD_EFFECTS or t.key == UNSCHEDULABLE_TAINT or _taint_text(t) in own:
            continue
        if tolerations is None:
            blocked = t.key in CONDITION_TAINTS
        else:
            blocked = not any(tol.stays(t) for tols in tolerations for tol in tols)
        if blocked:
            out.append(_taint_text(t))
    return tuple(out)


def _not_on_newer(node: NodeInfo, taints: tuple[str, ...], nodes: Sequence[NodeInfo]) -> tuple[str, ...]:
    """The node's untolerated taints but those a node that joined after it carries too: such a taint
    comes with every node the pool boots (set outside its nodeTaints: AKS node initialisation taints,
    an operator's), so a replacement would carry it as well; counted, each round would replace the
    newest node, up to max_nodes. The node-condition taints are the node's own state, never the pool's."""
    if node.created is None:
        return taints
    newer = {_taint_text(t) for n in nodes if n.created is not None and n.created > node.created
             for t in n.taints if t.key not in CONDITION_TAINTS}
    return tuple(t for t in taints if t not in newer)


def occupancy(observed: Observed, now: datetime, ttl: timedelta, join_grace: timedelta) -> Occupancy:
    nodes = {n.name for n in observed.cluster.nodes}
    busy: set[str] = set()
    gpu_on: dict[str, int] = {}
    known: set[str] = set()
    pending: set[str] = set()
    own = pool_taints(observed.pool)
    for p in observed.cluster.pods:
        key = f"{p.user}~{p.server}" if p.user else f"pod:{p.name}"
        known.add(key)
        if p.phase in ("Succeeded", "Failed"):
            continue
        if p.node is not None:
            if p.node in nodes:
                busy.add(p.node)
                if p.gpu:
                    gpu_on[p.node] = gpu_on.get(p.node, 0) + 1
        # a pod being deleted before it was placed waits for nothing; one that does not tolerate the
        # pool's own taints waits for another pool (its signal is not counted either: it is known)
        elif p.gpu and not p.deleting and fits_pool(p, own):
            pending.add(key)
    for d in observed.demand:
        if d.key not in known and now - d.at <= ttl:
            pending.add(d.key)
    count = observed.pool.count
    booting, stopped, broken = max(0, count - len(nodes)), 0, 0
    if deallocates(observed.pool):
        # Deallocate keeps a stopped VM's node registered (NotReady) and leaves it out of the count:
        # the NotReady nodes beyond the count are stopped VMs, the others are machines ARM runs whose
        # node is not ready -- restarting shortly after a scale-up, broken after the join grace
        not_ready = [n for n in observed.cluster.nodes if not n.ready]
        stopped = min(len(not_ready), max(0, len(nodes) - count))
        if observed.pool.failed:
            # the failed operation's count is its goal, not the VMs that run: the stopped VMs it was
            # to start stay stopped (NotReady) -- counted as running machines whose node is broken,
            # each round would ask for as many more (failing alike), and the cost report bill them
            stopped = len(not_ready)
        running_not_ready = len(not_ready) - stopped
        booting = max(0, count - (len(nodes) - stopped))
        last_up = observed.memory.rose(count, now)
        if last_up is not None and now - last_up <= join_grace:
            booting += running_not_ready
        else:
            broken = min(running_not_ready, sum(1 for n in not_ready if n.name not in busy))
    empty = nodes - busy
    leaving = {n.name: why for n in observed.cluster.nodes
               if n.name in empty and (why := being_deleted(n, now)) is not None}
    tolerations = gpu_tolerations(observed)
    blocked = {n.name: taints for n in observed.cluster.nodes
               if n.name in empty and n.name not in leaving and n.ready
               and (taints := _not_on_newer(n, untolerated(n, tolerations, observed.pool.node_taints),
                                            observed.cluster.nodes))}
    leaving_stopped = min(stopped, sum(1 for n in observed.cluster.nodes if n.name in leaving and not n.ready))
    missing = 0
    if observed.pool.failed:
        # the failed operation's count is still the pool's: the machines it did not create are
        # not on their way (Azure/AKS#671); only nodes that joined and are not ready yet may be
        missing = min(booting, max(0, count - (len(nodes) - stopped)))
        booting -= missing
    short = max(0, count - (len(nodes) - stopped)) if not observed.pool.failed else 0
    unregistered = 0
    if short and observed.memory.short_since is not None:
        # the clock starts at the first round that found them (as an empty node's idle clock), and
        # again at each rise of the count: a machine added since is booting for the join grace
        since = max(t for t in (observed.memory.short_since, observed.memory.rose(count, now)) if t is not None)
        if now - since > join_grace:
            unregistered = min(booting, short)
            booting -= unregistered
    return Occupancy(
        busy=frozenset(busy),
        empty=frozenset(empty - set(leaving)),
        pending=frozenset(pending),
        gpu_pods_on=gpu_on,
        booting=booting,
        stopped=stopped,
        broken=broken,
        missing=missing,
        unregistered=unregistered,
        short=short,
        leaving=leaving,
        leaving_stopped=leaving_stopped,
        blocked=blocked,
        no_gpu=tuple(n for n in without_gpus(observed.cluster.nodes, frozenset(empty), now, join_grace)
                     if n not in leaving and n not in blocked),
    )


def arrival_keys(observed: Observed, now: datetime, ttl: timedelta) -> frozenset[str]:
    """The GPU servers in sight now (pods that ask for a GPU, fresh demand signals): the forecast
    counts a key as an arrival when it first comes into sight. As in the plan's demand, a waiting
    pod that does not tolerate the pool's own taints (``fits_pool``) waits for another pool: neither
    it nor its demand signal is an arrival here."""
    own = pool_taints(observed.pool)
    keys: set[str] = set()
    elsewhere: set[str] = set()
    for p in observed.cluster.pods:
        if p.gpu and p.phase not in ("Succeeded", "Failed"):
            key = f"{p.user}~{p.server}" if p.user else f"pod:{p.name}"
            (elsewhere if p.node is None and not fits_pool(p, own) else keys).add(key)
    keys.update(d.key for d in observed.demand if now - d.at <= ttl and d.key not in elsewhere)
    return frozenset(keys)


@dataclass(frozen=True)
class Idle:
    """A running GPU server on a pool node that has been idle for at least ``reclaim_after``."""

    key: str  # "<user>~<server>"
    user: str
    server: str
    node: str
    since: datetime


def _gpu_servers_on(observed: Observed, nodes: set[str]) -> list[UserPod]:
    """Running GPU user-server pods bound to one of ``nodes``."""
    return [p for p in observed.cluster.pods if p.gpu and p.user and p.phase == "Running" and p.node in nodes]


def reclaimable(observed: Observed, policy: Policy, now: datetime) -> list[Idle]:
    """GPU servers that may be reclaimed, longest idle first. Only servers the hub reports ready,
    with a known last activity (or start) at least ``reclaim_after`` ago, in a pod running on a
    ready node of the pool; nothing when reclaim is off or the hub's activity is unknown."""
    if policy.reclaim_after is None or observed.activity is None:
        return []
    out = []
    for p in _gpu_servers_on(observed, {n.name for n in observed.cluster.nodes if n.ready}):
        key = f"{p.user}~{p.server}"
        since = observed.activity.get(key)
        if since is not None and now - since >= policy.reclaim_after:
            out.append(Idle(key, p.user, p.server, str(p.node), since))
    return sorted(out, key=lambda i: (i.since, i.key))


def free_slots(observed: Observed, occ: Occupancy, policy: Policy) -> int:
    """GPU pods that ready, schedulable capacity can take now (empty nodes and room on busy ones)."""
    ppn = policy.pods_per_node
    empty_ready = sum(1 for n in observed.cluster.nodes
                      if n.name in occ.empty and n.ready and not n.unschedulable and n.name not in occ.blocked
                      and n.name not in occ.no_gpu)
    return ppn * empty_ready + sum(max(0, ppn - occ.gpu_pods_on.get(n, 0)) for n in occ.busy)


def to_reclaim(observed: Observed, occ: Occupancy, policy: Policy, now: datetime) -> tuple[list[Idle], list[Idle]]:
    """(reclaim now, all reclaimable): one idle server for each GPU server that waits beyond the
    ready capacity (booting nodes do not count: they take minutes), at most ``max_reclaim``."""
    idle = reclaimable(observed, policy, now)
    short = max(0, len(occ.pending) - free_slots(observed, occ, policy))
    return idle[: min(short, policy.max_reclaim)], idle


def next_memory(observed: Observed, occ: Occupancy, now: datetime) -> Memory:
    prev = observed.memory.empty_since
    since = {n: prev.get(n, now) for n in sorted(occ.empty | set(occ.leaving))}
    m = observed.memory
    watching, kept = removal_verdict(observed, now)
    pool = observed.pool
    # machines without a node are timed only while the pool runs and no operation is under way on it
    short = occ.short and pool.power_state.lower() == "running" and not pool.busy
    return Memory(since, m.last_up, m.last_down, pool.count, m.count_rose_at(pool.count, now),
                  watching, kept, (m.short_since or now) if short else None)


# a stopped VM's node stays registered; a deleted VM's node is gone within a minute or two
REMOVAL_SETTLE = timedelta(minutes=10)


def going(observed: Observed, now: datetime) -> frozenset[str]:
    """Nodes hubpilot removed from a pool that deletes VMs, still registered while they leave the
    cluster (within ``REMOVAL_SETTLE``): neither capacity nor unusable, never uncordoned or removed
    again (counted as unusable, each scale-down would boot a replacement for the node it removed)."""
    if deallocates(observed.pool):
        return frozenset()
    present = {n.name for n in observed.cluster.nodes}
    return frozenset(n for n, at in observed.memory.removed.items() if n in present and now - at < REMOVAL_SETTLE)


def machines_present(observed: Observed, now: datetime | None) -> int:
    """The pool's machines that exist: its count, but in a failed pool only as many as have nodes
    (the failed operation's count is still the pool's, its machines never created: occupancy's
    ``missing``), and in a failed Deallocate pool only as many as have ready nodes (its NotReady
    nodes are stopped VMs); nodes hubpilot removed and still leaving (``going``) are no machines of it."""
    pool = observed.pool
    if not pool.failed:
        return pool.count
    leaving = going(observed, now) if now is not None else frozenset()
    # in a Deallocate pool the NotReady nodes are its stopped VMs (occupancy's ``stopped``)
    dealloc = deallocates(pool)
    return min(pool.count, sum(1 for n in observed.cluster.nodes if n.name not in leaving
                               and (n.ready or not dealloc)))


def removal_verdict(observed: Observed, now: datetime) -> tuple[dict[str, datetime], bool | None]:
    """Did AKS stop (keep) or delete the VMs hubpilot removed from a Deallocate pool? A removed
    node that is gone from the cluster was deleted; one still registered after ``REMOVAL_SETTLE``,
    or ready again (restarted by a scale-up), was kept. Returns the nodes still watched and the
    latest verdict (None: none yet)."""
    nodes = {n.name: n for n in observed.cluster.nodes}
    watching: dict[str, datetime] = {}
    kept = observed.memory.vm_kept
    if not deallocates(observed.pool):  # a Delete pool: watched only while their nodes are leaving
        return {n: at for n, at in observed.memory.removed.items() if n in going(observed, now)}, kept
    for name, at in sorted(observed.memory.removed.items(), key=lambda kv: kv[1]):
        node = nodes.get(name)
        if node is None:
            kept = False
        elif node.ready or now - at >= REMOVAL_SETTLE:
            kept = True
        else:
            watching[name] = at
    return watching, kept


def desired_nodes(observed: Observed, occ: Occupancy, policy: Policy, now: datetime,
                  reclaim: Sequence[Idle] = (), idle: Sequence[Idle] = ()) -> tuple[int, list[str]]:
    """The GPU node count wanted now, and why (``reclaim``: idle servers stopped for waiting ones
    this round; ``idle``: all that may be reclaimed, the others count as warm spare)."""
    warm = policy.schedule.at(now)
    ppn = policy.pods_per_node
    free_on_busy = sum(max(0, ppn - occ.gpu_pods_on.get(n, 0)) for n in occ.busy)
    unplaced = max(0, len(occ.pending) - free_on_busy - len(reclaim))
    need = len(occ.busy) + math.ceil(unplaced / ppn)
    why = [f"{len(occ.busy)} busy node(s)", f"{len(occ.pending)} GPU server(s) waiting"]
    if reclaim:
        why.append(f"{len(reclaim)} idle GPU server(s) reclaimed for them")
    # empty nodes nobody can use are no capacity: cordoned by someone else, or not ready long
    # after they joined (a node that has just joined is not ready for a while: still booting). In a
    # Deallocate pool NotReady nodes are mostly stopped VMs: occupancy counts the broken ones instead
    dealloc = deallocates(observed.pool)
    unusable = sorted(n.name for n in observed.cluster.nodes if n.name in occ.empty and (
        (_cordoned_by_others(n) and (n.ready or not dealloc))
        or (n.name in occ.blocked and n.created is not None and now - n.created > policy.join_grace)
        or (not dealloc and not n.ready and n.created is not None and now - n.created > policy.join_grace)))
    if occ.stopped:
        why.append(f"{occ.stopped} stopped VM(s) kept by scale-down mode Deallocate (NotReady nodes)")
    if occ.broken:
        why.append(f"{occ.broken} running machine(s) whose node is still NotReady "
                   f"{_minutes(policy.join_grace)} min after the last scale-up")
    if unusable:
        why.append(f"{len(unusable)} unusable empty node(s): {', '.join(unusable)}")
    for name, taints in sorted(occ.blocked.items()):
        why.append(f"{name} has taint(s) the GPU pods do not tolerate: {', '.join(taints)}")
    for name, how in sorted(occ.leaving.items()):
        why.append(f"{name} is no capacity: {how}")
    spare = warm.spare
    if warm.active:
        why.append(f"warm window {warm.window}: spare {warm.spare}, floor {warm.min_nodes}")
    if policy.forecast is not None:
        learned, rate = forecast_spare(observed.forecast, now, policy.forecast)
        if learned:
            why.append(f"forecast {rate:.1f} GPU arrivals/h: spare {learned}")
        spare = max(spare, learned)
    standby = (len(idle) - len(reclaim)) // ppn  # idle servers that can be reclaimed are warm capacity
    if spare and standby:
        why.append(f"{min(spare, standby)} of the spare covered by idle GPU server(s)")
        spare = max(0, spare - standby)
    # a node without allocatable GPUs can take no GPU server: while one waits, or a spare is
    # wanted, one node more -- one at most: where every new node came up without (a driver that
    # fails on the pool's node image) a node a round would be booted up to max_nodes. With nothing
    # waiting it is an empty node like any other, removed once idle
    no_gpu = 1 if occ.no_gpu and (occ.pending or spare) else 0
    if occ.no_gpu:
        why.append(f"{len(occ.no_gpu)} ready empty node(s) without an allocatable GPU "
                   f"{_minutes(policy.join_grace)} min after they became Ready (device plugin not "
                   f"registered, or its GPU unhealthy): {', '.join(occ.no_gpu)}"
                   + ("; one node more" if no_gpu else ""))
    # a machine of the count without a node past the join grace is no capacity: as for a node
    # without GPUs, one node more while a server waits or a spare is wanted -- one at most: where
    # no new VM joins (a bootstrap that fails on every VM), one a round would be booted up to max_nodes
    unregistered = 1 if occ.unregistered and (occ.pending or spare) else 0
    if occ.unregistered:
        why.append(f"{occ.unregistered} machine(s) of the count still without a node "
                   f"{_minutes(policy.join_grace)} min after they were first seen"
                   + ("; one node more" if unregistered else ""))
    wanted = need + spare + len(unusable) + occ.broken + no_gpu + unregistered
    wanted = max(wanted, warm.min_nodes, policy.min_nodes)
    ceiling = policy.max_nodes
    if observed.pool.autoscaling and observed.pool.max_count is not None:
        ceiling = min(ceiling, observed.pool.max_count)
    if wanted > ceiling:
        why.append(f"capped at {ceiling}")
    return min(wanted, ceiling), why


def _cordoned_by_others(node: NodeInfo) -> bool:
    return node.unschedulable and node.annotations.get(CORDON_MARK) is None


def _removable(observed: Observed, occ: Occupancy, memory: Memory, policy: Policy,
               now: datetime) -> list[str]:
    ready = {n.name: n for n in observed.cluster.nodes}
    out = []
    for name in sorted(occ.empty, key=lambda n: (memory.empty_since.get(n, now), n)):
        node = ready[name]
        if _cordoned_by_others(node) or name in occ.blocked or marked_for_removal(node):
            continue  # cordoned, tainted or being removed by someone else: not ours to remove
        if not node.ready and deallocates(observed.pool):
            continue  # may be a stopped VM: deleting it would lose the VM, not lower the count
        if now - memory.empty_since.get(name, now) >= policy.idle:
            out.append(name)
    return out


def _not_yet_idle(observed: Observed, occ: Occupancy, memory: Memory, policy: Policy,
                  now: datetime) -> list[str]:
    """Empty nodes hubpilot would remove once idle, not yet empty for the idle limit."""
    nodes = {n.name: n for n in observed.cluster.nodes}
    return sorted(name for name in occ.empty
                  if not (_cordoned_by_others(nodes[name]) or name in occ.blocked or marked_for_removal(nodes[name]))
                  and not (not nodes[name].ready and deallocates(observed.pool))
                  and now - memory.empty_since.get(name, now) < policy.idle)


def plan_scale(observed: Observed, policy: Policy, now: datetime) -> Plan:
    pool = observed.pool
    full, leaving = observed, going(observed, now)
    if leaving:  # the plan sees the cluster without them
        observed = dataclasses.replace(observed, cluster=ClusterView(
            tuple(n for n in observed.cluster.nodes if n.name not in leaving), observed.cluster.pods))
    occ = occupancy(observed, now, policy.demand_ttl, policy.join_grace)
    memory = next_memory(full, occ, now)
    reclaim, idle = to_reclaim(observed, occ, policy, now)
    desired, why = desired_nodes(observed, occ, policy, now, reclaim, idle)
    mode = "autoscaler-assist" if pool.autoscaling else "direct"
    notes = list(observed.notes)
    actions: list[Action] = []
    facts: dict[str, Any] = {
        "mode": mode, "count": pool.count, "min_count": pool.min_count, "max_count": pool.max_count,
        "desired": desired, "busy": sorted(occ.busy), "empty": sorted(occ.empty),
        "pending": sorted(occ.pending), "booting": occ.booting, "why": why,
        "memory": memory.to_json(), "scale_down_mode": pool.scale_down_mode or "Delete",
    }
    if occ.unregistered:
        facts["unregistered"] = occ.unregistered
        notes.append(
            f"pool {pool.name}: {occ.unregistered} machine(s) of its count {pool.count} have had no Kubernetes "
            f"node for more than {_minutes(policy.join_grace)} min (a kubelet that never joined, or a node "
            "deleted while its VM runs): no capacity, and billed while the VM runs; hubpilot cannot name "
            "them for removal: delete them (az aks machine list, az aks nodepool delete-machines)")
    if occ.missing:
        facts["missing"] = occ.missing
        why.append(f"{occ.missing} machine(s) of the count never created: the pool's last operation "
                   f"{pool.provisioning_state}")
    if leaving:
        why.append(f"{len(leaving)} removed node(s) still leaving the cluster: {', '.join(sorted(leaving))}")
    if leaving or occ.leaving:
        facts["leaving"] = sorted(leaving | set(occ.leaving))
    if deallocates(pool):
        facts["stopped"] = occ.stopped
        if memory.vm_kept is not None:
            facts["removal_keeps_vms"] = memory.vm_kept
        if memory.vm_kept is False and observed.memory.vm_kept is not False:
            notes.append(
                f"pool {pool.name} has scale-down mode Deallocate, but AKS deleted the VMs hubpilot removed "
                "(deleteMachines) instead of stopping them: scale-ups boot new VMs (5-8 min) rather than "
                "restarting stopped ones; keep more warm spare, or a longer scale.idle_minutes")
    cordoned_by_us = sorted(n.name for n in observed.cluster.nodes if n.annotations.get(CORDON_MARK))
    if policy.reclaim_after is not None:
        facts["reclaimable"] = [i.key for i in idle]
        if observed.activity is None:
            notes.append("the hub's server activity is unknown this round: nothing is reclaimed")
    for i in reclaim:
        actions.append(Action(
            RECLAIM, f"{i.user}/{i.server}" if i.server else i.user, 0,
            {"user": i.user, "server": i.server, "node": i.node, "idle_since": i.since.isoformat()},
            f"idle for {_minutes(timedelta(minutes=round((now - i.since).total_seconds() / 60, 1)))} min "
            f"on {i.node} (reclaim after "
            f"{_minutes(policy.reclaim_after or timedelta(0))} min); a GPU server waits and no ready node is free"))

    if pool.power_state.lower() != "running":
        notes.append(f"pool {pool.name} is {pool.power_state}: nothing to do until it is started")
        return Plan.build(OPERATION, actions, notes, facts)
    if pool.busy:
        notes.append(
            f"pool {pool.name} is {pool.provisioning_state}: another operation is in progress, "
            "this round is skipped and the next one re-observes"
        )
        return Plan.build(OPERATION, actions, notes, facts)

    removing: list[str] = []
    after = pool.count
    present = pool.count - occ.missing  # the machines that exist (a failed operation's count may not)
    # without the machines on their way out (no second removal for them), but not stopped VMs again
    staying = present - (len(occ.leaving) - occ.leaving_stopped)
    if mode == "direct":
        if desired > present:
            # at most max_step_up machines more than exist (a failed pool's count may be above
            # them); never a lower count (AKS would pick the nodes to remove): the same count again
            # is the failed operation asked for once more
            after = max(pool.count, min(desired, present + policy.max_step_up))
            if after - present > policy.max_step_up:
                notes.append(
                    f"pool {pool.name}'s count {pool.count} is its last operation's "
                    f"({pool.provisioning_state}), {present} machine(s) exist: sending it again would add "
                    f"{after - present} nodes, above scale.max_step_up {policy.max_step_up}; not sent. "
                    "Set the pool's count by hand (az aks nodepool scale), or raise scale.max_step_up")
                after = pool.count
            elif after > policy.max_nodes:
                # someone else's count above max_nodes, its operation failed: sent again it would be
                # refused by the guard every round, and with it the rest of the plan
                notes.append(
                    f"pool {pool.name}'s count {pool.count} is above scale.max_nodes {policy.max_nodes} "
                    f"(its last operation {pool.provisioning_state}, {present} machine(s) exist): not sent "
                    "again. Set the pool's count by hand (az aks nodepool scale), or raise scale.max_nodes")
                after = pool.count
            elif after > pool.count:
                actions.append(Action(SET_COUNT, pool.name, 0, {"count": after, "from": pool.count},
                                      f"want {desired}: " + ", ".join(why)))
            else:
                actions.append(Action(SET_COUNT, pool.name, 0, {"count": pool.count, "from": pool.count},
                                      f"want {desired}, {present} machine(s) exist: send the count again: "
                                      + ", ".join(why)))
        elif desired < staying:
            removing = _plan_removal(observed, occ, memory, policy, now, staying - desired, notes)
    else:
        current_min = pool.min_count or 0
        new_min = current_min
        reason = ""
        if desired > current_min:
            new_min = min(desired, max(current_min, pool.count) + policy.max_step_up)
            reason = f"keep {new_min} warm: " + ", ".join(why)
        elif desired < current_min and _down_allowed(observed.memory, policy, now, notes):
            # as a removal in direct mode, the floor comes down only for nodes empty for the idle
            # limit: an empty node not yet idle (between two short sessions) keeps it, else the
            # floor would go down and up again with each session, an ARM operation each time
            fresh = _not_yet_idle(observed, occ, memory, policy, now)
            new_min = max(desired, current_min - policy.max_step_down, len(occ.busy) + len(fresh))
            if new_min < current_min:
                reason = f"lower the autoscaler's floor to {new_min}: " + ", ".join(why)
                if new_min > max(desired, current_min - policy.max_step_down):
                    notes.append(f"the autoscaler's floor goes no lower than {new_min}: empty but not yet idle "
                                 f"for {_minutes(policy.idle)} min: {', '.join(fresh)}")
            else:
                new_min = current_min
                notes.append(f"the autoscaler's floor stays {current_min}: empty but not yet idle for "
                             f"{_minutes(policy.idle)} min: {', '.join(fresh)}")
        if new_min != current_min or pool.min_count is None:
            actions.append(Action(SET_MIN_COUNT, pool.name, 0, {"min_count": new_min, "from": pool.min_count},
                                  reason if new_min != current_min else "set the autoscaler's floor"))
        after = max(pool.count, new_min)
        keep = max(desired, new_min)
        if staying > keep:
            removing = _plan_removal(observed, occ, memory, policy, now, staying - keep, notes)
    if removing:
        after = pool.count - len(removing)
        actions.append(Action(REMOVE_NODES, pool.name, 1, {"nodes": removing, "from": pool.count},
                              f"empty for at least {_minutes(policy.idle)} min; want {desired}"))
    for name in cordoned_by_us:
        if name not in removing and name in occ.busy | occ.empty:
            actions.append(Action(UNCORDON, name, 0, {}, "left cordoned by an earlier run"))
    facts["after"] = after
    return Plan.build(OPERATION, actions, list(dict.fromkeys(notes)), facts)


def _down_allowed(memory: Memory, policy: Policy, now: datetime, notes: list[str]) -> bool:
    if memory.last_up is not None and now - memory.last_up < policy.delay_after_up:
        notes.append(f"no scale-down within {_minutes(policy.delay_after_up)} min of a scale-up "
                     f"(last at {memory.last_up.isoformat()})")
        return False
    if memory.last_down is not None and now - memory.last_down < policy.down_cooldown:
        notes.append(f"no scale-down within {_minutes(policy.down_cooldown)} min of the last one")
        return False
    return True


def _plan_removal(observed: Observed, occ: Occupancy, memory: Memory, policy: Policy, now: datetime,
                  surplus: int, notes: list[str]) -> list[str]:
    if occ.booting:
        notes.append(f"{occ.booting} machine(s) still joining the cluster: no scale-down this round")
        return []
    if not _down_allowed(observed.memory, policy, now, notes):
        return []
    candidates = _removable(observed, occ, memory, policy, now)
    chosen = candidates[: min(surplus, policy.max_step_down)]
    if len(chosen) < surplus:
        waiting = sorted(occ.empty - set(candidates) - set(occ.blocked))
        if waiting:
            notes.append(f"empty but not yet idle for {_minutes(policy.idle)} min: {', '.join(waiting)}")
    return chosen


def _minutes(td: timedelta) -> str:
    m = td.total_seconds() / 60
    return f"{m:g}"


def guard_scale(observed: Observed, plan: Plan, policy: Policy) -> list[str]:
    """Reasons to refuse: bounds, step limits, and never a node that runs a user pod."""
    reasons: list[str] = []
    pool = observed.pool
    occupied = {p.node for p in observed.cluster.pods if p.node and p.phase not in ("Succeeded", "Failed")}
    known = {n.name for n in observed.cluster.nodes}
    reclaims = [a for a in plan.actions if a.kind == RECLAIM]
    if reclaims:
        gpu_on_pool = {f"{p.user}~{p.server}" for p in _gpu_servers_on(observed, known)}
        idle = gpu_on_pool & set(observed.activity or {})
        if policy.reclaim_after is None:
            reasons.append("reclaiming idle GPU servers is off (scale.reclaim_idle_minutes)")
        if len(reclaims) > policy.max_reclaim:
            reasons.append(f"reclaiming {len(reclaims)} servers exceeds scale.max_reclaim {policy.max_reclaim}")
        for a in reclaims:
            key = f"{a.params['user']}~{a.params['server']}"
            if key not in idle:
                reasons.append(f"server {a.target} is not an idle GPU server on a node of pool {pool.name}")
    for a in plan.actions:
        if a.kind == SET_COUNT:
            count = int(a.params["count"])
            if pool.autoscaling:
                reasons.append("the cluster autoscaler is on: the node count is its to set (AKS rejects it)")
            if count > policy.max_nodes:
                reasons.append(f"count {count} is above scale.max_nodes {policy.max_nodes}")
            # the nodes it adds: beyond the machines that exist (a failed pool's count may be above them)
            added = count - machines_present(observed, observed.at)
            if added > policy.max_step_up:
                reasons.append(f"adding {added} nodes exceeds scale.max_step_up {policy.max_step_up}")
            if count < pool.count:
                reasons.append("a scale-down must name the empty nodes to remove, never lower the count")
        elif a.kind == SET_MIN_COUNT:
            m = int(a.params["min_count"])
            old = pool.min_count or 0
            # a floor lowered toward the bounds (one set above them outside hubpilot) is no breach
            if m > old and (m > policy.max_nodes or (pool.max_count is not None and m > pool.max_count)):
                reasons.append(f"min_count {m} is above the pool's bound")
            # the step is in nodes, as the plan takes it: a raised floor adds the nodes it puts
            # above the count (the autoscaler may have grown the pool far above the old floor)
            added = m - max(old, pool.count)
            if m > old and added > policy.max_step_up:
                reasons.append(f"raising min_count to {m} adds {added} nodes, above scale.max_step_up "
                               f"{policy.max_step_up}")
            if m < old and old - m > policy.max_step_down:
                reasons.append(f"lowering min_count by {old - m} exceeds scale.max_step_down {policy.max_step_down}")
        elif a.kind == REMOVE_NODES:
            nodes: Sequence[str] = a.params["nodes"]
            if len(nodes) > policy.max_step_down:
                reasons.append(
                    f"removing {len(nodes)} nodes exceeds scale.max_step_down {policy.max_step_down}")
            not_ready = {n.name for n in observed.cluster.nodes if not n.ready}
            deleting = {n.name for n in observed.cluster.nodes if marked_for_removal(n)}
            for n in nodes:
                if n in deleting:
                    reasons.append(f"node {n} is being deleted (deletionTimestamp or the cluster autoscaler's "
                                   f"{AUTOSCALER_DELETING} mark): never removed by hubpilot")
                if n in occupied:
                    reasons.append(f"node {n} runs a user pod and is never removed")
                if n not in known:
                    reasons.append(f"node {n} is not a node of pool {pool.name}")
                elif n in not_ready and deallocates(pool):
                    reasons.append(f"node {n} is NotReady in a Deallocate pool: it may be a stopped VM")
            # the machines that exist: a failed pool's count may be above them
            if machines_present(observed, observed.at) - len(nodes) < policy.min_nodes:
                reasons.append(f"removing {len(nodes)} nodes goes below scale.min_nodes {policy.min_nodes}")
    return reasons
