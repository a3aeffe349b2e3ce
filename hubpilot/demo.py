"""``hubpilot demo``: a real local JupyterHub kept in step by hubpilot.

It starts JupyterHub with configurable-http-proxy and real single-user servers on loopback, a
file directory (or OpenLDAP with ``--ldap``) built from ``deploy/demo/directory.yaml``, shows the
first sync's plan and result, then a directory change (someone leaves) and its sync, starts a
server it leaves idle for the cull (60 s idle, in the demo) to stop, and leaves
the hub and hubpilot's admin API running — with the sync schedule firing every 30 seconds, so
edits to the demo's directory file show up in the hub — until Ctrl-C. Everything it started is
stopped on the way out.

Its settings are written to ``.hubpilot-demo/hubpilot.toml`` so that the CLI commands it prints act
on this demo (its hub, directory and state store). One demo runs per working directory at a time:
a second one is refused rather than wiping the first one's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import yaml

from hubpilot.localhub import CHP, free_port, start_hub
from hubpilot.loop import Outcome, RunRecord
from hubpilot.settings import Settings, load_settings
from hubpilot.wiring import Context, build_context

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIRECTORY = PROJECT_ROOT / "deploy" / "demo" / "directory.yaml"
WORKDIR = Path(".hubpilot-demo")
LOCK_NAME = "demo.lock"
LOG_NAME = "hubpilot.log"
GROUP_PREFIX = "dir-"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _show(title: str, record: RunRecord) -> None:
    _say(f"\n── {title} " + "─" * max(3, 70 - len(title)))
    _say(record.render())


def _ldif_from_directory(doc: dict[str, Any], base_dn: str) -> str:
    """The demo directory as LDIF: people under ou=people, groupOfNames under ou=groups."""
    out = [f"dn: ou=people,{base_dn}\nobjectClass: organizationalUnit\nou: people\n",
           f"dn: ou=groups,{base_dn}\nobjectClass: organizationalUnit\nou: groups\n"]
    for key, p in doc.get("people", {}).items():
        name = p.get("name", key)
        out.append(f"dn: uid={p['username']},ou=people,{base_dn}\nobjectClass: inetOrgPerson\n"
                   f"uid: {p['username']}\ncn: {name}\nsn: {name.split()[-1]}\n")
    people = doc.get("people", {})
    for group, g in doc.get("groups", {}).items():
        members = [f"uid={people[m]['username']},ou=people,{base_dn}" for m in g.get("members", [])]
        members += [f"cn={n},ou=groups,{base_dn}" for n in g.get("groups", [])]
        if not members:  # groupOfNames needs one member; the base DN stands for "nobody"
            members = [base_dn]
        out.append(f"dn: cn={group},ou=groups,{base_dn}\nobjectClass: groupOfNames\ncn: {group}\n"
                   + "".join(f"member: {m}\n" for m in members))
    return "\n".join(out)


# The demo's cull: a server idle for a minute is stopped by the next round (every 20 s). The
# single-user servers report activity, and the hub reads the proxy's, every 10 s (300 s in a real
# hub), so the timeout can be that short.
ACTIVITY_INTERVAL = 10
# the demo's servers do not run hubpilot_activity: only their activity reports lag
CULL = {"activity_interval": ACTIVITY_INTERVAL, "activity_check_seconds": 0, "inactivity_timeout": 60,
        "schedule": "*/20 * * * * *"}


def _hub_config(users_groups: list[str], admin_groups: list[str]) -> str:
    access = [GROUP_PREFIX + g for g in [*users_groups, *admin_groups]]
    admins = [GROUP_PREFIX + g for g in admin_groups]
    return (
        f"c.JupyterHub.last_activity_interval = {ACTIVITY_INTERVAL}\n"
        f"c.Spawner.environment.update({{'JUPYTERHUB_ACTIVITY_INTERVAL': '{ACTIVITY_INTERVAL}'}})\n"
        "import hubpilot_hub\n"
        f"hubpilot_hub.configure(c, access_groups={access!r}, admin_groups={admins!r})\n"
    )


LDAP_BASE = "dc=example,dc=com"


@contextlib.asynccontextmanager
async def _directory(
    doc: dict[str, Any], workdir: Path, ldap: bool
) -> AsyncIterator[tuple[dict[str, Any], Callable[[str], None]]]:
    """Yields the [directory] settings for the demo's directory (running slapd when asked) and a
    function that takes a person out of every group, in the file or in LDAP."""
    if not ldap:  # with --ldap the directory is slapd's: a file here would be read by nothing
        path = workdir / "directory.yaml"
        # the copy the user is told to edit keeps the original's opening comments (how groups nest)
        header = "".join(line for line in DEMO_DIRECTORY.read_text().splitlines(keepends=True)
                         if line.startswith("#"))
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False))

        def leave_file(key: str) -> None:
            for g in doc["groups"].values():
                if key in g.get("members", []):
                    g["members"].remove(key)
            path.write_text(header + yaml.safe_dump(doc, sort_keys=False))

        yield {"kind": "file", "file": {"path": str(path)}}, leave_file
        return
    import ldap3

    from hubpilot.localldap import start_slapd

    async with start_slapd(workdir / "ldap", ldif=[_ldif_from_directory(doc, LDAP_BASE)]) as server:

        def leave_ldap(key: str) -> None:
            person = f"uid={doc['people'][key]['username']},ou=people,{LDAP_BASE}"
            for name, g in doc["groups"].items():
                if key in g.get("members", []):
                    server.modify(f"cn={name},ou=groups,{LDAP_BASE}", {"member": [(ldap3.MODIFY_DELETE, [person])]})

        yield {"kind": "ldap", "ldap": {
            "url": server.url, "bind_dn": server.root_dn, "bind_password": server.root_password,
            "base_dn": LDAP_BASE, "group_base_dn": f"ou=groups,{LDAP_BASE}", "nested": True}}, leave_ldap


async def _demo(ldap: bool, port: int, wait: bool) -> int:
    # SIGTERM (kill, a supervisor) and SIGHUP (a closed terminal) stop the demo the way Ctrl-C
    # does: the exit stack below stops slapd, the hub and its servers. Python's default would end
    # the process at once.
    main = asyncio.current_task()
    if main is not None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(sig, main.cancel)
    missing = _missing_tools(ldap)
    if missing:  # else the hub starts, fails to start its proxy (or slapd fails), and prints a traceback
        print(f"hubpilot demo: {missing}", file=sys.stderr)
        return 2
    workdir = WORKDIR.resolve()
    lock = _claim(workdir)  # before anything is wiped: another demo may be using this directory
    if isinstance(lock, str):
        print(f"hubpilot demo: {lock}", file=sys.stderr)
        return 2
    try:
        if port and not _port_free(port):  # else the proxy fails and the hub's start-up times out
            print(f"hubpilot demo: port {port} on 127.0.0.1 is in use; choose another with --port N "
                  "(--port 0: a free one)", file=sys.stderr)
            return 2
        _clear(workdir)
        return await _demo_in(workdir, ldap, port, wait)
    finally:
        lock.close()


async def _demo_in(workdir: Path, ldap: bool, port: int, wait: bool) -> int:
    doc = yaml.safe_load(DEMO_DIRECTORY.read_text())
    users_groups, admin_groups = ["analysts", "gpu-users"], ["hub-admins"]
    _say("hubpilot demo: starting a real JupyterHub (configurable-http-proxy, real single-user servers)"
         + (" and OpenLDAP" if ldap else "") + " ...")
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(
            start_hub(workdir / "hub", extra_config=_hub_config(users_groups, admin_groups),
                      port=port or None)
        )
        _say(f"JupyterHub is up at {hub.url} (started in {hub.startup_seconds:.1f} s)")
        directory, leave = await stack.enter_async_context(_directory(doc, workdir, ldap))
        api_port = free_port()
        api_token = secrets.token_urlsafe(24)
        values: dict[str, Any] = {
            "hub": {"api_url": hub.api_url, "token": hub.hubpilot_token},
            "directory": directory,
            "sync": {"users_groups": users_groups, "admin_groups": admin_groups, "group_prefix": GROUP_PREFIX,
                     "schedule": "*/30 * * * * *", "max_removal_percent": 50},
            "cull": CULL,
            "state": {"kind": "sqlite", "sqlite_path": str(workdir / "state.sqlite3")},
            "api": {"tokens": [{"name": "demo-admin", "role": "admin",
                                "sha256": hashlib.sha256(api_token.encode()).hexdigest()}]},
        }
        # the same settings for the CLI in another terminal: its commands then act on this demo
        config = workdir / "hubpilot.toml"
        config.touch(mode=0o600)
        config.write_text("# hubpilot demo: its settings, for the CLI (hubpilot --config <this file> ...)\n"
                          + _toml(values))
        # read with that file (the values still win over HUBPILOT_* variables): a refused run's
        # approval command then names it, and reaches this demo's state from any shell
        settings: Settings = load_settings(config, **values)
        ctx: Context = build_context(settings)
        stack.push_async_callback(ctx.close)
        sync = ctx.capability("sync")

        _show("1. what the first sync would do (dry-run: nothing applied)",
              await ctx.runner.run(sync, trigger="demo", actor="demo", dry_run=True))
        _show("2. first sync applied", await ctx.runner.run(sync, trigger="demo", actor="demo"))

        leaver = "bob"
        await hub.spawn(doc["people"][leaver]["username"])
        _say(f"\n{leaver} starts a notebook server ... then leaves the directory group.")
        leave(leaver)
        stack_dir = workdir / "directory.yaml"
        _show("3. sync after the change: deprovisioned (server stopped, access gone), not deleted",
              await ctx.runner.run(sync, trigger="demo", actor="demo"))

        idler = "alice"
        await hub.spawn(doc["people"][idler]["username"])
        _say(f"\n{idler} starts a notebook server and leaves it idle.")
        _show(f"4. cull now (dry-run): {idler}'s server is kept, it has been idle for less than "
              f"{CULL['inactivity_timeout']} s",
              await ctx.runner.run(ctx.capability("cull"), trigger="demo", actor="demo", dry_run=True))

        cli = f"{_cli_command()} --config {config}"
        _say("\n" + "═" * 72)
        _say(f"JupyterHub:      {hub.url}   (log in as any synced user, password: {hub.password})")
        if wait:  # served below; with --no-wait nothing listens there
            _say(f"admin API:       http://127.0.0.1:{api_port}/api/v1   (bearer token: {api_token})")
        if ldap:
            ld = directory["ldap"]
            _say(f"directory:       {ld['url']}  base {LDAP_BASE}, bind {ld['bind_dn']} "
                 f"(password {ld['bind_password']}): the next scheduled sync (every 30 s) follows a change")
        else:
            _say(f"directory file:  {stack_dir}   edit it: the next scheduled sync (every 30 s) follows")
        _say(f"cull:            a server idle for {CULL['inactivity_timeout']} s is stopped by the next round "
             f"(every 20 s): {idler}'s, unless someone uses it")
        _say("scale:           not in the demo: it sizes an AKS GPU node pool (docs/scale.md); "
             "`scale --dry-run` names the settings it needs")
        _say("state and logs:  " + str(workdir))
        if not wait:
            return 0
        _say("try, in another terminal:")
        _say(f"  $ {cli} status")
        _say(f"  $ {cli} sync --dry-run")
        _say(f"  $ {cli} cull --dry-run")
        _say(f"  $ {cli} audit --limit 5")
        _say(f"  $ {cli} audit --user {doc['people'][leaver]['username']}   # what happened to {leaver}, and why")
        _say(f"  $ curl -H 'Authorization: Bearer {api_token}' http://127.0.0.1:{api_port}/api/v1/plan/sync")
        if ldap:  # erin leaves gpu-users: the next sync deprovisions her
            ld = directory["ldap"]
            change = (f"dn: cn=gpu-users,ou=groups,{LDAP_BASE}\\nchangetype: modify\\ndelete: member\\n"
                      f"member: uid=erin,ou=people,{LDAP_BASE}\\n")
            _say(f"  $ printf '{change}' | ldapmodify -x -H {ld['url']} -D {ld['bind_dn']} -w {ld['bind_password']}")
        _say("Ctrl-C stops the hub, the proxy, the servers and hubpilot.")
        _say("Runs that change something (the schedule's, the API's, the CLI's) show here:")
        from hubpilot.serve import serve

        follow = asyncio.create_task(_follow_runs(ctx, since=ctx.clock()))
        try:
            with _demo_logging(workdir / LOG_NAME):
                await serve(settings, host="127.0.0.1", port=api_port, context=ctx)  # until Ctrl-C
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        _say("\nstopping ...")
    return 0


class _NotRunOutcomes(logging.Filter):
    """Keeps a run's outcome line (:func:`hubpilot.loop.log_outcome`) off the demo's terminal:
    the demo shows each run that failed or was refused itself, a repeated failure once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "hubpilot.loop" and record.funcName == "log_outcome")


@contextlib.contextmanager
def _demo_logging(path: Path) -> Iterator[None]:
    """hubpilot's log lines while the demo serves: every one (INFO and up) to ``path``, warnings
    to the terminal too, except the runs' outcome lines (a broken directory file fails every 30 s)."""
    logger = logging.getLogger("hubpilot")
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setLevel(logging.WARNING)
    to_terminal.addFilter(_NotRunOutcomes())
    level = logger.level
    logger.addHandler(to_file)
    logger.addHandler(to_terminal)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.removeHandler(to_terminal)
        logger.removeHandler(to_file)
        to_file.close()


REMIND_EVERY = timedelta(minutes=5)
"""A failure that goes on is recalled in one line at most this often (by the runs' times)."""


async def _follow_runs(ctx: Context, since: datetime, every: float = 1.0) -> None:
    """Shows each run recorded from ``since`` on that changed something, was refused or failed,
    whoever started it: what an edit of the directory or a command did, in the demo's terminal.
    A failure is shown again only when it changes (a broken directory file fails every 30 s); while
    it goes on, one line recalls it at most every :data:`REMIND_EVERY`."""
    seen: set[str] = set()
    failing: dict[str, str] = {}
    said: dict[str, tuple[datetime, datetime, int]] = {}  # operation: first shown, last said, runs since
    while True:
        await asyncio.sleep(every)
        try:
            entries, _ = await ctx.store.read_audit(since=since, limit=50)
        except Exception as exc:  # the store is closing, or busy: the next look will do
            log.debug("demo: cannot read the audit log: %s", exc)
            continue
        for entry in reversed(entries):  # oldest first
            run_id = entry.get("run_id")
            if not run_id or run_id in seen:
                continue  # shown already, or no run (a refused Graph notification's entry)
            seen.add(run_id)
            try:
                record = RunRecord.from_json(entry)
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("demo: an audit entry is no run record: %s", exc)
                continue
            when = record.finished or record.started
            if record.outcome in (Outcome.FAILED, Outcome.REFUSED):
                detail = record.error or "; ".join(record.refusal)
                why = f"{record.outcome}: {detail}"
                if failing.get(record.operation) == why:
                    first, last, runs = said[record.operation]
                    runs += 1
                    if when - last >= REMIND_EVERY:
                        last = when
                        _say(f"\n{_clock(when)} {record.operation} still {record.outcome}: {runs} more runs since "
                             f"{_clock(first)} ended the same way: {detail}")
                    said[record.operation] = (first, last, runs)
                    continue
                failing[record.operation] = why
                said[record.operation] = (when, when, 0)
            elif not record.results:
                failing.pop(record.operation, None)
                continue  # nothing to do
            else:
                failing.pop(record.operation, None)
            _show(f"{_clock(when)} {record.operation}, started by {record.trigger} ({record.actor})", record)


def _clock(at: datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S")


def _missing_tools(ldap: bool) -> str | None:
    """What the demo needs and does not find, and how to install it (``./scripts/demo`` runs the
    setup first; ``hubpilot demo`` on its own does not)."""
    if not os.access(CHP, os.X_OK):
        return (f"configurable-http-proxy is not installed ({CHP} is missing): run ./scripts/setup --demo "
                "in the project's directory (or start the demo with ./scripts/demo, which runs it)")
    if ldap:
        from hubpilot.localldap import SLAPADD, SLAPD

        gone = [tool for tool in (SLAPD, SLAPADD) if not os.access(tool, os.X_OK)]
        if gone:
            return (f"--ldap needs OpenLDAP's server, and {' and '.join(gone)} is missing: "
                    "apt-get install slapd ldap-utils (./scripts/setup --demo does), or run the demo "
                    "without --ldap (a directory file)")
    return None


def _claim(workdir: Path) -> IO[str] | str:
    """This working directory's demo lock (held until the demo ends), or why it is taken.

    A second demo started from the same directory (e.g. on another port) would otherwise wipe the
    running one's hub database, state store and directory under it."""
    workdir.mkdir(parents=True, exist_ok=True)
    lock = open(workdir / LOCK_NAME, "a+")  # held open (and locked) until the demo ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        return (f"another hubpilot demo (pid {holder}) is running from {workdir.parent}; stop it first "
                "(Ctrl-C in its terminal), or start this one from another directory")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _clear(workdir: Path) -> None:
    """The last demo's files go; the lock this demo holds stays."""
    for entry in workdir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _cli_command() -> str:
    """How to run this hubpilot from another terminal: its console script, else the module."""
    exe = Path(sys.argv[0])
    if exe.name == "hubpilot" and exe.is_file():
        return str(exe.absolute())
    return f"{sys.executable} -m hubpilot.cli"


def _toml(values: dict[str, Any], table: str = "") -> str:
    """``values`` as TOML: scalars and lists inline (JSON's strings are TOML's basic strings),
    nested dicts as tables."""
    def inline(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(inline(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {inline(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"no TOML for {type(v).__name__}")

    flat = [f"{k} = {inline(v)}" for k, v in values.items() if not isinstance(v, dict)]
    out = (f"\n[{table}]\n" if table and flat else "") + "".join(line + "\n" for line in flat)
    for k, v in values.items():
        if isinstance(v, dict):
            out += _toml(v, f"{table}.{k}" if table else k)
    return out


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(*, ldap: bool = False, port: int = 8000, wait: bool = True) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return asyncio.run(_demo(ldap, port, wait))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    except Exception as exc:
        print(f"hubpilot demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
