"""HubClient against a real JupyterHub that changes while hubpilot reads it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from hubpilot.adapters.hub import HubClient
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


class _AfterFirstPage(httpx.AsyncBaseTransport):
    """A real transport that runs ``hook`` once, right after the first page of a listing came
    back: what another actor does to the hub between two page requests."""

    def __init__(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._hook: Callable[[], Awaitable[None]] | None = hook

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self._inner.handle_async_request(request)
        if self._hook is not None and request.method == "GET" and "offset" in request.url.params:
            await resp.aread()
            hook, self._hook = self._hook, None
            await hook()
        return resp

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_user_deleted_while_paging_makes_no_other_user_go_missing(hub_factory) -> None:
    # Offset paging: deleting a user on an earlier page shifts every later user one place down,
    # so the user at the page boundary was never listed. For sync, a managed leaver missing from
    # the list is "gone": deprovisioned without stopping their servers or revoking their tokens.
    hub: RealHub = await hub_factory()
    names = [f"u{i}" for i in range(9)]
    async with HubClient(hub.api_url, hub.hubpilot_token) as setup:
        await setup.create_users(names)

    async def delete_u0() -> None:
        async with hub.admin() as admin:
            assert (await admin.delete("/users/u0")).status_code == 204

    async with HubClient(hub.api_url, hub.hubpilot_token, page_size=3,
                         transport=_AfterFirstPage(delete_u0)) as c:
        listed = [u.name for u in await c.list_users()]
    # every user still in the hub, each once (u0, listed before it went, may or may not be)
    assert set(names[1:]) <= set(listed) and len(listed) == len(set(listed)), listed


async def test_a_group_deleted_while_paging_makes_no_other_group_go_missing(hub_factory) -> None:
    hub: RealHub = await hub_factory()
    async with HubClient(hub.api_url, hub.hubpilot_token) as setup:
        for i in range(7):
            await setup.create_group(f"g{i}")

    async def delete_g1() -> None:
        async with hub.admin() as admin:
            assert (await admin.delete("/groups/g1")).status_code == 204

    async with HubClient(hub.api_url, hub.hubpilot_token, page_size=3,
                         transport=_AfterFirstPage(delete_g1)) as c:
        listed = [g.name for g in await c.list_groups()]
    assert {f"g{i}" for i in range(7) if i != 1} <= set(listed) and len(listed) == len(set(listed)), listed


class _DeleterFor(httpx.AsyncBaseTransport):
    """A real transport and another actor deleting users for ``seconds`` (from the first reading
    on): after the first page of every reading that starts meanwhile it deletes a user of that
    page, so the later pages of the reading shift."""

    def __init__(self, delete: Callable[[], Awaitable[None]], seconds: float) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._delete, self._seconds = delete, seconds
        self._began: float | None = None
        self.deleted = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        first_page = request.method == "GET" and request.url.params.get("offset") == "0"
        if first_page and self._began is None:
            self._began = time.monotonic()
        resp = await self._inner.handle_async_request(request)
        if first_page and self._began is not None and time.monotonic() - self._began < self._seconds:
            await resp.aread()
            await self._delete()
            self.deleted += 1
        return resp

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_listing_outlasts_users_being_deleted_for_a_moment(hub_factory) -> None:
    # Another actor (an admin's script, a second hubpilot deprovisioning) deletes users for well
    # under a second. The readings of the list started over at once, so all four fell within
    # that moment and the run failed ("the list changed while it was read, 4 times in a row");
    # they now pause a little longer each time (the client's backoff), and a later reading
    # meets a list that holds still.
    hub: RealHub = await hub_factory()
    names = [f"u{i:02d}" for i in range(12)]
    async with HubClient(hub.api_url, hub.hubpilot_token) as setup:
        await setup.create_users(names)
    left = list(names)

    async def delete_one() -> None:
        async with hub.admin() as admin:
            assert (await admin.delete(f"/users/{left.pop(0)}")).status_code == 204

    deleter = _DeleterFor(delete_one, seconds=0.7)
    async with HubClient(hub.api_url, hub.hubpilot_token, page_size=3, transport=deleter) as c:
        listed = [u.name for u in await c.list_users()]
    assert deleter.deleted >= 1  # the first reading shifted
    assert set(left) <= set(listed) and len(listed) == len(set(listed)), listed


async def test_ready_listing_pages_past_a_pending_server(hub_factory) -> None:
    # The hub's ?state=ready filters a page after paging it (a started-but-not-ready server
    # counts as a row): the page boundary may fall on a user the page leaves out.
    hub: RealHub = await hub_factory(extra_config=(
        "import asyncio\n"
        "async def _hold(spawner):\n"
        "    if spawner.user.name == 'slow':\n"
        "        await asyncio.sleep(60)\n"
        "c.Spawner.pre_spawn_hook = _hold\n"))
    async with HubClient(hub.api_url, hub.hubpilot_token) as setup:
        await setup.create_users(["a", "slow", "b", "c"])
    for name in ("a", "b", "c"):
        await hub.spawn(name)
    assert (await hub.spawn("slow", wait=False)).status_code == 202
    async with HubClient(hub.api_url, hub.hubpilot_token, page_size=2) as c:
        ready = sorted(u.name for u in await c.list_users(state="ready"))
        active = sorted(u.name for u in await c.list_users(state="active"))
    assert ready == ["a", "b", "c"] and active == ["a", "b", "c", "slow"]


def test_a_page_size_of_one_is_refused() -> None:
    # Each page after the first starts one item early, and that item tells a list shifted under
    # the reading. A page of one item cannot carry it: with hub.page_size = 1 a user deleted while
    # paging made the next user go missing (u1 of u0…u3 with u0 deleted after the first page).
    from pydantic import ValidationError

    from hubpilot.config.hub import HubSettings

    with pytest.raises(ValidationError, match="page_size"):
        HubSettings(page_size=1)
    assert HubSettings(page_size=2).page_size == 2
    with pytest.raises(ValueError, match="page_size"):
        HubClient("http://127.0.0.1:1/hub/api", "t", page_size=1)
