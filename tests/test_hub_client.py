"""HubClient against a real JupyterHub (the hubpilot service token, least privilege) and, for
retries and bad answers, against small loopback HTTP servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.ports.hub import (
    Hub,
    HubError,
    HubInvalidResponse,
    HubNotAttempted,
    HubUnreachable,
    StopResult,
    hub_round,
)
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub, free_port

pytestmark = pytest.mark.hub


@pytest.fixture
async def client(real_hub: RealHub):
    c = HubClient(real_hub.api_url, real_hub.hubpilot_token, page_size=3)
    yield c
    await c.close()


def test_hub_client_is_a_hub() -> None:
    c: Hub = HubClient("http://127.0.0.1:1/hub/api", "t")
    assert isinstance(c, HubClient)


async def test_paging_lists_every_user_over_several_pages(client: HubClient, real_hub: RealHub) -> None:
    prefix = unique_name("page")
    names = [f"{prefix}-{i}" for i in range(8)]
    assert sorted(await client.create_users(names)) == sorted(names)
    client.reset_stats()
    users = {u.name: u for u in await client.list_users()}
    assert set(names) <= set(users)
    pages = client.stats["by_route"]["GET /users"]
    # pages after the first start one user early (the overlap that detects a shifted list)
    assert pages >= 3 and pages == 1 + -(-(len(users) - 3) // 2)
    u = users[names[0]]
    assert u.admin is False and u.groups == frozenset() and u.kind == "user"
    assert u.created is not None and u.created.tzinfo is not None
    assert abs((datetime.now(UTC) - u.created).total_seconds()) < 600


async def test_bulk_create_is_idempotent(client: HubClient) -> None:
    p = unique_name("bulk")
    assert await client.create_users([f"{p}-a", f"{p}-b"]) == [f"{p}-a", f"{p}-b"]
    # all exist: the hub answers 409, the client reports nothing created
    assert await client.create_users([f"{p}-a", f"{p}-b"]) == []
    # some exist: only the new one is created
    assert await client.create_users([f"{p}-a", f"{p}-c", f"{p}-c"]) == [f"{p}-c"]
    assert await client.create_users([]) == []


async def test_bulk_create_in_chunks(real_hub: RealHub) -> None:
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token, create_chunk=2) as c:
        p = unique_name("chunk")
        names = [f"{p}-{i}" for i in range(5)]
        await c.create_users(names[:1])
        assert await c.create_users(names) == names[1:]
        assert c.stats["by_route"]["POST /users"] == 1 + 3


async def test_invalid_username_is_not_created(client: HubClient) -> None:
    # the hub refuses it (400 "Invalid username"); the caller sees it was not created
    assert await client.create_users(["  "]) == []


async def test_admin_flag(client: HubClient, real_hub: RealHub) -> None:
    name = unique_name("adm")
    await client.create_users([name])
    # JupyterHub lets only an admin grant admin (whatever its scopes): the least-privilege
    # hubpilot service cannot; docs/hub-scopes.md manages admins through a group instead
    with pytest.raises(HubError) as e:
        await client.set_admin(name, True)
    assert e.value.status == 403 and "Only admins can grant admin" in str(e.value)
    await client.set_admin(name, False)  # a no-op it may do
    async with HubClient(real_hub.api_url, real_hub.admin_token) as admin:
        await admin.set_admin(name, True)
        await admin.set_admin(name, True)  # idempotent
        assert (await admin.get_user(name)).admin is True  # type: ignore[union-attr]
        assert {u.name: u for u in await client.list_users()}[name].admin is True
        await admin.set_admin(name, False)
        assert (await admin.get_user(name)).admin is False  # type: ignore[union-attr]
        with pytest.raises(HubError) as e:
            await admin.set_admin(unique_name("nobody"), True)
        assert e.value.status == 404


async def test_groups_and_membership(client: HubClient) -> None:
    g, a, b = unique_name("grp"), unique_name("m"), unique_name("m")
    await client.create_users([a, b])
    assert await client.create_group(g) is True
    assert await client.create_group(g) is False
    await client.add_group_members(g, [a, b])
    await client.add_group_members(g, [a])  # already a member: no-op
    groups = {x.name: x for x in await client.list_groups()}
    assert groups[g].users == {a, b}
    await client.remove_group_members(g, [a])
    await client.remove_group_members(g, [a])  # already out: no-op
    await client.add_group_members(g, [])
    assert {x.name: x for x in await client.list_groups()}[g].users == {b}
    users = {u.name: u for u in await client.list_users()}
    assert users[b].groups == {g} and users[a].groups == frozenset()
    ghost = unique_name("ghost")  # a user the hub does not have is not added, and said so
    assert list(await client.add_group_members(g, [ghost])) == [ghost]


async def test_stop_default_and_named_servers(client: HubClient, real_hub: RealHub) -> None:
    name = unique_name("srv")
    await client.create_users([name])
    await real_hub.spawn(name)
    await real_hub.spawn(name, "gpu", {"profile": "gpu-small"})
    ready = {u.name: u for u in await client.list_users(state="ready")}
    servers = ready[name].servers
    assert set(servers) == {"", "gpu"}
    assert servers["gpu"].ready and servers["gpu"].user_options == {"profile": "gpu-small"}
    assert servers[""].started is not None and servers[""].started.tzinfo is not None
    assert servers[""].last_activity is not None

    assert await client.stop_server(name) in (StopResult.STOPPED, StopResult.PENDING)
    assert await client.delete_server(name, "gpu") in (StopResult.STOPPED, StopResult.PENDING)
    for _ in range(100):
        u = await client.get_user(name)
        assert u is not None
        if not any(s.ready or s.pending for s in u.servers.values()) and "gpu" not in u.servers:
            break
        await asyncio.sleep(0.1)
    assert name not in {u.name for u in await client.list_users(state="ready")}
    # again: nothing left to stop; the removed named server is gone
    assert await client.stop_server(name) in (StopResult.STOPPED, StopResult.NOT_RUNNING)
    assert await client.delete_server(name, "gpu") is StopResult.NOT_RUNNING
    assert await client.stop_server(unique_name("ghost")) is StopResult.NOT_RUNNING
    with pytest.raises(ValueError):
        await client.delete_server(name, "")


async def test_revoke_tokens(client: HubClient, real_hub: RealHub) -> None:
    name = unique_name("tok")
    await client.create_users([name])
    async with real_hub.admin() as admin:
        for note in ("a", "b"):
            r = await admin.post(f"/users/{name}/tokens", json={"note": note})
            assert r.status_code == 201, r.text
        token = r.json()["token"]
    async with real_hub.client(token) as as_user:
        assert (await as_user.get("/user")).status_code == 200
    assert await client.revoke_tokens(name) == 2
    assert await client.revoke_tokens(name) == 0
    assert await client.revoke_tokens(unique_name("ghost")) == 0
    async with real_hub.client(token) as as_user:
        assert (await as_user.get("/user")).status_code == 403


async def test_delete_user(client: HubClient) -> None:
    name = unique_name("del")
    await client.create_users([name])
    assert await client.delete_user(name) is True
    assert await client.delete_user(name) is False
    assert await client.get_user(name) is None


async def test_wrong_token_is_a_hub_error(real_hub: RealHub) -> None:
    async with HubClient(real_hub.api_url, "not-a-token", retries=0) as c:
        with pytest.raises(HubError) as e:
            await c.list_users()
        assert e.value.status == 403 and not isinstance(e.value, HubInvalidResponse)
        assert c.stats["retries"] == 0  # 4xx are not retried


# ------------------------------------------------------------------ a misbehaving loopback hub


class _Script:
    """What the fake hub answers, request after request."""

    def __init__(self, answers: list[tuple[int, str | bytes]]) -> None:
        self.answers = answers
        self.seen: list[str] = []


@pytest.fixture
def fake_hub() -> Iterator[Callable[[list[tuple[int, str | bytes]]], tuple[str, _Script]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answers: list[tuple[int, str | bytes]]) -> tuple[str, _Script]:
        script = _Script(answers)

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                script.seen.append(f"{self.command} {self.path}")
                status, body = script.answers.pop(0) if script.answers else (500, "exhausted")
                data = body if isinstance(body, bytes) else body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _answer

            def log_message(self, *a: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/hub/api", script

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _page(items: list[object], nxt: dict[str, int] | None = None) -> str:
    return json.dumps({"items": items, "_pagination": {"offset": 0, "limit": 200, "total": 1, "next": nxt}})


async def test_retries_5xx_then_succeeds(fake_hub) -> None:
    ok = _page([{"name": "x", "admin": True, "servers": {}}])
    url, script = fake_hub([(502, "bad gateway"), (503, "{}"), (200, ok)])
    async with HubClient(url, "t", retries=3, backoff=0.001) as c:
        users = await c.list_users()
    assert [u.name for u in users] == ["x"] and users[0].admin
    assert len(script.seen) == 3 and c.stats["retries"] == 2


async def test_gives_up_after_retries(fake_hub) -> None:
    url, script = fake_hub([(500, '{"message": "boom"}')] * 5)
    async with HubClient(url, "t", retries=2, backoff=0.001) as c:
        with pytest.raises(HubError) as e:
            await c.list_groups()
    assert e.value.status == 500 and "boom" in str(e.value) and len(script.seen) == 3


async def test_4xx_is_not_retried(fake_hub) -> None:
    url, script = fake_hub([(403, '{"message": "Action is not authorized"}')])
    async with HubClient(url, "t", retries=3, backoff=0.001) as c:
        with pytest.raises(HubError) as e:
            await c.create_group("g")
    assert e.value.status == 403 and len(script.seen) == 1


async def test_retries_connection_refused() -> None:
    port = free_port()  # nobody listens there
    async with HubClient(f"http://127.0.0.1:{port}/hub/api", "t", retries=2, backoff=0.001) as c:
        with pytest.raises(HubError) as e:
            await c.list_users()
    assert "unreachable" in str(e.value) and "3 attempts" in str(e.value)
    assert c.stats["retries"] == 2 and e.value.status is None


async def test_connection_refused_then_hub_comes_up(fake_hub) -> None:
    # a port that refuses first, then serves: bind the fake hub on it after the first attempt
    port = free_port()
    async with HubClient(f"http://127.0.0.1:{port}/hub/api", "t", retries=4, backoff=0.05) as c:
        task = asyncio.create_task(c.list_groups())
        while c.stats["retries"] < 1:  # the first attempt was refused
            await asyncio.sleep(0.005)
        srv = _serve_on(port, _page([{"name": "g", "users": ["a"]}]))
        try:
            groups = await task
        finally:
            srv.shutdown()
            srv.server_close()
    assert [g.name for g in groups] == ["g"] and groups[0].users == {"a"}
    assert c.stats["retries"] >= 1


def _serve_on(port: int, body: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
    return srv


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>proxy error</html>", "not JSON"),
        ('{"users": []}', "'items'"),
        (_page([{"admin": False}]), "'name' missing"),
        (_page([{"name": 7}]), "'name' should be str"),
        (_page([{"name": "a", "admin": "yes"}]), "'admin' should be bool"),
        (_page([{"name": "a", "groups": "g"}]), "'groups' should be list"),
        (_page([{"name": "a", "created": "yesterday"}]), "'created' is not an ISO time"),
        (_page([{"name": "a", "servers": {"": {"ready": "no"}}}]), "'ready' should be bool"),
        (_page([{"name": "a"}], {"offset": 0, "limit": 1}), "does not advance"),
    ],
)
async def test_invalid_responses_name_the_field(fake_hub, body: str | bytes, expected: str) -> None:
    url, _ = fake_hub([(200, body)])
    async with HubClient(url, "t", retries=0) as c:
        with pytest.raises(HubInvalidResponse) as e:
            await c.list_users()
    assert expected in str(e.value) and "GET " in str(e.value) and "/users" in str(e.value)


async def test_user_without_servers_is_a_permission_failure(fake_hub) -> None:
    url, _ = fake_hub([(200, _page([{"name": "a", "admin": False}]))])
    async with HubClient(url, "t") as c:
        with pytest.raises(HubError) as e:
            await c.list_users()
    assert e.value.status == 403 and "read:servers" in str(e.value)


async def test_concurrency_is_bounded(fake_hub) -> None:
    inflight = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_DELETE(self) -> None:
            with lock:
                inflight["now"] += 1
                inflight["max"] = max(inflight["max"], inflight["now"])
            threading.Event().wait(0.02)
            with lock:
                inflight["now"] -= 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
    try:
        async with HubClient(f"http://127.0.0.1:{srv.server_address[1]}/hub/api", "t", concurrency=3) as c:
            results = await asyncio.gather(*(c.stop_server(f"u{i}") for i in range(12)))
    finally:
        srv.shutdown()
        srv.server_close()
    assert results == [StopResult.STOPPED] * 12
    assert 1 < inflight["max"] <= 3
    assert c.stats["by_route"] == {"DELETE /users/{name}/server": 12} and c.stats["writes"] == 12


async def test_only_stops_wait_longer_than_the_timeout() -> None:
    """The hub answers a slow stop (202) only after its slow_stop_timeout; other requests keep
    the short timeout."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            threading.Event().wait(1)  # a hub that takes a second for every answer
            status = 202 if self.command == "DELETE" else 200
            body = b"" if status == 202 else json.dumps({"name": "a", "servers": {}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_DELETE = _answer

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hub/api"
    try:
        async with HubClient(url, "t", timeout=0.3, stop_timeout=5, retries=0) as c:
            with pytest.raises(HubError, match="ReadTimeout"):
                await c.get_user("a")
            assert await c.stop_server("a") is StopResult.PENDING
            assert await c.delete_server("a", "gpu") is StopResult.PENDING
        async with HubClient(url, "t", timeout=5, stop_timeout=0.3, retries=0) as c:  # never shorter
            assert await c.stop_server("a") is StopResult.PENDING
    finally:
        srv.shutdown()
        srv.server_close()


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        HubClient("http://127.0.0.1:1/hub/api", "")


async def test_names_are_url_quoted(fake_hub) -> None:
    url, script = fake_hub([(204, ""), (202, "")])
    async with HubClient(url, "t") as c:
        assert await c.stop_server("a/b c", "x?y") is StopResult.STOPPED
        assert await c.delete_server("é", "gpu") is StopResult.PENDING
    assert script.seen == [
        "DELETE /hub/api/users/a%2Fb%20c/servers/x%3Fy",
        "DELETE /hub/api/users/%C3%A9/servers/gpu",
    ]


async def test_a_round_ends_at_its_first_unanswered_request() -> None:
    """Within a round (one run), a request the hub leaves unanswered through its timeout and
    retries fails the round's later requests at once, unsent (HubNotAttempted), and stops a retry
    that waits its backoff: that request reports its own answer (a 503), not retried. A 5xx or a
    refused connection does not end the round; outside a round, and in the next one, requests are
    sent again."""
    seen: list[str] = []
    stuck = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            if self.command == "DELETE":
                stuck.wait(30)  # a hub that never answers a stop
                return
            status, body = (503, b'{"message": "busy"}') if self.command == "PATCH" else \
                (200, json.dumps({"name": "b", "servers": {}}).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_DELETE = do_PATCH = _answer

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hub/api"
    # only the stop meets silence: the requests the hub answers are sent by a client with an
    # ordinary timeout (0.3 s for them too made an answer late on a loaded machine end the round)
    silent = HubClient(url, "t", timeout=0.3, stop_timeout=0.3, retries=1, backoff=0.01)
    prompt = HubClient(url, "t", timeout=5, retries=0)
    patient = HubClient(url, "t", timeout=5, retries=1, backoff=3)  # a retry waits 1.5 to 3 s
    refused = HubClient(f"http://127.0.0.1:{free_port()}/hub/api", "t", retries=0)
    try:
        with hub_round():
            with pytest.raises(HubError, match="busy"):  # a 5xx does not end the round
                await prompt.set_admin("b", True)
            with pytest.raises(HubUnreachable):  # nor does a refused connection
                await refused.get_user("b")
            assert (await prompt.get_user("b")) is not None
            seen.clear()
            stop, patch = await asyncio.gather(silent.stop_server("a"), patient.set_admin("b", True),
                                               return_exceptions=True)
            assert isinstance(stop, HubUnreachable) and not isinstance(stop, HubNotAttempted), stop
            assert "after 2 attempts: no answer within 0.3 s" in str(stop)
            # sent before the hub fell silent: its own answer, its retry not sent
            assert isinstance(patch, HubError) and not isinstance(patch, HubUnreachable), patch
            assert patch.status == 503 and "not retried: the hub did not answer DELETE /users/a/server " \
                "within 0.3 s" in str(patch), patch
            for later in (silent.get_user("b"), patient.get_user("b"), silent.stop_server("c")):
                with pytest.raises(HubNotAttempted, match="not attempted: the hub did not answer DELETE"):
                    await later
            assert sorted(seen) == ["DELETE /hub/api/users/a/server"] * 2 + ["PATCH /hub/api/users/b"], seen
        assert (await prompt.get_user("b")) is not None  # outside a round
        with hub_round():  # the next round tries again
            assert (await patient.get_user("b")) is not None
    finally:
        stuck.set()
        for c in (silent, prompt, patient, refused):
            await c.close()
        srv.shutdown()
        srv.server_close()
