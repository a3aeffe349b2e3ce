"""The admin HTTP API as one FastAPI application, the same on every host.

Every endpoint but the health check authenticates the caller (see :mod:`hubpilot.api.auth`):
GET endpoints need ``reader``, everything that changes something needs ``admin``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hubpilot import __version__
from hubpilot.api import front, graph_routes, scale_routes
from hubpilot.api.auth import HEAD_SCOPE_KEY, Principal, require_role, shown_method, shown_path
from hubpilot.api.deps import ContextHolder, ContextSource, get_context
from hubpilot.api.runs import QueueUnavailable, operation_status, read_run, start_run, wait_for_run
from hubpilot.api.scheduling import configured_schedules, skip_reason
from hubpilot.audit import read_audit_about
from hubpilot.loop import LockHeld, Outcome, RunRecord, UnknownPlan, new_run_id
from hubpilot.ports.store import BadCursor, StoreError
from hubpilot.wiring import OPERATIONS, Context, NotConfigured, UnknownOperation

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
Operation = Literal["sync", "cull", "scale"]
RunOutcome = Literal["queued", "running", "planned", "applied", "refused", "failed", "paused"]

# --- response models --------------------------------------------------------------------------


class Problem(BaseModel):
    detail: str


class LockProblem(BaseModel):
    detail: str
    operation: str
    holder: str | None
    expires_at: str | None


class ActionOut(BaseModel):
    kind: str
    target: str
    phase: int
    params: dict[str, Any]
    reason: str


class PlanOut(BaseModel):
    id: str
    operation: str
    counts: dict[str, int]
    actions: list[ActionOut]
    notes: list[str]
    facts: dict[str, Any]


class ResultOut(BaseModel):
    action: ActionOut
    status: Literal["done", "noop", "pending", "failed", "skipped"]
    detail: str


class RunOut(BaseModel):
    run_id: str
    operation: str
    trigger: str
    actor: str
    started: str
    finished: str | None
    outcome: RunOutcome
    dry_run: bool
    plan_id: str | None
    plan: PlanOut | None
    refusal: list[str] = Field(
        description="Why the guard refused the plan (or the reasons an approval overrode)."
    )
    results: list[ResultOut]
    result_counts: dict[str, int]
    error: str | None
    approved_plan: str | None
    approval: str | None = Field(
        None, description="How an admin approves the refused plan (the command, with the settings file the "
        "run used, or the API call); null unless the run recorded a refused plan (never for a dry-run).")


class LockOut(BaseModel):
    holder: str
    expires_at: str


class LastRunOut(BaseModel):
    run_id: str
    at: str
    trigger: str
    actor: str
    outcome: str
    plan_id: str | None
    counts: dict[str, int]
    result_counts: dict[str, int]
    error: str | None = Field(None, description="Why the run failed, as in GET /runs/{id}; null when it did not "
                              "(and for runs recorded before this field).")
    refusal: list[str] = Field([], description="The guard's reasons a refused plan was not applied (approve it by "
                               "its id, see GET /runs/{id}); empty otherwise.")


class ScheduleOut(BaseModel):
    name: str
    expression: str = Field(description="The NCRONTAB expression this host fires it by.")
    app_setting: str | None = Field(description=(
        "The app setting (environment variable) that carries the expression; null when this host fires it at "
        "a time of its own whatever the setting says (the Functions app's Graph subscription manager: hourly)."))
    next_fire: str
    runs_operation: bool
    fired_here: bool | None = Field(description=(
        "Whether this host fires the schedule: true on the Functions app and on hubpilot serve, false on "
        "hubpilot serve with api.serve_schedules off (a Functions app on the same state store fires them, if "
        "there is one: this host cannot tell); null when not known."))
    skipped: str | None = Field(
        description="Why the settings skip every round of this schedule, naming the setting (e.g. 'scale.enabled "
        "is off'): its fire times come and nothing runs; null when its rounds run.")


class UnfinishedRunOut(BaseModel):
    run_id: str
    started: str
    outcome: str
    error: str | None


class OperationStatus(BaseModel):
    operation: str
    paused: bool
    lock: LockOut | None
    last_run: LastRunOut | None
    unfinished_run: UnfinishedRunOut | None = Field(None, description=(
        "The operation's newest run if it ended without finishing its record after the last run (its process "
        "was killed, or stopped past its grace): it wrote no last run; its outcome is 'failed' with the error "
        "'the run ended without finishing ...', or what it recorded before it was killed; GET /runs/{id} shows "
        "what it planned. Null otherwise, also while a run is under way (see lock)."))


class StatusOut(BaseModel):
    now: str
    version: str
    run_mode: str
    operations: list[OperationStatus]
    schedules: list[ScheduleOut]


class PauseOut(BaseModel):
    operation: str
    paused: bool
    changed: bool = Field(description="False: the operation was so already (who paused it and when are kept).")
    detail: str = Field(description="What happened, e.g. 'scale already paused by admin:ana since ...'; "
                                    "names an audit entry that could not be written for a change in force.")


class AuditPage(BaseModel):
    entries: list[dict[str, Any]]
    next_cursor: str | None
    scanned: int | None = Field(None, description="With user: the entries read for this page (at most 2000; "
                                "go on with next_cursor).")


class Health(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    detail: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, Check]


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Bad input; the detail names the parameter and the rule.",
        401: "No or invalid credentials.",
        403: "The caller lacks the role.",
        404: "No such run or plan.",
        409: "Another run of the operation holds its lock (see Retry-After).",
        503: "The state store (or, with api.run_mode = queue, the run queue) is unavailable.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        out[c] = {"description": text[c], "model": LockProblem if c == 409 else Problem}
    return out


AUTHED = (401, 403, 503)
reader = Depends(require_role("reader"))
admin = Depends(require_role("admin"))


# --- helpers ------------------------------------------------------------------------------------

def _run_out(doc: dict[str, Any]) -> dict[str, Any]:
    return RunOut.model_validate(doc).model_dump()


def _lock_response(exc: LockHeld, now: datetime) -> JSONResponse:
    lease = exc.lease
    retry = 5
    if lease is not None:
        retry = max(1, math.ceil((lease.expires_at - now).total_seconds()))
    body = LockProblem(
        detail=f"a {exc.operation} run is in progress; try again later",
        operation=exc.operation,
        holder=lease.holder if lease else None,
        expires_at=lease.expires_at.isoformat() if lease else None,
    )
    return JSONResponse(body.model_dump(), status_code=409, headers={"Retry-After": str(retry)})


def _wait_seconds(ctx: Context, wait: float) -> float:
    return min(wait, ctx.settings.api.wait_max_seconds)


async def _started(ctx: Context, run_id: str, wait: float, response: Response) -> dict[str, Any]:
    doc = await wait_for_run(ctx, run_id, _wait_seconds(ctx, wait))
    if doc is None:  # the queued document was written before; only a vanished store gets here
        raise HTTPException(503, "the run's record could not be read back from the state store")
    response.headers["Location"] = f"{PREFIX}/runs/{run_id}"
    final = doc.get("outcome") not in ("queued", "running")
    response.status_code = 200 if final else 202
    return _run_out(doc)


WaitQuery = Query(0.0, ge=0, le=200, description="Seconds to wait for the run to finish (bounded by "
                  "api.wait_max_seconds); 200 with the finished run, else 202.")
DryRunQuery = Query(False, description="Return the plan (200) at once; nothing is applied.")


MAX_BODY_BYTES = front.MAX_BODY_BYTES
"""Largest request body read (413 above): the API's bodies are small, and the Graph webhooks
are anonymous, so an unbounded body would be read into memory for anyone who sends one."""


ONE_CONTENT_TYPE = ("send one Content-Type header (this request has more than one, or one holding several "
                    "types separated by ',')")
_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _content_types(scope: Any) -> int:
    """How many Content-Types the request names: uvicorn hands the app each header (FastAPI would
    read the first), the Functions host joins repeated ones with ',' (a media type holds none)."""
    values = [v for k, v in scope.get("headers") or () if bytes(k).lower() == b"content-type"]
    return len(values) + sum(_QUOTED.sub(b"", bytes(v)).count(b",") for v in values)


class _BodyLimit:
    """ASGI middleware: 413 for a body above ``limit`` bytes (declared or streamed), on every route
    (and 400 for a request naming more than one Content-Type, which the hosts hand on differently).

    A body without Content-Length (chunked) is read here first, up to the limit: a route that
    never reads its body (``POST /sync``) would otherwise act on a request it should refuse. Either
    way no more than ``limit`` bytes (and one chunk) are read. The hosts set no limit of their own
    that hubpilot relies on (uvicorn none, the Functions host about 100 MB)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _content_types(scope) > 1:
            await JSONResponse({"detail": ONE_CONTENT_TYPE}, status_code=400)(scope, receive, send)
            return
        too_large = f"the request body is larger than {self.limit} bytes"
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": too_large}, status_code=413)(scope, receive, send)
            return
        seen = 0
        read: list[Any] = []  # messages read ahead of the app, handed to it first
        if not declared.isdigit():
            while True:
                message = await receive()
                read.append(message)
                if message["type"] != "http.request":
                    break
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    await JSONResponse({"detail": too_large}, status_code=413)(scope, receive, send)
                    return
                if not message.get("more_body"):
                    break

        async def limited() -> Any:
            nonlocal seen
            if read:
                return read.pop(0)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, too_large)  # answered by the app's exception handling
            return message

        await self.app(scope, limited, send)


SECURITY_HEADERS = front.SECURITY_HEADERS


class _UnexpectedErrors:
    """ASGI middleware: an exception no handler of the app answers becomes a JSON 500 (inside
    :class:`_SecurityHeaders`, so it carries them), the same on every host. Without it uvicorn
    sent Starlette's plain-text 500 and the Functions function raised (the host's bare 500). The
    body says what failed in general terms and gives a correlation id; the log holds the id with
    the traceback. Neither the traceback nor the exception's text (which may quote stored data or
    settings) reaches the caller. An exception after the answer began is left to the host."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            method = "HEAD" if scope.get(HEAD_SCOPE_KEY) else scope.get("method", "?")
            path = scope.get("path", "?")
            shown = f"{method} {path}".encode("unicode_escape").decode("ascii")[:300]
            correlation = uuid.uuid4().hex
            log.exception("unexpected error on %s (correlation id %s)", shown, correlation)
            if started:
                raise
            body = {"detail": f"an unexpected error stopped {shown}; the log has its traceback under "
                              f"correlation id {correlation}",
                    "correlation_id": correlation}
            await JSONResponse(body, status_code=500)(scope, receive, send)


class _SecurityHeaders:
    """ASGI middleware: adds :data:`SECURITY_HEADERS` to every response it does not already carry."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                have = {bytes(k).lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class _HeadAsGet:
    """ASGI middleware: HEAD wherever GET is answered (RFC 9110 9.3.2; monitoring probes use it).

    FastAPI's routes take only the methods they list (unlike Starlette's, which add HEAD to GET):
    every GET route answered HEAD with 405. A HEAD request is handed to the app as its GET (the
    same route, auth and status, the same headers, Content-Length included) and the body is not
    sent, on every host (uvicorn drops a HEAD's body itself; the Functions worker would hand it to
    the host). A route without GET answers HEAD 405, as it answers GET. A 405 that allows GET
    lists HEAD in its ``Allow`` too. The OpenAPI document lists the GET operations alone."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"

        async def answer(message: Any) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 405:
                message = {**message, "headers": [_with_head(k, v) for k, v in message.get("headers") or ()]}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        if head:
            scope = {**scope, "method": "GET", HEAD_SCOPE_KEY: True}
        await self.app(scope, receive, answer)


def _with_head(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """An ``Allow`` header that lists GET lists HEAD too."""
    if bytes(name).lower() != b"allow":
        return name, value
    methods = [m.strip() for m in bytes(value).split(b",")]
    if b"GET" in methods and b"HEAD" not in methods:
        value = bytes(value) + b", HEAD"
    return name, value


# --- the app ------------------------------------------------------------------------------------

def create_app(context: ContextSource) -> FastAPI:
    """The admin API. ``context`` is a Context, or a callable that builds one on first use."""
    app = FastAPI(
        title="hubpilot admin API",
        version=__version__,
        description="Start and inspect sync, cull and scale runs; pause operations; read the audit log. "
        "Every GET operation also answers HEAD: the same status and headers, no body.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # no redirect from a path with a trailing slash: its Location would be absolute, built from
        # the scheme each host believes (uvicorn trusts X-Forwarded-Proto from a local proxy, the
        # Functions host's URL can say http behind the platform's TLS), and a client following it
        # re-sends its token; the path without the slash is the only one, on every host (404)
        redirect_slashes=False,
    )
    app.add_middleware(_BodyLimit)
    app.add_middleware(_UnexpectedErrors)  # an unexpected error is a JSON 500 ...
    app.add_middleware(_SecurityHeaders)  # ... with these, as the body limit's 413
    app.add_middleware(_HeadAsGet)  # outermost: every answer to HEAD goes without its body
    app.state.context_holder = ContextHolder(context)
    if isinstance(context, Context):
        app.state.context = context

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("state store error on %s %s: %s", shown_method(request), shown_path(request), exc)
        return JSONResponse({"detail": f"the state store is unavailable: {type(exc).__name__}"},
                            status_code=503)

    @app.exception_handler(QueueUnavailable)
    async def queue_unavailable(request: Request, exc: QueueUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a JSON body it cannot decode "There was an error parsing the body": say
        # what is wrong and what to send, as for a body that is not JSON at all (below)
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
            return JSONResponse({"detail": f"the body is not valid JSON: it is not UTF-8 ({cause.reason} at byte "
                                 f"{cause.start}); send the JSON encoded as UTF-8"}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> JSONResponse:
        for e in exc.errors():  # the body is not JSON at all: 400, as the OpenAPI document says
            if e.get("type") == "json_invalid":
                where = e.get("ctx", {}).get("error", "")
                return JSONResponse({"detail": f"the body is not valid JSON{': ' + where if where else ''}"},
                                    status_code=400)
            if tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes | bytearray):
                return JSONResponse({"detail": "the body must be JSON sent with Content-Type: application/json "
                                     f"(got {request.headers.get('content-type') or 'no Content-Type'})"},
                                    status_code=400)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors
        )
        return JSONResponse({"detail": errors, "message": f"invalid request: {summary}"}, status_code=422)

    api = APIRouter(prefix=PREFIX)

    @api.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (no auth)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", response_model=Ready, tags=["health"], summary="Readiness: config, state store, hub",
             responses={**_responses(*AUTHED), 503: {"model": Ready, "description": "Not ready."}})
    async def readyz(response: Response, ctx: Context = Depends(get_context),
                     _: Principal = reader) -> dict[str, Any]:
        checks = await readiness(ctx)
        ok = all(c["ok"] for c in checks.values())
        response.status_code = 200 if ok else 503
        return {"ready": ok, "checks": checks}

    def add_start(op: str) -> None:
        @api.post(
            f"/{op}", response_model=RunOut, status_code=202, tags=["runs"],
            summary=f"Start a {op} run (202 + Location), or ?dry_run=true for its plan (200)",
            responses={200: {"model": RunOut,
                             "description": "Dry-run plan, or the run finished within ?wait."},
                       **_responses(409, *AUTHED)},
            operation_id=f"start_{op}",
        )
        async def start(response: Response, dry_run: bool = DryRunQuery, wait: float = WaitQuery,
                        ctx: Context = Depends(get_context), who: Principal = admin) -> Any:
            if dry_run:
                response.status_code = 200
                return _run_out((await _dry_run(ctx, op, who.actor)).to_json())
            try:
                run_id = await start_run(ctx, op, trigger="api", actor=who.actor)
            except LockHeld as exc:
                return _lock_response(exc, ctx.clock())
            return await _started(ctx, run_id, wait, response)

    for op in OPERATIONS:
        add_start(op)

    @api.get("/runs/{run_id}", response_model=RunOut, tags=["runs"], summary="A run: plan, outcomes, refusal",
             responses=_responses(404, *AUTHED))
    async def get_run(run_id: str = Path(pattern=r"^[0-9a-f]{32}$", description="Run id (32 hex digits)."),
                      ctx: Context = Depends(get_context), _: Principal = reader) -> Any:
        doc = await read_run(ctx, run_id)
        if doc is None:
            raise HTTPException(404, f"no run with id {run_id}")
        return _run_out(doc)

    @api.get("/plan/{operation}", response_model=RunOut, tags=["plans"],
             summary="The plan the next run would apply, with reasons, its id and any refusal",
             responses=_responses(*AUTHED))
    async def get_plan(operation: Operation, ctx: Context = Depends(get_context),
                       who: Principal = reader) -> Any:
        return _run_out((await _dry_run(ctx, operation, who.actor)).to_json())

    @api.post("/plans/{plan_id}/approve", response_model=RunOut, status_code=202, tags=["plans"],
              summary="Apply a refused plan if a fresh observation yields the same plan",
              responses={200: {"model": RunOut, "description": "The run finished within ?wait."},
                         **_responses(404, 409, *AUTHED)})
    async def approve(response: Response,
                      plan_id: str = Path(pattern=r"^[0-9a-f]{16}$", description="Plan id (16 hex digits)."),
                      wait: float = WaitQuery, ctx: Context = Depends(get_context),
                      who: Principal = admin) -> Any:
        try:
            operation = await ctx.runner.refused_plan_operation(plan_id)
            run_id = await start_run(ctx, operation, trigger="approval", actor=who.actor, approve=plan_id)
        except UnknownPlan as exc:
            raise HTTPException(404, str(exc)) from None
        except LockHeld as exc:
            return _lock_response(exc, ctx.clock())
        return await _started(ctx, run_id, wait, response)

    def add_pause(verb: Literal["pause", "resume"]) -> None:
        @api.post(f"/operations/{{operation}}/{verb}", response_model=PauseOut, tags=["operations"],
                  summary=f"{verb.capitalize()} an operation", responses=_responses(*AUTHED),
                  operation_id=f"{verb}_operation")
        async def pause(operation: Operation, ctx: Context = Depends(get_context),
                        who: Principal = admin) -> dict[str, Any]:
            state = await ctx.runner.set_paused(operation, verb == "pause", who.actor)
            return {"operation": operation, "paused": state.paused, "changed": state.changed,
                    "detail": state.describe()}

    add_pause("pause")
    add_pause("resume")

    @api.get("/status", response_model=StatusOut, tags=["status"],
             summary="Last runs, locks, pause flags, schedules and their next fire time",
             responses=_responses(*AUTHED))
    async def status(ctx: Context = Depends(get_context), _: Principal = reader) -> dict[str, Any]:
        now = ctx.clock()
        ops = []
        for op in OPERATIONS:
            st = await operation_status(ctx, op, now)
            last = st["last_run"]
            ops.append({"operation": op, **st,
                        "last_run": LastRunOut.model_validate(last).model_dump() if last else None})
        schedules = []
        for s in configured_schedules(ctx.settings):
            fixed = ctx.host_schedules.get(s.setting)
            fires = replace(s, expression=fixed) if fixed else s
            schedules.append({
                "name": s.name, "expression": fires.expression, "app_setting": None if fixed else s.app_setting(),
                "next_fire": fires.next_fire(now).isoformat(), "runs_operation": s.runnable,
                "fired_here": ctx.fires_schedules and s.name not in ctx.host_disabled,
                "skipped": skip_reason(ctx, s) or ctx.host_disabled.get(s.name)})
        return {"now": now.isoformat(), "version": __version__, "run_mode": ctx.settings.api.run_mode,
                "operations": ops, "schedules": schedules}

    @api.get("/audit", response_model=AuditPage, tags=["audit"], summary="Audit entries, newest first",
             responses=_responses(400, *AUTHED))
    async def audit(
        since: datetime | None = Query(None, description="Only entries at or after this time (ISO 8601; "
                                       "UTC when no offset is given)."),
        operation: str | None = Query(None, pattern=r"^[a-z][a-z0-9_-]{0,31}$",
                                      description="Only this operation."),
        limit: int = Query(100, ge=1, le=500, description="Entries per page."),
        cursor: str | None = Query(None, min_length=1, max_length=512, pattern=r"^[\x21-\x7e]+$",
                                   description="next_cursor of the previous page."),
        user: str | None = Query(None, min_length=1, max_length=255, pattern=r"^[^\s/]+$",
                                 description="Only entries that name this hub user (an action on them, a plan "
                                 "note about them): what happened to them and why. Reads at most 2000 entries "
                                 "a page: a page can hold fewer than limit and still have a next_cursor."),
        ctx: Context = Depends(get_context), _: Principal = reader,
    ) -> dict[str, Any]:
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        try:
            if user is not None:
                found, after, scanned = await read_audit_about(ctx.store, user, since=since, operation=operation,
                                                               limit=limit, cursor=cursor)
                return {"entries": found, "next_cursor": after, "scanned": scanned}
            entries, nxt = await ctx.store.read_audit(since=since, operation=operation, limit=limit,
                                                      cursor=cursor)
        except BadCursor:  # anything else (an entry that cannot be read) is hubpilot's: 500, the log has it
            raise HTTPException(400, "cursor: not a cursor this audit log returned") from None
        return {"entries": entries, "next_cursor": nxt}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(_: Principal = reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs(ctx: Context = Depends(get_context), _: Principal = reader) -> HTMLResponse:
        if not ctx.settings.api.docs:
            raise HTTPException(404, "the docs page is off (api.docs); the OpenAPI document is at "
                                f"{PREFIX}/openapi.json")
        return get_swagger_ui_html(openapi_url=f"{PREFIX}/openapi.json", title="hubpilot admin API")

    app.include_router(api)
    app.include_router(scale_routes.router, prefix=PREFIX)
    app.include_router(graph_routes.router, prefix=PREFIX)

    # Unversioned aliases of the health endpoints (load balancers, kubelet probes).
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)

    def openapi_document() -> dict[str, Any]:
        """FastAPI's document, plus 401/403 on every operation that needs credentials (and 400
        on every operation with a body, which FastAPI answers when the body is not JSON).

        Routers of other features declare their role through :func:`require_role` only; the
        answers that dependency gives belong in their documentation all the same.
        """
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for path, ops in doc.get("paths", {}).items():
                for op in ops.values():
                    if isinstance(op, dict) and op.get("security"):
                        responses = op.setdefault("responses", {})
                        responses.setdefault("401", {"description": "No or invalid credentials.",
                                                     "content": problem})
                        responses.setdefault("403", {"description": "The caller lacks the role.",
                                                     "content": problem})
                    if isinstance(op, dict) and op.get("requestBody"):
                        op.setdefault("responses", {}).setdefault(
                            "400", {"description": "The body is not valid JSON.", "content": problem})
                    if isinstance(op, dict) and (op.get("requestBody") or "/graph/" in path):
                        op.setdefault("responses", {}).setdefault(
                            "413", {"description": f"The body is larger than {MAX_BODY_BYTES} bytes.",
                                    "content": problem})
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi_document  # type: ignore[method-assign]

    @app.exception_handler(UnknownOperation)
    async def unknown_operation(request: Request, exc: UnknownOperation) -> JSONResponse:
        return JSONResponse({"detail": f"unknown operation {exc}"}, status_code=404)

    return app


async def _dry_run(ctx: Context, operation: str, actor: str) -> RunRecord:
    """The plan of ``operation``; one that is not configured (scale without a pool) fails, naming the
    settings to set, as a run of it does."""
    try:
        cap = ctx.capability(operation)
    except NotConfigured as exc:
        now = ctx.clock()
        return RunRecord(new_run_id(), operation, "api", actor, now, outcome=Outcome.FAILED, dry_run=True,
                         finished=now, error=f"NotConfigured: {exc}")
    return await ctx.runner.dry_run(cap, trigger="api", actor=actor)


async def readiness(ctx: Context) -> dict[str, dict[str, Any]]:
    """Config (the context was built), the state store and the hub, each with a short timeout."""
    timeout = ctx.settings.api.readiness_timeout_seconds
    checks: dict[str, dict[str, Any]] = {"config": {"ok": True, "detail": "settings are valid"}}

    async def store() -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                await ctx.store.get("readyz/probe")
            return {"ok": True, "detail": "reachable"}
        except TimeoutError:
            return {"ok": False, "detail": f"no answer within {timeout:g}s"}
        except Exception as exc:
            return {"ok": False, "detail": f"{type(exc).__name__}"}

    async def hub() -> dict[str, Any]:
        import httpx

        s = ctx.settings.hub
        # hub.api_url holds no user:password (the settings refuse one), so readers may see it whole
        url = base = str(s.api_url).rstrip("/")
        headers = {"Authorization": f"token {s.token.get_secret_value()}"}
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                root, who = await asyncio.gather(client.get(url + "/", headers=headers),
                                                 client.get(url + "/user", headers=headers))
        except httpx.HTTPError as exc:
            return {"ok": False, "detail": f"{base}: {type(exc).__name__}"}
        if root.status_code != 200:
            return {"ok": False, "detail": f"{base}/ answered {root.status_code}"}
        try:
            version = root.json().get("version", "?")
        except (ValueError, AttributeError):
            return {"ok": False, "detail": f"{base}/ did not answer JSON; is hub.api_url the hub's /hub/api?"}
        if who.status_code != 200:
            return {"ok": False, "detail": f"{base}/user answered {who.status_code}: "
                    "the hub does not accept hub.token"}
        try:  # the token's own scopes (JupyterHub 2+): none means no role is bound to the service
            scopes = who.json().get("scopes")
        except (ValueError, AttributeError):
            scopes = None
        if scopes == []:
            return {"ok": False, "detail": f"JupyterHub {version}: the hub grants the hubpilot service no scopes "
                    "(no role in load_roles names it): every run would be refused (docs/hub-scopes.md)"}
        return {"ok": True, "detail": f"JupyterHub {version}"}

    checks["state_store"], checks["hub"] = await asyncio.gather(store(), hub())
    return checks
