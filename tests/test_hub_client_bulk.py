"""Bulk user creation against a real JupyterHub when the hub refuses one name of a batch."""

from __future__ import annotations

import pytest

from hubpilot.adapters.hub import HubClient
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


async def test_one_name_the_hub_refuses_does_not_block_the_others(real_hub: RealHub) -> None:
    # POST /users answers 400 "Invalid username" for the whole batch and creates nobody: one
    # name the hub's authenticator refuses (its username_pattern may be stricter than
    # sync.naming) must not keep every other newcomer, in this chunk and the next, out.
    p = unique_name("bulkbad")
    names = [f"{p}-a", f"{p}/x", f"{p}-b", f"{p}-c"]
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token, create_chunk=2) as c:
        await c.create_users([f"{p}-b"])
        assert await c.create_users(names) == [f"{p}-a", f"{p}-c"]
        for n in (f"{p}-a", f"{p}-b", f"{p}-c"):
            assert await c.get_user(n) is not None
        assert await c.create_users(names) == []  # all that can exist do
