"""The one loop every capability runs: observe → plan → guard → apply → record.

A capability (sync, cull, scale) writes four things: ``observe`` (the only read of the world),
``plan`` (pure: observed state, policy, now → a :class:`Plan`), ``guard`` (pure: reasons to
refuse, empty when the plan is safe) and ``apply`` (the only writes). The :class:`Runner` does
the rest the same way for all of them: paused? → lock → observe → plan → guard → apply → record.

A dry-run is observe → plan → guard: no lock, nothing applied, nothing recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from hubpilot.ports.hub import hub_round
from hubpilot.ports.store import ConflictError, Lease, StateStore, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware. Injected everywhere; tests pass a fixed clock."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def stored_time(value: Any, what: str) -> datetime | None:
    """A time read from a state document: None for null or "", else an ISO string (naive means
    UTC, as everywhere in hubpilot's documents); any other value is a ValueError naming ``what``."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} is {type(value).__name__}, not an ISO time")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} is not an ISO time: {value[:40]!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class ExitCode(enum.IntEnum):
    """Exit codes every CLI command shares (and what the HTTP API maps its outcomes from)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    REFUSED = 3
    LOCKED = 4
    PAUSED = 5


class Outcome(enum.StrEnum):
    PLANNED = "planned"  # dry-run: the plan passed the guard
    APPLIED = "applied"
    REFUSED = "refused"
    FAILED = "failed"
    PAUSED = "paused"
    RUNNING = "running"

    @property
    def exit_code(self) -> ExitCode:
        return {
            Outcome.PLANNED: ExitCode.OK,
            Outcome.APPLIED: ExitCode.OK,
            Outcome.RUNNING: ExitCode.OK,
            Outcome.REFUSED: ExitCode.REFUSED,
            Outcome.FAILED: ExitCode.FAILED,
            Outcome.PAUSED: ExitCode.PAUSED,
        }[self]


class Status(enum.StrEnum):
    """What happened to one action."""

    DONE = "done"  # the world changed as the action said
    NOOP = "noop"  # the world was already so (idempotent re-run)
    PENDING = "pending"  # accepted but not finished yet (e.g. a slow server stop, 202)
    FAILED = "failed"
    SKIPPED = "skipped"  # not attempted (e.g. an earlier phase failed for this target)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Action:
    """One idempotent change. ``phase`` orders apply: lower phases run first."""

    kind: str
    target: str
    phase: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""

    def identity(self) -> dict[str, Any]:
        """What makes two actions the same action (the reason is an explanation, not identity)."""
        return {"kind": self.kind, "target": self.target, "phase": self.phase, "params": dict(self.params)}

    def to_json(self) -> dict[str, Any]:
        return {**self.identity(), "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Action:
        return cls(
            kind=str(data["kind"]),
            target=str(data["target"]),
            phase=int(data.get("phase", 0)),
            params=dict(data.get("params") or {}),
            reason=str(data.get("reason", "")),
        )

    def describe(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        text = f"{self.kind} {self.target}" + (f" ({params})" if params else "")
        return f"{text} — {self.reason}" if self.reason else text


@dataclass(frozen=True)
class Plan:
    """What a run would do, in the order it would do it, each action with its reason.

    ``notes`` are findings reported but not acted on (names that cannot be hub names, servers
    kept because a kernel is busy, ...). The ``id`` hashes the operation and the actions'
    identities, so an admin approves exactly the plan they saw.
    """

    operation: str
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        operation: str,
        actions: Sequence[Action],
        notes: Sequence[str] = (),
        facts: Mapping[str, Any] | None = None,
    ) -> Plan:
        """Order the actions as apply performs them: by phase, then stably by kind and target."""
        ordered = sorted(
            actions, key=lambda a: (a.phase, a.kind, a.target, _canonical(dict(a.params)))
        )
        return cls(operation, tuple(ordered), tuple(notes), dict(facts or {}))

    @property
    def id(self) -> str:
        digest = hashlib.sha256(
            _canonical({"operation": self.operation, "actions": [a.identity() for a in self.actions]}).encode()
        )
        return digest.hexdigest()[:16]

    @property
    def empty(self) -> bool:
        return not self.actions

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            out[a.kind] = out.get(a.kind, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "operation": self.operation,
            "counts": self.counts(),
            "actions": [a.to_json() for a in self.actions],
            "notes": list(self.notes),
            "facts": dict(self.facts),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            operation=str(data["operation"]),
            actions=tuple(Action.from_json(a) for a in data.get("actions", [])),
            notes=tuple(str(n) for n in data.get("notes", [])),
            facts=dict(data.get("facts") or {}),
        )

    def render(self) -> str:
        """The human form: a header, one line per action, then notes."""
        lines = [f"plan {self.id} for {self.operation}: " + (
            ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items())) or "nothing to do"
        )]
        lines += [f"  {i}. {a.describe()}" for i, a in enumerate(self.actions, 1)]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def diff(self, other: Plan) -> list[str]:
        """Lines ``- action`` (only in self) and ``+ action`` (only in other)."""
        mine = {_canonical(a.identity()): a for a in self.actions}
        theirs = {_canonical(a.identity()): a for a in other.actions}
        return [f"- {mine[k].describe()}" for k in mine if k not in theirs] + [
            f"+ {theirs[k].describe()}" for k in theirs if k not in mine
        ]


@dataclass(frozen=True)
class ActionResult:
    action: Action
    status: Status
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action.to_json(), "status": str(self.status), "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActionResult:
        return cls(Action.from_json(data["action"]), Status(data["status"]), str(data.get("detail", "")))


@dataclass
class RunRecord:
    """One run of one operation: what was planned, refused or applied, and each action's fate."""

    run_id: str
    operation: str
    trigger: str
    actor: str
    started: datetime
    outcome: Outcome = Outcome.RUNNING
    dry_run: bool = False
    finished: datetime | None = None
    plan: Plan | None = None
    refusal: tuple[str, ...] = ()
    results: list[ActionResult] = field(default_factory=list)
    error: str | None = None
    approved_plan: str | None = None
    approval: str | None = None
    """How an admin approves the refused plan (:func:`approval_hint`): set only when the runner
    recorded it as refused, so that the approval can find it (never for a dry-run)."""

    @property
    def exit_code(self) -> ExitCode:
        return self.outcome.exit_code

    def result_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[str(r.status)] = out.get(str(r.status), 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "operation": self.operation,
            "trigger": self.trigger,
            "actor": self.actor,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "outcome": str(self.outcome),
            "dry_run": self.dry_run,
            "plan_id": self.plan.id if self.plan else None,
            "plan": self.plan.to_json() if self.plan else None,
            "refusal": list(self.refusal),
            "results": [r.to_json() for r in self.results],
            "result_counts": self.result_counts(),
            "error": self.error,
            "approved_plan": self.approved_plan,
            "approval": self.approval,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(
            run_id=data["run_id"],
            operation=data["operation"],
            trigger=data["trigger"],
            actor=data["actor"],
            started=datetime.fromisoformat(data["started"]),
            finished=datetime.fromisoformat(data["finished"]) if data.get("finished") else None,
            outcome=Outcome(data["outcome"]),
            dry_run=bool(data.get("dry_run")),
            plan=Plan.from_json(data["plan"]) if data.get("plan") else None,
            refusal=tuple(data.get("refusal") or ()),
            results=[ActionResult.from_json(r) for r in data.get("results") or []],
            error=data.get("error"),
            approved_plan=data.get("approved_plan"),
            approval=data.get("approval"),
        )

    def render(self) -> str:
        head = f"{self.operation} run {self.run_id}: {self.outcome}"
        if self.dry_run:
            head += " (dry-run)"
        lines = [head]
        if self.plan is not None and self.results:
            lines.append(self.plan.render().splitlines()[0])  # the header; each action follows once
            lines += [f"  note: {n}" for n in self.plan.notes]
        elif self.plan is not None:
            lines.append(self.plan.render())
        # an approved run carries the reasons it was applied despite: not "refused" (it was not)
        said = "approved despite" if self.approved_plan is not None and self.outcome is not Outcome.REFUSED \
            else "refused"
        lines += [f"  {said}: {r}" for r in self.refusal]
        if self.approval is not None:
            lines.append(f"  an admin can approve it: {self.approval}")
        elif self.outcome is Outcome.REFUSED and self.dry_run:
            lines.append("  (a dry-run records nothing: a run that is refused records its plan for approval)")
        elif self.outcome is Outcome.PAUSED and self.refusal:
            lines.append("  (paused: the plan is not recorded for approval; resume the operation, and a run "
                         "that is refused records its plan for approval)")
        lines += [f"  {r.status}: {r.action.describe()}" + (f" [{r.detail}]" if r.detail else "")
                  for r in self.results]
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


class LockHeld(Exception):
    """Another run of the same operation holds the lock."""

    def __init__(self, operation: str, lease: Lease | None) -> None:
        self.operation = operation
        self.lease = lease
        holder = lease.holder if lease else "unknown"
        until = lease.expires_at.isoformat() if lease else "unknown"
        super().__init__(f"another {operation} run holds the lock ({holder}, until {until})")


_DRY_RUN: ContextVar[bool] = ContextVar("hubpilot_dry_run", default=False)


def in_dry_run() -> bool:
    """True within the observe of a dry-run (and of a paused run, which is one). A read that keeps
    state of its own (the Entra directory's delta state) then leaves it as it was: a dry-run
    records nothing, and it takes no lock, so a write of its own could make the conditional write
    of a real run under way fail."""
    return _DRY_RUN.get()


class UnknownPlan(Exception):
    """An approval named a plan id that no refused run recorded (or one an approval already
    applied: the message then names that run)."""


def _unapprovable(doc: Mapping[str, Any] | None, plan_id: str, operation: str | None) -> str | None:
    """Why the refused-plan document ``doc`` of ``plan_id`` cannot be approved (of ``operation``,
    when given), or None. An approval that applied the plan leaves its run in the document."""
    what = f"{operation} plan" if operation else "plan"
    if doc is None or (operation is not None and doc.get("operation") != operation):
        return f"no refused {what} with id {plan_id}"
    applied = doc.get("applied")
    if isinstance(applied, Mapping):
        outcome = "applied" if applied.get("outcome") == str(Outcome.APPLIED) else \
            f"applied (outcome {applied.get('outcome')})"
        return (f"{what} {plan_id} was already approved and {outcome} by run {applied.get('run_id')} "
                f"(approved by {applied.get('actor')} at {applied.get('at')}); "
                "a run that is refused again records its plan anew")
    return None


Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)`` — called by apply as actions finish."""


def no_progress(done: int, total: int, message: str) -> None:
    return None


ObservedT = TypeVar("ObservedT")


class Capability(Protocol[ObservedT]):
    """What one operation provides to the runner. Policy is bound when the capability is built."""

    @property
    def name(self) -> str: ...

    async def observe(self) -> ObservedT: ...

    def plan(self, observed: ObservedT, now: datetime) -> Plan: ...

    def guard(self, observed: ObservedT, plan: Plan) -> Sequence[str]: ...

    async def apply(self, plan: Plan, observed: ObservedT, progress: Progress) -> list[ActionResult]: ...


async def run_batches(
    actions: Sequence[Action],
    batch_key: Callable[[Action], Any],
    perform: Callable[[list[Action]], Awaitable[list[ActionResult]]],
    *,
    concurrency: int,
    progress: Progress = no_progress,
) -> list[ActionResult]:
    """Perform actions phase by phase; within a phase, actions with the same ``batch_key`` go to
    ``perform`` together (one bulk request), at most ``concurrency`` batches at once.

    One batch's failure never stops the others: its actions are reported as FAILED with the
    error, and the next run converges. Results come back in the plan's order.
    """
    results: dict[int, ActionResult] = {}
    sem = asyncio.Semaphore(max(1, concurrency))
    total = len(actions)
    done = 0

    async def one(batch: list[tuple[int, Action]]) -> None:
        nonlocal done
        items = [a for _, a in batch]
        async with sem:
            try:
                out = await perform(items)
                if len(out) != len(items):
                    raise RuntimeError(f"{len(out)} results for {len(items)} actions")
            except Exception as exc:  # reported per action, never raised past the run
                log.warning("%d action(s) %s failed: %s", len(items), items[0].describe(), exc)
                out = [ActionResult(a, Status.FAILED, f"{type(exc).__name__}: {exc}") for a in items]
        for (i, _), r in zip(batch, out, strict=True):
            results[i] = r
        done += len(items)
        progress(done, total, items[0].describe())

    indexed = list(enumerate(actions))
    for phase in sorted({a.phase for a in actions}):
        batches: dict[Any, list[tuple[int, Action]]] = {}
        for i, a in indexed:
            if a.phase == phase:
                batches.setdefault(batch_key(a), []).append((i, a))
        await asyncio.gather(*(one(b) for b in batches.values()))
    return [results[i] for i, _ in indexed]


async def run_actions(
    actions: Sequence[Action],
    perform: Callable[[Action], Awaitable[ActionResult]],
    *,
    concurrency: int,
    progress: Progress = no_progress,
) -> list[ActionResult]:
    """Perform actions one by one (no batching): phase by phase, ``concurrency`` at once."""

    async def single(batch: list[Action]) -> list[ActionResult]:
        return [await perform(batch[0])]

    return await run_batches(actions, lambda a: id(a), single, concurrency=concurrency,
                             progress=progress)


PAUSE_KEY = "paused/{operation}"
REFUSED_KEY = "refused/{plan_id}"
RUN_KEY = "runs/{run_id}"
PRUNE_KEY = "maintenance/runs-pruned"  # when run documents were last pruned (by any instance)
PRUNE_EVERY = timedelta(days=1)
LAST_RUN_KEY = "last_run/{operation}"
STARTED_RUN_KEY = "started_run/{operation}"
"""The operation's newest run that took the lock (its id and start), written as it starts: a run
killed before it finished leaves no last run, and this is how status still finds it."""


def new_run_id() -> str:
    return uuid.uuid4().hex


ABANDONED = ("the run ended without finishing: it no longer holds its operation's lock (its process "
             "stopped, or lost the lock); what it did is in the audit of later runs, which re-observe")


CANCELLED = ("the run was cancelled before it ended (its process was stopping); what it applied "
             "before is not listed here: later runs re-observe and converge")
"""The error of a cancelled run's audit entry."""


class ConflictPause:
    """The pauses between conditional writes of one document that lose to other writers: growing
    (from 20 ms to 1 s) and jittered, for up to ``seconds`` in all. A write that loses reads,
    merges and tries again after :meth:`lost`; it never overwrites what the others wrote."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.conflicts = 0
        self._deadline = asyncio.get_running_loop().time() + seconds
        self._pause = 0.02

    async def lost(self) -> bool:
        """Count a lost write and wait before the next try; False (no wait) when the next try
        would come after the deadline."""
        self.conflicts += 1
        if asyncio.get_running_loop().time() + self._pause > self._deadline:
            return False
        await asyncio.sleep(self._pause * random.uniform(0.5, 1.0))
        self._pause = min(self._pause * 2, 1.0)
        return True


@dataclass(frozen=True)
class PauseState:
    """What a pause or resume did: the operation's pause flag now, whether this call changed it
    (a pause of a paused operation keeps who paused it and when, and writes no audit entry), and
    an audit entry that could not be written for a change that is in force."""

    operation: str
    paused: bool
    changed: bool
    by: str | None = None  # who paused it (while paused)
    at: str | None = None  # since when
    audit_error: str | None = None

    def describe(self) -> str:
        since = f" by {self.by or '?'} since {self.at or '?'}" if self.paused else ""
        if self.changed:
            text = f"{self.operation} {'paused' if self.paused else 'resumed'}{since}"
        elif self.paused:
            text = f"{self.operation} already paused{since}; nothing changed"
        else:
            text = f"{self.operation} was not paused; nothing changed"
        if self.audit_error:
            text += f" (in force, but its audit entry could not be written: {self.audit_error})"
        return text


class Runner(Generic[ObservedT]):
    """Runs capabilities through the one loop, with the lock, pause flag, approval and audit."""

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Clock = utcnow,
        lock_ttl: timedelta = timedelta(minutes=10),
        holder: str = "hubpilot",
        run_retention: timedelta | None = None,
        cli: str = "hubpilot",
    ) -> None:
        self.store = store
        self.cli = cli  # the command line that reaches this runner's state (approval hints name it)
        self.clock = clock
        self.lock_ttl = lock_ttl
        self.holder = holder
        self.run_retention = run_retention  # run documents older than this are pruned daily (None: kept)
        self._pruned_at: datetime | None = None

    # --- pause -----------------------------------------------------------------------------
    async def set_paused(self, operation: str, paused: bool, actor: str) -> PauseState:
        """Pause or resume ``operation``; safe to repeat and to run concurrently: a pause of a
        paused operation (or a resume of one not paused) changes nothing and is not audited. The
        change is audited; when that entry cannot be written the change stays in force and the
        answer says so (a pause is the brake an admin pulls while the audit log may be down)."""
        key = PAUSE_KEY.format(operation=operation)
        for _ in range(5):
            current = await self.store.get_with_etag(key)
            doc = current[0] if current else None
            if bool(doc and doc.get("paused")) == paused:
                return PauseState(operation, paused, False, *(_pause_who(doc) if paused else (None, None)))
            try:
                if paused:
                    at = self.clock().isoformat()
                    await self.store.put(key, {"paused": True, "by": actor, "at": at},
                                         if_match=current[1] if current else "")
                elif current is not None:
                    # a flag written down, not deleted: a conditional delete of a document already gone
                    # is no error, and two resumes at once would both have said so and been audited
                    await self.store.put(key, {"paused": False}, if_match=current[1])
            except ConflictError:  # another pause or resume got there first: read it again
                continue
            break
        else:
            raise StoreError(f"the pause flag of {operation} kept changing under this write; try again")
        state = PauseState(operation, paused, True, actor if paused else None, at if paused else None)
        try:
            await self._audit({
                "at": self.clock().isoformat(), "operation": operation, "trigger": "admin", "actor": actor,
                "outcome": "paused" if paused else "resumed", "kind": "pause" if paused else "resume",
            })
        except StoreError as exc:
            log.error("%s %s by %s, but its audit entry could not be written: %s", operation,
                      "paused" if paused else "resumed", actor, exc)
            return PauseState(state.operation, state.paused, True, state.by, state.at, _describe_error(exc))
        return state

    async def is_paused(self, operation: str) -> bool:
        doc = await self.store.get(PAUSE_KEY.format(operation=operation))
        return bool(doc and doc.get("paused"))

    # --- runs ------------------------------------------------------------------------------
    async def dry_run(self, cap: Capability[ObservedT], *, trigger: str = "manual", actor: str = "cli") -> RunRecord:
        record = RunRecord(new_run_id(), cap.name, trigger, actor, self.clock(), dry_run=True)
        dry = _DRY_RUN.set(True)
        try:
            with hub_round():
                observed = await cap.observe()
        except Exception as exc:
            record.outcome, record.error = Outcome.FAILED, _describe_error(exc)
            record.finished = self.clock()
            return record
        finally:
            _DRY_RUN.reset(dry)
        try:
            plan = cap.plan(observed, self.clock())
            record.plan = plan
            record.refusal = tuple(cap.guard(observed, plan))
        except Exception as exc:  # a plan that cannot be made (damaged state, a bug): reported
            log.exception("%s: planning failed", cap.name)
            record.outcome, record.error = Outcome.FAILED, "planning failed: " + _describe_error(exc)
            record.finished = self.clock()
            return record
        record.outcome = Outcome.REFUSED if record.refusal else Outcome.PLANNED
        record.finished = self.clock()
        return record

    async def run(
        self,
        cap: Capability[ObservedT],
        *,
        trigger: str,
        actor: str,
        dry_run: bool = False,
        approve: str | None = None,
        run_id: str | None = None,
        progress: Progress = no_progress,
    ) -> RunRecord:
        """One run. Raises :class:`LockHeld` when another run holds the operation's lock.

        A run is one round of hub requests (:func:`hubpilot.ports.hub.hub_round`): once one got
        no answer, the run's others fail at once, and the next run tries again."""
        if dry_run:
            return await self.dry_run(cap, trigger=trigger, actor=actor)
        with hub_round():
            return await self._run(cap, trigger=trigger, actor=actor, approve=approve, run_id=run_id,
                                   progress=progress)

    async def _run(self, cap: Capability[ObservedT], *, trigger: str, actor: str, approve: str | None,
                   run_id: str | None, progress: Progress) -> RunRecord:
        record = RunRecord(run_id or new_run_id(), cap.name, trigger, actor, self.clock(),
                           approved_plan=approve)
        if await self.is_paused(cap.name):
            report = await self.dry_run(cap, trigger=trigger, actor=actor)
            record.plan, record.refusal, record.error = report.plan, report.refusal, report.error
            record.outcome = Outcome.PAUSED
            return await self._finish(record)

        now = self.clock()
        taking = asyncio.ensure_future(
            self.store.acquire_lock(cap.name, f"{actor}:{record.run_id}", self.lock_ttl, now))
        try:
            lease = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # cancelled (Ctrl-C, SIGTERM) while the store takes the lock (a busy state file, a slow
            # answer): the store takes it all the same, and would hold it for its whole lease
            with contextlib.suppress(Exception):
                taken = await taking
                if taken is not None:
                    await self.store.release_lock(taken)
            raise
        if lease is None:
            raise LockHeld(cap.name, await self.store.read_lock(cap.name, now))
        held = [lease]  # the keeper replaces it with each renewed lease; finally releases the newest
        stop = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(held, stop))
        try:
            if approve is not None:
                # checked again under the lock: another approval may have applied it meanwhile
                why = _unapprovable(await self.store.get(REFUSED_KEY.format(plan_id=approve)), approve, cap.name)
                if why is not None:
                    raise UnknownPlan(why)
            await self.store.put(RUN_KEY.format(run_id=record.run_id), record.to_json())
            await self.store.put(STARTED_RUN_KEY.format(operation=cap.name),
                                 {"run_id": record.run_id, "at": record.started.isoformat()})
            try:
                observed = await cap.observe()
            except Exception as exc:  # a read error: nothing is applied
                # said by the run's own line (log_outcome: the host's), not once more here
                log.debug("%s run %s: observe failed: %s", cap.name, record.run_id, exc)
                record.outcome, record.error = Outcome.FAILED, _describe_error(exc)
                return await self._finish(record)
            try:
                plan = cap.plan(observed, self.clock())
                record.plan = plan
                reasons = tuple(cap.guard(observed, plan))
            except Exception as exc:  # damaged state, a bug: nothing is applied, the run is recorded
                log.exception("%s: planning failed", cap.name)
                record.outcome, record.error = Outcome.FAILED, "planning failed: " + _describe_error(exc)
                return await self._finish(record)
            if approve is not None and approve != plan.id:
                reasons = (
                    f"plan {approve} was approved, but a fresh observation yields plan {plan.id}; "
                    "review the new plan and approve it instead",
                    *reasons,
                )
            if reasons and (approve is None or approve != plan.id):
                record.refusal = reasons
                record.outcome = Outcome.REFUSED
                await self.store.put(
                    REFUSED_KEY.format(plan_id=plan.id),
                    {"operation": cap.name, "plan": plan.to_json(), "reasons": list(reasons),
                     "at": self.clock().isoformat(), "run_id": record.run_id},
                )
                record.approval = approval_hint(plan, self.cli)
                return await self._finish(record)
            record.refusal = reasons  # approved despite these
            try:
                record.results = await cap.apply(plan, observed, progress)
            except Exception as exc:  # apply should report per action; this is a last resort
                log.exception("%s: apply failed", cap.name)
                record.error = _describe_error(exc)
            failed = record.error is not None or any(r.status is Status.FAILED for r in record.results)
            record.outcome = Outcome.FAILED if failed else Outcome.APPLIED
            if approve is not None:  # consumed: a second approval is told which run applied it
                try:
                    await self.store.put(REFUSED_KEY.format(plan_id=approve), {
                        "operation": cap.name, "at": self.clock().isoformat(),
                        "applied": {"run_id": record.run_id, "actor": actor, "at": self.clock().isoformat(),
                                    "outcome": str(record.outcome)}})
                except Exception as exc:  # what was applied is recorded all the same; then the error goes on
                    log.error("%s run %s applied plan %s but could not mark it used (a second approval "
                              "re-observes first): %s", cap.name, record.run_id, approve, exc)
                    await self._finish(record)
                    raise
            return await self._finish(record)
        except asyncio.CancelledError:  # the host is stopping (SIGTERM past its grace, a timeout)
            # An audit entry says so. The run document stays "running" (it reads as failed once
            # the lock below is released), so a queued request delivered again runs it again; the
            # operation's last run stays the one before, so a restarted serve catches the fire up.
            if record.finished is None:  # once _finish has begun, it writes the audit entry
                record.finished = self.clock()
                entry = {**record.to_json(), "outcome": str(Outcome.FAILED), "error": CANCELLED,
                         "at": record.finished.isoformat(), "kind": "run"}
                try:
                    await self._audit(entry)
                except Exception as exc:  # the cancellation, not a store error, is what propagates
                    log.warning("%s: could not record the cancelled run %s: %s", cap.name, record.run_id, exc)
            raise
        finally:
            # stopped, not cancelled: a renewal in flight finishes and held[0] is the lease the
            # store knows (a cancelled renewal may still have changed the token)
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self.store.release_lock(held[0])

    async def approve(self, cap: Capability[ObservedT], plan_id: str, *, actor: str,
                      run_id: str | None = None, progress: Progress = no_progress) -> RunRecord:
        """Apply a plan the guard refused, if a fresh observation still yields the same plan."""
        why = _unapprovable(await self.store.get(REFUSED_KEY.format(plan_id=plan_id)), plan_id, cap.name)
        if why is not None:
            raise UnknownPlan(why)
        return await self.run(cap, trigger="approval", actor=actor, approve=plan_id, run_id=run_id,
                              progress=progress)

    async def refused_plan_operation(self, plan_id: str) -> str:
        doc = await self.store.get(REFUSED_KEY.format(plan_id=plan_id))
        why = _unapprovable(doc, plan_id, None)
        if doc is None or why is not None:
            raise UnknownPlan(why)
        return str(doc["operation"])

    async def get_run(self, run_id: str) -> RunRecord | None:
        doc = await self.store.get(RUN_KEY.format(run_id=run_id))
        return RunRecord.from_json(doc) if doc else None

    async def run_document(self, run_id: str) -> dict[str, Any] | None:
        """The run's document as readers should see it. A run holds its operation's lock from
        before its document says "running" until after it says how it ended, so a "running"
        document whose run holds no lock is a run that was killed: it reads as failed."""
        doc = await self.store.get(RUN_KEY.format(run_id=run_id))
        if doc is not None and doc.get("outcome") == str(Outcome.RUNNING) and isinstance(doc.get("operation"), str):
            lease = await self.store.read_lock(doc["operation"], self.clock())
            if lease is None or not lease.holder.endswith(f":{run_id}"):
                doc = {**doc, "outcome": str(Outcome.FAILED), "error": ABANDONED}
        return doc

    async def last_run(self, operation: str) -> dict[str, Any] | None:
        return await self.store.get(LAST_RUN_KEY.format(operation=operation))

    async def unfinished_run(self, operation: str, last: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The operation's newest run if it ended without finishing its record (its process was
        killed, or stopped past its grace) and started after ``last`` (the last run,
        :meth:`last_run`) ended: ``{run_id, started, outcome, error}``, the outcome as its document
        reads (failed, "ended without finishing"; or what it recorded before it was killed); None
        otherwise, also while it still runs (it holds the lock) and once its document is pruned."""
        started = await self.store.get(STARTED_RUN_KEY.format(operation=operation))
        run_id = (started or {}).get("run_id")
        if not isinstance(run_id, str) or (last is not None and last.get("run_id") == run_id):
            return None
        try:
            began = stored_time(started.get("at") if started else None, f"{STARTED_RUN_KEY} at")
            ended = stored_time(last.get("at"), f"{LAST_RUN_KEY} at") if last else None
        except ValueError:  # a damaged document says nothing about a killed run
            return None
        if began is None or (ended is not None and began < ended):
            return None
        doc = await self.run_document(run_id)
        if doc is None or doc.get("outcome") == str(Outcome.RUNNING):
            return None
        return {"run_id": run_id, "started": began.isoformat(), "outcome": str(doc.get("outcome")),
                "error": doc.get("error")}

    # --- internals -------------------------------------------------------------------------
    async def _keep_lease(self, held: list[Lease], stop: asyncio.Event) -> None:
        """Renew the lease while a long run (ARM operations take minutes) is under way; ``held[0]``
        is always the newest lease, so the run releases the one the store knows. Returns when
        ``stop`` is set; a store error is logged and the renewal retried at the next interval."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(1.0, self.lock_ttl.total_seconds() / 3))
            if stop.is_set():
                return
            try:
                renewed = await self.store.renew_lock(held[0], self.lock_ttl, self.clock())
            except StoreError as exc:
                log.warning("could not renew the %s lock (retried): %s", held[0].name, exc)
                continue
            if renewed is None:
                log.error("lost the %s lock; the run goes on but another may start", held[0].name)
                return
            held[0] = renewed

    async def _finish(self, record: RunRecord) -> RunRecord:
        record.finished = self.clock()
        entry = record.to_json()
        entry["at"] = record.finished.isoformat()
        entry["kind"] = "run"
        try:
            await self.store.put(RUN_KEY.format(run_id=record.run_id), record.to_json())
            await self.store.put(LAST_RUN_KEY.format(operation=record.operation), {
                "run_id": record.run_id, "at": entry["at"], "trigger": record.trigger,
                "actor": record.actor, "outcome": str(record.outcome),
                "plan_id": entry["plan_id"], "counts": record.plan.counts() if record.plan else {},
                "result_counts": record.result_counts(),
                "error": record.error, "refusal": list(record.refusal),
            })
        finally:  # the audit entry is the record of what was done: written even if those fail
            # and even if the run is cancelled meanwhile (the host stopping): the append goes on to
            # its end, then the cancellation does (run() writes no entry once _finish has begun)
            append = asyncio.ensure_future(self._audit(entry))
            try:
                await asyncio.shield(append)
            except asyncio.CancelledError:
                if not append.done():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(append)
                raise
        await self._prune_runs()
        return record

    async def _audit(self, entry: dict[str, Any]) -> None:
        await self.store.append_audit(entry)

    async def _prune_runs(self) -> None:
        """About once a day, delete run documents and refused plans older than ``run_retention``
        (the audit log keeps every run and every refusal). Never fails the run that triggers it."""
        now = self.clock()
        if self.run_retention is None or (self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY):
            return
        try:
            mark = await self.store.get(PRUNE_KEY)
            try:  # naive means UTC, as in every document
                last = stored_time(mark.get("at"), PRUNE_KEY) if mark else None
            except ValueError:  # a damaged mark is no mark: this instance prunes and writes it anew
                last = None
            # more than a day ahead of this clock: written by a clock that was wrong then (before
            # NTP fixed it), no mark, or pruning would stop until the wall clock caught up with it
            if last is not None and abs(now - last) < PRUNE_EVERY:
                self._pruned_at = last  # another instance did it
                return
            await self.store.put(PRUNE_KEY, {"at": now.isoformat()})
            self._pruned_at = now
            deleted = await self.store.prune(RUN_KEY.format(run_id=""), now - self.run_retention)
            # and refused plans not refused again since (a plan refused anew is written anew): an
            # approval that old would re-observe a changed hub; it is refused as an unknown plan
            refused = await self.store.prune(REFUSED_KEY.format(plan_id=""), now - self.run_retention)
            log.info("pruned %d run document(s) and %d refused plan(s) older than %s", deleted, refused,
                     self.run_retention)
        except (StoreError, ValueError) as exc:
            log.warning("pruning old run documents failed (the next day retries): %s", exc)


THROTTLE_KEY = "audit-throttle/{name}"


class AuditThrottle:
    """At most one audit entry per ``interval`` for events anonymous callers cause as often as they
    like (refused Graph webhook posts), across every process that shares the state store.

    Each process counts its events; when its own interval has passed it claims the shared one with a
    conditional write (one store round a minute per process, however many events) and, if the claim
    holds, writes one entry with ``refused_posts`` (its events since its previous entry, ``since``).
    A process that loses the claim keeps its count for its next entry: no event goes uncounted but
    those of a process that stops before its turn.
    """

    def __init__(self, store: StateStore, name: str, interval: timedelta) -> None:
        self.store = store
        self.key = THROTTLE_KEY.format(name=name)
        self.interval = interval
        self.tried: datetime | None = None  # this process's last claim
        self.written: datetime | None = None  # this process's last entry
        self.held = 0  # events since ``written`` that no entry counts yet

    async def record(self, entry: Mapping[str, Any], now: datetime) -> bool:
        """Count one event; write ``entry`` (with the count) when this process's turn is due."""
        self.held += 1
        if self.tried is not None and now - self.tried < self.interval:
            return False
        self.tried = now
        current = await self.store.get_with_etag(self.key)
        if current is not None:
            try:
                last = stored_time(current[0].get("at"), self.key)
            except ValueError:  # a damaged claim is no claim
                last = None
            # more than an interval ahead of this clock: claimed by a clock that was wrong then (a
            # host before NTP fixed it), no claim, or every entry would wait for the clock to catch up
            if last is not None and abs(now - last) < self.interval:
                return False
        try:
            await self.store.put(self.key, {"at": now.isoformat()}, if_match=current[1] if current else "")
        except ConflictError:  # another process claimed this interval
            return False
        posts, since = self.held, self.written
        # counted as written once written: an append that fails leaves them to the next entry
        await self.store.append_audit({**entry, "refused_posts": posts,
                                       "since": since.isoformat() if since else None})
        self.held, self.written = self.held - posts, now  # events during the append stay held
        return True


def _pause_who(doc: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    by, at = (doc or {}).get("by"), (doc or {}).get("at")
    return (str(by) if by is not None else None, str(at) if at is not None else None)


def log_outcome(record: RunRecord) -> None:
    """The one log line of a run a host started (a timer, a queued or in-process API run, a Graph
    notification): its operation, id, trigger and outcome, with what it did, why it was refused or
    what failed. A refused or failed run is a WARNING; the same failure every minute stays one
    short line a run, no traceback."""
    head = f"{record.operation} run {record.run_id} ({record.trigger} by {record.actor}): {record.outcome}"
    failed = [r for r in record.results if r.status is Status.FAILED]
    if record.outcome is Outcome.FAILED:
        why = record.error or (f"{len(failed)} action(s) failed, first {failed[0].action.describe()}: "
                               f"{failed[0].detail}" if failed else "")
        log.warning("%s: %s", head, why or "no error was recorded")
    elif record.outcome is Outcome.REFUSED:
        log.warning("%s: %s%s", head, "; ".join(record.refusal),
                    f" (an admin can approve it: {record.approval})" if record.approval else "")
    else:
        counts = record.result_counts() if record.results else (record.plan.counts() if record.plan else {})
        done = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to do"
        log.info("%s: %s", head, done)


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def approval_hint(plan: Plan, cli: str = "hubpilot") -> str:
    """What an admin does with a refused plan they have checked: the command (``cli``: the command
    line that reaches the run's state, e.g. ``hubpilot --config /etc/hubpilot.toml``) or the API call."""
    return f"{cli} approve {plan.id}, or POST /api/v1/plans/{plan.id}/approve"
