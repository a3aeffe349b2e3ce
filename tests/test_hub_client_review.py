"""HubClient answers the other test files leave out: a listing answered without the hub's
pagination envelope, or with an envelope whose ``_pagination`` is broken, is never taken as the
whole list (a cut list reads as users gone or servers idle); a stop refused with a 400 that does
not say "not running" is an error, not "already stopped"; a user read without its servers, a
creation the authenticator fails and a rename the hub stores under another name are errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from hubpilot.adapters.hub import PAGINATION, HubClient
from hubpilot.ports.hub import HubError, HubInvalidResponse, StopResult, UsersNotCreated
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


class _AcceptRewritten(httpx.AsyncBaseTransport):
    """A real transport behind something that rewrites the Accept header (a proxy or API gateway
    in front of the hub that normalizes it to application/json)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.rewritten = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("accept") == PAGINATION:
            request.headers["accept"] = "application/json"
            self.rewritten += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_listing_answered_without_the_pagination_envelope_is_not_taken_as_complete(
        real_hub: RealHub) -> None:
    # A hub that does not see the pagination media type answers a plain list, cut at the
    # request's limit (JupyterHub 5 and 6 apply offset/limit all the same): the client took the
    # first page for the whole list, so every user past it was missing, without a word.
    p = unique_name("env")
    names = [f"{p}-{i}" for i in range(4)]
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token) as setup:
        await setup.create_users(names)
        await setup.create_group(f"{p}-g")
    transport = _AcceptRewritten()
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token, page_size=3, transport=transport,
                         retries=0) as c:
        for listing in (c.list_users, c.list_groups):
            with pytest.raises(HubInvalidResponse) as e:
                await listing()
            msg = str(e.value)
            assert "pagination" in msg and "Accept" in msg and "GET /" in msg, msg
    assert transport.rewritten == 2


# ------------------------------------------------------------------ a scripted loopback hub


@pytest.fixture
def scripted_hub() -> Iterator[Callable[[list[tuple[int, str]]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answers: list[tuple[int, str]]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                status, body = answers.pop(0) if answers else (500, '{"message": "exhausted"}')
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_DELETE = _answer

            def log_message(self, *a: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/hub/api"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


_USER = {"name": "a", "servers": {}}


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        ({"items": [_USER]}, "'_pagination' missing"),
        ({"items": [_USER], "_pagination": None}, "'_pagination' missing"),
        ({"items": [_USER], "_pagination": {"offset": 0, "limit": 3, "total": 9, "next": "4"}},
         "'_pagination.next.offset'"),
        ({"items": [_USER], "_pagination": {"offset": 0, "limit": 3, "total": 9, "next": {"offset": "3"}}},
         "'_pagination.next.offset'"),
    ],
)
async def test_a_page_whose_pagination_is_missing_or_broken_is_an_error(
        scripted_hub, envelope: dict[str, object], expected: str) -> None:
    # read as "the last page", such a page ended the listing after its own users
    url = scripted_hub([(200, json.dumps(envelope))])
    async with HubClient(url, "t", retries=0) as c:
        with pytest.raises(HubInvalidResponse) as e:
            await c.list_users()
    assert expected in str(e.value) and "GET /users" in str(e.value)


async def test_a_stop_refused_for_another_reason_is_not_already_stopped(scripted_hub) -> None:
    # JupyterHub answers 400 "Named servers are not enabled." to a stop of a named server when
    # the hub's named servers were turned off: nothing was stopped, so not "not running"
    url = scripted_hub([(400, '{"status": 400, "message": "Named servers are not enabled."}')] * 2
                       + [(400, '{"status": 400, "message": "a\'s server is not running"}')])
    async with HubClient(url, "t", retries=0) as c:
        with pytest.raises(HubError) as e:
            await c.stop_server("a", "gpu")
        assert e.value.status == 400 and "Named servers are not enabled" in str(e.value)
        with pytest.raises(HubError):
            await c.delete_server("a", "gpu")
        assert await c.stop_server("a") is StopResult.NOT_RUNNING


async def test_one_user_read_without_read_servers_is_a_permission_failure(real_hub: RealHub) -> None:
    # The hub leaves "servers" out of the user model of a token without read:servers; read as
    # "no servers", a leaver's running server was "already stopped" and never stopped
    name = unique_name("noservers")
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token, retries=0) as full:
        await full.create_users([name])
        assert (await full.get_user(name)) is not None
    async with HubClient(real_hub.api_url, real_hub.tokens["hubpilot-without-read-servers"], retries=0) as c:
        with pytest.raises(HubError) as e:
            await c.get_user(name)
    assert e.value.status == 403 and "read:servers" in str(e.value)


_FAILING_ADD_USER = '''
from jupyterhub.auth import DummyAuthenticator
class FailingAddUser(DummyAuthenticator):
    async def add_user(self, user):  # provisioning somewhere fails for one name
        if user.name == "broken":
            raise RuntimeError("home directory quota service down")
        return super().add_user(user)
c.JupyterHub.authenticator_class = FailingAddUser
'''


async def test_a_creation_the_authenticator_fails_is_an_error_not_a_refused_name(hub_factory) -> None:
    # The hub answers 400 "Failed to create user broken: ..." when its authenticator's add_user
    # fails: a failure to report with its reason, not a name the authenticator refuses (those
    # are left out quietly, the others created one by one). The hub keeps the names before it in
    # the request and creates none after it: the others are created one by one, every run (the
    # failing name fails each time: it blocked the names after it for good)
    hub: RealHub = await hub_factory(extra_config=_FAILING_ADD_USER)
    tag = unique_name("b")
    first, last = f"{tag}-a", f"{tag}-z"
    async with HubClient(hub.api_url, hub.hubpilot_token, retries=0) as c:
        with pytest.raises(UsersNotCreated) as e:
            await c.create_users(["broken"])
        assert e.value.status == 400 and e.value.created == [] and e.value.failed == {
            "broken": "home directory quota service down"}
        assert "broken: home directory quota service down" in str(e.value)
        with pytest.raises(UsersNotCreated) as e:
            await c.create_users([first, "broken", last])
        assert e.value.created == [first, last] and list(e.value.failed) == ["broken"]
        assert await c.get_user(first) is not None and await c.get_user(last) is not None
        assert await c.get_user("broken") is None


async def test_a_rename_the_hub_stores_under_another_name_is_an_error(real_hub: RealHub) -> None:
    # The hub renames to its authenticator's normalize_username of the new name (lowercased by
    # default): sync's record would then name a hub user that does not exist
    old = unique_name("ren")
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token, retries=0) as c:
        await c.create_users([old])
        with pytest.raises(HubInvalidResponse) as e:
            await c.rename_user(old, f"{old}-NEW")
        assert f"{old}-new" in str(e.value) and "normalize_username" in str(e.value)
        assert await c.get_user(f"{old}-new") is not None


class _FirstAnswerLost(httpx.AsyncBaseTransport):
    """A real transport that loses the answer to the first DELETE of a token: the hub acted on it,
    the client hears nothing (a connection reset on the way back)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self._inner.handle_async_request(request)
        if request.method == "DELETE" and "/tokens/" in request.url.path and not self.lost:
            await resp.aread()
            self.lost += 1
            raise httpx.ReadError("connection reset by peer", request=request)
        return resp

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_token_revoked_by_a_sending_whose_answer_was_lost_counts_revoked(real_hub: RealHub) -> None:
    # the retry finds the token gone (404): the lost sending revoked it, not someone else
    name = unique_name("lost")
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token) as setup:
        await setup.create_users([name])
    async with real_hub.admin() as admin:
        assert (await admin.post(f"/users/{name}/tokens", json={"note": "x"})).status_code == 201
    transport = _FirstAnswerLost()
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token, transport=transport, retries=2,
                         backoff=0.001) as c:
        assert await c.revoke_tokens(name) == 1
        assert c.stats["retries"] == 1 and transport.lost == 1
    async with real_hub.admin() as admin:
        assert (await admin.get(f"/users/{name}/tokens")).json()["api_tokens"] == []
