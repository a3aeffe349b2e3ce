"""Entra ID reads and subscription rounds cut short by the network: the real msgraph-sdk talks to
the Graph double (tests/doubles/graph.py) through ``tests/faultproxy.py``, which breaks the n-th
request before it reaches Graph, after Graph answered (the answer lost), or by never answering.

The double's own links (``@odata.nextLink``, ``@odata.deltaLink``) point at the proxy, so every
page of a round passes it. Every request of a round is cut in turn: the read fails (a directory
error: membership unknown, never "removed"), nothing of the round is committed (the stored
deltaLink stays the old one, so the next round reads the lost pages again), and a clean read then
gives the members an uncut read gives. A subscription round cut anywhere converges on the next
clean round to one subscription per group (a create whose answer was lost is not made twice).
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.entra import GraphClient, StaticTokenCredential
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.entra.directory import STATE_PREFIX, EntraDirectory
from hubpilot.entra.subscriptions import SECRETS_KEY
from hubpilot.loop import Outcome
from hubpilot.ports.directory import DirectoryError
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.entra import build_entra_directory, run_subscription_manager
from tests.doubles.graph import MSI_SECRET, TOKEN, GraphDouble, Served, start_graph_double
from tests.faultproxy import FaultProxy
from tests.fixtures.webhook import Webhook

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "client-state-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[tuple[GraphDouble, Served]]:
    double, srv = await start_graph_double(page_size=4)
    yield double, srv
    await srv.stop()


@pytest.fixture
async def graph(served: tuple[GraphDouble, Served]) -> AsyncIterator[tuple[GraphDouble, FaultProxy]]:
    """The double behind a fresh proxy; the double's links name the proxy."""
    double, srv = served
    proxy = FaultProxy("127.0.0.1", srv.port)
    await proxy.start()
    double.base_url = f"http://127.0.0.1:{proxy.port}/v1.0"
    double.faults.clear()
    double.script.clear()
    double.page_size = 4
    yield double, proxy
    await proxy.stop()


def client(proxy: FaultProxy, timeout: float = 10.0) -> GraphClient:
    return GraphClient(credential=StaticTokenCredential(TOKEN), base_url=f"http://127.0.0.1:{proxy.port}/v1.0",
                       scope="http://127.0.0.1/.default", retry_delay=0, timeout=timeout)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def truth(double: GraphDouble, top: str) -> set[tuple[str, str]]:
    """(id, username) of the users a group holds, nested groups included, soft-deleted ones not."""
    out: set[tuple[str, str]] = set()
    stack, seen = [top], set()
    while stack:
        g = stack.pop()
        if g in seen:
            continue
        seen.add(g)
        out |= {(u, double.users[u]["userPrincipalName"]) for u in double.groups[g]["users"] if u in double.users}
        stack.extend(double.groups[g]["groups"])
    return out


def members(snapshot: Any, gid: str) -> set[tuple[str, str | None]]:
    return {(m.id, m.username) for m in snapshot.groups[gid]}


async def read(proxy: FaultProxy, store: SqliteStore, clock: Clock, tops: list[str],
               timeout: float = 10.0) -> Any:
    d = EntraDirectory(client(proxy, timeout), store, nested=True, user_refresh=timedelta(hours=24), clock=clock)
    try:
        return await d.read(tops)
    finally:
        await d.close()


def people(double: GraphDouble, n: int) -> list[str]:
    t = uuid.uuid4().hex[:6]
    return [double.add_user(upn=f"f{t}{i}@example.org", display=f"Person {i}") for i in range(n)]


def tenant(double: GraphDouble) -> tuple[list[str], dict[str, list[str]]]:
    """Two synced groups, one holding a nested group: 20 users in the first (two bulk lookups of
    15), pages of 4 members, the nested group in a chunk of its own (read after the first)."""
    top, other, nested = double.add_group(), double.add_group(), double.add_group()
    who = {"top": people(double, 20), "other": people(double, 3), "nested": people(double, 5)}
    double.add_members(top, who["top"])
    double.add_members(other, who["other"] + who["top"][:2])
    double.add_members(nested, who["nested"])
    double.add_member(top, nested, "groups")
    return [top, other], {**who, "ids": [top, other, nested]}


async def cut_each(proxy: FaultProxy, count: int, modes: tuple[str, ...], attempt: Any) -> list[tuple[int, str]]:
    """Run ``attempt(n, mode)`` with the n-th request cut, for every n up to ``count`` and mode;
    returns the (n, mode) pairs whose cut hit a request."""
    hit = []
    for n in range(1, count + 1):
        for mode in modes:
            proxy.reset()
            proxy.cut(n, mode, sticky=mode == "before")
            await attempt(n, mode)
            if proxy.faulted():
                hit.append((n, mode))
    return hit


async def test_a_first_full_read_cut_at_any_request_commits_nothing_and_a_clean_read_converges(
        graph: tuple[GraphDouble, FaultProxy], tmp_path: Path) -> None:
    double, proxy = graph
    tops, _ = tenant(double)
    clock = Clock()

    # an uncut read, to count its requests and know its answer
    ref = SqliteStore(tmp_path / "ref.sqlite3")
    proxy.reset()
    uncut = await read(proxy, ref, clock, tops)
    requests = proxy.count
    paths = [s.path for s in proxy.seen]
    assert sum("skiptoken" in p for p in paths) >= 4  # nextLink pages
    assert sum(p.startswith("/v1.0/users") for p in paths) >= 2  # bulk lookups, 15 a request
    for top in tops:
        assert members(uncut, top) == truth(double, top)
    await ref.close()

    store = SqliteStore(tmp_path / "state.sqlite3")
    try:
        async def attempt(n: int, mode: str) -> None:
            with pytest.raises(DirectoryError) as err:
                await read(proxy, store, clock, tops)
            assert str(err.value), (n, mode)
            assert await store.list(STATE_PREFIX) == {}, f"request {n} cut {mode}: a failed read committed state"

        hit = await cut_each(proxy, requests, ("before", "after"), attempt)
        assert len(hit) == 2 * requests

        proxy.reset()
        clean = await read(proxy, store, clock, tops)
        for top in tops:
            assert members(clean, top) == members(uncut, top)
    finally:
        await store.close()


async def test_an_incremental_round_cut_at_any_request_keeps_the_old_delta_link_and_converges(
        graph: tuple[GraphDouble, FaultProxy], tmp_path: Path) -> None:
    double, proxy = graph
    tops, who = tenant(double)
    top, _ = tops
    nested = who["ids"][2]
    clock = Clock()
    store = SqliteStore(tmp_path / "state.sqlite3")
    try:
        proxy.reset()
        await read(proxy, store, clock, tops)
        baseline = await store.list(STATE_PREFIX)
        assert len(baseline) == 2  # the synced groups' chunk and the nested group's

        # changes over several pages: adds (looked up), @removed members, a soft-deleted user
        # (only the username refresh, due after 24 h, finds it: /users misses it, deletedItems has it)
        newcomers = people(double, 6)
        double.add_members(top, newcomers[:4])
        double.add_members(nested, newcomers[4:])
        for uid in who["top"][2:6] + who["nested"][:1]:
            double.remove_member(top if uid in who["top"] else nested, uid)
        double.soft_delete_user(who["top"][10])
        clock.now = START + timedelta(hours=25)

        ref = SqliteStore(tmp_path / "ref.sqlite3")
        for k, doc in baseline.items():
            await ref.put(k, doc)
        proxy.reset()
        uncut = await read(proxy, ref, clock, tops)
        await ref.close()
        requests = proxy.count
        paths = [s.path for s in proxy.seen]
        assert sum("deltatoken" in p for p in paths) == 2 and sum("skiptoken" in p for p in paths) >= 1
        assert any("/directory/deletedItems/" in p for p in paths)
        for t in tops:
            assert members(uncut, t) == truth(double, t)
        assert who["top"][10] not in {m.id for m in uncut.groups[top]}

        async def attempt(n: int, mode: str) -> None:
            with pytest.raises(DirectoryError):
                await read(proxy, store, clock, tops)
            assert await store.list(STATE_PREFIX) == baseline, f"request {n} cut {mode}: a failed read committed"

        hit = await cut_each(proxy, requests, ("before", "after"), attempt)
        assert len(hit) == 2 * requests

        proxy.reset()
        clean = await read(proxy, store, clock, tops)
        for t in tops:
            assert members(clean, t) == members(uncut, t)
    finally:
        await store.close()


async def test_graph_that_never_answers_ends_the_read_within_the_timeout_with_a_clear_error(
        graph: tuple[GraphDouble, FaultProxy], tmp_path: Path) -> None:
    double, proxy = graph
    tops, _ = tenant(double)
    clock = Clock()
    store = SqliteStore(tmp_path / "state.sqlite3")
    try:
        for n in (1, 2, 6):  # the first delta page, a nextLink page, a lookup
            proxy.reset()
            proxy.cut(n, "hang")
            with pytest.raises(DirectoryError) as err:
                await read(proxy, store, clock, tops, timeout=1.0)
            assert [s.fault for s in proxy.seen][n - 1] == "hang"
            message = str(err.value)
            assert "no answer from Graph within 1 s" in message, message
            assert "directory.entra.timeout_seconds" in message, message
            assert await store.list(STATE_PREFIX) == {}
    finally:
        await store.close()


# --- the subscription manager ---------------------------------------------------------------

def sub_settings(proxy: FaultProxy, hook: str, groups: list[str], timeout: float = 10.0) -> Settings:
    return Settings(
        hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
        directory={"kind": "entra", "entra": {
            "graph_base_url": f"http://127.0.0.1:{proxy.port}/v1.0", "notifications": True,
            "client_state": SECRET, "notification_url": f"{hook}/api/v1/graph/notifications",
            "retry_delay_seconds": 0, "timeout_seconds": timeout}},
        sync={"users_groups": groups},
    )


def ours(double: GraphDouble, hook: str) -> list[dict[str, Any]]:
    return [s for s in double.subscriptions.values() if s["notificationUrl"] == f"{hook}/api/v1/graph/notifications"]


async def test_a_subscription_round_cut_at_any_request_converges_without_duplicates(
        graph: tuple[GraphDouble, FaultProxy], webhook: Webhook) -> None:
    double, proxy = graph
    a, b, c, d = (double.add_group() for _ in range(4))
    double.subscriptions.clear()
    base_ctx = webhook.use(sub_settings(proxy, webhook.url, [a, b, c]))
    rec = await run_subscription_manager(base_ctx)
    assert rec is not None and rec.outcome is Outcome.APPLIED
    sid_a = next(s["id"] for s in ours(double, webhook.url) if s["resource"] == f"groups/{a}")
    double.subscriptions[sid_a]["expirationDateTime"] = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    subs0 = copy.deepcopy(double.subscriptions)
    secrets0 = await base_ctx.store.get(SECRETS_KEY)
    assert secrets0 is not None

    async def world() -> Any:
        """The round to cut: delete c's (no longer configured), renew a's, create d's."""
        double.subscriptions = copy.deepcopy(subs0)
        ctx = webhook.use(sub_settings(proxy, webhook.url, [a, b, d]))
        await ctx.store.put(SECRETS_KEY, secrets0)
        return ctx

    def converged() -> None:
        mine = ours(double, webhook.url)
        assert sorted(s["resource"] for s in mine) == sorted(f"groups/{g}" for g in (a, b, d)), mine
        renewed = next(s for s in mine if s["resource"] == f"groups/{a}")
        exp = datetime.fromisoformat(renewed["expirationDateTime"].replace("Z", "+00:00"))
        assert exp - datetime.now(UTC) > timedelta(days=1)

    ctx = await world()
    proxy.reset()
    uncut = await run_subscription_manager(ctx)
    assert uncut is not None and uncut.outcome is Outcome.APPLIED
    assert sorted(x.action.kind for x in uncut.results) == ["create", "delete", "renew"]
    converged()
    requests = proxy.count
    assert requests == 4  # list, delete, renew, create

    async def attempt(n: int, mode: str) -> None:
        cut_ctx = await world()
        rec = await run_subscription_manager(cut_ctx)
        assert rec is not None and rec.outcome is not Outcome.APPLIED, (n, mode, rec.render())
        cut = proxy.seen[n - 1]
        assert f"Graph {cut.method} {cut.path.split('?')[0].removeprefix('/v1.0')}: the connection to Graph " \
               "failed" in rec.render(), (n, mode, rec.render())
        proxy.cuts.clear()
        proxy.rules.clear()
        for _ in range(2):  # the clean round converges; the one after has nothing to do
            again = await run_subscription_manager(cut_ctx)
            assert again is not None and again.outcome is Outcome.APPLIED, (n, mode, again.render())
        converged()
        assert again.plan is not None and again.plan.empty, (n, mode, again.render())
        kept = await cut_ctx.store.get(SECRETS_KEY) or {}
        assert set(kept) == {s["id"] for s in ours(double, webhook.url)}, (n, mode)
        await cut_ctx.store.close()

    hit = await cut_each(proxy, requests, ("before", "after"), attempt)
    assert len(hit) == 2 * requests


async def test_a_subscription_round_graph_never_answers_fails_within_the_timeout_with_a_clear_error(
        graph: tuple[GraphDouble, FaultProxy], webhook: Webhook) -> None:
    double, proxy = graph
    g = double.add_group()
    double.subscriptions.clear()
    for n, what in ((1, "GET"), (2, "POST")):  # the listing, the create
        ctx = webhook.use(sub_settings(proxy, webhook.url, [g], timeout=1.0))
        proxy.reset()
        proxy.cut(n, "hang")
        rec = await run_subscription_manager(ctx)
        assert rec is not None and rec.outcome is not Outcome.APPLIED, rec
        assert proxy.seen[n - 1].method == what and proxy.seen[n - 1].fault == "hang"
        text = rec.render()
        assert "no answer from Graph within 1 s" in text and "directory.entra.timeout_seconds" in text, text
        await ctx.store.close()
    proxy.reset()
    assert not ours(double, webhook.url)  # the create never reached Graph


async def test_a_create_that_graph_made_but_answered_504_is_retried_and_the_duplicate_is_deleted(
        graph: tuple[GraphDouble, FaultProxy], webhook: Webhook) -> None:
    """msgraph's RetryHandler retries a POST answered 429/503/504: a 504 from a gateway while Graph
    made the subscription gives a second one. The next round deletes the extra (it keeps the one
    that expires last), and the round after has nothing to do."""
    double, proxy = graph
    g = double.add_group()
    double.subscriptions.clear()
    ctx = webhook.use(sub_settings(proxy, webhook.url, [g]))
    double.fail_after.append(("POST", "/subscriptions", 504))
    rec = await run_subscription_manager(ctx)
    assert rec is not None and rec.outcome is Outcome.APPLIED, rec.render()
    assert [s.method for s in proxy.seen].count("POST") == 2  # the SDK's retry
    assert len(ours(double, webhook.url)) == 2
    again = await run_subscription_manager(ctx)
    assert again is not None and again.outcome is Outcome.APPLIED, again.render()
    assert [(r.action.kind, r.action.reason) for r in again.results] == [
        ("delete", "a second subscription for the same group")]
    (left,) = ours(double, webhook.url)
    assert set(await ctx.store.get(SECRETS_KEY) or {}) == {left["id"]}
    third = await run_subscription_manager(ctx)
    assert third is not None and third.plan is not None and third.plan.empty, third.render()


async def test_a_token_endpoint_that_never_answers_fails_the_read_within_the_timeout(
        graph: tuple[GraphDouble, FaultProxy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The managed-identity endpoint (App Service's IDENTITY_ENDPOINT, served by the double) behind
    the proxy, accepting and never answering: each try of the token request has the Graph timeout
    (azure-core's default is 300 s a try); the read fails saying so, and reached no Graph path."""
    double, proxy = graph
    g = double.add_group()
    double.add_members(g, people(double, 2))
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{proxy.port}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", MSI_SECRET)
    def settings(**entra: Any) -> Settings:
        return Settings(
            hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
            directory={"kind": "entra", "entra": {
                "graph_base_url": f"http://127.0.0.1:{proxy.port}/v1.0", "credential": "managed_identity",
                "retry_delay_seconds": 0, "timeout_seconds": 1, **entra}},
            sync={"users_groups": [g]},
        )

    ctx = Context(settings=settings(), store=SqliteStore(tmp_path / "state.sqlite3"))
    directory = build_entra_directory(ctx)
    proxy.reset()
    proxy.rule(lambda method, path: path.startswith("/msi/token"), "hang")
    try:
        # a bound for the test only, far above the tries' timeouts; without them it would wait 300 s a try
        with pytest.raises(DirectoryError) as err:
            await asyncio.wait_for(directory.read([g]), 90)
        message = str(err.value)
        assert "the token endpoint gave no answer within 1 s a try (directory.entra.timeout_seconds)" in message, \
            message
        assert proxy.seen and all(s.path.startswith("/msi/token") for s in proxy.seen)
        assert await ctx.store.list(STATE_PREFIX) == {}

        # the subscription manager's credential is built the same way
        sub_ctx = Context(settings=settings(notifications=True, client_state=SECRET,
                                            notification_url="http://127.0.0.1:9/api/v1/graph/notifications"),
                          store=ctx.store)
        rec = await asyncio.wait_for(run_subscription_manager(sub_ctx), 90)
        assert rec is not None and rec.outcome is Outcome.FAILED
        assert "Graph GET /subscriptions: no access token for Graph: the token endpoint gave no answer within 1 s a " \
               "try (directory.entra.timeout_seconds)" in rec.render(), rec.render()

        # and so is the hint queue's, identity-based (the pushes after a manager round and the
        # re-checks had no bound but azure-core's 300 s a try)
        from azure.core.exceptions import AzureError

        from hubpilot.entra.notifications import Hint
        from hubpilot.wiring.entra import notification_queue

        q_ctx = Context(settings=settings(notifications=True, client_state=SECRET, queue="azure",
                                          queue_account_url="https://127.0.0.1:9/",
                                          notification_url="http://127.0.0.1:9/api/v1/graph/notifications"),
                        store=ctx.store)
        hints = notification_queue(q_ctx)
        try:
            proxy.seen.clear()
            # no token: azure-identity's error, not the test's bound (the token request unbounded)
            with pytest.raises(AzureError, match="Timeout on reading"):
                await asyncio.wait_for(hints.push(Hint("sync", (g,))), 60)
            assert proxy.seen and all(s.path.startswith("/msi/token") for s in proxy.seen)
        finally:
            await hints.close()

        proxy.reset()  # the endpoint answers again: the next read goes through
        assert {m.id for m in (await directory.read([g])).groups[g]} == double.groups[g]["users"]
    finally:
        await directory.close()
        await ctx.close()


async def test_a_resync_after_an_expired_token_cut_at_any_request_keeps_the_state_and_converges(
        graph: tuple[GraphDouble, FaultProxy], tmp_path: Path) -> None:
    """The stored deltaLink has expired (400 syncStateNotFound): the read starts a full one. Cut
    anywhere, it commits nothing (the expired link stays, so the next read resyncs again) and a
    removal it would have found is not lost."""
    double, proxy = graph
    g = double.add_group()
    who = people(double, 9)
    double.add_members(g, who)
    clock = Clock()
    store = SqliteStore(tmp_path / "state.sqlite3")
    try:
        proxy.reset()
        await read(proxy, store, clock, [g])
        baseline = await store.list(STATE_PREFIX)
        double.remove_member(g, who[0])
        double.add_members(g, people(double, 2))
        double.expire_tokens()

        async def attempt(n: int, mode: str) -> None:
            with pytest.raises(DirectoryError):
                await read(proxy, store, clock, [g])
            assert await store.list(STATE_PREFIX) == baseline, f"request {n} cut {mode}: a failed read committed"

        proxy.reset()
        ref = SqliteStore(tmp_path / "ref.sqlite3")
        for k, doc in baseline.items():
            await ref.put(k, doc)
        uncut = await read(proxy, ref, clock, [g])
        await ref.close()
        requests = proxy.count
        assert [s.path.split("?")[1][:12] for s in proxy.seen][:2] == ["$deltatoken=", "$filter=id%2"]
        assert members(uncut, g) == truth(double, g)

        hit = await cut_each(proxy, requests, ("before", "after"), attempt)
        assert len(hit) == 2 * requests
        proxy.reset()
        assert members(await read(proxy, store, clock, [g]), g) == members(uncut, g)
    finally:
        await store.close()
