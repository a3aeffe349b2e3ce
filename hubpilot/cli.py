"""``hubpilot`` — the command line host.

Exit codes every command shares: 0 done (or nothing to do), 1 failed, 2 usage or configuration
error, 3 refused by the guard, 4 another run holds the lock, 5 paused.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from hubpilot.audit import about, read_audit_about
from hubpilot.loop import ExitCode, LockHeld, RunRecord, UnknownPlan
from hubpilot.ports.store import BadCursor, StoreError
from hubpilot.settings import Settings, SettingsError, defaults_note, load_settings, settings_reference
from hubpilot.wiring import OPERATIONS, Context, build_context


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


class _ProgressLine:
    """A one-line progress display on a terminal; silent when stderr is not one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.active = stream.isatty()
        self.shown = False

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.active or total < 2:
            return
        width = 30
        filled = int(width * done / total)
        text = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {message[:60]:<60}"
        self.stream.write(text)
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _emit(record: RunRecord, as_json: bool, out: TextIO) -> int:
    if as_json:
        json.dump(record.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(record.render() + "\n")
    return int(record.exit_code)


async def _with_context(settings: Settings, body: Callable[[Context], Awaitable[int]]) -> int:
    # SIGTERM (a supervisor, a CronJob's pod stopped, kill) and SIGHUP (a closed terminal) cancel
    # the command as Ctrl-C does: a run under way is audited as failed and releases its lock.
    # Python's default ends the process at once, leaving the lock held for its whole lease.
    main_task = asyncio.current_task()
    if main_task is not None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    ctx = build_context(settings)
    try:
        return await body(ctx)
    finally:
        await ctx.close()


async def _run_operation(ctx: Context, operation: str, dry_run: bool, as_json: bool, out: TextIO) -> int:
    cap = ctx.capability(operation)
    progress = _ProgressLine(sys.stderr)
    try:
        record = await ctx.runner.run(cap, trigger="manual", actor=_actor(), dry_run=dry_run,
                                      progress=progress)
    except LockHeld as exc:
        progress.close()
        print(f"hubpilot: {exc}", file=sys.stderr)
        return int(ExitCode.LOCKED)
    progress.close()
    return _emit(record, as_json, out)


async def _approve(ctx: Context, plan_id: str, as_json: bool, out: TextIO) -> int:
    progress = _ProgressLine(sys.stderr)
    try:
        operation = await ctx.runner.refused_plan_operation(plan_id)
        record = await ctx.runner.approve(ctx.capability(operation), plan_id, actor=_actor(),
                                          progress=progress)
    except UnknownPlan as exc:
        progress.close()
        print(f"hubpilot: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except LockHeld as exc:
        progress.close()
        print(f"hubpilot: {exc}", file=sys.stderr)
        return int(ExitCode.LOCKED)
    progress.close()  # the result starts on a line of its own
    return _emit(record, as_json, out)


async def _pause(ctx: Context, operation: str, paused: bool, out: TextIO) -> int:
    state = await ctx.runner.set_paused(operation, paused, _actor())
    out.write(state.describe() + "\n")
    return int(ExitCode.OK)


async def _status(ctx: Context, as_json: bool, out: TextIO) -> int:
    from hubpilot.api.runs import operation_status

    now = ctx.clock()
    status: dict[str, Any] = {op: await operation_status(ctx, op, now) for op in OPERATIONS}
    if as_json:
        json.dump(status, out, indent=2)
        out.write("\n")
    else:
        for op, st in status.items():
            last = st["last_run"]
            line = f"{op:6} " + ("PAUSED " if st["paused"] else "")
            line += (f"last run {last['at']} {last['outcome']} ({last['trigger']}, {last['actor']})"
                     if last else "never run")
            if st["lock"]:
                line += f"; locked by {st['lock']['holder']}"
            out.write(line + "\n")
            if last and last.get("error"):
                out.write(f"       error: {last['error']}\n")
            for reason in (last.get("refusal") or []) if last else []:
                out.write(f"       refused: {reason}\n")
            if st["unfinished_run"]:
                gone = st["unfinished_run"]
                out.write(f"       unfinished: run {gone['run_id']} started {gone['started']} {gone['outcome']}"
                          + (f": {gone['error']}" if gone["error"] else "") + "\n")
    return int(ExitCode.OK)


async def _audit(ctx: Context, limit: int, operation: str | None, since: datetime | None, as_json: bool,
                 out: TextIO, cursor: str | None = None, user: str | None = None) -> int:
    scanned = None
    try:
        if user is not None:
            entries, cursor, scanned = await read_audit_about(ctx.store, user, since=since, operation=operation,
                                                              limit=limit, cursor=cursor)
        else:
            entries, cursor = await ctx.store.read_audit(
                since=since, operation=operation, limit=limit, cursor=cursor
            )
    except BadCursor as exc:
        out.write(f"hubpilot audit: --cursor: {exc}: give the cursor the previous page of this "
                  f"{'search' if user is not None else 'listing'} ended with\n")
        return int(ExitCode.USAGE)
    except (ValueError, KeyError, OverflowError, TypeError) as exc:  # an entry hubpilot cannot read
        out.write(f"hubpilot audit: an audit entry could not be read ({type(exc).__name__}: {exc}); "
                  "the audit log holds an entry hubpilot did not write\n")
        return int(ExitCode.FAILED)
    if as_json:
        json.dump({"entries": entries, "cursor": cursor} | ({"scanned": scanned} if user is not None else {}),
                  out, indent=2)
        out.write("\n")
    else:
        for e in entries:
            counts = e.get("result_counts") or {}
            out.write(f"{e.get('at')} {e.get('operation')} {e.get('outcome')} "
                      f"trigger={e.get('trigger')} actor={e.get('actor')} plan={e.get('plan_id')} "
                      f"{json.dumps(counts) if counts else ''}\n")
            for line in about(e, user) if user is not None else []:
                out.write(f"    {line}\n")
        if user is not None and not entries:
            out.write(f"no entry names {user} among the {scanned} read"
                      + (f" (hub names are matched exactly, and are usually lowercase: {user.lower()}?)"
                         if user != user.lower() else "") + "\n")
        if cursor:
            out.write(f"more: the same command with --cursor {cursor}\n")
    return int(ExitCode.OK)


def _hub_name(text: str) -> str:
    if not text or len(text) > 255 or any(c.isspace() or c == "/" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a hub user name (1-255 characters, no space or '/')")
    return text


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def _iso_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2025-01-31 or 2025-01-31T08:00:00+01:00 ({exc})"
        ) from None


def _plan_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{16}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plan id (16 lowercase hex digits, as a refused run reports it)")
    return text


def _operation_name(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an operation name ({', '.join(OPERATIONS)}, graph-notifications, "
            "graph-subscriptions, ...)")
    return text


CONFIG_HELP = "TOML settings file (default: $HUBPILOT_CONFIG, else ./hubpilot.toml if present)"
JSON_HELP = "machine-readable output (JSON)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubpilot",
        description="Keeps a JupyterHub in step with its directory, its GPU pool and its idle servers.",
        epilog="Exit codes: 0 done, 1 failed, 2 usage/configuration error, 3 refused by the guard, "
        "4 another run holds the lock, 5 paused.",
    )
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    # --config after the command too (``hubpilot sync --config FILE``); SUPPRESS keeps the one given
    # before the command when it is not repeated after it
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, *, settings: bool = True) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".",
                              parents=[config] if settings else [])

    helps = {"sync": "directory groups → hub users, admins and groups",
             "cull": "stop idle notebook servers",
             "scale": "size the GPU node pool"}
    for op in OPERATIONS:
        p = command(op, helps[op])
        p.add_argument("--dry-run", action="store_true", help="show the plan and any refusal; apply nothing")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = command("approve", "apply a plan the guard refused, if a fresh observation yields the same plan")
    p.add_argument("plan_id", type=_plan_id,
                   help="the refused plan's id (16 hex digits, as the refused run printed it)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = command("pause", "pause an operation: its runs only report their plan until it is resumed")
    p.add_argument("operation", choices=OPERATIONS, help="the operation to pause")
    p = command("resume", "resume a paused operation")
    p.add_argument("operation", choices=OPERATIONS, help="the operation to resume")
    p = command("status", "last runs, locks and pause flags")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = command("audit", "read the audit log, newest first")
    p.add_argument("--limit", type=_int_between(1, 500), default=20, help="entries (1-500, default 20)")
    p.add_argument("--operation", type=_operation_name,
                   help=f"only this operation's entries ({', '.join(OPERATIONS)}, graph-notifications, "
                   "graph-subscriptions)")
    p.add_argument("--since", type=_iso_time, help="ISO time (UTC when no offset is given)")
    p.add_argument("--cursor", help="the cursor the previous page ended with: the next page")
    p.add_argument("--user", type=_hub_name, help="only entries that name this hub user, with what each says "
                   "about them (what happened to them and why; reads at most 2000 entries a page)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = command("serve", "the admin API and every schedule, in one process")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_int_between(0, 65535), default=8765,
                   help="port to listen on (default 8765; 0: a free one)")
    p = command("demo", "a real local JupyterHub kept in step by hubpilot", settings=False)
    p.epilog = ("Its hub, state and settings go to ./.hubpilot-demo (one demo per directory at a time); "
                "Ctrl-C stops everything it started. ./scripts/demo installs what it needs first.")
    p.add_argument("--ldap", action="store_true", help="read the directory from a local OpenLDAP")
    p.add_argument("--port", type=_int_between(0, 65535), default=8000,
                   help="the hub's port (default 8000; 0: a free one)")
    p.add_argument("--no-wait", action="store_true", help="stop after the demo instead of serving")
    command("settings", "print the reference of every setting (Markdown)", settings=False)
    p = command("cost", "GPU node-hours and cost per day")
    p.add_argument("--days", type=_int_between(1, 366), default=7,
                   help="days back (midnight to midnight in scale.timezone), today included (1-366)")
    p.add_argument("--always-on-nodes", type=_int_between(0, 1000), default=None,
                   help="size of the always-on pool to compare with (default: the peak recorded)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    if args.command == "settings":
        out.write(settings_reference() + "\n")
        return int(ExitCode.OK)
    if args.command == "demo":
        from hubpilot.demo import run_demo

        return run_demo(ldap=args.ldap, port=args.port, wait=not args.no_wait)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"hubpilot: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    note = defaults_note(args.config)
    if note is not None:
        print(f"hubpilot: note: {note}", file=sys.stderr)
    if args.command == "serve":
        from hubpilot.serve import main as serve_main

        return serve_main(settings, host=args.host, port=args.port)

    def body(ctx: Context) -> Awaitable[int]:
        c = args.command
        if c in OPERATIONS:
            return _run_operation(ctx, c, args.dry_run, args.json, out)
        if c == "approve":
            return _approve(ctx, args.plan_id, args.json, out)
        if c in ("pause", "resume"):
            return _pause(ctx, args.operation, c == "pause", out)
        if c == "status":
            return _status(ctx, args.json, out)
        if c == "audit":
            return _audit(ctx, args.limit, args.operation, args.since, args.json, out, args.cursor, args.user)
        if c == "cost":
            from hubpilot.wiring.scale import cost_report

            return cost_report(ctx, days=args.days, as_json=args.json, out=out,
                               always_on_nodes=args.always_on_nodes)
        raise AssertionError(c)

    try:
        return asyncio.run(_with_context(settings, body))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM, SIGHUP
        return int(ExitCode.FAILED)
    except StoreError as exc:  # the state store cannot be opened or answers no more (status, audit, pause)
        print(f"hubpilot: {exc} (state.kind = {settings.state.kind!r}; see the state.* settings)", file=sys.stderr)
        return int(ExitCode.FAILED)
    except ValueError as exc:  # configuration that only shows when used (e.g. no directory)
        print(f"hubpilot: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)


if __name__ == "__main__":
    sys.exit(main())
