"""Entra end to end: Graph double (driven by the real msgraph-sdk) → webhook on the real admin app
→ hint queue → the real sync capability → a real JupyterHub. Azurite for the Azure queue path."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import functions
from functions.graph import handle_hint_message
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.entra.directory import STATE_PREFIX
from hubpilot.entra.notifications import COVER_MARGIN, Hint
from hubpilot.loop import Outcome, utcnow
from hubpilot.ports.store import StateStore
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.entra import (
    AzureHints,
    InProcessHints,
    NotificationWorker,
    notification_queue,
    run_subscription_manager,
    set_notification_queue,
)
from tests.doubles.graph import GraphDouble, start_graph_double
from tests.fixtures.hub import unique_name
from tests.fixtures.webhook import Webhook
from tests.realhub import RealHub, read_all
from tests.test_entra_graph import SECRET

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
async def graph() -> AsyncIterator[GraphDouble]:
    double, served = await start_graph_double(page_size=100)
    yield double
    await served.stop()


@pytest.fixture(autouse=True)
async def _replicated(graph: GraphDouble) -> AsyncIterator[None]:
    """A test that made the module's Graph double lag (and failed before catching up) must not
    leave its delta query behind for the next tests."""
    yield
    graph.catch_up()


class Tenant:
    """One test's Entra groups and people, its hubpilot Context and the worker of its queue."""

    def __init__(self, graph: GraphDouble, hub: RealHub, webhook: Webhook, *, nested: bool = False,
                 store: StateStore | None = None, entra: Mapping[str, Any] | None = None, **sync: Any) -> None:
        self.graph = graph
        self.hub = hub
        self.tag = unique_name("e")
        self.users_group = graph.add_group()
        self.admin_group = graph.add_group()
        settings = Settings(
            hub={"api_url": hub.api_url, "token": hub.hubpilot_token, "retries": 1},
            directory={"kind": "entra", "entra": {
                "graph_base_url": graph.base_url, "notifications": True, "client_state": SECRET,
                "notification_url": f"{webhook.url}/api/v1/graph/notifications", "retry_delay_seconds": 0,
                "nested": nested, **(entra or {})}},
            sync={"users_groups": [self.users_group], "admin_groups": [self.admin_group],
                  "group_prefix": f"{self.tag}-",
                  "group_names": {self.users_group: "users", self.admin_group: "admins"},
                  "naming": {"strip_domain": True}, "max_removal_percent": 100.0, **sync},
        )
        self.ctx: Context = webhook.use(settings, store)
        self.webhook = webhook
        queue = notification_queue(self.ctx)
        assert isinstance(queue, InProcessHints)
        self.worker = NotificationWorker(self.ctx, queue, retry_seconds=0)

    def person(self, short: str) -> str:
        return self.graph.add_user(upn=f"{self.tag}-{short}@example.org", display=short.title())

    def name(self, short: str) -> str:
        return f"{self.tag}-{short}"

    async def notify(self, gid: str, **kw: Any) -> httpx.Response:
        kw.setdefault("client_state", SECRET)
        async with httpx.AsyncClient(base_url=self.webhook.url, timeout=10) as http:
            return await http.post("/api/v1/graph/notifications", json=self.graph.notification(gid, **kw))

    async def sync(self) -> Any:
        return await self.ctx.runner.run(self.ctx.capability("sync"), trigger="schedule", actor="timer")

    async def hub_state(self) -> dict[str, Any]:
        """Members of the mirrored hub groups (admin_mode "role": the hub grants admin to the group)."""
        async with self.hub.admin() as admin:
            groups = {g["name"]: sorted(g["users"]) for g in await read_all(admin, "/groups")}
        return {"admins": groups.get(f"{self.tag}-admins", []), "users": groups.get(f"{self.tag}-users", [])}


async def test_onboarding_removal_and_admin_follow_notifications(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    t = Tenant(graph, real_hub, webhook)
    ana, ben, cy = t.person("ana"), t.person("ben"), t.person("cy")
    graph.add_members(t.users_group, [ana, ben])
    graph.add_member(t.admin_group, ben)
    first = await t.sync()
    assert first.outcome is Outcome.APPLIED, first.render()
    assert await t.hub_state() == {"admins": [t.name("ben")], "users": [t.name("ana"), t.name("ben")]}
    async with real_hub.admin() as admin:
        assert (await admin.get(f"/users/{t.name('ana')}")).status_code == 200

    graph.add_member(t.users_group, cy)
    started = time.monotonic()
    r = await t.notify(t.users_group)
    assert r.status_code == 202 and time.monotonic() - started < 3.0
    assert await t.worker.drain_once() == 1
    assert t.worker.records[-1].trigger == "notification" and t.worker.records[-1].actor == "graph"
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben"), t.name("cy")]

    graph.remove_member(t.users_group, ana)
    graph.add_member(t.admin_group, cy)
    assert (await t.notify(t.users_group)).status_code == 202
    assert (await t.notify(t.admin_group)).status_code == 202
    assert await t.worker.drain_once() == 2  # both hints, one run
    assert len(t.worker.records) == 2
    assert await t.hub_state() == {"admins": [t.name("ben"), t.name("cy")], "users": [t.name("ben"), t.name("cy")]}

    # a forged notification changes nothing
    graph.add_member(t.users_group, ana)
    assert (await t.notify(t.users_group, client_state="forged")).status_code == 403
    assert await t.worker.drain_once() == 0
    assert (await t.hub_state())["users"] == [t.name("ben"), t.name("cy")]


async def test_duplicate_and_out_of_order_notifications_cost_one_run(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    t = Tenant(graph, real_hub, webhook)
    ana, ben = t.person("ana"), t.person("ben")
    graph.add_member(t.users_group, ana)
    await t.sync()
    graph.add_member(t.users_group, ben)
    stale = Hint("sync", (t.users_group,), received=(t.ctx.clock() - timedelta(hours=1)).isoformat())
    for _ in range(3):
        assert (await t.notify(t.users_group)).status_code == 202
    await notification_queue(t.ctx).push(stale)  # an old notification delivered late
    assert await t.worker.drain_once() == 4
    assert len(t.worker.records) == 1 and t.worker.records[0].outcome is Outcome.APPLIED
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]
    # a late duplicate after that run: covered, no run at all
    await notification_queue(t.ctx).push(stale)
    assert await t.worker.drain_once() == 1
    assert len(t.worker.records) == 1


async def test_expired_token_resync_that_shrinks_is_guarded_and_not_lost(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    t = Tenant(graph, real_hub, webhook, max_removals=1)
    ps = [t.person(f"p{i}") for i in range(4)]
    graph.add_members(t.users_group, ps)
    await t.sync()
    for p in ps[:3]:
        graph.remove_member(t.users_group, p)
    graph.expire_tokens()
    assert (await t.notify(t.users_group)).status_code == 202
    await t.worker.drain_once()
    refused = t.worker.records[-1]
    assert refused.outcome is Outcome.REFUSED and refused.plan is not None
    assert any("sync.max_removals" in r for r in refused.refusal)
    assert len((await t.hub_state())["users"]) == 4
    # the full read was shown no change of the notified group, but only an applied sync is
    # re-checked: a refused plan comes back at every run until approved
    assert t.worker.queue.delayed == 0 and t.worker.queue.queue.empty()
    again = await t.sync()  # the change was not lost with the delta token: the same plan comes back
    assert again.outcome is Outcome.REFUSED and again.plan is not None and again.plan.id == refused.plan.id
    approved = await t.ctx.runner.approve(t.ctx.capability("sync"), refused.plan.id, actor="admin")
    assert approved.outcome is Outcome.APPLIED
    assert (await t.hub_state())["users"] == [t.name("p3")]


class DryRunAtCommit(SqliteStore):
    """A real SQLite store where, once armed, a dry-run (an admin's GET /api/v1/plan/sync: no lock)
    runs in full just before the real run commits its Entra delta state: between the real run's
    read of that state and its conditional write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hook: Callable[[], Awaitable[Any]] | None = None
        self.dry: Any = None

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        hook, self.hook = (self.hook, None) if key.startswith(STATE_PREFIX) else (None, self.hook)
        if hook is not None:
            self.dry = await hook()
        return await super().put(key, doc, if_match=if_match)


async def delta_state(store: StateStore) -> dict[str, str]:
    """The stored Entra delta documents and their etags."""
    out = {}
    for key in await store.list(STATE_PREFIX):
        got = await store.get_with_etag(key)
        assert got is not None
        out[key] = got[1]
    return out


async def test_a_dry_run_commits_no_delta_state_and_does_not_fail_a_real_run_under_way(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook, tmp_path: Path) -> None:
    """A dry-run stops after the guard: it leaves the Entra delta state as it was, so the next real
    run still sees and applies the change, and a real run that read the state before the dry-run
    commits it (its conditional write was failed by the dry-run's commit: the real run failed)."""
    store = DryRunAtCommit(tmp_path / "race.sqlite3")
    t = Tenant(graph, real_hub, webhook, store=store)
    ana, ben, cy = t.person("ana"), t.person("ben"), t.person("cy")
    graph.add_member(t.users_group, ana)
    assert (await t.sync()).outcome is Outcome.APPLIED
    before = await delta_state(store)
    assert before

    graph.add_member(t.users_group, ben)
    dry = await t.ctx.runner.dry_run(t.ctx.capability("sync"), trigger="api", actor="admin")
    assert dry.outcome is Outcome.PLANNED and dry.plan is not None, dry.render()
    assert t.name("ben") in {a.target for a in dry.plan.actions}
    assert await delta_state(store) == before  # nothing recorded: not even the delta state

    graph.add_member(t.users_group, cy)
    store.hook = lambda: t.ctx.runner.dry_run(t.ctx.capability("sync"), trigger="api", actor="admin")
    real = await t.sync()
    assert store.dry is not None and store.dry.outcome is Outcome.PLANNED, store.dry.render()
    assert real.outcome is Outcome.APPLIED, real.render()
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben"), t.name("cy")]
    again = await t.sync()  # the real run committed what it read: nothing is left to do
    assert again.outcome is Outcome.APPLIED and again.plan is not None and not again.plan.actions, again.render()


async def test_nested_group_change_notifies_and_reexpands_the_parent(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    t = Tenant(graph, real_hub, webhook, nested=True)
    team = graph.add_group()
    ana, ben = t.person("ana"), t.person("ben")
    graph.add_member(t.users_group, ana)
    graph.add_member(t.users_group, team, "groups")
    await t.sync()
    graph.subscriptions.clear()
    record = await run_subscription_manager(t.ctx)
    assert record is not None and record.outcome is Outcome.APPLIED
    assert f"groups/{team}" in {s["resource"] for s in graph.subscriptions.values()}
    graph.add_member(team, ben)
    assert (await t.notify(team)).status_code == 202
    await t.worker.drain_once()
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]


async def test_a_change_the_delta_shows_only_after_its_notification_is_rechecked_once(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """Graph's replication delay ("Known issues": delta query): the notification arrives at once,
    the delta query shows the change later. The sync the notification started finds nothing, so
    the hint is re-checked once, after directory.entra.recheck_seconds, by a normal sync; a
    re-check that still finds nothing queues no other (the scheduled sync follows)."""
    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 0.2})
    queue = t.worker.queue
    ana, ben, cy = t.person("ana"), t.person("ben"), t.person("cy")
    graph.add_member(t.users_group, ana)
    await t.sync()
    graph.lag()
    graph.add_member(t.users_group, ben)
    assert (await t.notify(t.users_group)).status_code == 202
    assert await t.worker.drain_once() == 1
    # the re-check waits recheck_seconds (the loop has not run since it was pushed: no timing here)
    assert queue.delayed == 1 and queue.queue.empty()
    first = t.worker.records[-1]
    assert first.outcome is Outcome.APPLIED and first.plan is not None and not first.plan.actions
    assert (await t.hub_state())["users"] == [t.name("ana")]
    graph.catch_up()
    recheck = await asyncio.wait_for(queue.queue.get(), timeout=30)
    assert recheck.kind == "sync" and recheck.recheck and recheck.groups == (t.users_group,)
    await t.worker.handle([recheck])
    again = t.worker.records[-1]
    assert (again.trigger, again.outcome) == ("notification", Outcome.APPLIED) and again.started > first.started
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]

    graph.lag()  # still not replicated when the re-check runs: once only
    graph.add_member(t.users_group, cy)
    assert (await t.notify(t.users_group)).status_code == 202
    assert await t.worker.drain_once() == 1
    recheck = await asyncio.wait_for(queue.queue.get(), timeout=30)
    await t.worker.handle([recheck])
    last = t.worker.records[-1]
    assert last.outcome is Outcome.APPLIED and last.plan is not None and not last.plan.actions
    assert queue.delayed == 0 and queue.queue.empty()
    graph.catch_up()
    assert (await t.sync()).outcome is Outcome.APPLIED  # the scheduled sync brings it
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben"), t.name("cy")]


async def test_recheck_seconds_0_queues_no_recheck(graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """docs/entra.md: ``recheck_seconds = 0`` turns the re-check off: a sync a notification started
    that was shown no change of the notified group (Graph's delta lagged) queues none."""
    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 0})
    queue = t.worker.queue
    ana, ben = t.person("ana"), t.person("ben")
    graph.add_member(t.users_group, ana)
    await t.sync()
    graph.lag()
    graph.add_member(t.users_group, ben)
    assert (await t.notify(t.users_group)).status_code == 202
    assert await t.worker.drain_once() == 1
    first = t.worker.records[-1]
    assert first.outcome is Outcome.APPLIED and first.plan is not None and not first.plan.actions
    assert first.plan.facts.get("changed_groups") == []  # what would have asked for a re-check
    assert queue.delayed == 0 and queue.queue.empty()


class RecordingHints:
    """A hint queue that keeps what is pushed (and the delay asked for) for the test to deliver."""

    def __init__(self) -> None:
        self.pushed: list[tuple[Hint, float]] = []

    async def push(self, hint: Hint, *, delay_seconds: float = 0.0) -> None:
        self.pushed.append((hint, delay_seconds))

    async def close(self) -> None:
        pass


async def test_a_recheck_is_not_covered_by_a_sync_that_started_before_it_was_due(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """The re-check is received when due: a scheduled sync that starts after the notification but
    before the re-check is due (and so may read the same lagging delta) does not cover it; the
    re-check runs its sync and brings the change."""
    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 60})
    shift = [timedelta(0)]
    t.ctx.clock = lambda: utcnow() + shift[0]
    queue = RecordingHints()
    set_notification_queue(t.ctx, queue)
    ana, ben = t.person("ana"), t.person("ben")
    graph.add_member(t.users_group, ana)
    await t.sync()
    graph.lag()
    graph.add_member(t.users_group, ben)
    await t.worker.handle([Hint("sync", (t.users_group,), received=t.ctx.clock().isoformat())])
    ((recheck, delay),) = queue.pushed
    assert recheck.recheck and delay == 60
    shift[0] = timedelta(seconds=20)  # 20 s later, within the re-check's delay: a scheduled sync
    scheduled = await t.sync()
    assert scheduled.plan is not None and not scheduled.plan.actions  # Graph still lags
    graph.catch_up()
    shift[0] = timedelta(seconds=60)  # the re-check is due
    await t.worker.handle([recheck])
    again = t.worker.records[-1]
    assert again.started > scheduled.started and again.outcome is Outcome.APPLIED, again.render()
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]


async def test_a_notified_change_the_delta_lags_is_rechecked_though_another_groups_change_was_applied(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """The re-check follows the notified group, not the plan: the sync a notification for the
    users group started applies a change of the admin group (already replicated), while the users
    group's change has not reached the delta query yet. The plan has an action, but the delta read
    showed nothing for the notified group: its one re-check is queued, and brings the change."""
    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 0.2})
    queue = t.worker.queue
    ana, ben = t.person("ana"), t.person("ben")
    graph.add_member(t.users_group, ana)
    await t.sync()
    graph.add_member(t.admin_group, ana)  # replicated: the sync sees it
    graph.lag()
    graph.add_member(t.users_group, ben)  # notified at once, in the delta only later
    assert (await t.notify(t.users_group)).status_code == 202
    assert await t.worker.drain_once() == 1
    first = t.worker.records[-1]
    assert first.outcome is Outcome.APPLIED and first.plan is not None and first.plan.actions, first.render()
    assert await t.hub_state() == {"admins": [t.name("ana")], "users": [t.name("ana")]}
    graph.catch_up()
    recheck = await asyncio.wait_for(queue.queue.get(), timeout=30)
    assert recheck.kind == "sync" and recheck.recheck and recheck.groups == (t.users_group,)
    await t.worker.handle([recheck])
    assert t.worker.records[-1].outcome is Outcome.APPLIED and t.worker.records[-1].started > first.started
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]


async def test_a_notified_change_the_delta_showed_queues_no_recheck_though_the_plan_is_empty(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """The delta read showed the notified group's change (a member who is a hub user already, so
    the plan has nothing to do): there is nothing to re-check."""
    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 0.2})
    ana = t.person("ana")
    graph.add_member(t.users_group, ana)
    graph.add_member(t.admin_group, ana)
    await t.sync()
    graph.remove_member(t.admin_group, ana)
    graph.add_member(t.admin_group, ana)  # net: a member again, so the sync has nothing to do
    assert (await t.notify(t.admin_group)).status_code == 202
    assert await t.worker.drain_once() == 1
    record = t.worker.records[-1]
    assert record.outcome is Outcome.APPLIED and record.plan is not None and not record.plan.actions
    assert record.plan.facts.get("changed_groups") == [t.admin_group]
    assert t.worker.queue.delayed == 0 and t.worker.queue.queue.empty()


async def test_a_hint_covered_by_a_sync_that_read_a_lagging_delta_is_rechecked_once(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """A scheduled sync that started after the notification was received covers its hint, but it
    read a delta that did not show the change yet: the covered hint runs no sync of its own, yet
    queues the one re-check; a covered re-check queues none."""
    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 0.2})
    queue = t.worker.queue
    ana, ben = t.person("ana"), t.person("ben")
    graph.add_member(t.users_group, ana)
    await t.sync()
    graph.lag()
    graph.add_member(t.users_group, ben)
    received = (t.ctx.clock() - COVER_MARGIN * 2).isoformat()  # before the scheduled sync started
    scheduled = await t.sync()
    assert scheduled.outcome is Outcome.APPLIED and scheduled.plan is not None and not scheduled.plan.actions
    await notification_queue(t.ctx).push(Hint("sync", (t.users_group,), received=received))
    assert await t.worker.drain_once() == 1
    assert t.worker.records == []  # covered: no run
    graph.catch_up()
    recheck = await asyncio.wait_for(queue.queue.get(), timeout=30)
    assert recheck.kind == "sync" and recheck.recheck and recheck.groups == (t.users_group,)
    await t.worker.handle([recheck])
    assert t.worker.records[-1].outcome is Outcome.APPLIED
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]

    # a covered re-check queues none (no loop), nor does a hint whose covering sync saw its change
    graph.lag()
    graph.add_member(t.users_group, t.person("cy"))
    received = (t.ctx.clock() - COVER_MARGIN * 2).isoformat()
    await t.sync()
    await notification_queue(t.ctx).push(Hint("sync", (t.users_group,), received=received, recheck=True))
    assert await t.worker.drain_once() == 1
    graph.catch_up()
    received = (t.ctx.clock() - COVER_MARGIN * 2).isoformat()
    assert (await t.sync()).outcome is Outcome.APPLIED
    await notification_queue(t.ctx).push(Hint("sync", (t.users_group,), received=received))
    assert await t.worker.drain_once() == 1
    assert len(t.worker.records) == 1 and queue.delayed == 0 and queue.queue.empty()
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben"), t.name("cy")]


@pytest.mark.azurite
async def test_azure_queue_carries_the_hint_to_the_queue_function(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook, azurite: Any) -> None:
    from azure.storage.queue.aio import QueueClient

    t = Tenant(graph, real_hub, webhook)
    ana = t.person("ana")
    name = f"hubpilot-graph-{uuid.uuid4().hex[:8]}"
    hints = AzureHints(t.ctx.settings.directory.entra.model_copy(  # type: ignore[union-attr]
        update={"queue": "azure", "queue_name": name,
                "queue_connection_string": __import__("pydantic").SecretStr(azurite.connection_string)}))
    set_notification_queue(t.ctx, hints)
    graph.add_member(t.users_group, ana)
    assert (await t.notify(t.users_group)).status_code == 202
    async with QueueClient.from_connection_string(azurite.connection_string, name) as q:
        messages = [m async for m in q.receive_messages()]
    assert len(messages) == 1
    body = base64.b64decode(messages[0].content)  # what the Functions host decodes for the trigger
    assert json.loads(body)["kind"] == "sync"
    functions.set_context(t.ctx)
    try:
        assert await handle_hint_message(body) == "applied"
        # the same message delivered twice at once: within COVER_MARGIN of the run's start (two
        # instances' clocks) it costs one more sync; delivered after that, nothing
        assert await handle_hint_message(body) == "applied"
        late = json.dumps({**json.loads(body), "received": (t.ctx.clock() - COVER_MARGIN * 2).isoformat()})
        assert await handle_hint_message(late) == "covered"
        assert await handle_hint_message(b'{"kind": "rm -rf"}') == "rejected"
    finally:
        functions.set_context(None)
        await hints.close()
    assert (await t.hub_state())["users"] == [t.name("ana")]


@pytest.mark.azurite
async def test_on_the_azure_queue_the_recheck_is_a_message_the_trigger_sees_only_when_due(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook, azurite: Any) -> None:
    """The Functions path of the re-check: the queue function's sync found nothing (Graph's delta
    lagged), so it leaves the re-check on the Storage queue, invisible for recheck_seconds."""
    from azure.storage.queue.aio import QueueClient

    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 1})
    ana = t.person("ana")
    await t.sync()
    name = f"hubpilot-graph-{uuid.uuid4().hex[:8]}"
    hints = AzureHints(t.ctx.settings.directory.entra.model_copy(  # type: ignore[union-attr]
        update={"queue": "azure", "queue_name": name,
                "queue_connection_string": __import__("pydantic").SecretStr(azurite.connection_string)}))
    set_notification_queue(t.ctx, hints)
    graph.lag()
    graph.add_member(t.users_group, ana)
    assert (await t.notify(t.users_group)).status_code == 202
    functions.set_context(t.ctx)
    try:
        async with QueueClient.from_connection_string(azurite.connection_string, name) as q:
            (first,) = [m async for m in q.receive_messages()]
            assert await handle_hint_message(base64.b64decode(first.content)) == "applied"
            await q.delete_message(first)
            assert (await q.get_queue_properties()).approximate_message_count == 1
            assert [m async for m in q.receive_messages()] == []  # not visible yet
            graph.catch_up()
            for _ in range(300):  # due after a second
                got = [m async for m in q.receive_messages()]
                if got:
                    break
                await asyncio.sleep(0.1)
            (second,) = got
            body = base64.b64decode(second.content)
            assert json.loads(body)["recheck"] is True
            assert await handle_hint_message(body) == "applied"
    finally:
        functions.set_context(None)
        await hints.close()
    assert (await t.hub_state())["users"] == [t.name("ana")]


@pytest.mark.azurite
async def test_a_recheck_the_queue_refuses_leaves_the_sync_applied_and_says_so(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook, azurite: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """The sync a notification started is done when its re-check is queued: a queue that refuses
    the re-check (here Azurite with a wrong account key) must not fail that sync's hint (the host
    would deliver it again) but say that the scheduled sync follows."""
    t = Tenant(graph, real_hub, webhook, entra={"recheck_seconds": 1})
    ana = t.person("ana")
    graph.add_member(t.users_group, ana)
    await t.sync()
    graph.lag()
    graph.add_member(t.users_group, t.person("ben"))
    assert (await t.notify(t.users_group)).status_code == 202  # in the in-process queue
    bad = re.sub(r"AccountKey=[^;]+", "AccountKey=" + base64.b64encode(b"not the key").decode(),
                 azurite.connection_string)
    refusing = AzureHints(t.ctx.settings.directory.entra.model_copy(  # type: ignore[union-attr]
        update={"queue": "azure", "queue_name": f"hubpilot-graph-{uuid.uuid4().hex[:8]}",
                "queue_connection_string": __import__("pydantic").SecretStr(bad)}))
    set_notification_queue(t.ctx, refusing)
    try:
        with caplog.at_level(logging.WARNING, logger="hubpilot"):
            assert await t.worker.drain_once() == 1
    finally:
        await refusing.close()
    record = t.worker.records[-1]
    assert record.outcome is Outcome.APPLIED and record.plan is not None and not record.plan.actions
    assert any("its re-check could not be queued" in r.getMessage() and record.run_id in r.getMessage()
               for r in caplog.records)


async def test_a_held_sync_lock_is_retried_not_lost(graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    t = Tenant(graph, real_hub, webhook)
    ana = t.person("ana")
    graph.add_member(t.users_group, ana)
    lease = await t.ctx.store.acquire_lock("sync", "timer:other-run", timedelta(minutes=5), t.ctx.clock())
    assert lease is not None
    waited: list[float] = []

    async def sleep(seconds: float) -> None:  # the other run finishes while we wait
        waited.append(seconds)
        await t.ctx.store.release_lock(lease)

    t.worker.sleep = sleep
    assert (await t.notify(t.users_group)).status_code == 202
    assert await t.worker.drain_once() == 1
    assert waited == [0] and [r.outcome for r in t.worker.records] == [Outcome.APPLIED]
    assert (await t.hub_state())["users"] == [t.name("ana")]


async def lifecycle(t: Tenant, sid: str, event: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=t.webhook.url, timeout=10) as http:
        return await http.post("/api/v1/graph/lifecycle", json=t.graph.lifecycle(sid, event))


def subscription_of(graph: GraphDouble, gid: str) -> str:
    return next(s["id"] for s in graph.subscriptions.values() if s["resource"] == f"groups/{gid}")


async def test_changes_graph_did_not_notify_reach_the_hub_after_a_lifecycle_event(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """change-notifications-lifecycle-events: until a reauthorizationRequired is answered Graph may
    pause delivery, and the changes meanwhile are lost ("the app should separately fetch those
    changes, for example using the delta query"); after a subscriptionRemoved, "after creating the
    new subscription, you can sync the resource data". The manager acts first, then a delta sync."""
    t = Tenant(graph, real_hub, webhook)
    ana, ben, cy = t.person("ana"), t.person("ben"), t.person("cy")
    graph.add_member(t.users_group, ana)
    await t.sync()
    await run_subscription_manager(t.ctx)
    sid = subscription_of(graph, t.users_group)

    graph.add_member(t.users_group, ben)  # while delivery is paused: no notification
    assert (await lifecycle(t, sid, "reauthorizationRequired")).status_code == 202
    assert await t.worker.drain_once() == 1  # the manager renews the subscription ...
    assert await t.worker.drain_once() == 1  # ... then the sync it asked for runs
    manager, sync = t.worker.records[-2:]
    assert (manager.operation, [x.action.kind for x in manager.results]) == ("graph-subscriptions", ["renew"])
    assert sync.operation == "sync" and sync.outcome is Outcome.APPLIED and sync.started >= manager.finished
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]

    event = graph.lifecycle(sid, "subscriptionRemoved")
    del graph.subscriptions[sid]  # Graph removed it
    graph.add_member(t.users_group, cy)
    async with httpx.AsyncClient(base_url=t.webhook.url, timeout=10) as http:
        assert (await http.post("/api/v1/graph/lifecycle", json=event)).status_code == 202
    assert await t.worker.drain_once() == 1
    assert await t.worker.drain_once() == 1
    assert [x.action.kind for x in t.worker.records[-2].results] == ["create"]
    assert subscription_of(graph, t.users_group) != sid
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben"), t.name("cy")]


async def test_a_lifecycle_event_arriving_while_a_held_lock_is_retried_is_not_dropped(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """The in-process worker retries a hint whose lock is held; what arrives meanwhile is merged
    with it, not dropped: a reauthorizationRequired is no sync, and a held manager lock is
    retried like a held sync lock (Graph pauses delivery until the subscription is reauthorized)."""
    t = Tenant(graph, real_hub, webhook)
    ana = t.person("ana")
    graph.add_member(t.users_group, ana)
    await run_subscription_manager(t.ctx)
    sid = subscription_of(graph, t.users_group)
    leases = [await t.ctx.store.acquire_lock(op, "timer:other-run", timedelta(minutes=5), t.ctx.clock())
              for op in ("sync", "graph-subscriptions")]
    assert all(leases)

    async def sleep(seconds: float) -> None:  # a lifecycle event arrives while the worker waits
        if leases[0] is not None:
            assert (await lifecycle(t, sid, "reauthorizationRequired")).status_code == 202
            await t.ctx.store.release_lock(leases[0])
            leases[0] = None
        elif leases[1] is not None:  # then the timer's manager round ends
            await t.ctx.store.release_lock(leases[1])
            leases[1] = None

    t.worker.sleep = sleep
    graph.reset_log()
    assert (await t.notify(t.users_group)).status_code == 202
    await t.worker.drain_once()
    await t.worker.drain_once()  # the sync the lifecycle event asks for after the manager
    assert [r.operation for r in t.worker.records] == ["sync", "graph-subscriptions", "sync"]
    assert graph.requests(f"/subscriptions/{sid}", "PATCH")  # reauthorized
    assert (await t.hub_state())["users"] == [t.name("ana")]


async def test_at_shutdown_a_held_sync_lock_drops_only_the_sync_hint_not_a_reauthorization(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """Shutdown begins while the worker waits to retry a sync whose lock is held, and a
    reauthorizationRequired arrived meanwhile: the sync is not retried (the scheduled sync is the
    safety net), but the reauthorization, whose lock is free, is still made: Graph pauses delivery
    until then, and nothing else would renew the subscription before it nears its expiry."""
    t = Tenant(graph, real_hub, webhook)
    await run_subscription_manager(t.ctx)
    sid = subscription_of(graph, t.users_group)
    lease = await t.ctx.store.acquire_lock("sync", "timer:other-run", timedelta(minutes=5), t.ctx.clock())
    assert lease is not None

    async def sleep(seconds: float) -> None:  # the lifecycle event arrives, then SIGTERM
        assert (await lifecycle(t, sid, "reauthorizationRequired")).status_code == 202
        t.worker.stop()

    t.worker.sleep = sleep
    graph.reset_log()
    assert (await t.notify(t.users_group)).status_code == 202
    await t.worker.drain_once()
    assert [r.operation for r in t.worker.records] == ["graph-subscriptions"]
    assert graph.requests(f"/subscriptions/{sid}", "PATCH")  # reauthorized
    await t.ctx.store.release_lock(lease)


@pytest.mark.azurite
async def test_on_the_azure_queue_a_lifecycle_message_leaves_the_sync_message_after_the_manager(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook, azurite: Any) -> None:
    """The Functions path of the lifecycle resync: the queue function runs the manager, which
    leaves a sync message on the same Storage queue; that one brings the unnotified change."""
    from azure.storage.queue.aio import QueueClient

    t = Tenant(graph, real_hub, webhook)
    name = f"hubpilot-graph-{uuid.uuid4().hex[:8]}"
    hints = AzureHints(t.ctx.settings.directory.entra.model_copy(  # type: ignore[union-attr]
        update={"queue": "azure", "queue_name": name,
                "queue_connection_string": __import__("pydantic").SecretStr(azurite.connection_string)}))
    set_notification_queue(t.ctx, hints)
    await run_subscription_manager(t.ctx)
    ana = t.person("ana")
    graph.add_member(t.users_group, ana)  # while delivery is paused: no notification
    assert (await lifecycle(t, subscription_of(graph, t.users_group), "reauthorizationRequired")).status_code == 202
    functions.set_context(t.ctx)
    try:
        async with QueueClient.from_connection_string(azurite.connection_string, name) as q:
            (first,) = [m async for m in q.receive_messages()]
            body = base64.b64decode(first.content)
            assert json.loads(body)["kind"] == "subscriptions"
            assert await handle_hint_message(body) == "applied"
            (second,) = [m async for m in q.receive_messages()]
            body = base64.b64decode(second.content)
            assert json.loads(body)["kind"] == "sync"
            assert await handle_hint_message(body) == "applied"
    finally:
        functions.set_context(None)
        await hints.close()
    assert (await t.hub_state())["users"] == [t.name("ana")]


async def test_a_subscription_the_timer_finds_gone_is_recreated_and_followed_by_a_sync(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """Graph dropped a subscription without a lifecycle event reaching hubpilot (the lifecycle URL
    was unreachable, or the subscription expired while the app was down): changes meanwhile were
    never notified. The timer's round recreates it, then queues a delta sync that fetches them; a
    round that only renews queues nothing."""
    t = Tenant(graph, real_hub, webhook)
    ana, ben = t.person("ana"), t.person("ben")
    graph.add_member(t.users_group, ana)
    await t.sync()
    await run_subscription_manager(t.ctx)
    assert await t.worker.drain_once() == 0  # the first round created them: nothing was notified before
    sid = subscription_of(graph, t.users_group)
    assert await run_subscription_manager(t.ctx, force_renew=[sid]) is not None
    assert await t.worker.drain_once() == 0  # a renewal misses nothing

    del graph.subscriptions[sid]  # gone on Graph's side, no event
    graph.add_member(t.users_group, ben)
    record = await run_subscription_manager(t.ctx)
    assert record is not None and [x.action.kind for x in record.results] == ["create"]
    assert record.plan is not None and record.plan.facts["vanished"] == [sid]
    assert await t.worker.drain_once() == 1
    sync = t.worker.records[-1]
    assert sync.operation == "sync" and sync.outcome is Outcome.APPLIED and sync.started >= record.finished
    assert (await t.hub_state())["users"] == [t.name("ana"), t.name("ben")]


async def test_a_queued_hint_whose_received_has_no_offset_is_utc(
        graph: GraphDouble, real_hub: RealHub, webhook: Webhook) -> None:
    """A hint's ``received`` is read as every stored time: without an offset it is UTC (a message
    another tool or an operator left on the queue). It made the queue function fail with a TypeError
    (naive compared with aware) on every delivery, then the poison queue; it is now covered by a
    sync that started after it, and one received after the last sync runs a sync."""
    t = Tenant(graph, real_hub, webhook)
    ana = t.person("ana")
    synced = await t.sync()
    naive = lambda d: json.dumps({"kind": "sync", "received": d.replace(tzinfo=None).isoformat()})  # noqa: E731
    functions.set_context(t.ctx)
    try:
        assert await handle_hint_message(naive(synced.started - COVER_MARGIN)) == "covered"
        graph.add_member(t.users_group, ana)
        assert await handle_hint_message(naive(synced.started + timedelta(seconds=1))) == "applied"
    finally:
        functions.set_context(None)
    assert (await t.hub_state())["users"] == [t.name("ana")]
