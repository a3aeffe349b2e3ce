"""Culling against a real JupyterHub with real single-user servers (jupyterhub-singleuser).

One hub for this module, configured for what culling meets in the field:
- every single-user server loads ``hubpilot_activity`` (enabled the way the user image does it:
  a ``jupyter_server_config.d`` file) and reports activity every second;
- users named ``slow-*`` have a spawner whose stop takes longer than the hub's
  ``slow_stop_timeout`` (the hub answers 202); users named ``slowstart-*`` one whose spawn stays
  pending for 30 s;
- a user with a flag file in ``boom/`` makes the hub answer 500 to their stop (the
  authenticator's ``refresh_user``, which the hub calls before a stop, fails);
- a hung server (SIGSTOP) cannot answer anything and must still be stopped.

No test sleeps for a timeout: plans take an injected ``now``. Activity from "the future" is the
hub's own activity API (``POST /users/{name}/activity``), which accepts times up to an hour ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tornado.websocket import websocket_connect

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import Outcome, Plan, Runner, Status, no_progress
from hubpilot.settings import load_settings
from hubpilot.wiring import Context
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub, start_hub

pytestmark = pytest.mark.hub

EXTRA_CONFIG = """
import asyncio
import os
from jupyterhub.auth import DummyAuthenticator
from jupyterhub.spawner import SimpleLocalProcessSpawner


class CullTestAuthenticator(DummyAuthenticator):
    async def refresh_user(self, user, handler=None):
        if os.path.exists(os.path.join({boom_dir!r}, user.name)):
            raise RuntimeError("refresh failed on purpose: the hub answers 500 to this stop")
        return True


class CullTestSpawner(SimpleLocalProcessSpawner):
    async def start(self):
        if self.user.name.startswith("slowstart-"):
            await asyncio.sleep(30)  # a spawn that stays pending (an image pull, a node scale-up)
        return await super().start()

    async def stop(self, now=False):
        if self.user.name.startswith("slow-"):
            await asyncio.sleep(5)  # longer than slow_stop_timeout: the hub answers 202
        return await super().stop(now=now)


c.JupyterHub.authenticator_class = CullTestAuthenticator
c.Authenticator.refresh_pre_stop = True
c.JupyterHub.spawner_class = CullTestSpawner
c.JupyterHub.tornado_settings = {{"slow_stop_timeout": 4}}
c.JupyterHub.last_activity_interval = 3600
c.Spawner.interrupt_timeout = 1
c.Spawner.term_timeout = 1
c.Spawner.kill_timeout = 2
c.Spawner.environment = {{
    "JUPYTERHUB_ACTIVITY_INTERVAL": "1",
    "HUBPILOT_ACTIVITY_CHECK_SECONDS": "0.5",
    "JUPYTER_CONFIG_PATH": {config_path!r},
}}
"""


@pytest.fixture(scope="module")
async def cull_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RealHub]:
    tmp: Path = tmp_path_factory.mktemp("cullhub")
    # what `jupyter server extension enable hubpilot_activity` writes in the user image
    conf_d = tmp / "jupyter-config" / "jupyter_server_config.d"
    conf_d.mkdir(parents=True)
    (conf_d / "hubpilot_activity.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"hubpilot_activity": True}}})
    )
    (tmp / "boom").mkdir()
    extra = EXTRA_CONFIG.format(config_path=str(tmp / "jupyter-config"), boom_dir=str(tmp / "boom"))
    async with start_hub(tmp / "hub", extra_config=extra) as hub:
        yield hub


@pytest.fixture
async def hub_client(cull_hub: RealHub) -> AsyncIterator[HubClient]:
    """hubpilot's client with its least-privilege token; afterwards every server this module's
    hub still runs is stopped, so each test sees only its own servers."""
    client = HubClient(cull_hub.api_url, cull_hub.hubpilot_token, retries=1, backoff=0.05, concurrency=20)
    yield client
    await client.close()
    for flag in (cull_hub.tmp_path.parent / "boom").iterdir():
        flag.unlink()
    async with cull_hub.admin() as admin:
        users = (await admin.get("/users", params={"state": "active"})).json()
        for u in users:
            for name in u.get("servers", {}):
                path = f"/users/{u['name']}/servers/{name}" if name else f"/users/{u['name']}/server"
                await admin.delete(path)

    async def all_stopped() -> bool:
        async with cull_hub.admin() as admin:
            return not (await admin.get("/users", params={"state": "active"})).json()

    await wait_for(all_stopped, timeout=60)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def hub_user(hub: RealHub, name: str, **params: Any) -> dict[str, Any]:
    async with hub.admin() as admin:
        r = await admin.get(f"/users/{name}", params=params)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


async def make_user(hub: RealHub, name: str, groups: tuple[str, ...] = ()) -> None:
    async with hub.admin() as admin:
        (await admin.post(f"/users/{name}")).raise_for_status()
        for g in groups:
            r = await admin.post(f"/groups/{g}")
            assert r.status_code in (201, 409), r.text
            (await admin.post(f"/groups/{g}/users", json={"users": [name]})).raise_for_status()


async def report_activity(hub: RealHub, name: str, server: str, at: datetime) -> None:
    """What a single-user server's activity report does (here with a chosen time)."""
    async with hub.admin() as admin:
        r = await admin.post(f"/users/{name}/activity",
                             json={"servers": {server: {"last_activity": iso(at)}}})
        assert r.status_code == 200, r.text


def running(user_model: dict[str, Any]) -> set[str]:
    return {n for n, s in user_model.get("servers", {}).items() if s.get("ready") or s.get("pending")}


class KernelSession:
    """A real kernel in a user's server, driven over its websocket like a notebook frontend."""

    def __init__(self, hub: RealHub, user: str) -> None:
        self.hub, self.user = hub, user
        self.base = f"{hub.url}/user/{user}/api"
        self.headers = {"Authorization": f"token {hub.admin_token}"}
        self.kernel_id = ""

    async def start(self) -> None:
        async with httpx.AsyncClient(headers=self.headers, timeout=60) as http:
            r = await http.post(f"{self.base}/kernels", json={"name": "python3"})
            r.raise_for_status()
            self.kernel_id = r.json()["id"]

    async def execute(self, code: str) -> None:
        """Send an execute_request and return once the kernel says it is busy with it."""
        ws_url = self.base.replace("http://", "ws://") + f"/kernels/{self.kernel_id}/channels"
        conn = await websocket_connect(ws_request(ws_url, self.headers))
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3", "date": iso(datetime.now(UTC))},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        try:
            async with asyncio.timeout(60):
                while True:
                    raw = await conn.read_message()
                    assert raw is not None, "kernel websocket closed"
                    msg = json.loads(raw)
                    if (msg.get("msg_type") == "status" and msg["parent_header"].get("msg_id") == msg_id
                            and msg["content"]["execution_state"] == "busy"):
                        return
        finally:
            conn.close()

    async def interrupt(self) -> None:
        async with httpx.AsyncClient(headers=self.headers, timeout=30) as http:
            with contextlib.suppress(httpx.HTTPError):
                await http.post(f"{self.base}/kernels/{self.kernel_id}/interrupt")


def ws_request(url: str, headers: dict[str, str]) -> Any:
    from tornado.httpclient import HTTPRequest

    return HTTPRequest(url, headers=headers, request_timeout=60)


async def wait_for(predicate: Any, timeout: float = 30.0, every: float = 0.25) -> None:
    """Poll a condition of the real system (not a timeout of the code under test)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(every)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_busy_kernel_kept_idle_stopped_and_examined_idle_server_still_stopped(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path
) -> None:
    busy, idle = unique_name("busy"), unique_name("idle")
    for name in (busy, idle):
        await make_user(cull_hub, name)
    await asyncio.gather(cull_hub.spawn(busy), cull_hub.spawn(idle))

    kernel = KernelSession(cull_hub, busy)
    await kernel.start()
    t0 = datetime.now(UTC)
    await kernel.execute("import time\ntime.sleep(600)")  # a long cell with no output

    async def busy_reported() -> bool:
        la = (await hub_user(cull_hub, busy))["servers"][""]["last_activity"]
        return la is not None and parse_time(la) >= t0 + timedelta(seconds=3)

    # Only the extension can move the hub's last_activity past the cell's start: the kernel is
    # silent and nobody talks to the server.
    await wait_for(busy_reported)
    idle_seen = (await hub_user(cull_hub, idle))["servers"][""]["last_activity"]

    settings = CullSettings(inactivity_timeout=60, activity_interval=1, activity_check_seconds=0.5,
                            schedule="*/30 * * * * *")
    cap = CullCapability(hub_client, settings)
    now = t0 + timedelta(seconds=61)  # the cell started 61 s "ago": without the extension, idle
    runner = Runner(SqliteStore(tmp_path / "state.db"), clock=lambda: now)

    # Round 1: a dry-run examines both servers; it stops nothing and touches neither.
    report = await runner.run(cap, trigger="test", actor="test", dry_run=True)
    assert report.outcome is Outcome.PLANNED
    assert report.plan is not None
    assert [(a.kind, a.target) for a in report.plan.actions] == [("stop_server", idle)]
    assert report.plan.actions[0].reason.startswith("idle for 1m")
    assert any(n.startswith(f"kept {busy}: active ") for n in report.plan.notes)
    assert running(await hub_user(cull_hub, idle)) == {""}

    # Examining the idle server did not make it active: its hub activity is unchanged...
    await asyncio.sleep(2)  # two activity reports of every server (interval 1 s)
    assert (await hub_user(cull_hub, idle))["servers"][""]["last_activity"] == idle_seen

    # ...so round 2 (for real) still stops it, and keeps the busy one.
    record = await runner.run(cap, trigger="test", actor="test")
    assert record.outcome is Outcome.APPLIED, record.render()
    assert [(r.action.target, r.status) for r in record.results] == [(idle, Status.DONE)]
    assert running(await hub_user(cull_hub, idle)) == set()
    assert running(await hub_user(cull_hub, busy)) == {""}
    await kernel.interrupt()


async def test_a_round_with_every_kind_of_server(cull_hub: RealHub, hub_client: HubClient,
                                                 tmp_path: Path) -> None:
    """Idle and active, named, max age, per-profile and per-group policy, a hung server, a slow
    stop and a hub 500 — in one real round through the Runner, with the audit entry."""
    tag = unique_name("r")
    capped = f"cull-capped-{tag}"
    names = {k: f"{k}-{tag}" for k in ("idle", "active", "named", "gpu", "cpu", "aged", "hung", "slow", "boom")}
    for key, name in names.items():
        await make_user(cull_hub, name, groups=(capped,) if key == "aged" else ())
    (cull_hub.tmp_path.parent / "boom" / names["boom"]).touch()
    spawns = [cull_hub.spawn(n) for k, n in names.items() if k not in ("gpu", "cpu")]
    spawns += [cull_hub.spawn(names["named"], "big"),
               cull_hub.spawn(names["gpu"], user_options={"profile": "gpu-a100"}),
               cull_hub.spawn(names["cpu"], user_options={"profile": "cpu"})]
    await asyncio.gather(*spawns)
    t = datetime.now(UTC)
    now = t + timedelta(hours=2, minutes=5)
    recent = t + timedelta(minutes=55)  # 1h10m before "now"
    for key, server in (("active", ""), ("named", ""), ("gpu", ""), ("cpu", ""), ("aged", "")):
        await report_activity(cull_hub, names[key], server, recent)

    # the hung server: its process is stopped, it answers nothing
    state = (await hub_user(cull_hub, names["hung"]))["servers"][""]["state"]
    os.kill(int(state["pid"]), signal.SIGSTOP)

    settings = CullSettings(
        inactivity_timeout=7200, remove_named_servers=True,
        policies=[
            {"name": "gpu", "match_profile": "gpu*", "inactivity_timeout": 3600},
            {"name": "capped", "match_group": "cull-capped-*", "max_age": 7000},
        ],
    )
    cap = CullCapability(hub_client, settings)
    runner = Runner(SqliteStore(tmp_path / "state.db"), clock=lambda: now)
    hub_client.reset_stats()
    record = await runner.run(cap, trigger="test", actor="test")

    outcome = {r.action.target: r.status for r in record.results if r.action.target.endswith(tag)
               or r.action.target.split("/")[0].endswith(tag)}
    assert outcome == {
        names["idle"]: Status.DONE,
        f"{names['named']}/big": Status.DONE,
        names["gpu"]: Status.DONE,
        names["aged"]: Status.DONE,
        names["hung"]: Status.DONE,
        names["slow"]: Status.PENDING,
        names["boom"]: Status.FAILED,
    }, record.render()
    reasons = {a.target: a.reason for a in record.plan.actions} if record.plan else {}
    assert reasons[names["gpu"]] == "idle for 1h 10m (policy gpu: 1h), profile gpu-a100"
    assert reasons[names["aged"]].startswith("max age: running for 2h 05m")
    assert "(policy capped: max age 1h 56m)" in reasons[names["aged"]]
    assert reasons[f"{names['named']}/big"].startswith("idle for 2h 0")
    kept = [n for n in record.plan.notes if tag in n] if record.plan else []
    assert sorted(n.split(":")[0] for n in kept) == sorted(
        f"kept {names[k]}" for k in ("active", "named", "cpu"))

    # one failure is reported and fails the run, but affected nothing else
    assert record.outcome is Outcome.FAILED
    failed = next(r for r in record.results if r.action.target == names["boom"])
    assert "500" in failed.detail
    for key in ("idle", "gpu", "aged", "hung"):
        assert running(await hub_user(cull_hub, names[key])) == set(), key
    for key in ("active", "cpu", "boom"):
        assert running(await hub_user(cull_hub, names[key])) == {""}, key
    named = await hub_user(cull_hub, names["named"], include_stopped_servers="1")
    assert set(named["servers"]) == {""}  # "big" is stopped and removed; the default runs on

    # the audit entry names every stop with its outcome
    entries, _ = await runner.store.read_audit(operation="cull")
    entry = next(e for e in entries if e.get("run_id") == record.run_id)
    audited = {r["action"]["target"]: r["status"] for r in entry["results"]}
    assert audited[names["slow"]] == "pending" and audited[names["boom"]] == "failed"
    assert audited[names["idle"]] == "done"

    # one paged read, then per stop a read of its user and one DELETE (plus the client's one retry
    # of the 500)
    by_route = hub_client.stats["by_route"]
    assert by_route["GET /users"] == 1
    assert by_route["GET /users/{name}"] == len(outcome)
    await wait_for(lambda: _not_pending(cull_hub, names["slow"]), timeout=30)


async def _not_pending(hub: RealHub, name: str) -> bool:
    return running(await hub_user(hub, name)) == set()


async def test_dry_run_stops_nothing_and_guard_refuses_large_rounds(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path
) -> None:
    tag = unique_name("g")
    names = [f"g{i}-{tag}" for i in range(3)]
    for n in names:
        await make_user(cull_hub, n)
    await asyncio.gather(*(cull_hub.spawn(n) for n in names))
    now = datetime.now(UTC) + timedelta(hours=3)
    runner = Runner(SqliteStore(tmp_path / "state.db"), clock=lambda: now)
    cap = CullCapability(hub_client, CullSettings(max_stops_per_round=2))

    dry = await runner.run(cap, trigger="test", actor="test", dry_run=True)
    mine = [a for a in dry.plan.actions if a.target in names] if dry.plan else []
    assert len(mine) == 3
    refused = await runner.run(cap, trigger="test", actor="test")
    assert refused.outcome is Outcome.REFUSED and refused.results == []
    assert "more than cull.max_stops_per_round=2" in refused.refusal[0]
    for n in names:
        assert running(await hub_user(cull_hub, n)) == {""}

    # an admin approves exactly the refused plan: it is applied
    assert refused.plan is not None
    approved = await runner.approve(cap, refused.plan.id, actor="admin")
    assert approved.outcome is Outcome.APPLIED, approved.render()
    for n in names:
        assert running(await hub_user(cull_hub, n)) == set()
    # running it again is harmless: nothing left to stop
    again = await runner.run(cap, trigger="test", actor="test")
    assert again.outcome is Outcome.APPLIED and not [r for r in again.results if r.action.target in names]


async def test_a_user_who_starts_a_server_after_the_reading_is_not_deleted(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path
) -> None:
    """The hub's DELETE /users/{name} stops a running server and deletes the user anyway (in z2jh
    with their volume): a user found long-inactive, who logs in and starts a server before the
    deletion runs, must be left alone."""
    name = unique_name("back")
    await make_user(cull_hub, name)
    settings = CullSettings(cull_users=True, delete_users=True)
    cap = CullCapability(hub_client, settings, SqliteStore(tmp_path / "state.db"))  # sync manages nobody
    observed = await cap.observe()
    plan = cap.plan(observed, datetime.now(UTC) + timedelta(hours=3))
    mine = Plan.build("cull", [a for a in plan.actions if a.target == name])
    assert [(a.kind, a.target) for a in mine.actions] == [("delete_user", name)]

    await cull_hub.spawn(name)  # the user is back, between the reading and the deletion

    (result,) = await cap.apply(mine, observed, no_progress)
    assert result.status is Status.SKIPPED, result
    assert running(await hub_user(cull_hub, name)) == {""}


async def test_a_user_whose_server_the_hub_fails_to_stop_is_not_deleted_and_says_so(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path
) -> None:
    """A long-inactive user's idle server is stopped, then the user deleted, in one round; the hub
    answers 500 to the stop. The deletion is skipped for that stop (the server still runs), and says
    so: not that the user started a server since the round's reading, which they did not."""
    name = unique_name("boom")
    await make_user(cull_hub, name)
    await cull_hub.spawn(name)
    (cull_hub.tmp_path.parent / "boom" / name).touch()
    settings = CullSettings(cull_users=True, delete_users=True)
    cap = CullCapability(hub_client, settings, SqliteStore(tmp_path / "state.db"))  # sync manages nobody
    observed = await cap.observe()
    plan = cap.plan(observed, datetime.now(UTC) + timedelta(hours=3))
    mine = Plan.build("cull", [a for a in plan.actions if a.target == name])
    assert [a.kind for a in mine.actions] == ["stop_server", "delete_user"], mine.actions

    stop, deletion = await cap.apply(mine, observed, no_progress)
    assert stop.status is Status.FAILED and "500" in stop.detail, stop
    assert deletion.status is Status.SKIPPED, deletion
    assert deletion.detail == "a server of this user has not stopped", deletion.detail
    assert running(await hub_user(cull_hub, name)) == {""}


async def test_a_user_whose_only_server_is_pending_is_noted_not_stopped(
    cull_hub: RealHub, hub_client: HubClient
) -> None:
    """A server with a pending spawn is left alone, and the plan says so, also when it is the
    user's only server (the user is in no ready listing)."""
    name = unique_name("slowstart")
    await make_user(cull_hub, name)
    r = await cull_hub.spawn(name, wait=False)
    assert r.status_code == 202, r.text

    async def pending() -> bool:
        return (await hub_user(cull_hub, name))["servers"].get("", {}).get("pending") == "spawn"

    await wait_for(pending)
    cap = CullCapability(hub_client, CullSettings())
    plan = cap.plan(await cap.observe(), datetime.now(UTC) + timedelta(hours=3))
    assert not [a for a in plan.actions if a.target == name]
    assert f"skipped {name}: pending spawn" in plan.notes


# JupyterHub's own slow_stop_timeout (10 s); before it starts counting, the hub refreshes the
# user's auth state (an identity provider's round trip) for a second
SLOWER_STOP_CONFIG = """
import asyncio
from jupyterhub.auth import DummyAuthenticator
from jupyterhub.spawner import SimpleLocalProcessSpawner


class RefreshingAuthenticator(DummyAuthenticator):
    async def refresh_user(self, user, handler=None):
        await asyncio.sleep(1)
        return True


class SlowerStopSpawner(SimpleLocalProcessSpawner):
    async def stop(self, now=False):
        await asyncio.sleep(15)  # a pod that takes long to terminate
        return await super().stop(now=now)


c.JupyterHub.authenticator_class = RefreshingAuthenticator
c.Authenticator.refresh_pre_stop = True
c.JupyterHub.spawner_class = SlowerStopSpawner
"""


async def test_a_stop_slower_than_the_hubs_slow_stop_timeout_is_pending_not_failed(
    hub_factory: Any, tmp_path: Path
) -> None:
    """JupyterHub answers the stop of a slow server after its slow_stop_timeout (10 s by default)
    with 202; hub.timeout_seconds is 10 s too. A stop request must wait for that answer: with no
    retries, a client that gives up first reports a stop that went fine as failed."""
    hub: RealHub = await hub_factory(extra_config=SLOWER_STOP_CONFIG)
    name = unique_name("slower")
    await make_user(hub, name)
    await hub.spawn(name)
    settings = load_settings(hub={"api_url": hub.api_url, "token": hub.hubpilot_token, "retries": 0},
                             cull={"inactivity_timeout": 3600})
    assert settings.hub.timeout_seconds == 10  # the defaults, as deployed
    now = datetime.now(UTC) + timedelta(hours=2)
    ctx = Context(settings=settings, store=SqliteStore(tmp_path / "state.db"), clock=lambda: now)
    try:
        record = await ctx.runner.run(ctx.capability("cull"), trigger="test", actor="test")
        assert [(r.action.target, r.status) for r in record.results] == [(name, Status.PENDING)], record.render()
        assert record.outcome is Outcome.APPLIED
        client = ctx.hub
        assert isinstance(client, HubClient)
        assert client.stats["by_route"]["DELETE /users/{name}/server"] == 1  # no second request
    finally:
        await ctx.close()
    await wait_for(lambda: _not_pending(hub, name), timeout=60)
