"""The Entra directory and subscription manager through the real msgraph-sdk against the
HTTP-level Graph double (tests/doubles/graph.py), with the SQLite store and the real admin app
serving the webhook."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubpilot.adapters.entra import GraphClient, StaticTokenCredential
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.entra.directory import STATE_PREFIX, EntraDirectory
from hubpilot.loop import Outcome, Status
from hubpilot.ports.directory import DirectoryError
from hubpilot.settings import Settings
from hubpilot.wiring import Context
from hubpilot.wiring.entra import (
    InProcessHints,
    NotificationWorker,
    build_entra_directory,
    notification_queue,
    run_subscription_manager,
    use_credential,
)
from tests.doubles.graph import MSI_SECRET, TOKEN, GraphDouble
from tests.doubles.login import TENANT, LoginDouble
from tests.fixtures.webhook import Webhook

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "msgraph"
SECRET = "client-state-" + uuid.uuid4().hex



def client(graph: GraphDouble, **kw: Any) -> GraphClient:
    return GraphClient(credential=StaticTokenCredential(TOKEN), base_url=graph.base_url,
                       scope="http://127.0.0.1/.default", retry_delay=0, **kw)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.sqlite3")
    yield s
    await s.close()


def people(graph: GraphDouble, n: int, tag: str = "p") -> list[str]:
    t = uuid.uuid4().hex[:6]
    return [graph.add_user(upn=f"{tag}{t}{i}@example.org", display=f"Person {i}") for i in range(n)]


def names(snapshot: Any, gid: str) -> set[str]:
    return {m.username for m in snapshot.groups[gid]}


async def state_docs(store: SqliteStore) -> dict[str, Any]:
    return await store.list(STATE_PREFIX)


# --- the SDK over the documented pages ----------------------------------------------------------

def page(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / "delta" / name).read_text())
    return doc


async def test_documented_pages_through_the_sdk_ids_normalised_and_the_malformed_id_survives(
        fresh: GraphDouble, store: SqliteStore) -> None:
    fresh.script = [page("delta-query-groups.01-initial-response.json"),
                    page("delta-query-groups.02-nextlink-response.json"),
                    page("delta-query-groups.03-final-nextlink-response.json"),
                    page("delta-query-groups.05-deltalink-changes-response.json")]
    gc = client(fresh)
    raw = await gc.delta_round(["2e5807ce-58f3-4a94-9b37-ffff2e085957"], None)
    assert len(fresh.requests("/groups/delta")) == 3  # followed both nextLinks to the deltaLink
    ids = [m["id"] for e in raw["entries"] for m in e["members"]]
    assert any(isinstance(i, uuid.UUID) for i in ids)  # the SDK's own conversion of untyped data
    changes = await gc.delta_round([], raw["delta_link"])
    removed = [m for e in changes["entries"] for m in e["members"] if m.get("@removed")]
    assert removed[0]["id"] == "632f6bb2-3ec8-4c1f-9073-0027a8c6859"  # 35 characters: left a string
    await gc.close()

    fresh.script = [page("delta-query-groups.01-initial-response.json"),
                    page("delta-query-groups.02-nextlink-response.json"),
                    page("delta-query-groups.03-final-nextlink-response.json"),
                    page("delta-query-groups.05-deltalink-changes-response.json")]
    d = EntraDirectory(client(fresh), store)
    mark8, allco = "2e5807ce-58f3-4a94-9b37-ffff2e085957", "c2f798fd-f95d-4623-8824-63aec21fffff"
    first = await d.read([mark8, allco])
    assert {m.id for m in first.groups[mark8]} == {"632f6bb2-3ec8-4c1f-9073-0027a8c68593"}
    assert {m.id for m in first.groups[allco]} == {"693acd06-2877-4339-8ade-b704261fe7a0",
                                                  "49320844-be99-4164-8167-87ff5d047ace"}
    second = await d.read([mark8, allco])
    assert {m.id for m in second.groups[mark8]} == {"632f6bb2-3ec8-4c1f-9073-0027a8c68593",
                                                   "37de1ae3-408f-4702-8636-20824abda004"}
    assert any("malformed id" in n for n in second.notes)
    (doc,) = (await state_docs(store)).values()
    assert doc["delta_link"] is None  # the next read is a full one
    await d.close()


async def test_a_removal_whose_removed_object_is_empty_is_a_removal(fresh: GraphDouble, store: SqliteStore) -> None:
    """delta-query-overview: the @removed object *may* say why; an empty one still marks a removal."""
    gid, stays, leaves = (str(uuid.uuid4()) for _ in range(3))
    for uid in (stays, leaves):
        fresh.add_user(uid)
    user = "#microsoft.graph.user"
    fresh.script = [
        {"@odata.deltaLink": "x", "value": [{"id": gid, "members@delta": [
            {"@odata.type": user, "id": stays}, {"@odata.type": user, "id": leaves}]}]},
        {"@odata.deltaLink": "x", "value": [{"id": gid, "members@delta": [
            {"@odata.type": user, "id": leaves, "@removed": {}}]}]},
    ]
    d = EntraDirectory(client(fresh), store)
    assert {m.id for m in (await d.read([gid])).groups[gid]} == {stays, leaves}
    assert {m.id for m in (await d.read([gid])).groups[gid]} == {stays}
    await d.close()


async def test_a_resync_page_without_a_next_or_delta_link_fails_and_removes_nobody(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A /groups/delta page with neither @odata.nextLink nor @odata.deltaLink is not the end of a
    round (the docs end every round with a deltaLink): read as complete, a resync that lost its
    later pages would remove everyone on them. It is a directory error; nothing is stored."""
    gid, one, two = (str(uuid.uuid4()) for _ in range(3))
    for uid in (one, two):
        fresh.add_user(uid)
    user = "#microsoft.graph.user"
    fresh.script = [{"@odata.deltaLink": "x", "value": [{"id": gid, "members@delta": [
        {"@odata.type": user, "id": one}, {"@odata.type": user, "id": two}]}]},
        {"status": 400, "error": {"code": "syncStateNotFound", "message": "expired"}}]
    d = EntraDirectory(client(fresh), store)
    assert {m.id for m in (await d.read([gid])).groups[gid]} == {one, two}
    before = await state_docs(store)
    fresh.script[0] = {"value": [{"id": gid, "members@delta": [{"@odata.type": user, "id": one}]}]}  # no link
    with pytest.raises(DirectoryError, match="deltaLink"):  # the adapter says so, and the core again
        await d.read([gid])
    assert await state_docs(store) == before
    await d.close()


async def test_a_deleted_group_whose_removed_object_is_empty_is_deleted(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """As for a member (delta-query-overview), an ``@removed`` object on a group need not say why:
    a configured group marked so was deleted, and the read fails rather than keep its members."""
    gid, one = str(uuid.uuid4()), str(uuid.uuid4())
    fresh.add_user(one)
    fresh.script = [
        {"@odata.deltaLink": "x", "value": [{"id": gid, "members@delta": [
            {"@odata.type": "#microsoft.graph.user", "id": one}]}]},
        {"@odata.deltaLink": "x", "value": [{"id": gid, "@removed": {}}]},
    ]
    d = EntraDirectory(client(fresh), store)
    assert {m.id for m in (await d.read([gid])).groups[gid]} == {one}
    before = await state_docs(store)
    with pytest.raises(DirectoryError, match="were deleted"):
        await d.read([gid])
    assert await state_docs(store) == before
    await d.close()


async def test_a_full_read_with_a_member_it_cannot_attribute_fails_and_removes_nobody(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A resync (here after 400 syncStateNotFound) lists the whole membership: a member entry
    with a malformed id (as the docs print one) is a person of unknown identity, not a leaver."""
    gid, one, two = (str(uuid.uuid4()) for _ in range(3))
    for uid in (one, two):
        fresh.add_user(uid)
    user = "#microsoft.graph.user"

    def full(second: str) -> dict[str, Any]:
        return {"@odata.deltaLink": "x", "value": [{"id": gid, "members@delta": [
            {"@odata.type": user, "id": one}, {"@odata.type": user, "id": second}]}]}

    fresh.script = [full(two), {"status": 400, "error": {"code": "syncStateNotFound", "message": "expired"}}]
    d = EntraDirectory(client(fresh), store)
    assert {m.id for m in (await d.read([gid])).groups[gid]} == {one, two}
    before = await state_docs(store)
    fresh.script[0] = full(two[:-1])  # 35 characters
    with pytest.raises(DirectoryError, match="malformed id"):
        await d.read([gid])
    assert await state_docs(store) == before
    await d.close()


async def test_azure_identity_managed_identity_token_reaches_graph(
        fresh: GraphDouble, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubpilot.adapters.entra import build_credential

    monkeypatch.setenv("IDENTITY_ENDPOINT", fresh.base_url.replace("/v1.0", "/msi/token"))
    monkeypatch.setenv("IDENTITY_HEADER", MSI_SECRET)
    credential = build_credential("managed_identity", client_id=None, tenant_id=None,
                                  authority_host="https://login.microsoftonline.com")
    gc = GraphClient(credential=credential, base_url=fresh.base_url, scope=f"{fresh.base_url[:-5]}/.default",
                     retry_delay=0)
    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 2))
    snap = await EntraDirectory(gc, store).read([g])
    assert len(snap.groups[g]) == 2
    assert fresh.token_requests and all(r.status == 200 for r in fresh.log)
    await gc.close()


async def test_a_token_graph_refuses_or_none_at_all_says_which_settings_to_fix(
        fresh: GraphDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token for another cloud's Graph (directory.entra.graph_scope naming the global Graph while
    graph_base_url names another: the double on loopback, whose managed-identity endpoint's token
    for another audience Graph refuses, 401 "Invalid audience"), and no token at all: the read's
    error names the scope asked for and the settings that make the token, and commits nothing."""
    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 2))
    fresh.audience = fresh.base_url[: -len("/v1.0")]
    monkeypatch.setenv("IDENTITY_ENDPOINT", fresh.base_url.replace("/v1.0", "/msi/token"))
    monkeypatch.setenv("IDENTITY_HEADER", MSI_SECRET)

    async def read(**entra: Any) -> str:
        ctx = Context(settings=Settings(
            hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
            directory={"kind": "entra", "entra": {"graph_base_url": fresh.base_url, "retry_delay_seconds": 0,
                                                  "credential": "managed_identity", **entra}},
            sync={"users_groups": [g]}), store=SqliteStore(tmp_path / "state.sqlite3"))
        d = build_entra_directory(ctx)
        try:
            with pytest.raises(DirectoryError) as err:
                await d.read([g])
            assert not await state_docs(ctx.store)
        finally:
            await d.close()
            await ctx.store.close()
        return str(err.value)

    refused = await read(graph_scope="https://graph.microsoft.com/.default")
    assert "401" in refused and "Invalid audience" in refused, refused
    assert "https://graph.microsoft.com/.default" in refused, refused
    assert all(name in refused for name in ("directory.entra.graph_scope", "directory.entra.graph_base_url",
                                            "directory.entra.authority_host")), refused
    assert fresh.token_requests[-1]["resource"] == "https://graph.microsoft.com"

    monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")  # the identity endpoint answers 400
    none = await read()
    assert f"no access token for Graph, asked for the scope {fresh.audience}/.default" in none, none
    assert "directory.entra.authority_host" in none, none


async def test_a_service_principal_of_another_cloud_gets_its_graph_token_from_azure_authority_host(
        fresh: GraphDouble, login: LoginDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """credential = default with a service principal from the environment in another cloud, which
    says so the Azure SDKs' way, AZURE_AUTHORITY_HOST (the double, its Entra), and
    directory.entra.authority_host unset: Graph's token comes from that authority, as the state
    store's does, not from the global one (which does not know the tenant). Set, authority_host
    names the authority, also when AZURE_AUTHORITY_HOST names another."""
    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 2))
    for var in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_TOKEN_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    login.service_principal(monkeypatch)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", login.url)
    scope = fresh.base_url[: -len("/v1.0")] + "/.default"
    login.tokens[scope] = TOKEN  # the one the Graph double takes
    for env, entra in ((login.url, {}), (login.url, {"authority_host": login.url}),
                       ("https://127.0.0.1:9", {"authority_host": login.url})):
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", env)
        ctx = Context(settings=Settings(
            hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
            directory={"kind": "entra", "entra": {"graph_base_url": fresh.base_url, "retry_delay_seconds": 0,
                                                  "timeout_seconds": 5, **entra}},
            sync={"users_groups": [g]}), store=SqliteStore(tmp_path / f"state{len(login.requests)}.sqlite3"))
        d = build_entra_directory(ctx)
        try:
            snap = await d.read([g])
        finally:
            await d.close()
            await ctx.store.close()
        assert {m.id for m in snap.groups[g]} == fresh.groups[g]["users"]
    assert [(r["path"], r["scope"]) for r in login.requests] == [(f"/{TENANT}/oauth2/v2.0/token", scope)] * 3


async def test_a_user_assigned_managed_identity_is_asked_for_by_its_client_id(
        fresh: GraphDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """credential = "managed_identity" with directory.entra.client_id: Graph's token is the
    user-assigned identity's, asked for by its client id (without it, the app's system-assigned
    identity answers, which holds other permissions or none)."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", fresh.base_url.replace("/v1.0", "/msi/token"))
    monkeypatch.setenv("IDENTITY_HEADER", MSI_SECRET)
    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 2))
    client_id = str(uuid.uuid4())
    fresh.token_requests.clear()
    ctx = Context(settings=Settings(
        hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
        directory={"kind": "entra", "entra": {"graph_base_url": fresh.base_url, "retry_delay_seconds": 0,
                                              "credential": "managed_identity", "client_id": client_id}},
        sync={"users_groups": [g]}), store=SqliteStore(tmp_path / "state.sqlite3"))
    d = build_entra_directory(ctx)
    try:
        assert len((await d.read([g])).groups[g]) == 2
    finally:
        await d.close()
        await ctx.close()
    assert fresh.token_requests and all(r.get("client_id") == client_id for r in fresh.token_requests)



# --- reads ------------------------------------------------------------------------------------------

async def test_incremental_read_costs_one_delta_and_one_lookup_with_low_priority(
        fresh: GraphDouble, store: SqliteStore) -> None:
    g = fresh.add_group()
    ps = people(fresh, 5)
    fresh.add_members(g, ps[:4])
    d = EntraDirectory(client(fresh), store)
    first = await d.read([g])
    assert names(first, g) == {fresh.users[p]["userPrincipalName"] for p in ps[:4]}
    assert first.source == "entra"
    fresh.reset_log()
    fresh.add_member(g, ps[4])
    fresh.remove_member(g, ps[0])
    second = await d.read([g])
    assert names(second, g) == {fresh.users[p]["userPrincipalName"] for p in ps[1:]}
    assert [r.path for r in fresh.log] == ["/groups/delta", "/users"]
    assert all(r.headers.get("x-ms-throttle-priority") == "low" for r in fresh.log)
    assert "$deltatoken" in fresh.log[0].query
    fresh.reset_log()
    third = await d.read([g])  # nothing changed: one request, no lookup
    assert third.groups == second.groups and [r.path for r in fresh.log] == ["/groups/delta"]
    await d.close()


async def test_a_removal_from_one_group_leaves_the_persons_other_groups_of_the_chunk_alone(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """Two groups read in one delta query (one chunk): a members@delta removal belongs to the group
    whose entry carries it; the person stays in the other group, read in the same round."""
    g1, g2 = fresh.add_group(), fresh.add_group()
    both, only1, only2 = people(fresh, 3)
    fresh.add_members(g1, [both, only1])
    fresh.add_members(g2, [both, only2])
    d = EntraDirectory(client(fresh), store)
    first = await d.read([g1, g2])
    assert {m.id for m in first.groups[g1]} == {both, only1} and {m.id for m in first.groups[g2]} == {both, only2}
    assert len(await state_docs(store)) == 1  # one chunk, one query
    fresh.remove_member(g1, both)
    second = await d.read([g1, g2])
    assert {m.id for m in second.groups[g1]} == {only1}
    assert {m.id for m in second.groups[g2]} == {both, only2}
    await d.close()


async def test_throttled_read_completes_honouring_retry_after(fresh: GraphDouble, store: SqliteStore) -> None:
    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 3))
    fresh.page_size = 2
    fresh.throttle(1, 429, retry_after=1)
    fresh.throttle(1, 503, retry_after=1)
    d = EntraDirectory(client(fresh), store)
    snap = await d.read([g])
    assert len(snap.groups[g]) == 3
    statuses = [r.status for r in fresh.log]
    assert statuses[:3] == [429, 503, 200]
    retried = fresh.log[2]
    assert retried.headers.get("retry-attempt") == "2"  # msgraph's RetryHandler, no loop of ours
    await d.close()


async def test_a_throttled_read_stops_waiting_before_the_rounds_deadline_and_commits_nothing(
        fresh: GraphDouble, tmp_path: Path) -> None:
    """A Retry-After that would end past the round's deadline (directory.entra.round_deadline_seconds)
    is not waited out (msgraph's RetryHandler would wait it, up to 180 s a retry and 5 retries): the
    read fails saying so, after the retries that fit, and commits nothing; the next read goes through."""
    g = fresh.add_group()
    ps = people(fresh, 3)
    fresh.add_members(g, ps)
    ctx = Context(settings=Settings(
        hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
        directory={"kind": "entra", "entra": {"graph_base_url": fresh.base_url, "retry_delay_seconds": 0,
                                              "round_deadline_seconds": 30}},
        sync={"users_groups": [g]}), store=SqliteStore(tmp_path / "state.sqlite3"))
    use_credential(ctx, StaticTokenCredential(TOKEN))
    d = build_entra_directory(ctx)
    try:
        await d.read([g])
        fresh.remove_member(g, ps[0])
        before = await state_docs(ctx.store)
        fresh.reset_log()
        fresh.throttle(1, 429, retry_after=1)  # within the deadline: waited out
        fresh.throttle(1, 429, retry_after=60)  # msgraph would wait (below its 180 s); past the deadline
        with pytest.raises(DirectoryError) as err:
            await d.read([g])
        message = str(err.value)
        assert message.startswith("Graph throttled; retry after 60 s would pass the round's deadline"), message
        assert "429 to GET /v1.0/groups/delta" in message and "directory.entra.round_deadline_seconds" in message
        assert [(r.path, r.status) for r in fresh.log] == [("/groups/delta", 429)] * 2
        assert fresh.log[1].headers.get("retry-attempt") == "1"
        assert await state_docs(ctx.store) == before
        fresh.reset_log()
        snap = await d.read([g])
        assert {m.id for m in snap.groups[g]} == set(ps[1:])
        assert [r.status for r in fresh.log] == [200]
    finally:
        await d.close()
        await ctx.close()


async def test_a_throttled_answer_not_waited_out_gives_its_connection_back(fresh: GraphDouble) -> None:
    """msgraph's RetryHandler releases a throttled answer only before it retries; the one the
    round's deadline stops was left unread, its pooled connection in use until the client closed
    (a long-lived host's rounds, throttled each, would use up the pool)."""
    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 1))
    gc = client(fresh, round_seconds=5)
    try:
        fresh.throttle(1, 429, retry_after=30)
        async with gc.round():
            with pytest.raises(DirectoryError, match="would pass the round's deadline"):
                await gc.list_group_users(g)
        pool = gc._http._transport.transport._pool  # msgraph's transport around httpx's own
        assert all(c.is_idle() for c in pool.connections), pool.connections  # closed or back in the pool
    finally:
        await gc.close()


@pytest.mark.parametrize("call", ["lookup_users", "list_group_users", "deleted_users"])
async def test_every_read_request_of_a_round_stops_at_its_deadline(fresh: GraphDouble, call: str) -> None:
    """The user lookups, the group listing and the deleted-items lookups of a round fail alike,
    the error not reworded; outside a round the library's own waits are unchanged. (One request
    each: a failed lookup does not cancel its siblings, which would take the next fault.)"""
    g = fresh.add_group()
    ps = people(fresh, 1)
    fresh.add_members(g, ps)
    gc = client(fresh, round_seconds=5)

    async def run() -> Any:
        if call == "list_group_users":
            return await gc.list_group_users(g)
        return await getattr(gc, call)(ps)

    try:
        fresh.reset_log()
        fresh.throttle(1, 503, retry_after=30)
        async with gc.round():
            with pytest.raises(DirectoryError, match=r"^Graph throttled; retry after 30 s would pass the round's "
                                                     r"deadline \(503 to GET "):
                await run()
        assert [r.status for r in fresh.log] == [503]
        fresh.reset_log()
        fresh.throttle(1, 429, retry_after=1)
        await run()  # no round: msgraph's RetryHandler as it is
        assert len(fresh.log) == 2 and fresh.log[0].status == 429
        assert fresh.log[1].headers.get("retry-attempt") == "1"
    finally:
        await gc.close()


@pytest.mark.parametrize(("status", "code"), [(400, ""), (410, "resyncRequired"), (410, "unknownError")])
async def test_expired_token_triggers_a_full_resync_that_reflects_removals(
        fresh: GraphDouble, store: SqliteStore, status: int, code: str) -> None:
    """Both documented answers: 400 syncStateNotFound (a directory deltaLink older than 7 days)
    and 410 Gone with a Location header (a synchronization reset), whatever error code it carries."""
    g = fresh.add_group()
    ps = people(fresh, 4)
    fresh.add_members(g, ps)
    d = EntraDirectory(client(fresh), store)
    await d.read([g])
    fresh.remove_member(g, ps[0])
    fresh.remove_member(g, ps[1])
    fresh.expire_tokens(status, code or "resyncRequired")
    fresh.reset_log()
    snap = await d.read([g])
    assert {m.id for m in snap.groups[g]} == set(ps[2:])
    assert [r.status for r in fresh.requests("/groups/delta")] == [status, 200]
    assert d.last.resyncs == 1 and any("expired" in n for n in snap.notes)
    assert not fresh.requests("/users")  # known users are not looked up again
    await d.close()


@pytest.mark.parametrize("status", [400, 410])
async def test_after_a_resync_the_next_read_goes_on_from_the_new_delta_link(
        fresh: GraphDouble, store: SqliteStore, status: int) -> None:
    """The resync's own deltaLink replaces the expired one: kept, every later read would meet the
    expired token again and read the whole membership anew."""
    g = fresh.add_group()
    ps = people(fresh, 3)
    fresh.add_members(g, ps)
    d = EntraDirectory(client(fresh), store)
    await d.read([g])
    (old,) = [doc["delta_link"] for doc in (await state_docs(store)).values()]
    fresh.expire_tokens(status)
    await d.read([g])
    assert d.last.resyncs == 1
    (new,) = [doc["delta_link"] for doc in (await state_docs(store)).values()]
    assert new and new != old  # the resync's own
    fresh.remove_member(g, ps[0])
    fresh.reset_log()
    snap = await d.read([g])
    assert {m.id for m in snap.groups[g]} == set(ps[1:])
    assert d.last.resyncs == 0 and [r.status for r in fresh.requests("/groups/delta")] == [200]
    assert "$deltatoken" in fresh.requests("/groups/delta")[0].query
    await d.close()


async def test_the_location_of_a_synchronization_reset_is_the_initial_query(fresh: GraphDouble) -> None:
    """delta-query-overview, "Synchronization reset": the 410's Location holds "a request URL with
    an empty $deltaToken (same as the initial query)". The double serves it as such: followed
    through the SDK it is a full round to a deltaLink (hubpilot itself starts its own initial
    query, the same request: see the test above)."""
    g = fresh.add_group()
    ps = people(fresh, 3)
    fresh.add_members(g, ps)
    gc = client(fresh)
    first = await gc.delta_round([g], None)
    fresh.expire_tokens(410)
    async with httpx.AsyncClient() as http:
        gone = await http.get(first["delta_link"], headers={"Authorization": f"Bearer {TOKEN}"})
    assert gone.status_code == 410
    location = gone.headers["location"]
    assert location.endswith("$deltatoken=")
    full = await gc.delta_round([], location)
    assert "expired" not in full and full["delta_link"]
    assert {str(m["id"]) for e in full["entries"] if e["id"] == g for m in e["members"]} == set(ps)
    await gc.close()


async def test_any_other_error_aborts_and_changes_nothing(fresh: GraphDouble, store: SqliteStore) -> None:
    g = fresh.add_group()
    ps = people(fresh, 2)
    fresh.add_members(g, ps)
    d = EntraDirectory(client(fresh), store)
    await d.read([g])
    before = await state_docs(store)
    fresh.remove_member(g, ps[0])
    fresh.throttle(1, 500)
    with pytest.raises(DirectoryError, match="500"):
        await d.read([g])
    assert await state_docs(store) == before
    snap = await d.read([g])  # the next read sees the change
    assert {m.id for m in snap.groups[g]} == {ps[1]}
    # a username lookup denied (no User.Read.All): the read fails, the delta round is not committed
    before = await state_docs(store)
    newcomer = people(fresh, 1)[0]
    fresh.add_member(g, newcomer)
    fresh.fail_paths["/users"] = 403
    try:
        with pytest.raises(DirectoryError, match="403 Authorization_RequestDenied"):
            await d.read([g])
    finally:
        fresh.fail_paths.clear()
    assert await state_docs(store) == before
    snap = await d.read([g])
    assert {m.id for m in snap.groups[g]} == {ps[1], newcomer}
    await d.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def one_group(fresh: GraphDouble, store: SqliteStore, n: int, refresh: timedelta | None = timedelta(hours=24),
                    ) -> tuple[str, list[str], Clock, EntraDirectory]:
    """A group of ``n`` people, read once by a directory with that username refresh."""
    g = fresh.add_group()
    ps = people(fresh, n)
    fresh.add_members(g, ps)
    clock = Clock()
    d = EntraDirectory(client(fresh), store, user_refresh=refresh, clock=clock)
    await d.read([g])
    return g, ps, clock, d


async def test_a_renamed_upn_shows_at_the_next_username_refresh(fresh: GraphDouble, store: SqliteStore) -> None:
    g, ps, clock, d = await one_group(fresh, store, 3)
    fresh.users[ps[0]]["userPrincipalName"] = "renamed@example.org"  # the group's delta says nothing
    fresh.reset_log()
    clock.now += timedelta(hours=23)
    snap = await d.read([g])
    assert "renamed@example.org" not in names(snap, g)  # not due yet: one delta request, no lookup
    assert [r.path for r in fresh.log] == ["/groups/delta"]

    fresh.reset_log()
    clock.now += timedelta(hours=1)
    snap = await d.read([g])
    assert names(snap, g) == {"renamed@example.org", *(fresh.users[p]["userPrincipalName"] for p in ps[1:])}
    assert [r.path for r in fresh.log] == ["/groups/delta", "/users"]  # one bulk read of the 3 members
    assert d.last.refreshed == 3 and d.last.renamed == 1
    assert any("another username in Entra ID" in n and ps[0] in n for n in snap.notes)

    fresh.reset_log()
    clock.now += timedelta(hours=1)
    again = await d.read([g])
    assert names(again, g) == names(snap, g) and [r.path for r in fresh.log] == ["/groups/delta"]
    await d.close()


async def test_refresh_lists_a_large_group_and_keeps_users_graph_did_not_return(
        fresh: GraphDouble, store: SqliteStore) -> None:
    big, small = fresh.add_group(), fresh.add_group()
    many, few = people(fresh, 160, "b"), people(fresh, 2, "s")
    fresh.add_members(big, many)
    fresh.add_members(small, few)
    clock = Clock()
    d = EntraDirectory(client(fresh), store, user_refresh=timedelta(hours=24), clock=clock)
    await d.read([big, small])
    fresh.users[many[7]]["userPrincipalName"] = "b-renamed@example.org"
    kept = fresh.users.pop(few[1])  # Graph does not return it (e.g. a replication delay)
    fresh.reset_log()
    clock.now += timedelta(days=2)
    snap = await d.read([big, small])
    assert "b-renamed@example.org" in names(snap, big)
    assert kept["userPrincipalName"] in names(snap, small)  # unknown is no change
    paths = [r.path for r in fresh.log]
    assert paths.count(f"/groups/{big}/members/graph.user") == 1 and paths.count("/users") == 1
    fresh.users[few[1]] = kept
    await d.close()


async def test_a_group_listing_longer_than_one_page_names_every_newcomer(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A large group's users are listed 999 a page: the listing follows @odata.nextLink, so the
    1000th newcomer gets a username too (not skipped as one the lookup did not return)."""
    g = fresh.add_group()
    many = people(fresh, 1000, "L")
    fresh.add_members(g, many)
    d = EntraDirectory(client(fresh), store)
    snap = await d.read([g])
    assert names(snap, g) == {fresh.users[p]["userPrincipalName"] for p in many}
    assert len(fresh.requests(f"/groups/{g}/members/graph.user", "GET")) == 2
    assert all(r.headers.get("x-ms-throttle-priority") == "low" for r in fresh.log)  # the next page's too
    assert not any("not returned" in n for n in snap.notes)
    await d.close()


async def test_a_deleted_user_who_keeps_the_membership_leaves_at_the_username_refresh(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """delta-query-groups: "Users that have been temporary deleted keep their group memberships and
    won't appear in the delta result until they're permanently deleted" (deleted items keep them 30
    days). A leaver deleted in Entra is found in deleted items at the next username refresh and is
    no member from then on, through a resync too; restored, a member again at the refresh after.
    A member that neither /users nor deleted items returns stays: unknown is no change."""
    g, ps, clock, d = await one_group(fresh, store, 3)

    def ids(snapshot: Any) -> set[str]:
        return {m.id for m in snapshot.groups[g]}

    fresh.soft_delete_user(ps[0])
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([g])) == set(ps)  # the group's delta says nothing; the refresh is not due
    clock.now += timedelta(hours=24)
    fresh.reset_log()
    snap = await d.read([g])
    assert ids(snap) == set(ps[1:])
    assert [r.status for r in fresh.requests(f"/directory/deletedItems/{ps[0]}", "GET")] == [200]
    assert any("deleted items" in n and ps[0] in n for n in snap.notes)
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([g])) == set(ps[1:])  # between refreshes
    fresh.expire_tokens()  # a full read lists them as member again: still none
    clock.now += timedelta(minutes=15)
    assert ids(await d.read([g])) == set(ps[1:]) and d.last.resyncs == 1

    fresh.restore_user(ps[0])
    clock.now += timedelta(hours=24)
    assert ids(await d.read([g])) == set(ps)

    kept = fresh.users.pop(ps[1])  # neither returned nor in deleted items (a replication delay)
    clock.now += timedelta(hours=24)
    fresh.reset_log()
    assert ids(await d.read([g])) == set(ps)
    assert [r.status for r in fresh.requests(f"/directory/deletedItems/{ps[1]}", "GET")] == [404]
    fresh.users[ps[1]] = kept
    await d.close()


async def test_a_newcomer_the_lookup_does_not_return_yet_is_looked_up_again_next_read(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """Graph documents replication delays for objects just created: a member the group's delta
    lists but /users does not return yet is asked for again, not left nameless until the refresh."""
    g, _, clock, d = await one_group(fresh, store, 1)
    late = people(fresh, 1)[0]
    fresh.add_member(g, late)
    kept = fresh.users.pop(late)
    snap = await d.read([g])
    assert {m.id: m.username for m in snap.groups[g]}[late] is None
    fresh.users[late] = kept
    fresh.reset_log()
    clock.now += timedelta(minutes=15)  # the next scheduled read; the refresh is not due
    snap = await d.read([g])
    assert {m.id: m.username for m in snap.groups[g]}[late] == kept["userPrincipalName"]
    assert [r.path for r in fresh.log] == ["/groups/delta", "/users"]
    fresh.reset_log()
    await d.read([g])  # found: no further lookups
    assert [r.path for r in fresh.log] == ["/groups/delta"]
    await d.close()


def adapter_tasks(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Tasks started by the Graph adapter since ``before`` that are still running."""
    out = []
    for t in asyncio.all_tasks() - before:
        code = getattr(t.get_coro(), "cr_code", None)
        if not t.done() and code is not None and code.co_filename.endswith(str(Path("adapters", "entra.py"))):
            out.append(t)
    return out


async def sent_after_failure(fresh: GraphDouble, path: str, before: set[asyncio.Task[Any]]) -> list[int]:
    """Statuses of the requests to ``path`` Graph received, once every lookup the adapter left
    running has ended."""
    left = adapter_tasks(before)
    await asyncio.wait_for(asyncio.gather(*left, return_exceptions=True), 30)
    return [r.status for r in fresh.requests(path, "GET")]


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_failed_lookup_cancels_its_siblings_and_no_request_follows_it(
        fresh: GraphDouble, store: SqliteStore, concurrency: int) -> None:
    """A read fails at its first failed lookup: the lookups not started yet are never sent (75
    newcomers are 5 bulk lookups of 15; 30 leavers are 30 deleted-items lookups), nothing of the
    read keeps running after it, and nothing is committed."""
    g, ps, clock, _ = await one_group(fresh, store, 30)
    d = EntraDirectory(client(fresh, lookup_concurrency=concurrency), store, clock=clock)
    newcomers = people(fresh, 75)
    fresh.add_members(g, newcomers)
    before_state = await state_docs(store)
    fresh.fail_paths["/users"] = 403
    fresh.reset_log()
    before = set(asyncio.all_tasks())
    try:
        with pytest.raises(DirectoryError, match="403 Authorization_RequestDenied"):
            await d.read([g])
        assert adapter_tasks(before) == []
        sent = await sent_after_failure(fresh, "/users", before)
        assert set(sent) == {403} and len(sent) <= concurrency  # those under way when the first failed
    finally:
        fresh.fail_paths.clear()
    assert await state_docs(store) == before_state

    # the refresh's deleted-items lookups: one leaver per request
    for p in ps:
        fresh.soft_delete_user(p)
    fresh.remove_member(g, newcomers[0])
    clock.now += timedelta(hours=24)
    before_state = await state_docs(store)
    fresh.fail_paths["/directory/deletedItems"] = 403
    fresh.reset_log()
    before = set(asyncio.all_tasks())
    try:
        with pytest.raises(DirectoryError, match=r"deleted items lookup failed \(403"):
            await d.read([g])
        assert adapter_tasks(before) == []
        sent = await sent_after_failure(fresh, "/directory/deletedItems", before)
        assert set(sent) == {403} and len(sent) <= concurrency  # those under way when the first failed
    finally:
        fresh.fail_paths.clear()
        for p in ps:
            fresh.restore_user(p)
    assert await state_docs(store) == before_state
    await d.close()


async def test_a_lookup_waiting_to_retry_is_not_retried_once_a_sibling_failed(fresh: GraphDouble) -> None:
    """Two deleted-items lookups at once: one is throttled (Retry-After 3 s) and waits to retry,
    the other is refused; the read fails at the refusal and the throttled one is never retried."""
    waiting, refused = str(uuid.uuid4()), str(uuid.uuid4())
    gc = client(fresh, lookup_concurrency=2)
    fresh.fail_paths[f"/directory/deletedItems/{refused}"] = 403
    fresh.throttle(1, 429, retry_after=3)  # whichever of the two the double serves from its faults
    before = set(asyncio.all_tasks())
    try:
        with pytest.raises(DirectoryError, match=r"deleted items lookup failed \(403"):
            await gc.deleted_users([waiting, refused])
        assert adapter_tasks(before) == []
        # throttled once, never retried ([]: the refusal came back before it was sent, and it never was)
        assert await sent_after_failure(fresh, f"/directory/deletedItems/{waiting}", before) in ([429], [])
    finally:
        fresh.fail_paths.clear()
        await gc.close()


async def test_refresh_off_and_a_failed_refresh_commit_nothing_new(fresh: GraphDouble, store: SqliteStore) -> None:
    g, ps, clock, off = await one_group(fresh, store, 2, refresh=None)
    fresh.users[ps[0]]["userPrincipalName"] = "late@example.org"
    clock.now += timedelta(days=30)
    fresh.reset_log()
    assert "late@example.org" not in names(await off.read([g]), g)
    assert [r.path for r in fresh.log] == ["/groups/delta"]
    await off.close()

    on = EntraDirectory(client(fresh), store, user_refresh=timedelta(hours=24), clock=clock)
    before = await state_docs(store)
    fresh.fail_paths["/users"] = 503
    try:
        with pytest.raises(DirectoryError):
            await on.read([g])
    finally:
        fresh.fail_paths.clear()
    assert await state_docs(store) == before  # membership unknown: nothing committed
    assert "late@example.org" in names(await on.read([g]), g)
    await on.close()


async def test_state_stored_before_refreshes_existed_is_refreshed_once(fresh: GraphDouble, store: SqliteStore) -> None:
    g, _, clock, d = await one_group(fresh, store, 2)
    (key,) = (await state_docs(store)).keys()
    doc, etag = await store.get_with_etag(key)  # type: ignore[misc]
    del doc["users_checked"]  # as an older hubpilot wrote it
    await store.put(key, doc, if_match=etag)
    fresh.reset_log()
    await d.read([g])
    assert [r.path for r in fresh.log] == ["/groups/delta", "/users"]
    assert (await state_docs(store))[key]["users_checked"] == clock.now.isoformat()
    await d.close()


async def test_users_checked_is_read_as_every_stored_time_and_a_damaged_one_says_what_to_do(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """``users_checked`` without an offset means UTC, as every time in hubpilot's documents (not a
    TypeError against the aware clock); one that is no time is the state's clear error, not a
    bare ValueError from the refresh."""
    g, _, clock, d = await one_group(fresh, store, 2)
    (key,) = (await state_docs(store)).keys()
    doc, etag = await store.get_with_etag(key)  # type: ignore[misc]
    doc["users_checked"] = (clock.now - timedelta(hours=25)).replace(tzinfo=None).isoformat()
    await store.put(key, doc, if_match=etag)
    fresh.reset_log()
    await d.read([g])  # 25 h ago in UTC: due for the refresh
    assert [r.path for r in fresh.log] == ["/groups/delta", "/users"]
    assert (await state_docs(store))[key]["users_checked"] == clock.now.isoformat()

    doc, etag = await store.get_with_etag(key)  # type: ignore[misc]
    doc["users_checked"] = "yesterday"
    await store.put(key, doc, if_match=etag)
    before = await state_docs(store)
    with pytest.raises(DirectoryError, match=r"users_checked.*'yesterday'.*delete the documents entra/"):
        await d.read([g])
    assert await state_docs(store) == before
    await d.close()


async def test_unknown_or_deleted_configured_group_is_an_error_never_an_empty_group(
        fresh: GraphDouble, store: SqliteStore) -> None:
    d = EntraDirectory(client(fresh), store)
    with pytest.raises(DirectoryError, match="no group with object id"):
        await d.read([str(uuid.uuid4())])
    with pytest.raises(DirectoryError, match="object ids"):
        await d.read(["analysts"])
    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 2))
    await d.read([g])
    before = await state_docs(store)
    fresh.delete_group(g)
    with pytest.raises(DirectoryError, match="were deleted"):
        await d.read([g])
    assert await state_docs(store) == before
    assert await store.list("entra/") == before
    await d.close()


async def test_a_group_id_written_in_capitals_is_the_group_the_sync_asked_for(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """Graph's object ids are GUIDs, the same in any case (Azure PowerShell, .NET print them in
    capitals): the snapshot answers each group under the name the sync asked for, which the sync
    looks its members up by (else every run failed: 'directory snapshot has no entry for group')."""
    from hubpilot.config.sync import SyncSettings
    from hubpilot.sync.plan import desired_state

    g = fresh.add_group()
    fresh.add_members(g, people(fresh, 2))
    given = g.upper()
    d = EntraDirectory(client(fresh), store)
    snapshot = await d.read([given])
    assert set(snapshot.groups) == {given}
    assert len(snapshot.groups[given]) == 2
    want = desired_state(snapshot, SyncSettings(users_groups=[given], group_names={given: "analysts"}))
    assert len(want.users) == 2
    assert (await d.read([given])).groups[given] == snapshot.groups[given]  # from the stored state
    await d.close()


async def test_nested_groups_are_expanded_and_a_change_inside_reexpands_the_parent(
        fresh: GraphDouble, store: SqliteStore) -> None:
    top, sub, subsub = fresh.add_group(), fresh.add_group(), fresh.add_group()
    ps = people(fresh, 5)
    fresh.add_member(top, ps[0])
    fresh.add_member(top, sub, "groups")
    fresh.add_member(sub, ps[1])
    fresh.add_member(sub, subsub, "groups")
    fresh.add_member(subsub, ps[2])
    fresh.add_member(subsub, top, "groups")  # a cycle
    d = EntraDirectory(client(fresh), store, nested=True)
    snap = await d.read([top])
    assert {m.id for m in snap.groups[top]} == set(ps[:3])
    assert any("cycle" in n for n in snap.notes)
    fresh.add_member(subsub, ps[3])
    fresh.remove_member(sub, ps[1])
    snap = await d.read([top])
    assert {m.id for m in snap.groups[top]} == {ps[0], ps[2], ps[3]}
    fresh.remove_member(top, sub, "groups")  # the whole branch leaves
    snap = await d.read([top])
    assert {m.id for m in snap.groups[top]} == {ps[0]}
    assert len(await state_docs(store)) == 1  # chunks of groups no longer needed are dropped
    flat = EntraDirectory(client(fresh), SqliteStore(Path(store.path).with_suffix(".flat")), nested=False)
    fresh.add_member(top, sub, "groups")
    snap = await flat.read([top])
    assert {m.id for m in snap.groups[top]} == {ps[0]} and any("nesting is off" in n for n in snap.notes)
    await d.close()
    await flat.close()


async def test_a_nested_group_graph_does_not_return_is_unknown_not_empty(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """A member group hubpilot cannot read (another tenant's, or no permission) fails the read:
    its people would otherwise lose access as if they had left."""
    top, sub = fresh.add_group(), fresh.add_group()
    ps = people(fresh, 2)
    fresh.add_member(top, ps[0])
    fresh.add_member(top, sub, "groups")
    fresh.add_member(sub, ps[1])
    d = EntraDirectory(client(fresh), store, nested=True)
    assert {m.id for m in (await d.read([top])).groups[top]} == set(ps)
    hidden = str(uuid.uuid4())  # a group Graph does not return to hubpilot
    fresh.add_member(top, hidden, "groups")
    with pytest.raises(DirectoryError, match=f"nested Entra group\\(s\\) {hidden} are members of a synced group"):
        await d.read([top])
    fresh.remove_member(top, hidden, "groups")  # once it leaves, the read goes on from the stored state
    assert {m.id for m in (await d.read([top])).groups[top]} == set(ps)
    await d.close()


async def test_usernames_come_in_bulk_from_the_configured_attribute(fresh: GraphDouble, store: SqliteStore) -> None:
    g = fresh.add_group()
    ps = [fresh.add_user(upn=f"u{i}@example.org", onPremisesSamAccountName=f"SAM{i}") for i in range(40)]
    fresh.add_members(g, ps)
    d = EntraDirectory(client(fresh, username_attribute="onPremisesSamAccountName"), store)
    snap = await d.read([g])
    assert names(snap, g) == {f"SAM{i}" for i in range(40)}
    lookups = fresh.requests("/users")
    assert len(lookups) == 3 and all("onPremisesSamAccountName" in r.query["$select"] for r in lookups)
    big = fresh.add_group()
    many = people(fresh, 400)
    fresh.add_members(big, many)
    fresh.reset_log()
    snap = await d.read([g, big])
    assert len(snap.groups[big]) == 400
    assert not fresh.requests("/users") and len(fresh.requests("graph.user")) == 1
    await d.close()


async def test_a_member_without_the_username_attribute_gets_no_hub_name(
        fresh: GraphDouble, store: SqliteStore) -> None:
    """Graph answers a selected property the user lacks as null: that member has no username
    (skipped by the sync, said in its notes), never the name 'None'."""
    from hubpilot.config.sync import SyncSettings
    from hubpilot.sync.plan import desired_state

    g = fresh.add_group()
    has, lacks = fresh.add_user(mail="has@example.org"), fresh.add_user()  # no mail
    fresh.add_members(g, [has, lacks])
    d = EntraDirectory(client(fresh, username_attribute="mail"), store)
    snap = await d.read([g])
    assert {m.id: m.username for m in snap.groups[g]} == {has: "has@example.org", lacks: None}
    want = desired_state(snap, SyncSettings(users_groups=[g]))
    assert set(want.users) == {"has@example.org"}
    assert any(lacks in n and "skipped" in n for n in want.notes), want.notes
    await d.close()


async def test_build_entra_directory_passes_each_setting_to_the_graph_client_and_the_directory(
        fresh: GraphDouble, tmp_path: Path) -> None:
    """A directory.entra setting the wiring does not pass on is silently its default: the
    username attribute, the throttle priority of every read request, nesting and its depth,
    disabled_accounts, the username refresh and max_retries each show in what a read does."""
    fresh.page_size = 1  # the delta read follows @odata.nextLink: the priority goes on every page
    top, inner, deeper = fresh.add_group(), fresh.add_group(), fresh.add_group()
    ps = [fresh.add_user(upn=f"w{i}@example.org", mail=f"mail{i}@example.org") for i in range(3)]
    fresh.users[ps[0]]["accountEnabled"] = False
    fresh.add_member(top, ps[0])
    fresh.add_member(top, inner, "groups")
    fresh.add_member(inner, ps[1])
    fresh.add_member(inner, deeper, "groups")
    fresh.add_member(deeper, ps[2])
    clock = Clock()
    ctx = Context(settings=Settings(
        hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "x"},
        directory={"kind": "entra", "entra": {
            "graph_base_url": fresh.base_url, "retry_delay_seconds": 0, "username_attribute": "mail",
            "throttle_priority": "high", "nested": True, "nested_max_depth": 1, "disabled_accounts": "keep",
            "username_refresh_hours": 1, "max_retries": 1}},
        sync={"users_groups": [top]}), store=SqliteStore(tmp_path / "state.sqlite3"), clock=clock)
    use_credential(ctx, StaticTokenCredential(TOKEN))
    d = build_entra_directory(ctx)
    try:
        snap = await d.read([top])
        # nested, one level deep; the disabled member kept; usernames from mail
        assert names(snap, top) == {"mail0@example.org", "mail1@example.org"}
        assert fresh.log and all(r.headers.get("x-ms-throttle-priority") == "high" for r in fresh.log)
        fresh.users[ps[1]]["mail"] = "renamed@example.org"
        clock.now += timedelta(hours=1)
        assert names(await d.read([top]), top) == {"mail0@example.org", "renamed@example.org"}
        fresh.reset_log()
        fresh.throttle(2, 429, retry_after=1)  # one retry allowed: the second 429 fails the read
        with pytest.raises(DirectoryError, match="429"):
            await d.read([top])
        assert [r.status for r in fresh.log] == [429, 429]
    finally:
        await d.close()
        await ctx.close()



# --- the webhook and the subscription manager ---------------------------------------------------

def entra_settings(graph: GraphDouble, hook: str, groups: list[str], **extra: Any) -> Settings:
    return Settings(
        hub={"api_url": extra.pop("hub_url", "http://127.0.0.1:9/hub/api"), "token": extra.pop("hub_token", "x")},
        directory={"kind": "entra", "entra": {
            "graph_base_url": graph.base_url, "notifications": True, "client_state": SECRET,
            "notification_url": f"{hook}/api/v1/graph/notifications", "retry_delay_seconds": 0,
            **extra.pop("entra", {})}},
        sync={"users_groups": groups, **extra.pop("sync", {})},
        **extra,
    )


async def test_handshake_forged_client_state_and_bad_bodies(fresh: GraphDouble, webhook: Webhook) -> None:
    g = fresh.add_group()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [g]))
    async with httpx.AsyncClient(base_url=webhook.url) as http:
        token = "Validation: Testing client application reachability for subscription Request-Id: 1"
        for path in ("notifications", "lifecycle"):
            r = await http.post(f"/api/v1/graph/{path}", params={"validationToken": token})
            assert (r.status_code, r.text) == (200, token)
            assert r.headers["content-type"].startswith("text/plain")
        forged = fresh.notification(g, client_state="guessed")
        r = await http.post("/api/v1/graph/notifications", json=forged)
        assert r.status_code == 403
        r = await http.post("/api/v1/graph/notifications", content=b"{oops")
        assert r.status_code == 400 and "not JSON" in r.json()["detail"]
        r = await http.post("/api/v1/graph/lifecycle", json={"value": [{"clientState": "nope"}]})
        assert r.status_code == 403
    queue = notification_queue(ctx)
    assert isinstance(queue, InProcessHints) and queue.queue.empty()
    audit, _ = await ctx.store.read_audit(operation="graph-notifications")
    # refusals are audited once a minute at most: the first post's entry stands for itself, the
    # second (seconds later) is held for the next entry's count
    assert len(audit) == 1 and audit[0]["outcome"] == "refused" and audit[0]["refused_posts"] == 1
    assert "clientState" in audit[0]["refusal"][0]


async def test_subscription_manager_creates_renews_recreates_and_is_idempotent(
        fresh: GraphDouble, webhook: Webhook) -> None:
    a, b = fresh.add_group(), fresh.add_group()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [a, b]))
    fresh.subscriptions.clear()
    record = await run_subscription_manager(ctx)
    assert record is not None and record.outcome is Outcome.APPLIED
    assert {s["resource"] for s in fresh.subscriptions.values()} == {f"groups/{a}", f"groups/{b}"}
    assert all(s["lifecycleNotificationUrl"] == f"{webhook.url}/api/v1/graph/lifecycle"
               for s in fresh.subscriptions.values())
    assert f"{webhook.url}/api/v1/graph/notifications" in fresh.validations  # the handshake was answered
    exp = {datetime.fromisoformat(s["expirationDateTime"].replace("Z", "+00:00")) for s in fresh.subscriptions.values()}
    assert all(e - datetime.now(UTC) > timedelta(days=28) for e in exp)

    again = await run_subscription_manager(ctx)
    assert again is not None and again.plan is not None and again.plan.empty

    sid_a = next(s["id"] for s in fresh.subscriptions.values() if s["resource"] == f"groups/{a}")
    fresh.subscriptions[sid_a]["expirationDateTime"] = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    fresh.reset_log()
    renewed = await run_subscription_manager(ctx)
    assert renewed is not None and [x.kind for x in renewed.plan.actions] == ["renew"]  # type: ignore[union-attr]
    assert fresh.requests(f"/subscriptions/{sid_a}", "PATCH")

    # reauthorizationRequired → renew; Graph removes it meanwhile → the renewal's 404 recreates it
    sid_b = next(s["id"] for s in fresh.subscriptions.values() if s["resource"] == f"groups/{b}")
    fresh.vanish_on_patch.add(sid_b)
    queue = notification_queue(ctx)
    assert isinstance(queue, InProcessHints)
    worker = NotificationWorker(ctx, queue)
    async with httpx.AsyncClient(base_url=webhook.url) as http:
        r = await http.post("/api/v1/graph/lifecycle", json=fresh.lifecycle(sid_b, "reauthorizationRequired"))
        assert r.status_code == 202
        assert await worker.drain_once() == 1
        rec = worker.records[-1]
        assert rec.operation == "graph-subscriptions" and rec.trigger == "lifecycle"
        assert [(x.action.kind, x.action.target) for x in rec.results] == [("renew", sid_b)]
        assert "recreated" in rec.results[0].detail
        # then a delta sync, for what Graph did not deliver meanwhile (no hub here: taken off the queue)
        assert queue.queue.get_nowait().kind == "sync" and queue.queue.empty()
        # subscriptionRemoved for one already gone: the manager creates a new one
        sid_a = next(s["id"] for s in fresh.subscriptions.values() if s["resource"] == f"groups/{a}")
        event = fresh.lifecycle(sid_a, "subscriptionRemoved")
        del fresh.subscriptions[sid_a]
        r = await http.post("/api/v1/graph/lifecycle", json=event)
        assert r.status_code == 202
        assert await worker.drain_once() == 1
    assert [x.action.kind for x in worker.records[-1].results] == ["create"]
    assert queue.queue.get_nowait().kind == "sync" and queue.queue.empty()
    assert sorted(s["resource"] for s in fresh.subscriptions.values()) == sorted([f"groups/{a}", f"groups/{b}"])


async def test_a_throttled_subscription_round_stops_waiting_before_its_deadline(
        fresh: GraphDouble, webhook: Webhook) -> None:
    """The subscription manager's round (the hourly graph_subscriptions function) is bounded as a
    read is: a Retry-After past directory.entra.round_deadline_seconds fails it, saying so."""
    g = fresh.add_group()
    fresh.subscriptions.clear()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [g], entra={"round_deadline_seconds": 30}))
    fresh.reset_log()
    fresh.throttle(1, 429, retry_after=1)
    fresh.throttle(1, 429, retry_after=60)
    rec = await run_subscription_manager(ctx)
    assert rec is not None and rec.outcome is Outcome.FAILED, rec.render()
    assert "Graph throttled; retry after 60 s would pass the round's deadline (429 to GET /v1.0/subscriptions" \
        in rec.render(), rec.render()
    assert [(r.method, r.path, r.status) for r in fresh.log] == [("GET", "/subscriptions", 429)] * 2
    assert fresh.subscriptions == {}
    again = await run_subscription_manager(ctx)
    assert again is not None and again.outcome is Outcome.APPLIED and len(fresh.subscriptions) == 1


async def test_a_new_client_state_replaces_the_subscriptions_made_with_the_old_one(
        fresh: GraphDouble, webhook: Webhook) -> None:
    g = fresh.add_group()
    fresh.subscriptions.clear()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [g]))
    await run_subscription_manager(ctx)
    (old,) = fresh.subscriptions.values()
    assert old["clientState"] == SECRET
    rotated = webhook.use(entra_settings(fresh, webhook.url, [g], entra={"client_state": "a-new-secret-" * 3}),
                          store=ctx.store)
    rec = await run_subscription_manager(rotated)
    assert rec is not None and [(x.action.kind, x.status) for x in rec.results] == [
        ("delete", Status.DONE), ("create", Status.DONE)], rec.render()
    (new,) = fresh.subscriptions.values()
    assert new["id"] != old["id"] and new["clientState"] == "a-new-secret-" * 3
    again = await run_subscription_manager(rotated)
    assert again is not None and again.plan is not None and again.plan.empty  # settled
    async with httpx.AsyncClient(base_url=webhook.url) as http:  # its notifications are accepted
        r = await http.post("/api/v1/graph/notifications", json=fresh.notification(g, client_state="a-new-secret-" * 3))
    assert r.status_code == 202


async def test_a_subscription_without_our_lifecycle_url_is_replaced(fresh: GraphDouble, webhook: Webhook) -> None:
    """A lifecycleNotificationUrl can only be given at creation (change-notifications-lifecycle-events):
    a subscription made without it, or with another one, never brings reauthorizationRequired here."""
    g = fresh.add_group()
    fresh.subscriptions.clear()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [g]))
    await run_subscription_manager(ctx)
    (old,) = fresh.subscriptions.values()
    old["lifecycleNotificationUrl"] = None  # as made before lifecycle_url was set
    rec = await run_subscription_manager(ctx)
    assert rec is not None and [(x.action.kind, x.status) for x in rec.results] == [
        ("delete", Status.DONE), ("create", Status.DONE)], rec.render()
    (new,) = fresh.subscriptions.values()
    assert new["id"] != old["id"] and new["lifecycleNotificationUrl"] == f"{webhook.url}/api/v1/graph/lifecycle"
    again = await run_subscription_manager(ctx)
    assert again is not None and again.plan is not None and again.plan.empty


async def test_notifications_off_means_no_subscriptions_and_the_webhook_says_so(
        fresh: GraphDouble, webhook: Webhook) -> None:
    g = fresh.add_group()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [g], entra={"notifications": False}))
    assert await run_subscription_manager(ctx) is None
    async with httpx.AsyncClient(base_url=webhook.url) as http:
        r = await http.post("/api/v1/graph/notifications", json=fresh.notification(g, client_state=SECRET))
    assert r.status_code == 404 and "off" in r.json()["detail"]


async def test_a_subscription_a_renewal_found_gone_is_not_reported_gone_again_at_the_next_round(
        fresh: GraphDouble, webhook: Webhook) -> None:
    """A renewal answered 404 recreates the subscription and queues the sync for what was missed.
    The old id must not stay among the subscriptions hubpilot made, or the next round says it
    vanished ("changes since were not notified") and, with any creation, queues a needless sync."""
    a, b = fresh.add_group(), fresh.add_group()
    fresh.subscriptions.clear()
    ctx = webhook.use(entra_settings(fresh, webhook.url, [a]))
    await run_subscription_manager(ctx)
    (old,) = fresh.subscriptions.values()
    fresh.vanish_on_patch.add(old["id"])
    rec = await run_subscription_manager(ctx, force_renew=[old["id"]])
    assert rec is not None and "recreated" in rec.results[0].detail, rec.render()
    queue = notification_queue(ctx)
    assert isinstance(queue, InProcessHints)
    assert queue.queue.get_nowait().kind == "sync" and queue.queue.empty()  # the missed changes
    # the next round creates one for a group added meanwhile: nothing vanished, no sync to queue
    grown = webhook.use(entra_settings(fresh, webhook.url, [a, b]), store=ctx.store)
    more = await run_subscription_manager(grown)
    assert more is not None and more.plan is not None
    assert [x.action.kind for x in more.results] == ["create"], more.render()
    assert "vanished" not in more.plan.facts and not more.plan.notes, more.render()
    grown_queue = notification_queue(grown)
    assert isinstance(grown_queue, InProcessHints) and grown_queue.queue.empty()
    again = await run_subscription_manager(grown)
    assert again is not None and again.plan is not None and again.plan.empty, again.render()


async def test_a_hint_queue_error_quoting_its_url_logs_no_shared_access_signature(
        fresh: GraphDouble, webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    """The Azure hint queue's connection string with a shared access signature puts it in every
    request's URL: a notification that cannot be queued (an invalid endpoint, whose error quotes
    the URL) is answered 503 for Graph to retry, and the log line does not show the signature."""
    from tests.test_store_review import _Garbled

    g = fresh.add_group()
    garbled = _Garbled()  # answers at once, with an answer the SDK cannot read (its error quotes the URL)
    try:
        conn = (f"QueueEndpoint=http://127.0.0.1:{garbled.port}/devstoreaccount1;"
                "SharedAccessSignature=sv=2022-11-02&ss=q&srt=sco&sp=rwdlac&sig=Xq3vSECRETSIGNATURE%2Bk%3D")
        webhook.use(entra_settings(fresh, webhook.url, [g], entra={"queue": "azure", "queue_connection_string": conn}))
        async with httpx.AsyncClient(base_url=webhook.url, timeout=30) as http:
            r = await http.post("/api/v1/graph/notifications", json=fresh.notification(g, client_state=SECRET))
    finally:
        garbled.close()
    assert r.status_code == 503, r.text
    assert "could not queue a Graph notification" in caplog.text and "did not answer" not in caplog.text
    assert "sig=(hidden)" in caplog.text, caplog.text
    assert "SECRETSIGNATURE" not in caplog.text, caplog.text


async def test_a_notification_the_queue_does_not_take_is_answered_503_within_graphs_limit(
        fresh: GraphDouble, webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    """Graph retries a notification for up to 4 hours when any answer comes within 10 s, but an
    endpoint whose answers take longer is marked slow, then its notifications are dropped for
    good. A hint queue that takes connections and never answers must not hold the answer for
    its SDK's timeouts and retries (minutes): a 503 comes within the limit, for Graph to retry."""
    import socket as _socket

    silent = _socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel does), never answers
    try:
        g = fresh.add_group()
        conn = (f"QueueEndpoint=http://127.0.0.1:{silent.getsockname()[1]}/devstoreaccount1;"
                "SharedAccessSignature=sv=2022-11-02&ss=q&srt=sco&sp=rwdlac&sig=abc")
        webhook.use(entra_settings(fresh, webhook.url, [g], entra={"queue": "azure", "queue_connection_string": conn}))
        async with httpx.AsyncClient(base_url=webhook.url, timeout=10) as http:  # Graph's limit
            r = await http.post("/api/v1/graph/notifications", json=fresh.notification(g, client_state=SECRET))
        assert r.status_code == 503, r.text
        assert "did not answer" in caplog.text
    finally:
        silent.close()


async def test_every_page_of_the_subscription_list_is_read(fresh: GraphDouble) -> None:
    """GET /subscriptions pages (subscription-list: "this API supports paging"): the manager
    decides what to create, renew and delete from the whole list; one page read alone would
    leave the others' groups looking unsubscribed, and each round would create them again."""
    fresh.subscriptions_page_size = 2
    for n in range(5):
        sid = str(uuid.uuid4())
        fresh.subscriptions[sid] = {
            "id": sid, "resource": f"groups/{uuid.uuid4()}", "changeType": "updated",
            "notificationUrl": f"https://hubpilot.example.org/api/v1/graph/notifications?n={n}",
            "lifecycleNotificationUrl": None, "expirationDateTime": "2026-11-30T08:00:00Z"}
    gc = client(fresh)
    try:
        listed = await gc.list_subscriptions()
    finally:
        await gc.close()
    # the module's double keeps earlier tests' subscriptions: 5 or more, 2 a page
    assert sorted(s["id"] for s in listed) == sorted(fresh.subscriptions)
    assert len(fresh.requests("/subscriptions")) == -(-len(fresh.subscriptions) // 2) >= 3  # every nextLink
