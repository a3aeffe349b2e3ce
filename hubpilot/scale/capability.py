"""The scale capability: observe the pool, the cluster and the demand; apply pool changes safely."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hubpilot.config.cull import CullSettings
from hubpilot.config.scale import UNLISTED, parse_gpu_profile
from hubpilot.hub_outage import catch_up as hub_catch_up
from hubpilot.hub_outage import describe as describe_outage
from hubpilot.hub_outage import is_outage, note_outage
from hubpilot.loop import Action, ActionResult, Clock, ConflictPause, Plan, Progress, Status, run_actions, stored_time
from hubpilot.ports.cluster import Cluster
from hubpilot.ports.hub import Hub, HubError, HubUser, StopResult
from hubpilot.ports.pool import Pool, PoolOutcome, PoolResult
from hubpilot.ports.store import ConflictError, StateStore, StoreError
from hubpilot.scale.cost import DEFAULT_GAP, STOPPED, last_size, record_size
from hubpilot.scale.forecast import Forecast, learn
from hubpilot.scale.plan import (
    OPERATION,
    RECLAIM,
    REMOVAL_SETTLE,
    REMOVE_NODES,
    SET_COUNT,
    SET_MIN_COUNT,
    UNCORDON,
    Demand,
    Memory,
    Observed,
    Policy,
    arrival_keys,
    deallocates,
    guard_scale,
    machines_present,
    plan_scale,
)

log = logging.getLogger(__name__)

MEMORY_KEY = "scale/memory"
RECORD_MEMORY = "record_memory"  # the result of a memory write that kept losing (no plan action)
RECORD_COST = "record_cost"  # the result of a size history write that failed (no plan action)
MEMORY_WRITE_SECONDS = 30.0
FORECAST_KEY = "scale/forecast"
DEMAND_PREFIX = "scale/demand/"


def demand_key(user: str, server: str) -> str:
    return f"{user}~{server}"


async def record_demand(store: StateStore, *, user: str, server: str, profile: str, at: datetime) -> str:
    """Remember that ``user`` is starting a GPU server (the hub's pre-spawn hook). Idempotent."""
    key = demand_key(user, server)
    await store.put(DEMAND_PREFIX + key, {"user": user, "server": server, "profile": profile,
                                          "at": at.isoformat()})
    return key


class ScaleCapability:
    name = OPERATION

    def __init__(
        self,
        pool: Pool,
        cluster: Cluster,
        store: StateStore,
        policy: Policy,
        *,
        clock: Clock,
        hub: Hub | None = None,
        gpu_profiles: Sequence[str] = (),
        holder: str = "hubpilot",
        observed_gap: timedelta = DEFAULT_GAP,
        activity_lag: timedelta | None = None,
    ) -> None:
        self.pool = pool
        self.cluster = cluster
        self.store = store
        self.policy = policy
        self.clock = clock
        self.hub = hub
        self.gpu_rules = tuple(parse_gpu_profile(p) for p in sorted(set(gpu_profiles)))
        self.holder = holder
        self.observed_gap = observed_gap  # the next observation is due within this (cost report)
        # how late the servers' activity reaches the hub (cull.activity_lag): after a hub outage
        # no idle server is reclaimed for that long
        self.activity_lag = activity_lag if activity_lag is not None else \
            timedelta(seconds=CullSettings().activity_lag)
        self.memory_write_seconds = MEMORY_WRITE_SECONDS  # conditional writes of the memory keep merging this long

    # --- observe ---------------------------------------------------------------------------
    async def observe(self) -> Observed:
        pool = await self.pool.get()
        cluster = await self.cluster.read()
        at = self.clock()
        notes: list[str] = []
        demand = [d for d in await self._demand_docs() if at - d.at <= self.policy.demand_ttl]
        activity: dict[str, datetime] | None = None
        if self.hub is not None and (self.gpu_rules or self.policy.reclaim_after is not None):
            try:
                users = await self.hub.list_users(state="active")
            except HubError as exc:  # only delays a scale-up; removal is guarded by the cluster view
                if is_outage(exc):  # the servers' activity reports do not reach it either (cull waits too)
                    await note_outage(self.store, at)
                notes.append(f"the hub could not be read this round, pending spawns are unknown: {exc}")
            else:
                if self.gpu_rules:
                    demand += self._hub_pending(users, at)
                if self.policy.reclaim_after is not None:
                    catching_up = await hub_catch_up(self.store, at, self.activity_lag)
                    if catching_up is None:
                        activity = _activity(users)
                    else:
                        notes.append(f"{describe_outage(*catching_up)}: activity is unknown, no server is reclaimed")
        memory = Memory.from_json(await self.store.get(MEMORY_KEY))
        forecast = Forecast()
        if self.policy.forecast is not None:
            forecast = Forecast.from_json(await self.store.get(FORECAST_KEY))
        return Observed(pool, cluster, tuple(sorted(demand, key=lambda d: (d.key, d.at))), memory, at,
                        tuple(notes), self.holder, forecast, activity)

    async def _stopped_recorded(self, at: datetime) -> bool:
        """Stopped VMs are in force in the stopped-VM history of today or yesterday (a Delete pool
        records none: two reads of documents that are not there; unreadable: none)."""
        try:
            return bool(await last_size(self.store, at.astimezone(UTC).date(), 2, series=STOPPED))
        except StoreError as exc:
            log.warning("could not read the stopped-VM history for the cost report: %s", exc)
            return False

    async def _demand_docs(self) -> list[Demand]:
        out = []
        for key, doc in (await self.store.list(DEMAND_PREFIX)).items():
            try:  # naive means UTC, as in every document
                at = stored_time(doc.get("at"), f"{key} at")
                if at is None:
                    raise ValueError(f"{key} at is missing")
            except ValueError as exc:
                log.warning("ignoring malformed demand document %s (%s); the hub's pre-spawn hook writes it "
                            "anew, or delete it", key, exc)
                continue
            out.append(Demand(key[len(DEMAND_PREFIX):], at, "hook"))
        return out

    def _hub_pending(self, users: Sequence[HubUser], at: datetime) -> list[Demand]:
        out = []
        for user in users:
            for server in user.servers.values():
                if server.pending == "spawn" and gpu_spawn(server.user_options, self.gpu_rules):
                    out.append(Demand(demand_key(user.name, server.name), server.started or at, "hub"))
        return out

    # --- plan / guard ----------------------------------------------------------------------
    def plan(self, observed: Observed, now: datetime) -> Plan:
        return plan_scale(observed, self.policy, now)

    def guard(self, observed: Observed, plan: Plan) -> list[str]:
        return guard_scale(observed, plan, self.policy)

    # --- apply -----------------------------------------------------------------------------
    async def apply(self, plan: Plan, observed: Observed, progress: Progress) -> list[ActionResult]:
        at = observed.at or self.clock()
        # a stopped pool (AKS power state Stopped) keeps its count, but none of its VMs runs; a
        # failed pool keeps its failed operation's count, but only the machines that exist run
        present = machines_present(observed, observed.at)
        running = 0 if observed.pool.power_state.lower() == "stopped" else present
        unrecorded: list[str] = []  # the size history only feeds the cost report: a failed write
        # of it never stops a scale run, nor keeps the memory below from being written

        async def record(when: datetime, count: int, source: str, **kw: Any) -> None:
            try:
                await record_size(self.store, when, count, source=source, **kw)
            except StoreError as exc:
                log.warning("could not record the pool size %d (%s) for the cost report: %s", count, source, exc)
                unrecorded.append(f"{source} {count}: {exc}")

        await record(at, running, "observed", observed=self.observed_gap)
        # the pool stopped (az aks nodepool stop deallocates its VMs whatever its scale-down mode)
        whole = observed.pool.power_state.lower() == "stopped"
        if deallocates(observed.pool) or whole:  # their disks are billed: the cost report counts them apart
            stopped = int(plan.facts.get("stopped") or 0) + (present if whole else 0)
            await record(at, stopped, "observed", series=STOPPED)
        elif await self._stopped_recorded(at):
            # switched to Delete: AKS deletes the stopped VMs (a Delete pool keeps none), so the
            # count last recorded in Deallocate mode ends here instead of being held for ever
            await record(at, 0, "observed", series=STOPPED)
        results = await run_actions(plan.actions, self._perform_for(observed), concurrency=1,
                                    progress=progress)
        memory = Memory.from_json(plan.facts.get("memory")) if plan.facts.get("memory") else observed.memory
        now = self.clock()
        for r in results:
            if r.status is Status.FAILED and r.action.kind == REMOVE_NODES and r.action.params.get("removed_nodes"):
                # it failed part-way: the nodes whose machines went are removed all the same
                confirmed = not r.action.params.get("unconfirmed")
                gone = r.action.params["removed_nodes"]
                memory = replace(memory, last_down=now)
                if confirmed:
                    await record(now, present - len(gone), "scale-down")
                if confirmed or not deallocates(observed.pool):
                    memory = replace(memory, removed={**memory.removed, **dict.fromkeys(gone, now)})
                continue
            if r.status not in (Status.DONE, Status.PENDING):
                continue
            if r.action.kind == SET_COUNT or (r.action.kind == SET_MIN_COUNT
                                              and int(r.action.params["min_count"]) > int(
                                                  r.action.params.get("from") or 0)):
                memory = replace(memory, last_up=now)
            # a lowered minCount is autoscaler-assist's scale-down: the cooldown counts from it too
            if r.action.kind == REMOVE_NODES or (r.action.kind == SET_MIN_COUNT and int(
                    r.action.params["min_count"]) < int(r.action.params.get("from") or 0)):
                memory = replace(memory, last_down=now)
            if r.action.kind == SET_COUNT and r.status is Status.DONE:
                await record(now, int(r.action.params["count"]), "scale-up")
            if r.action.kind == REMOVE_NODES and (r.status is Status.DONE or not deallocates(observed.pool)):
                gone = r.action.params["removed_nodes"]  # set by _remove: the nodes it did remove
                if r.status is Status.DONE:
                    await record(now, present - len(gone), "scale-down")
                # watched: in a Deallocate pool whether AKS stops or deletes their VMs, in a Delete
                # pool while their nodes leave the cluster -- there also when ARM's operation was
                # still running when we stopped waiting, or its answer was lost (it may have been
                # accepted): uncordoned, the node would take a user pod while its VM is deleted;
                # counted as unusable, it would be replaced. Never asked for, the node is ours again
                # (uncordoned or removed) once REMOVAL_SETTLE has passed.
                memory = replace(memory, removed={**memory.removed, **dict.fromkeys(gone, now)})
        if unrecorded:
            book = Action(RECORD_COST, "scale/sizes", 99, {}, "the pool sizes for the cost report")
            results.append(ActionResult(book, Status.FAILED, "the cost report's size history was not written (the "
                                        "report misses these changes): " + "; ".join(unrecorded)))
        unwritten = await self._store_memory(memory, observed.memory)
        if unwritten is not None:
            log.error("%s", unwritten)
            results.append(ActionResult(Action(RECORD_MEMORY, MEMORY_KEY, 99, {}, "the scale memory of this run"),
                                        Status.FAILED, unwritten))
        if self.policy.forecast is not None:  # learn the arrivals this observation saw
            keys = arrival_keys(observed, at, self.policy.demand_ttl)
            await self.store.put(FORECAST_KEY, learn(observed.forecast, keys, at, self.policy.forecast).to_json())
        await self._expire_demand(now)
        await self._settle_demand(observed)
        return results

    async def _store_memory(self, memory: Memory, seen: Memory) -> str | None:
        """Write the memory, keeping what another apply recorded since this one observed (``seen``):
        nodes it removed (watched while they leave; lost, they would be uncordoned under their
        deleted VMs) and the times of its scale-ups and -downs. Conditional on the stored eTag: a
        write that loses to another writer reads and merges again, with a growing pause, for up to
        ``memory_write_seconds``; it never overwrites. Returns what went wrong, or None."""
        pause = ConflictPause(self.memory_write_seconds)
        while True:
            got = await self.store.get_with_etag(MEMORY_KEY)
            doc, etag = got if got is not None else (None, "")
            stored = Memory.from_json(doc)
            extra = {n: at for n, at in stored.removed.items() if seen.removed.get(n) != at}
            merged = replace(memory, removed={**extra, **memory.removed},
                             last_up=_latest(memory.last_up, stored.last_up),
                             last_down=_latest(memory.last_down, stored.last_down))
            try:
                await self.store.put(MEMORY_KEY, merged.to_json(), if_match=etag)
                return None
            except ConflictError:
                if not await pause.lost():
                    break
        mine = sorted(set(memory.removed) - set(seen.removed))
        return (f"the scale memory ({MEMORY_KEY}) was not written: {pause.conflicts} conditional writes in a row "
                f"lost to other writers within {self.memory_write_seconds:g} s, and it is never overwritten "
                "(another apply's record would be lost). What this run did is not remembered"
                + (f": the nodes it removed ({', '.join(mine)}) are not watched while they leave" if mine else "")
                + "; the next run re-observes. Check what else writes the state store so often")

    def _perform_for(self, observed: Observed) -> Any:
        # the autoscaler's floor in force: the observed minCount until this apply has lowered it
        floor = {"min": observed.pool.min_count if observed.pool.autoscaling else None}

        async def perform(action: Action) -> ActionResult:
            if action.kind == SET_COUNT:
                return _result(action, await self.pool.set_count(
                    int(action.params["count"]), etag=observed.pool.etag))
            if action.kind == SET_MIN_COUNT:
                res = _result(action, await self.pool.set_min_count(
                    int(action.params["min_count"]), etag=observed.pool.etag))
                if res.status in (Status.DONE, Status.PENDING, Status.NOOP):  # ARM took it
                    floor["min"] = int(action.params["min_count"])
                return res
            if action.kind == REMOVE_NODES:
                return await self._remove(_above_floor(action, observed, floor["min"]), observed)
            if action.kind == RECLAIM:
                return await self._reclaim(action)
            if action.kind == UNCORDON:
                ok = await self.cluster.uncordon(action.target)
                return ActionResult(action, Status.DONE if ok else Status.NOOP, "" if ok else "node is gone")
            return ActionResult(action, Status.SKIPPED, f"unknown action {action.kind}")
        return perform

    async def _remove(self, action: Action, observed: Observed) -> ActionResult:
        """Cordon, re-check each node is still empty, uncordon any that is not, delete the rest."""
        if not action.params["nodes"]:
            return ActionResult(action, Status.SKIPPED, str(action.params.get("held") or "no node to remove"))
        machines = {n.name: n.machine for n in observed.cluster.nodes}
        versions = {n.name: n.resource_version for n in observed.cluster.nodes}
        cordoned: list[str] = []
        kept: list[str] = []
        # removed by an apply since this plan was made (the same plan applied twice, two at once):
        # registered still while its VM goes, never cordoned, deleted or uncordoned again
        now = self.clock()
        stored = Memory.from_json(await self.store.get(MEMORY_KEY)).removed
        for node in action.params["nodes"]:
            at = stored.get(node)
            if at is not None and observed.memory.removed.get(node) != at and now - at < REMOVAL_SETTLE:
                kept.append(f"{node} (removed at {at.isoformat()}, on its way out)")
                continue
            # as observed, or not at all: a node changed since (another run's cordon for a removal
            # of its own, someone's taint or label) is the next run's to judge again
            if not await self.cluster.cordon(node, self.holder, resource_version=versions.get(node, "")):
                kept.append(f"{node} (gone, cordoned by someone else, being deleted, or changed since it was "
                            "observed)")
                continue
            pods = await self.cluster.pods_on(node)
            if pods:
                await self.cluster.uncordon(node)
                kept.append(f"{node} (now runs {pods[0].name})")
                continue
            cordoned.append(node)
        # a last look just before the deletion at the nodes re-checked before the last one: a pod the
        # scheduler placed on one before its cordon may have been bound since its own re-check
        taken: set[str] = set()
        for node in cordoned[:-1]:
            pods = await self.cluster.pods_on(node)
            if pods:
                await self.cluster.uncordon(node)
                kept.append(f"{node} (now runs {pods[0].name})")
                taken.add(node)
        cordoned = [n for n in cordoned if n not in taken]
        if not cordoned:
            return ActionResult(action, Status.NOOP, "kept: " + ", ".join(kept))
        try:
            res = await self.pool.delete_machines([machines[n] for n in cordoned])
        except Exception as exc:
            return await self._failed_removal(action, cordoned, kept, machines, exc)
        # a 409 (another operation on the pool is running) leaves them cordoned: that operation may
        # be another apply's deleteMachines of these very nodes (two runs at once), and an
        # uncordoned node would take a user pod while its VM is deleted. They are empty; the next
        # run re-observes and removes what is still there and idle, or uncordons it.
        verb = "left cordoned" if res.outcome is PoolOutcome.CONFLICT else "removed"
        detail = f"{verb} {', '.join(cordoned)}" + (f"; kept {', '.join(kept)}" if kept else "")
        if action.params.get("held"):
            detail += f"; {action.params['held']}"
        done = Action(action.kind, action.target, action.phase,
                      {**action.params, "removed_nodes": cordoned}, action.reason)
        return _result(done, res, detail)

    async def _failed_removal(self, action: Action, cordoned: Sequence[str], kept: Sequence[str],
                              machines: Mapping[str, str], exc: Exception) -> ActionResult:
        """The deletion failed: refused outright, or its operation failed part-way, after some of
        the machines went. Read the pool's machines again: uncordon only the nodes whose machines
        are still there; a node whose VM went stays cordoned (still registered a while, it would
        take a user pod) and is watched while it leaves. Unreadable, every node stays cordoned and
        watched, as for a removal that may have been accepted; the next runs re-observe."""
        params: dict[str, Any] = {**action.params}
        try:
            left = set(await self.pool.machines())
        except Exception as again:
            gone, still = list(cordoned), []
            params["unconfirmed"] = True
            text = (f"{exc}; the pool's machines could not be read again ({again}): "
                    f"left cordoned, perhaps removed: {', '.join(gone)}")
        else:
            gone = [n for n in cordoned if machines[n] not in left]
            still = [n for n in cordoned if machines[n] in left]
            await self._uncordon_all(still)
            text = f"{exc}; removed {', '.join(gone) or 'none'}; uncordoned {', '.join(still) or 'none'}"
        if kept:
            text += f"; kept {', '.join(kept)}"
        if action.params.get("held"):
            text += f"; {action.params['held']}"
        done = Action(action.kind, action.target, action.phase, {**params, "removed_nodes": gone}, action.reason)
        return ActionResult(done, Status.FAILED, text)

    async def _reclaim(self, action: Action) -> ActionResult:
        """Stop an idle GPU server for one that waits -- after reading it again: a server that
        became active since the observation, or is no longer ready, is left alone."""
        if self.hub is None or self.policy.reclaim_after is None:
            return ActionResult(action, Status.SKIPPED, "reclaim is off")
        user, name = str(action.params["user"]), str(action.params["server"])
        fresh = await self.hub.get_user(user)
        server = fresh.servers.get(name) if fresh else None
        if server is None or not server.ready or server.pending:
            return ActionResult(action, Status.NOOP, "the server is no longer running")
        since = server.last_activity or server.started
        now = self.clock()
        if since is None or now - since < self.policy.reclaim_after:
            return ActionResult(action, Status.SKIPPED, "the server has been active since it was observed: kept")
        outcome = await self.hub.stop_server(user, name)
        if outcome is StopResult.NOT_RUNNING:
            return ActionResult(action, Status.NOOP, "already stopped")
        status = Status.DONE if outcome is StopResult.STOPPED else Status.PENDING
        return ActionResult(action, status, f"stopped (idle since {since.isoformat()}) for a waiting GPU server")

    async def _uncordon_all(self, nodes: Sequence[str]) -> None:
        for n in nodes:
            try:
                await self.cluster.uncordon(n)
            except Exception as exc:  # reported; the next run's plan uncordons what we marked
                log.warning("could not uncordon %s: %s", n, exc)

    async def _expire_demand(self, now: datetime) -> None:
        """Delete the demand signals that have expired, each only as it was read (If-Match): the
        hub's pre-spawn hook may record the same user and server again meanwhile, and that signal
        is kept for the scale-up it asks for."""
        limit = self.policy.demand_ttl + timedelta(minutes=1)
        for d in await self._demand_docs():
            if now - d.at <= limit:
                continue
            got = await self.store.get_with_etag(DEMAND_PREFIX + d.key)
            if got is None:
                continue
            doc, etag = got
            try:
                again = stored_time(doc.get("at"), f"{DEMAND_PREFIX}{d.key} at")
            except ValueError:
                continue  # written again since, unreadable: left, as the listing leaves such a one
            if again is None or now - again <= limit:
                continue  # recorded again since it was listed (or unreadable: left, as above)
            try:
                await self.store.delete(DEMAND_PREFIX + d.key, if_match=etag)
            except ConflictError:
                continue  # recorded again since it was read: kept

    async def _settle_demand(self, observed: Observed) -> None:
        """Delete the demand signals whose server's pod this run observed (not being deleted): the
        signal stands for a server until its pod is there, then the pod does. Kept, a signal would
        count as a GPU server waiting again once the pod is gone (the server stopped, the spawn
        cancelled or failed) for the rest of ``demand_ttl``: a node kept, or booted, for nobody,
        and with reclaim on another user's idle server stopped for it. Each only as observed (the
        same time, If-Match): one the hook recorded again since (a new spawn) is kept."""
        pods = {demand_key(p.user, p.server) for p in observed.cluster.pods if p.user and not p.deleting}
        for d in observed.demand:
            if d.source != "hook" or d.key not in pods:
                continue
            try:
                got = await self.store.get_with_etag(DEMAND_PREFIX + d.key)
                if got is None:
                    continue
                doc, etag = got
                try:  # naive means UTC, as where the signal was read
                    if stored_time(doc.get("at"), f"{DEMAND_PREFIX}{d.key} at") != d.at:
                        continue  # recorded again since it was observed
                except ValueError:
                    continue
                await self.store.delete(DEMAND_PREFIX + d.key, if_match=etag)
            except ConflictError:
                continue  # recorded again since it was read: kept
            except StoreError as exc:  # it expires after demand_ttl all the same
                log.warning("could not delete the demand signal %s, whose pod is there: %s", d.key, exc)


def gpu_spawn(options: Mapping[str, Any], rules: Sequence[tuple[str, str | None, str | None]]) -> bool:
    """Does a pending server with these ``user_options`` start a GPU profile, by the rules of
    ``scale.gpu_profiles`` (:func:`parse_gpu_profile`)? As KubeSpawner applies them: no profile
    named is the default profile (rule profile ""), and a free-form value in
    ``<option>--unlisted-choice`` wins over the choice ``<option>`` names."""
    profile = str(options.get("profile") or "")
    for want, option, choice in rules:
        if want != profile:
            continue
        if option is None:
            return True
        value = options.get(option)
        if value is None or value == "":
            continue
        if not option.endswith(UNLISTED) and options.get(option + UNLISTED) not in (None, ""):
            continue  # the free-form value is the choice KubeSpawner applies
        if choice is None or str(value) == choice:
            return True
    return False


def _activity(users: Sequence[HubUser]) -> dict[str, datetime]:
    """Last activity (else start) of every ready server that is not stopping, by "<user>~<server>"."""
    out = {}
    for user in users:
        for server in user.servers.values():
            since = server.last_activity or server.started
            if server.ready and not server.pending and since is not None:
                out[demand_key(user.name, server.name)] = since
    return out


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max((t for t in (a, b) if t is not None), default=None)


def _above_floor(action: Action, observed: Observed, floor: int | None) -> Action:
    """The removal, cut to the nodes above the autoscaler's floor in force: when the plan's lowering
    of minCount did not happen (409, an error), a pool taken below minCount would be scaled back up
    to it by AKS's autoscaler (it enforces minCount): new VMs for the ones just deleted."""
    nodes = list(action.params["nodes"])
    # the machines that exist (a failed pool's count may be above them): the autoscaler enforces
    # minCount on what is left of them
    present = machines_present(observed, observed.at)
    if floor is None or present - len(nodes) >= floor:
        return action
    keep = max(0, present - floor)
    held = (f"minCount is still {floor} (it was not lowered): "
            f"{len(nodes) - keep} node(s) kept, {', '.join(nodes[keep:])}")
    return Action(action.kind, action.target, action.phase, {**action.params, "nodes": nodes[:keep], "held": held},
                  action.reason)


def _result(action: Action, res: PoolResult, detail: str = "") -> ActionResult:
    text = "; ".join(x for x in (detail, res.detail) if x)
    if res.outcome is PoolOutcome.DONE:
        return ActionResult(action, Status.DONE, text)
    if res.outcome is PoolOutcome.PENDING:
        return ActionResult(action, Status.PENDING, text)
    if res.outcome is PoolOutcome.NOOP:
        return ActionResult(action, Status.NOOP, text)
    # the adapter's detail says which conflict: another operation on the pool (409), or the pool
    # changed since it was read (412, a count above the one planned)
    return ActionResult(action, Status.SKIPPED,
                        "not applied: " + (text or "another operation on the pool is in progress")
                        + "; the next run re-observes")
