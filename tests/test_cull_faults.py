"""Cull runs cut short by the network, two runs at once, and a hub that never answers: a real
JupyterHub (real single-user servers) behind ``tests/faultproxy.py``, which breaks chosen requests
before they reach the hub or after the hub acted, before its answer comes back.

After every cut the run reports a failure (run record and audit entry) and reports no stop that did
not happen; a clean run then converges to the end state of an uncut run, and leaves alone a user who
came back meanwhile. Each cut is set for one user's request, so that one run covers every request
of an apply (the re-read of the user, the stop) cut both ways.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import LockHeld, Outcome, Runner, Status
from tests.faultproxy import FaultProxy
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub, start_hub

pytestmark = pytest.mark.hub
ROOT = Path(__file__).resolve().parent.parent

NOW = datetime.now(UTC) + timedelta(minutes=90)  # the plans' time: servers started now are 90 min idle
SETTINGS = CullSettings(inactivity_timeout=3600, concurrency=1)


@pytest.fixture(scope="module")
async def fault_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RealHub]:
    async with start_hub(tmp_path_factory.mktemp("faulthub"),
                         extra_config="c.JupyterHub.last_activity_interval = 3600") as hub:
        yield hub


@pytest.fixture
async def proxy(fault_hub: RealHub) -> AsyncIterator[FaultProxy]:
    where = urlsplit(fault_hub.api_url)
    p = FaultProxy(where.hostname or "127.0.0.1", where.port or 80)
    await p.start()
    yield p
    await p.stop()


def client(hub: RealHub, proxy: FaultProxy, **kw: Any) -> HubClient:
    """hubpilot's hub client through the proxy; without retries a cut is a failure."""
    opts: dict[str, Any] = {"retries": 0, "backoff": 0.01, "timeout": 10, "stop_timeout": 30, **kw}
    return HubClient(f"http://127.0.0.1:{proxy.port}/hub/api", hub.hubpilot_token, **opts)


async def running(hub: RealHub, users: list[str]) -> set[str]:
    async with hub.admin() as admin:
        out = set()
        for u in users:
            body = (await admin.get(f"/users/{u}")).json()
            if any(s.get("ready") or s.get("pending") for s in body.get("servers", {}).values()):
                out.add(u)
        return out


async def spawn_all(hub: RealHub, users: list[str]) -> None:
    async with hub.admin() as admin:
        for u in users:
            r = await admin.post(f"/users/{u}")
            assert r.status_code in (201, 409), r.text
    await asyncio.gather(*(hub.spawn(u) for u in users))


async def stop_all(hub: RealHub, users: list[str]) -> None:
    async with hub.admin() as admin:
        for u in users:
            await admin.delete(f"/users/{u}/server")


def for_user(method: str, user: str) -> Any:
    return lambda m, path: m == method and path.rstrip("/").split("?")[0] in (
        f"/hub/api/users/{user}", f"/hub/api/users/{user}/server")


async def last_run_entry(store: SqliteStore) -> dict[str, Any]:
    entries, _ = await store.read_audit()  # newest first
    return next(e for e in entries if e.get("kind") == "run")


async def test_a_cut_run_reports_failure_and_a_clean_run_converges(
        fault_hub: RealHub, proxy: FaultProxy, tmp_path: Path) -> None:
    tag = unique_name("cut")
    names = {k: f"{tag}-{k}" for k in ("read-before", "read-after", "stop-before", "stop-after", "ok")}
    users = sorted(names.values())
    await spawn_all(fault_hub, users)
    store = SqliteStore(tmp_path / "state.sqlite3")
    hub = client(fault_hub, proxy)
    runner: Runner[Any] = Runner(store, clock=lambda: NOW)
    cap = CullCapability(hub, SETTINGS)
    try:
        # the listing cut either way: the run fails, nothing is stopped
        for mode in ("before", "after"):
            proxy.reset()
            proxy.rule(lambda m, path: m == "GET" and path.startswith("/hub/api/users?"), mode)
            rec = await runner.run(cap, trigger="test", actor="test")
            assert rec.outcome is Outcome.FAILED and rec.error and not rec.results, rec.render()
            assert (await last_run_entry(store))["outcome"] == "failed"
            assert await running(fault_hub, users) == set(users)

        # every request of the apply cut, each way, for one user each
        proxy.reset()
        proxy.rule(for_user("GET", names["read-before"]), "before")
        proxy.rule(for_user("GET", names["read-after"]), "after")
        proxy.rule(for_user("DELETE", names["stop-before"]), "before")
        proxy.rule(for_user("DELETE", names["stop-after"]), "after")
        rec = await runner.run(cap, trigger="test", actor="test")
        assert {f.method for f in proxy.faulted()} == {"GET", "DELETE"} and len(proxy.faulted()) == 4
        status = {r.action.target: r.status for r in rec.results}
        assert status == {names["ok"]: Status.DONE, names["read-before"]: Status.FAILED,
                          names["read-after"]: Status.FAILED, names["stop-before"]: Status.FAILED,
                          names["stop-after"]: Status.FAILED}, rec.render()
        assert rec.outcome is Outcome.FAILED, rec.render()
        entry = (await last_run_entry(store))
        assert entry["outcome"] == "failed" and entry["result_counts"] == {"done": 1, "failed": 4}
        still = await running(fault_hub, users)
        # the hub stopped stop-after's server although hubpilot never saw the answer
        assert still == {names["read-before"], names["read-after"], names["stop-before"]}
        for r in rec.results:  # no success reported for what did not happen
            if r.status in (Status.DONE, Status.NOOP):
                assert r.action.target not in still

        # stop-before's user comes back before the next round; a clean run converges
        async with fault_hub.admin() as admin:
            back = (datetime.now(UTC) + timedelta(minutes=50)).isoformat().replace("+00:00", "Z")
            r = await admin.post(f"/users/{names['stop-before']}/activity",
                                 json={"servers": {"": {"last_activity": back}}})
            assert r.status_code == 200, r.text
        proxy.reset()
        rec = await runner.run(cap, trigger="test", actor="test")
        assert rec.outcome is Outcome.APPLIED, rec.render()
        status = {r.action.target: r.status for r in rec.results}
        assert status[names["read-before"]] is Status.DONE and status[names["read-after"]] is Status.DONE
        assert names["stop-after"] not in status and names["ok"] not in status  # already stopped
        assert await running(fault_hub, users) == {names["stop-before"]}, rec.render()
        # and the next one has nothing left to do
        rec = await runner.run(cap, trigger="test", actor="test")
        assert rec.outcome is Outcome.APPLIED and not rec.results, rec.render()
    finally:
        await hub.close()
        await store.close()
        await stop_all(fault_hub, users)


async def test_two_runs_at_once_stop_each_server_once(
        fault_hub: RealHub, proxy: FaultProxy, tmp_path: Path) -> None:
    """Two deployments (two state stores, two clients) run the same round at the same time; and two
    runners on one store: the lock lets one through."""
    tag = unique_name("twice")
    users = [f"{tag}-{i}" for i in range(3)]
    await spawn_all(fault_hub, users)
    stores = [SqliteStore(tmp_path / f"state{i}.sqlite3") for i in range(2)]
    hubs = [client(fault_hub, proxy, retries=1) for _ in range(2)]
    caps = [CullCapability(h, SETTINGS) for h in hubs]
    try:
        recs = await asyncio.gather(*(Runner(s, clock=lambda: NOW).run(c, trigger="test", actor=f"run{i}")
                                      for i, (s, c) in enumerate(zip(stores, caps, strict=True))))
        for rec in recs:
            assert rec.outcome is Outcome.APPLIED, rec.render()  # neither fails for the other's stop
        assert await running(fault_hub, users) == set()
        for u in users:
            got = [r.status for rec in recs for r in rec.results if r.action.target == u]
            # planned by both; the other run saw it stopped (noop) or stopping (its DELETE joined
            # the stop: 202, pending). Not asserted: at most one "done" -- JupyterHub answers 204 to
            # the DELETE of a server already stopped, so a DELETE that comes just after the other
            # run's stop has ended reads as a stop of its own: these runs share no state store
            # (one store: test_two_runs_after_a_lost_lease_report_one_stop_once)
            assert set(got) <= {Status.DONE, Status.NOOP, Status.PENDING} and len(got) == 2, \
                [rec.render() for rec in recs]
            assert Status.DONE in got, [rec.render() for rec in recs]
        deletes = [s for s in proxy.seen if s.method == "DELETE"]
        assert len(deletes) <= 2 * len(users)

        # two runs on one store: the second finds the lock held, and nothing is done twice
        await spawn_all(fault_hub, users[:1])
        one = Runner(stores[0], clock=lambda: NOW)
        results = await asyncio.gather(one.run(caps[0], trigger="test", actor="a"),
                                       one.run(caps[1], trigger="test", actor="b"), return_exceptions=True)
        held = [r for r in results if isinstance(r, LockHeld)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert len(held) == 1 and len(done) == 1, results
        assert done[0].outcome is Outcome.APPLIED and [r.status for r in done[0].results] == [Status.DONE]
    finally:
        for h in hubs:
            await h.close()
        for s in stores:
            await s.close()
        await stop_all(fault_hub, users)


async def test_a_hub_that_never_answers_the_listing(fault_hub: RealHub, proxy: FaultProxy,
                                                    tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3")
    hub = client(fault_hub, proxy, retries=1, timeout=2.0)
    proxy.rule(lambda m, path: m == "GET", "hang")
    try:
        async with asyncio.timeout(30):  # a guard against a hang, not a timing assert
            rec = await Runner(store, clock=lambda: NOW).run(CullCapability(hub, SETTINGS),
                                                             trigger="test", actor="test")
        assert rec.outcome is Outcome.FAILED and not rec.results, rec.render()
        assert rec.error and "no answer within 2 s" in rec.error, rec.error
        assert len(proxy.seen) == 2  # the request and its one retry
        assert (await last_run_entry(store))["outcome"] == "failed"
    finally:
        await hub.close()
        await store.close()


async def test_a_hub_that_never_answers_a_stop(fault_hub: RealHub, proxy: FaultProxy, tmp_path: Path) -> None:
    """The first stop that gets no answer (after its retries) ends the round's stops: the others
    are reported not attempted, not each sent and waited for in turn. The next round stops them."""
    tag = unique_name("hang")
    users = [f"{tag}-{i}" for i in range(3)]
    await spawn_all(fault_hub, users)
    store = SqliteStore(tmp_path / "state.sqlite3")
    hub = client(fault_hub, proxy, retries=1, timeout=2.0, stop_timeout=2.0)
    runner: Runner[Any] = Runner(store, clock=lambda: NOW)
    cap = CullCapability(hub, SETTINGS)
    proxy.rule(lambda m, path: m == "DELETE", "hang")
    try:
        async with asyncio.timeout(60):  # a guard against a hang, not a timing assert
            rec = await runner.run(cap, trigger="test", actor="test")
        assert rec.outcome is Outcome.FAILED, rec.render()
        assert [r.status for r in rec.results] == [Status.FAILED, Status.SKIPPED, Status.SKIPPED], rec.render()
        assert "no answer within 2 s" in rec.results[0].detail, rec.render()
        assert "not attempted" in rec.results[1].detail, rec.render()
        assert len([s for s in proxy.seen if s.method == "DELETE"]) == 2  # one stop and its retry
        assert await running(fault_hub, users) == set(users)
        proxy.reset()
        async with client(fault_hub, proxy) as answered:  # the hub answers again (a stop takes a while)
            rec = await runner.run(CullCapability(answered, SETTINGS), trigger="test", actor="test")
        assert rec.outcome is Outcome.APPLIED, rec.render()
        assert await running(fault_hub, users) == set()
    finally:
        await hub.close()
        await store.close()
        await stop_all(fault_hub, users)


async def test_two_processes_on_one_state_store(fault_hub: RealHub, tmp_path: Path) -> None:
    """Two ``hubpilot cull`` processes at once on one state store: the lock lets one apply (the
    other exits 4, LOCKED, or, started after the first ended, finds nothing left to do); every
    idle server is stopped, and the audit names each stop once: done, or pending when the server
    took longer than the hub's slow_stop_timeout to stop (the hub answers 202 and ends it after)."""
    tag = unique_name("procs")
    users = [f"{tag}-{i}" for i in range(3)]
    await spawn_all(fault_hub, users)
    db = tmp_path / "state.sqlite3"
    cfg = tmp_path / "hubpilot.toml"
    cfg.write_text(
        f'[hub]\napi_url = "{fault_hub.api_url}"\ntoken = "{fault_hub.hubpilot_token}"\n'
        '[cull]\ninactivity_timeout = 3\nactivity_interval = 1\nactivity_check_seconds = 0\n'
        'schedule = "* * * * * *"\n'
        f'[state]\nsqlite_path = "{db}"\n')
    await asyncio.sleep(4)  # the servers' last activity (their start) is now past the timeout
    try:
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hubpilot.cli", "--config", str(cfg), "cull",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT) for _ in range(2)]
        outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
        codes = sorted(p.returncode for p in procs)
        text = "\n".join(o[0].decode() for o in outs)
        assert codes in ([0, 0], [0, 4]), text
        async with asyncio.timeout(60):  # a guard against a hang, not a timing assert
            while await running(fault_hub, users):  # a pending stop goes on in the hub
                await asyncio.sleep(0.2)
        store = SqliteStore(db)
        try:
            entries, _ = await store.read_audit()
        finally:
            await store.close()
        runs = [e for e in entries if e.get("kind") == "run" and e.get("operation") == "cull"]
        assert all(e["outcome"] == "applied" for e in runs), runs
        assert len([e for e in runs if e["results"]]) == 1, runs  # one run applied, under the lock
        stops = [r["action"]["target"] for e in runs for r in e["results"] if r["status"] in ("done", "pending")]
        assert sorted(stops) == sorted(users), text
    finally:
        await stop_all(fault_hub, users)


async def test_two_runs_after_a_lost_lease_report_one_stop_once(
        fault_hub: RealHub, tmp_path: Path) -> None:
    """Two hosts on one state store: run B took the lock and read the server again (running), then
    stalled before its DELETE (held by the proxy) past its lease; run A took the lock over and
    stopped the server. B's DELETE then reaches the hub, which answers 204 to a DELETE of a server
    already stopped, as to a stop of its own. B reports it stopped nothing (noop, with the reason),
    so that the audit of the store names the stop once."""
    user = unique_name("lease")
    await spawn_all(fault_hub, [user])
    store = SqliteStore(tmp_path / "state.sqlite3")
    where = urlsplit(fault_hub.api_url)
    slow = FaultProxy(where.hostname or "127.0.0.1", where.port or 80)
    await slow.start()
    slow.rule(lambda m, path: m == "DELETE", "hold")
    b_hub = client(fault_hub, slow)
    a_hub = HubClient(fault_hub.api_url, fault_hub.hubpilot_token, retries=0, timeout=10, stop_timeout=30)
    try:
        run_b = asyncio.create_task(Runner(store, clock=lambda: NOW).run(
            CullCapability(b_hub, SETTINGS, store), trigger="test", actor="b"))
        async with asyncio.timeout(60):  # a guard against a hang, not a timing assert
            while not (run_b.done() or slow.faulted()):
                await asyncio.sleep(0.05)
        assert not run_b.done(), run_b.result().render()
        # A's clock is past B's lease: the lock is A's now
        rec_a = await Runner(store, clock=lambda: NOW + timedelta(minutes=30)).run(
            CullCapability(a_hub, SETTINGS, store), trigger="test", actor="a")
        assert [(r.action.target, r.status) for r in rec_a.results] == [(user, Status.DONE)], rec_a.render()
        assert await running(fault_hub, [user]) == set()
        slow.release()
        async with asyncio.timeout(60):
            rec_b = await run_b
        assert [s.method for s in slow.seen if s.method == "DELETE"] == ["DELETE"]  # B's DELETE was sent
        assert rec_b.outcome is Outcome.APPLIED, rec_b.render()
        [result] = rec_b.results
        assert result.status is Status.NOOP and "another run" in result.detail, rec_b.render()
        entries, _ = await store.read_audit()
        done = [r for e in entries if e.get("kind") == "run" for r in e["results"] if r["status"] == "done"]
        assert len(done) == 1, entries
    finally:
        await a_hub.close()
        await b_hub.close()
        await slow.stop()
        await store.close()
        await stop_all(fault_hub, [user])


async def test_after_a_hub_outage_nothing_is_stopped_for_inactivity_until_the_reports_caught_up(
        fault_hub: RealHub, proxy: FaultProxy, tmp_path: Path) -> None:
    """While the hub is down, the servers' activity reports do not reach it: once it answers again,
    every server looks idle since the outage began, busy or not (docs/cull.md). A round that found
    the hub unreachable (here: every request cut, as a hub pod that is gone) or failing (503, as
    the proxy answers for a hub that is down) is recorded; the rounds after it stop nothing for
    inactivity until the reports have caught up (cull.activity_lag after a round found it answering
    again), and say why in the plan; then they stop the idle servers as before. A server past its
    max age is stopped meanwhile (that does not depend on activity)."""
    tag = unique_name("outage")
    idle, old = f"{tag}-idle", f"{tag}-old"
    await spawn_all(fault_hub, [idle, old])
    async with fault_hub.admin() as admin:
        (await admin.post(f"/groups/{tag}-old", json={"users": [old]})).raise_for_status()
    store = SqliteStore(tmp_path / "state.sqlite3")
    hub = client(fault_hub, proxy)
    settings = CullSettings(inactivity_timeout=3600, concurrency=1, policies=[
        {"name": "old", "match_group": f"{tag}-old", "inactivity_timeout": 3600, "max_age": 1800}])
    clock = [NOW]
    cap = CullCapability(hub, settings, store, clock=lambda: clock[0])
    runner: Runner[Any] = Runner(store, clock=lambda: clock[0])

    def ours(rec: Any) -> dict[str, str]:
        return {a.target: a.kind for a in rec.plan.actions if a.target.startswith(tag)} if rec.plan else {}

    try:
        for mode in ("before", "503"):
            proxy.reset()
            if mode == "before":
                proxy.rule(lambda m, path: m == "GET", "before")
                rec = await runner.run(cap, trigger="test", actor="test")
            else:  # the outage record is removed once caught up; a 5xx records it again
                await store.delete("hub/outage")
                rec = await runner.run(CullCapability(HubClient(f"http://127.0.0.1:{await _answer_503()}/hub/api",
                                                                fault_hub.hubpilot_token, retries=0),
                                                      settings, store, clock=lambda: clock[0]),
                                       trigger="test", actor="test")
            assert rec.outcome is Outcome.FAILED and not rec.results, rec.render()
            assert await store.get("hub/outage") is not None, mode
            proxy.reset()
            clock[0] += timedelta(minutes=1)  # the hub answers again
            back = clock[0]
            rec = await runner.run(cap, trigger="test", actor="test")
            assert ours(rec) == {old: "stop_server"}, rec.render()  # past its max age: stopped all the same
            note = next(n for n in rec.plan.notes if n.startswith(f"kept {idle}:")) if rec.plan else ""
            assert "idle for" in note and "the hub was unreachable" in note, note
            assert await running(fault_hub, [idle, old]) == {idle}
            clock[0] = back + timedelta(seconds=settings.activity_lag - 1)  # reports not caught up yet
            assert ours(await runner.run(cap, trigger="test", actor="test")) == {}
            assert await running(fault_hub, [idle]) == {idle}
            clock[0] = back + timedelta(seconds=settings.activity_lag)
            rec = await runner.run(cap, trigger="test", actor="test")
            assert ours(rec) == {idle: "stop_server"} and rec.outcome is Outcome.APPLIED, rec.render()
            assert await running(fault_hub, [idle, old]) == set()
            assert await store.get("hub/outage") is None
            await spawn_all(fault_hub, [idle, old])
            clock[0] = NOW
    finally:
        await stop_all(fault_hub, [idle, old])
        await hub.close()
        await store.close()


async def _answer_503() -> int:
    """A port whose server answers every request 503 (what the proxy answers while the hub is down)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    _SERVERS.append(server)
    return int(server.sockets[0].getsockname()[1])


_SERVERS: list[asyncio.base_events.Server] = []


async def test_a_damaged_outage_record_holds_inactivity_stops_and_says_so(fault_hub: RealHub, tmp_path: Path) -> None:
    """An outage record that cannot be read (damaged by hand) is no reason to stop servers in use:
    the round stops nothing for inactivity, as right after an outage, and the log says why."""
    store = SqliteStore(tmp_path / "state.sqlite3")
    hub = HubClient(fault_hub.api_url, fault_hub.hubpilot_token, retries=0)
    try:
        await store.put("hub/outage", {"back_at": "soon"})
        cap = CullCapability(hub, SETTINGS, store, clock=lambda: NOW)
        observed = await cap.observe()
        assert observed.catch_up == (NOW, NOW + timedelta(seconds=SETTINGS.activity_lag))
        await store.put("hub/outage", {"back_at": (NOW - timedelta(hours=1)).isoformat()})
        assert (await cap.observe()).catch_up is None  # caught up long ago: the record goes
        assert await store.get("hub/outage") is None
    finally:
        await hub.close()
        await store.close()


async def test_a_dry_run_that_finds_the_hub_down_notes_the_outage_and_records_nothing_else(
        fault_hub: RealHub, tmp_path: Path) -> None:
    """A dry-run records nothing (no audit entry, no run record), except the hub outage its observe
    sees (README, docs/cull.md): it is a fact about the hub, and the real rounds after it must not
    judge activity the outage kept from the hub."""
    store = SqliteStore(tmp_path / "state.sqlite3")
    hub = HubClient(f"http://127.0.0.1:{await _answer_503()}/hub/api", fault_hub.hubpilot_token, retries=0)
    runner: Runner[Any] = Runner(store, clock=lambda: NOW)
    try:
        rec = await runner.run(CullCapability(hub, CullSettings(), store, clock=lambda: NOW),
                               trigger="test", actor="test", dry_run=True)
        assert rec.outcome is Outcome.FAILED and not rec.results, rec.render()
        assert await store.get("hub/outage") == {"last_failure": NOW.isoformat()}
        entries, _ = await store.read_audit()
        assert entries == [], entries
    finally:
        await hub.close()
        await store.close()
