"""Benchmark: one cull round of jupyterhub-idle-culler 2.0 against one of hubpilot's, same hub.

A real JupyterHub (tests/realhub.py) runs N servers (default 200) with a bench-only spawner:
``start`` launches a light process (``sleep``) and points the hub at one shared loopback HTTP
responder; ``stop`` waits like a terminating pod (default 2 s) and then ends the process. Both
cullers use the hubpilot service token and the same inactivity timeout; each culls all N.

Printed, measured in the same run:
- the cost of a round when nothing is idle (wall time, hub requests) for both;
- the wall time of each full round, the ratio ours/culler's (goal ≤ 0.2), hub requests of each.

    .venv/bin/python bench/cull.py [--servers 200] [--stop-seconds 2] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyterhub_idle_culler import cull_idle
from tornado.httpclient import AsyncHTTPClient

from hubpilot.adapters.hub import HubClient
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import Runner
from tests.realhub import RealHub, start_hub

SPAWNER = """
import asyncio
import os
import signal
import subprocess

from jupyterhub.spawner import Spawner


class BenchSpawner(Spawner):
    \"\"\"Starts a light process; stop waits like a terminating pod, then ends it.\"\"\"

    pid = 0

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state["pid"] = self.pid
        return state

    def load_state(self, state):
        super().load_state(state)
        self.pid = state.get("pid", 0)

    def clear_state(self):
        super().clear_state()
        self.pid = 0

    async def start(self):
        proc = subprocess.Popen(["sleep", "100000"])
        self._proc = proc
        self.pid = proc.pid
        return ("127.0.0.1", {port})

    async def poll(self):
        proc = getattr(self, "_proc", None)
        if proc is None:
            return 0
        return proc.poll()

    async def stop(self, now=False):
        await asyncio.sleep({stop_seconds})
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()


c.JupyterHub.spawner_class = BenchSpawner
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.last_activity_interval = 3600
c.JupyterHub.log_level = "WARN"
"""


class _Responder(BaseHTTPRequestHandler):
    """Answers the hub's "is the server up?" check for every bench server."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        return


def start_responder() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Responder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def spawn_all(hub: RealHub, names: list[str]) -> float:
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(20)
    async with hub.admin() as admin:
        async def one(name: str) -> None:
            async with sem:
                r = await admin.post(f"/users/{name}/server")
                if r.status_code not in (201, 202):
                    raise SystemExit(f"spawn {name}: {r.status_code} {r.text}")

        await asyncio.gather(*(one(n) for n in names))
        while True:
            ready = await ready_count(admin)
            if ready == len(names):
                return time.perf_counter() - t0
            await asyncio.sleep(0.2)


async def ready_count(admin: Any) -> int:
    r = await admin.get("/users", params={"state": "ready", "limit": 1000})
    return len(r.json())


class CullerRequests:
    """Counts the requests jupyterhub-idle-culler's tornado client sends."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._orig = AsyncHTTPClient.fetch

    def __enter__(self) -> CullerRequests:
        counts, orig = self.counts, self._orig

        def fetch(client: Any, request: Any, *args: Any, **kw: Any) -> Any:
            method = getattr(request, "method", "GET")
            url = getattr(request, "url", str(request))
            path = url.split("/hub/api", 1)[-1].split("?")[0]
            route = "/users" if path.rstrip("/") == "/users" else (
                "/users/{name}/server" if path.endswith("/server") else path or "/")
            counts[f"{method} {route}"] += 1
            return orig(client, request, *args, **kw)

        AsyncHTTPClient.fetch = fetch  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        AsyncHTTPClient.fetch = self._orig  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def culler_round(hub: RealHub, timeout: int, page_size: int) -> tuple[float, CullerRequests]:
    log = logging.getLogger("idle-culler")
    with CullerRequests() as counter:
        t0 = time.perf_counter()
        await cull_idle(url=hub.api_url, api_token=hub.hubpilot_token, inactive_limit=timeout,
                        logger=log, api_page_size=page_size)
        return time.perf_counter() - t0, counter


async def our_round(hub: RealHub, runner: Runner[Any], timeout: int, concurrency: int,
                    page_size: int) -> tuple[float, dict[str, Any], Any]:
    client = HubClient(hub.api_url, hub.hubpilot_token, concurrency=concurrency, page_size=page_size)
    try:
        cap = CullCapability(client, CullSettings(  # the bench runs the round itself; every second fits
            inactivity_timeout=timeout, activity_interval=1, activity_check_seconds=0, concurrency=concurrency,
            max_stops_per_round=100_000, schedule="* * * * * *"))
        t0 = time.perf_counter()
        record = await runner.run(cap, trigger="bench", actor="bench")
        wall = time.perf_counter() - t0
        return wall, client.stats, record
    finally:
        await client.close()


def fmt_routes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", type=int, default=200)
    ap.add_argument("--stop-seconds", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=50, help="our stops in flight at once")
    ap.add_argument("--page-size", type=int, default=200)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from hubpilot.adapters.store_sqlite import SqliteStore

    responder = start_responder()
    names = [f"bench-{i:04d}" for i in range(args.servers)]
    with tempfile.TemporaryDirectory(prefix="hubpilot-bench-cull-") as tmp:
        extra = SPAWNER.format(port=responder.server_address[1], stop_seconds=args.stop_seconds)
        async with start_hub(Path(tmp) / "hub", extra_config=extra) as hub:
            print(f"hub up in {hub.startup_seconds:.1f} s; {args.servers} servers, stop takes "
                  f"{args.stop_seconds:g} s, page size {args.page_size}, our concurrency {args.concurrency}")
            async with hub.admin() as admin:
                (await admin.post("/users", json={"usernames": names})).raise_for_status()
            runner: Runner[Any] = Runner(SqliteStore(Path(tmp) / "state.db"), clock=lambda: datetime.now(UTC))

            took = await spawn_all(hub, names)
            print(f"spawned {args.servers} servers in {took:.1f} s")

            # A round when nothing is idle: one paged read of the ready servers.
            # (hubpilot's round includes the runner: lock, run record and audit entry in the state
            # store; the first round also opens the store and a new client, so it runs twice.)
            quiet_timeout = 3600
            walls = []
            for _ in range(2):
                wall_q, stats_q, rec_q = await our_round(hub, runner, quiet_timeout, args.concurrency,
                                                         args.page_size)
                assert rec_q.plan is not None and rec_q.plan.empty, rec_q.render()
                walls.append(wall_q)
            c_wall_q, c_req_q = await culler_round(hub, quiet_timeout, args.page_size)
            print(f"nothing idle — hubpilot: {walls[1] * 1000:.0f} ms (first round {walls[0] * 1000:.0f} ms), "
                  f"{stats_q['requests']} hub requests ({fmt_routes(stats_q['by_route'])}); "
                  f"culler: {c_wall_q * 1000:.0f} ms, {c_req_q.total} hub requests "
                  f"({fmt_routes(dict(c_req_q.counts))})")

            # Everything idle: both cull all N servers with the same timeout.
            timeout = 2
            await asyncio.sleep(timeout + 1)
            c_wall, c_req = await culler_round(hub, timeout, args.page_size)
            async with hub.admin() as admin:
                left = await ready_count(admin)
            if left:
                raise SystemExit(f"the culler left {left} servers running")
            print(f"jupyterhub-idle-culler: culled {args.servers} in {c_wall:.1f} s, {c_req.total} hub requests "
                  f"({fmt_routes(dict(c_req.counts))})")

            took = await spawn_all(hub, names)
            print(f"respawned {args.servers} servers in {took:.1f} s")
            await asyncio.sleep(timeout + 1)
            wall, stats, record = await our_round(hub, runner, timeout, args.concurrency, args.page_size)
            async with hub.admin() as admin:
                left = await ready_count(admin)
            if left or record.result_counts().get("done") != args.servers:
                raise SystemExit(f"hubpilot left {left} servers running: {record.result_counts()}")
            print(f"hubpilot: culled {args.servers} in {wall:.1f} s, {stats['requests']} hub requests "
                  f"({fmt_routes(stats['by_route'])})")
            ratio = wall / c_wall
            print(f"ratio hubpilot/culler wall time: {ratio:.3f} (goal ≤ 0.2) — "
                  f"{'met' if ratio <= 0.2 else 'NOT met'}")
    responder.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
