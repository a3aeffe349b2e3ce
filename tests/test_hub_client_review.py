"""HubClient answers the other test files leave out: a listing answered without the hub's
pagination envelope is never taken as the whole list (a cut list reads as users gone or servers
idle)."""

from __future__ import annotations

import httpx
import pytest

from hubpilot.adapters.hub import PAGINATION, HubClient
from hubpilot.ports.hub import HubInvalidResponse
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
