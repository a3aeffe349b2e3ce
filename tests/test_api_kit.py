"""Shared pieces of the admin API tests: a test capability over in-memory data, tokens, settings.

The capability is a real :class:`hubpilot.loop.Capability` (observe/plan/guard/apply over a
small in-memory world) driven by the real Runner, store and API; nothing of hubpilot is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.api.app import create_app
from hubpilot.loop import Action, ActionResult, Plan, Progress, Status, run_actions
from hubpilot.settings import Settings
from hubpilot.wiring import OPERATIONS, Context

TOKENS = {
    "admin": "tok-admin-3b1f9c0e2d",
    "reader": "tok-reader-77ad0c19e4",
    "hub": "tok-hub-5c02e8b6aa",
}
HUB_TOKEN = "hub-service-secret-0b9d2f"


def token_settings() -> list[dict[str, str]]:
    return [{"name": f"{role}-caller", "role": role, "sha256": hashlib.sha256(tok.encode()).hexdigest()}
            for role, tok in TOKENS.items()]


def auth(role: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}


def principal_header(roles: list[str], name: str = "ana@example.org") -> str:
    body = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles",
            "claims": [{"typ": "name", "val": name}, *({"typ": "roles", "val": r} for r in roles)]}
    return base64.b64encode(json.dumps(body).encode()).decode()


def make_settings(*, hub_url: str = "http://127.0.0.1:9/hub/api", hub_token: str = HUB_TOKEN,
                  **api: Any) -> Settings:
    return Settings(
        hub={"api_url": hub_url, "token": hub_token},
        api={"tokens": token_settings(), **api},
        # the scale timer runs (the test capability stands in for the pool these name)
        scale={"enabled": True, "subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg",
               "cluster": "aks"},
    )


@dataclass
class World:
    """What a test capability manages: ``items`` should become ``desired``."""

    items: set[str] = field(default_factory=set)
    desired: set[str] = field(default_factory=set)
    max_removals: int = 2
    fail_observe: bool = False
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    applies: int = 0


class ItemsCapability:
    """A real capability over a :class:`World`: adds missing items, removes extra ones."""

    def __init__(self, name: str, world: World) -> None:
        self._name = name
        self.world = world

    @property
    def name(self) -> str:
        return self._name

    async def observe(self) -> tuple[frozenset[str], frozenset[str]]:
        if self.world.fail_observe:
            raise ConnectionError("directory unreachable")
        return frozenset(self.world.items), frozenset(self.world.desired)

    def plan(self, observed: tuple[frozenset[str], frozenset[str]], now: datetime) -> Plan:
        have, want = observed
        actions = [Action("add", i, 0, {}, "wanted but missing") for i in sorted(want - have)]
        actions += [Action("remove", i, 1, {}, "present but not wanted") for i in sorted(have - want)]
        return Plan.build(self._name, actions, facts={"observed_at": now.isoformat()})

    def guard(self, observed: tuple[frozenset[str], frozenset[str]], plan: Plan) -> list[str]:
        removals = plan.counts().get("remove", 0)
        if removals > self.world.max_removals:
            return [f"the plan removes {removals} items, more than the limit of {self.world.max_removals}"]
        return []

    async def apply(self, plan: Plan, observed: Any, progress: Progress) -> list[ActionResult]:
        self.world.applies += 1
        self.world.entered.set()
        if self.world.gate is not None:
            await self.world.gate.wait()

        async def perform(a: Action) -> ActionResult:
            if a.kind == "add":
                if a.target in self.world.items:
                    return ActionResult(a, Status.NOOP)
                self.world.items.add(a.target)
            else:
                if a.target not in self.world.items:
                    return ActionResult(a, Status.NOOP)
                self.world.items.discard(a.target)
            return ActionResult(a, Status.DONE)

        return await run_actions(plan.actions, perform, concurrency=4, progress=progress)


def make_context(tmp: Path, settings: Settings | None = None,
                 worlds: dict[str, World] | None = None) -> tuple[Context, dict[str, World]]:
    worlds = worlds or {op: World(desired={f"{op}-a", f"{op}-b"}) for op in OPERATIONS}
    ctx = Context(settings=settings or make_settings(),
                  store=SqliteStore(tmp / f"state-{uuid.uuid4().hex[:8]}.sqlite3"))

    def factory(op: str) -> Callable[[Context], ItemsCapability]:
        return lambda c: ItemsCapability(op, worlds[op])

    for op in worlds:
        ctx.factories[op] = factory(op)
    return ctx, worlds


@asynccontextmanager
async def asgi_client(ctx: Context) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ctx)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hubpilot.test",
                                 timeout=30) as client:
        yield client


@asynccontextmanager
async def serve_client(ctx: Context) -> AsyncIterator[httpx.AsyncClient]:
    """The same API through ``hubpilot serve`` (uvicorn) on a free loopback port."""
    from hubpilot.serve import Server

    server = Server(ctx.settings, host="127.0.0.1", port=0, context=ctx, schedules=False)
    task = asyncio.create_task(server.run())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "hubpilot serve did not start"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
            yield client
    finally:
        server.stop()
        await task
