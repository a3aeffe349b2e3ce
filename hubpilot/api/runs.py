"""Starting runs over HTTP: a run outlives its request.

``start_run`` checks the operation's lock (so a second POST gets its 409 at once), writes a
``queued`` run document (so ``GET /runs/{id}`` never 404s) and then either starts the run as a
task of this process (``api.run_mode = "inprocess"``: ``hubpilot serve``) or puts a run request
on a Storage queue for the queue-triggered function (``"queue"``: Azure Functions, where work
after the response may be frozen). Either way the run itself is :meth:`Runner.run`, the same
call the CLI and the timers make, so it leaves the same audit entry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hubpilot.loop import RUN_KEY, LockHeld, Outcome, RunRecord, log_outcome, new_run_id, stored_time
from hubpilot.ports.store import ConflictError, Lease
from hubpilot.wiring import OPERATIONS, Context, NotConfigured, UnknownOperation

log = logging.getLogger(__name__)

QUEUED = "queued"
QUEUE_NAME = "hubpilot-runs"
"""The Storage queue of run requests (the queue trigger in functions/timers.py reads it)."""
QUEUE_CONNECTION_SETTING = "AzureWebJobsStorage"
"""The app setting the queue trigger takes its connection from."""
FINAL_OUTCOMES = frozenset({str(o) for o in Outcome if o not in (Outcome.RUNNING,)})


@dataclass(frozen=True)
class RunRequest:
    """What the queue carries: enough to run exactly the requested run under its id."""

    run_id: str
    operation: str
    trigger: str
    actor: str
    approve: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "operation": self.operation, "trigger": self.trigger,
                "actor": self.actor, "approve": self.approve}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRequest:
        try:
            req = cls(str(data["run_id"]), str(data["operation"]), str(data["trigger"]),
                      str(data["actor"]), str(data["approve"]) if data.get("approve") else None)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a run request needs run_id, operation, trigger and actor: {exc}") from exc
        if req.operation not in OPERATIONS:
            raise ValueError(f"unknown operation {req.operation!r} in run request")
        return req


# Runs this process started, by run id (so ?wait can await them and shutdown can drain them).
_tasks: dict[str, asyncio.Task[RunRecord | None]] = {}

PENDING_KEY = "pending/{operation}"


async def check_lock(ctx: Context, operation: str) -> None:
    """Raise LockHeld when a run of ``operation`` holds the lock."""
    lease = await ctx.store.read_lock(operation, ctx.clock())
    if lease is not None:
        raise LockHeld(operation, lease)


async def _reserve(ctx: Context, req: RunRequest) -> None:
    """Reserve the operation for a run that has not taken the lock yet (queued or starting).

    A conditional write in the state store, so that of two POSTs racing (in one process or in
    several Functions instances) exactly one gets its 202 and the other its 409. A reservation
    expires after the lock's time to live, so a lost queue message cannot block the operation.
    """
    key = PENDING_KEY.format(operation=req.operation)
    now = ctx.clock()
    until = now + ctx.runner.lock_ttl
    doc = {"run_id": req.run_id, "holder": f"{req.actor}:{req.run_id}", "until": until.isoformat()}
    current = await ctx.store.get_with_etag(key)
    if_match = ""
    if current is not None:
        existing, etag = current
        held = _pending_lease(req.operation, existing, now)
        if held is not None:
            raise LockHeld(req.operation, held)
        if_match = etag
    try:
        await ctx.store.put(key, doc, if_match=if_match)
    except ConflictError:
        raise LockHeld(req.operation, await ctx.store.read_lock(req.operation, now)) from None


async def operation_status(ctx: Context, operation: str, now: datetime) -> dict[str, Any]:
    """What GET /status and ``hubpilot status`` show of one operation: its pause flag, the lock (or a
    queued run's reservation, which holds the operation before the run takes the lock: 409 to a
    POST), the last run and a later run that ended without finishing its record."""
    lease, paused, last = await asyncio.gather(
        ctx.store.read_lock(operation, now), ctx.runner.is_paused(operation), ctx.runner.last_run(operation))
    if lease is None:
        lease = await reservation(ctx, operation, now)
    return {"paused": paused,
            "lock": {"holder": lease.holder, "expires_at": lease.expires_at.isoformat()} if lease else None,
            "last_run": last, "unfinished_run": await ctx.runner.unfinished_run(operation, last)}


async def reservation(ctx: Context, operation: str, now: datetime) -> Lease | None:
    """The unexpired reservation of ``operation`` by a run that has not taken its lock yet (a
    queued run), as the lease :func:`_reserve` refuses a second run with; None when there is none."""
    doc = await ctx.store.get(PENDING_KEY.format(operation=operation))
    return None if doc is None else _pending_lease(operation, doc, now)


def _pending_lease(operation: str, doc: Mapping[str, Any], now: datetime) -> Lease | None:
    """The reservation document ``doc`` as the lease it holds, None when it has expired or is
    damaged (no time in ``until``: overwritten by the next reservation)."""
    try:  # naive means UTC, as in every document
        until = stored_time(doc.get("until"), f"{PENDING_KEY.format(operation=operation)} until")
    except ValueError:
        return None
    if until is None:
        return None
    return Lease(operation, str(doc.get("holder", "")), until) if until > now else None


async def _release(ctx: Context, req: RunRequest) -> None:
    key = PENDING_KEY.format(operation=req.operation)
    try:
        current = await ctx.store.get_with_etag(key)
        if current is not None and current[0].get("run_id") == req.run_id:
            # only the version read: a newer run's reservation written since is theirs
            await ctx.store.delete(key, if_match=current[1])
    except ConflictError:
        pass
    except Exception:  # it expires on its own
        log.warning("could not release the reservation of %s run %s", req.operation, req.run_id)


def _queued_doc(ctx: Context, req: RunRequest) -> dict[str, Any]:
    return {
        "run_id": req.run_id, "operation": req.operation, "trigger": req.trigger, "actor": req.actor,
        "started": ctx.clock().isoformat(), "finished": None, "outcome": QUEUED, "dry_run": False,
        "plan_id": None, "plan": None, "refusal": [], "results": [], "result_counts": {},
        "error": None, "approved_plan": req.approve,
    }


async def start_run(ctx: Context, operation: str, *, trigger: str, actor: str,
                    approve: str | None = None) -> str:
    """Start a run in the background and return its id.

    Raises :class:`LockHeld` when the operation's lock is held (checked first, so the caller can
    answer 409 at once), :class:`UnknownOperation` for an operation hubpilot does not know, and
    :class:`QueueUnavailable` when the run request cannot be queued (``api.run_mode = "queue"``).
    """
    if operation not in OPERATIONS and operation not in ctx.factories:
        raise UnknownOperation(operation)
    await check_lock(ctx, operation)
    req = RunRequest(new_run_id(), operation, trigger, actor, approve)
    await _reserve(ctx, req)
    try:
        await ctx.store.put(RUN_KEY.format(run_id=req.run_id), _queued_doc(ctx, req))
        if ctx.settings.api.run_mode == "queue":
            try:
                await enqueue(ctx, req)
            except Exception as exc:
                from hubpilot.adapters.store_azure import redacted  # its URL can carry a signature

                log.error("could not put %s run %s on the %s queue: %s", operation, req.run_id, QUEUE_NAME,
                          redacted(str(exc)))
                await _forget(ctx, req)
                raise QueueUnavailable(_queue_problem(exc)) from exc
            return req.run_id
    except BaseException:
        await _release(ctx, req)
        raise
    task = asyncio.create_task(execute_run(ctx, req), name=f"hubpilot-{operation}-{req.run_id}")
    _tasks[req.run_id] = task
    task.add_done_callback(lambda t: _tasks.pop(req.run_id, None))
    return req.run_id


class QueueUnavailable(Exception):
    """The run request could not be put on the run queue: the run was not started (and its queued
    document is gone, so nothing reads "queued" for a run nobody will run). ``problem``: what went
    wrong, for the caller: the missing setting (hubpilot's own text), else the error's type and
    Storage error code (never the SDK's message, which can carry the account's URL)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"the run request could not be put on the {QUEUE_NAME} queue ({problem}); the run was "
                         "not started: retry, and see the log if it persists")


def _queue_problem(exc: Exception) -> str:
    if isinstance(exc, RuntimeError):
        return str(exc)
    code = getattr(exc, "error_code", None)
    return type(exc).__name__ + (f" {getattr(code, 'value', code)}" if code else "")


async def _forget(ctx: Context, req: RunRequest) -> None:
    try:
        await ctx.store.delete(RUN_KEY.format(run_id=req.run_id))
    except Exception:
        log.warning("could not delete the queued document of run %s, which was not started", req.run_id)


async def execute_run(ctx: Context, req: RunRequest) -> RunRecord | None:
    """Run a requested run under its id (in-process task or queue trigger). Never raises.

    A run that finds the lock taken (another process started one in between) is recorded as
    failed with the holder, so ``GET /runs/{id}`` tells what happened. A request whose run has
    already finished (the queue delivers at least once) is not run again: its record is returned;
    one whose run still holds the lock (delivered again while it runs) is ignored, its running
    document left as it is.
    """
    try:
        # as stored: a run killed mid-way ("running", its lock gone) is delivered again to be run
        done = await ctx.store.get(RUN_KEY.format(run_id=req.run_id))
        if done is not None and done.get("outcome") in FINAL_OUTCOMES:
            log.warning("%s run %s has already finished; a repeated request is ignored",
                        req.operation, req.run_id)
            return RunRecord.from_json(done)
        cap = ctx.capability(req.operation)
        if req.approve is not None:
            record = await ctx.runner.approve(cap, req.approve, actor=req.actor, run_id=req.run_id)
        else:
            record = await ctx.runner.run(cap, trigger=req.trigger, actor=req.actor, run_id=req.run_id)
        log_outcome(record)
        return record
    except LockHeld as exc:
        if exc.lease is not None and exc.lease.holder == f"{req.actor}:{req.run_id}":
            # this very run holds the lock: the request was delivered again while it runs (or
            # before its killed run's lock expired); its running document is left as it is
            log.warning("%s run %s is already running; a repeated request is ignored",
                        req.operation, req.run_id)
            return None
        await _record_unstarted(ctx, req, f"LockHeld: {exc}")
    except NotConfigured as exc:  # the settings' answer, not a fault: no traceback
        log.warning("%s run %s could not run: %s", req.operation, req.run_id, exc)
        await _record_unstarted(ctx, req, f"NotConfigured: {exc}")
    except Exception as exc:
        log.exception("%s run %s could not run", req.operation, req.run_id)
        await _record_unstarted(ctx, req, f"{type(exc).__name__}: {exc}")
    finally:
        await _release(ctx, req)
    return None


class RunNotRecorded(Exception):
    """A queued run request's delivery left no trace: the state store failed before the run
    started, and recording that failed too. The queue trigger raises it, so that the host
    delivers the message again rather than lose the run."""


async def execute_queued(ctx: Context, req: RunRequest) -> RunRecord | None:
    """:func:`execute_run` for a queue trigger. A delivery after which the run's document still
    reads as the API queued it (or cannot be read) raises :class:`RunNotRecorded`: nothing ran and
    nothing says why, so the message must not be consumed; the host delivers it again after its
    visibility timeout, up to ``maxDequeueCount`` times, then moves it to the poison queue. A run
    that failed or could not start and says so (locked out, not configured) is consumed."""
    record = await execute_run(ctx, req)
    if record is not None:
        return record
    try:
        doc = await ctx.store.get(RUN_KEY.format(run_id=req.run_id))
    except Exception as exc:
        raise RunNotRecorded(f"{req.operation} run {req.run_id} did not start and the state store cannot be "
                             f"read ({exc}); the request is delivered again") from exc
    if doc is not None and doc.get("outcome") == QUEUED:
        raise RunNotRecorded(f"{req.operation} run {req.run_id} did not start and could not be recorded "
                             "(see the errors above); the request is delivered again")
    return None


async def _record_unstarted(ctx: Context, req: RunRequest, error: str) -> None:
    """Record a run that could not start as failed: its document, and its audit entry (the audit
    log keeps every run; run documents are pruned). A run that got under way and raised after its
    audit entry (its finished document, or the last-run document after it, could not be written)
    did start: its document is written from that entry, so it says what the run did, as the audit
    log does, and no second entry is added."""
    doc = _queued_doc(ctx, req)
    try:
        existing = await ctx.store.get(RUN_KEY.format(run_id=req.run_id))
    except Exception:
        log.exception("could not read the document of run %s", req.run_id)
        existing = None
    if existing:
        doc["started"] = existing.get("started", doc["started"])
    audited: dict[str, Any] | None = None
    checked = False
    try:
        audited = await _audit_entry(ctx, req, doc["started"])
        checked = True
    except Exception:
        log.exception("could not read the audit log for run %s", req.run_id)
    if audited is not None:
        doc = {k: v for k, v in audited.items() if k not in ("at", "kind", "id")}
    else:
        doc.update({"outcome": str(Outcome.FAILED), "finished": ctx.clock().isoformat(), "error": error})
    try:
        await ctx.store.put(RUN_KEY.format(run_id=req.run_id), doc)
    except Exception:
        log.exception("could not record run %s", req.run_id)
    if checked and audited is None:
        try:
            await ctx.store.append_audit({**doc, "at": doc["finished"], "kind": "run"})
        except Exception:
            log.exception("could not write the audit entry of run %s", req.run_id)


AUDIT_PAGES_CHECKED = 10


async def _audit_entry(ctx: Context, req: RunRequest, started: Any) -> dict[str, Any] | None:
    """The audit log's entry of this run, if it has one already: a run that got under way and then
    raised (its run document could not be written) wrote its entry before the error."""
    try:
        since = stored_time(started, "started")
    except ValueError:
        since = None
    cursor: str | None = None
    for _ in range(AUDIT_PAGES_CHECKED):
        entries, cursor = await ctx.store.read_audit(since=since, operation=req.operation, limit=100,
                                                     cursor=cursor)
        for e in entries:
            if e.get("run_id") == req.run_id and e.get("kind") == "run":
                return e
        if cursor is None:
            break
    return None


async def read_run(ctx: Context, run_id: str) -> dict[str, Any] | None:
    """The run document: queued, running or finished (a killed run reads as failed)."""
    return await ctx.runner.run_document(run_id)


async def wait_for_run(ctx: Context, run_id: str, seconds: float) -> dict[str, Any] | None:
    """Wait up to ``seconds`` for the run to finish; return its document either way."""
    if seconds > 0:
        task = _tasks.get(run_id)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), seconds)
            except TimeoutError:
                pass
        elif ctx.settings.api.run_mode == "queue":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while loop.time() < deadline:
                doc = await read_run(ctx, run_id)
                if doc and doc.get("outcome") in FINAL_OUTCOMES:
                    return doc
                await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
    return await read_run(ctx, run_id)


# --- the Storage queue (run_mode = "queue") -------------------------------------------------------

@dataclass(frozen=True)
class QueueTarget:
    """Where run requests go: a connection string, or a queue service URL reached with an Entra
    token (identity-based, as the Functions host's own ``AzureWebJobsStorage__*`` settings)."""

    connection_string: str | None = field(default=None, repr=False)  # holds the account key: never in a repr
    account_url: str | None = None
    client_id: str | None = None
    managed_identity: bool = False
    tenant_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)  # a service principal's: never in a repr
    resource_id: str | None = None  # a user-assigned managed identity's, instead of its client id


IDENTITY_PREFIX = QUEUE_CONNECTION_SETTING + "__"


def queue_target(ctx: Context, environ: Mapping[str, str] | None = None) -> QueueTarget:
    """api.queue_connection_string, else the app setting AzureWebJobsStorage, else its
    identity-based form (``AzureWebJobsStorage__queueServiceUri`` or ``__accountName``, with
    ``__credential = managedidentity`` and ``__clientId`` or ``__managedIdentityResourceId``, or a
    service principal's ``__tenantId``, ``__clientId`` and ``__clientSecret``), else
    state.azure_connection_string."""
    env = os.environ if environ is None else environ
    api, state = ctx.settings.api, ctx.settings.state
    if api.queue_connection_string is not None:
        return QueueTarget(connection_string=api.queue_connection_string.get_secret_value())
    if env.get(QUEUE_CONNECTION_SETTING):
        return QueueTarget(connection_string=env[QUEUE_CONNECTION_SETTING])
    uri = env.get(IDENTITY_PREFIX + "queueServiceUri")
    name = env.get(IDENTITY_PREFIX + "accountName")
    if uri or name:
        if uri and not uri.startswith("https://"):
            raise RuntimeError(f"the app setting {IDENTITY_PREFIX}queueServiceUri must be an https:// URL")
        return QueueTarget(
            account_url=(uri or f"https://{name}.queue.{state.azure_endpoint_suffix}").rstrip("/"),
            client_id=env.get(IDENTITY_PREFIX + "clientId") or None,
            managed_identity=env.get(IDENTITY_PREFIX + "credential", "").lower() == "managedidentity",
            tenant_id=env.get(IDENTITY_PREFIX + "tenantId") or None,
            client_secret=env.get(IDENTITY_PREFIX + "clientSecret") or None,
            resource_id=env.get(IDENTITY_PREFIX + "managedIdentityResourceId") or None,
        )
    if state.azure_connection_string is not None:
        return QueueTarget(connection_string=state.azure_connection_string.get_secret_value())
    raise RuntimeError(
        "api.run_mode is 'queue' but no queue connection is configured: set "
        f"api.queue_connection_string, the app setting {QUEUE_CONNECTION_SETTING} (or its "
        f"identity-based form {IDENTITY_PREFIX}accountName) or state.azure_connection_string"
    )


_QUEUE_ATTR = "_run_queue"
QUEUE_TOKEN_TIMEOUT = 10.0
"""Seconds a try of the run queue's token request may take (connect, and read)."""


def _identity_queue(ctx: Context, target: QueueTarget) -> Any:
    """One queue client per context for identity-based access (its token is cached and renewed
    by azure-core); closed with the context."""
    have = getattr(ctx, _QUEUE_ATTR, None)
    if have is not None:
        return have
    from azure.storage.queue import TextBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient

    from hubpilot.adapters.entra import build_credential

    # each token try bounded (azure-core's default: 300 s a try, while the admin's request waits)
    # the identity the host reads its queue as: a managed identity (by client id or resource id), a
    # service principal's secret (its authority: AZURE_AUTHORITY_HOST), else DefaultAzureCredential
    credential = build_credential("managed_identity" if target.managed_identity else "default",
                                  client_id=target.client_id, authority_host=None, timeout=QUEUE_TOKEN_TIMEOUT,
                                  tenant_id=target.tenant_id if target.client_secret else None,
                                  client_secret=target.client_secret,
                                  resource_id=target.resource_id)
    client = QueueClient(target.account_url or "", QUEUE_NAME, credential=credential,
                         message_encode_policy=TextBase64EncodePolicy())

    async def close() -> None:
        await client.close()
        await credential.close()

    setattr(ctx, _QUEUE_ATTR, client)
    ctx._closers.append(close)
    return client


async def enqueue(ctx: Context, req: RunRequest) -> None:
    """Put a run request on the run queue (base64, as the Functions queue trigger expects)."""
    from azure.storage.queue import TextBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient

    target = queue_target(ctx)
    if target.connection_string is None:
        await _send(_identity_queue(ctx, target), req)
        return
    async with QueueClient.from_connection_string(
        target.connection_string, QUEUE_NAME, message_encode_policy=TextBase64EncodePolicy(),
    ) as client:
        await _send(client, req)


async def _send(client: Any, req: RunRequest) -> None:
    from azure.core.exceptions import ResourceExistsError

    try:
        await client.create_queue()
    except ResourceExistsError:
        pass
    await client.send_message(json.dumps(req.to_json()))


def parse_queue_message(body: str | bytes) -> RunRequest:
    """A run request from a queue message body (already base64-decoded by the trigger)."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"a run request must be a JSON object: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a run request must be a JSON object")
    return RunRequest.from_json(data)


async def drain_tasks() -> None:
    """Wait for the runs this process started (server shutdown, tests)."""
    while _tasks:
        await asyncio.gather(*list(_tasks.values()), return_exceptions=True)


__all__ = ["QUEUED", "QueueUnavailable", "RunNotRecorded", "RunRecord", "RunRequest", "check_lock", "drain_tasks",
           "enqueue", "execute_queued", "execute_run", "parse_queue_message", "read_run", "start_run", "wait_for_run"]
