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


_SLOW_ADD_USER = '''
import asyncio
from jupyterhub.auth import DummyAuthenticator
class SlowAddUser(DummyAuthenticator):
    async def add_user(self, user):  # an authenticator that provisions each user somewhere
        await asyncio.sleep(0.3)
        return super().add_user(user)
c.JupyterHub.authenticator_class = SlowAddUser
'''


async def test_a_slow_bulk_creation_is_waited_for_not_sent_again(hub_factory) -> None:
    # POST /users adds the users one after the other (authenticator.add_user, a commit each): a
    # chunk takes longer than hub.timeout_seconds on a slow hub. Timed out and sent again while
    # the hub went on creating, the later attempts found the users there and answered 409: the
    # client reported nobody created (sync: "exists already") and the hub did the work again.
    hub: RealHub = await hub_factory(extra_config=_SLOW_ADD_USER)
    names = [f"slow-{i}" for i in range(8)]
    async with HubClient(hub.api_url, hub.hubpilot_token, timeout=1, stop_timeout=60,
                         backoff=0.01) as c:
        assert await c.create_users(names) == names
        assert c.stats["retries"] == 0 and c.stats["by_route"] == {"POST /users": 1}
