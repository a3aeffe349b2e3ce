"""A person removed from the access groups loses an already-open hub session too (not only the
next login and spawn): the gate answers JupyterHub's periodic ``refresh_user``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from hubpilot.adapters.hub import HubClient
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub

pytestmark = pytest.mark.hub

ACCESS = "hp-access"

EXTRA = f"""
c.Authenticator.auth_refresh_age = 1  # the hub re-checks a session's auth after 1 s (default 300)
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}], admin_groups=["hp-admins"])
"""


@pytest.fixture(scope="module")
async def session_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RealHub]:
    from tests.realhub import start_hub

    async with start_hub(tmp_path_factory.mktemp("session-hub"), extra_config=EXTRA) as hub:
        yield hub


async def _logged_in(hub: RealHub, name: str) -> httpx.AsyncClient:
    web = httpx.AsyncClient(base_url=hub.url, timeout=30)
    page = await web.get("/hub/login")
    xsrf = web.cookies.get("_xsrf")
    r = await web.post("/hub/login", data={"username": name, "password": hub.password, "_xsrf": xsrf},
                       follow_redirects=False)
    assert r.status_code == 302, (page.status_code, r.status_code, r.text)
    return web


async def test_removed_member_loses_an_open_session(session_hub: RealHub) -> None:
    name, stays = unique_name("gone"), unique_name("stays")
    async with HubClient(session_hub.api_url, session_hub.hubpilot_token) as hp:
        await hp.create_users([name, stays])
        await hp.create_group(ACCESS)
        await hp.add_group_members(ACCESS, [name, stays])
        web, other = await _logged_in(session_hub, name), await _logged_in(session_hub, stays)
        try:
            assert (await web.get("/hub/api/user")).json()["name"] == name
            await hp.remove_group_members(ACCESS, [name])  # as sync does
            await asyncio.sleep(1.5)  # past auth_refresh_age
            r = await web.get("/hub/api/user")
            assert r.status_code == 403, r.text
            page = await web.get("/hub/home", follow_redirects=False)
            assert page.status_code == 302 and "/hub/login" in page.headers["location"]
            # a member's session is untouched
            assert (await other.get("/hub/api/user")).json()["name"] == stays
        finally:
            await web.aclose()
            await other.aclose()


def test_configure_gates_the_configured_authenticator_class() -> None:
    from jupyterhub.auth import DummyAuthenticator
    from traitlets.config import Config

    import hubpilot_hub
    from hubpilot_hub import hooks

    saved = list(hooks._PARTS)
    try:
        c = Config()
        c.JupyterHub.authenticator_class = "dummy"  # an entry point name, as z2jh sets it
        hubpilot_hub.configure(c, access_groups=["a"])
        hubpilot_hub.configure(c, access_groups=["a"])  # twice: wrapped once
        cls = c.JupyterHub.authenticator_class
        assert cls.__mro__[1] is DummyAuthenticator and cls.__name__ == "DummyAuthenticator"
    finally:
        hooks._PARTS[:] = saved


async def test_a_hub_that_never_refreshes_sessions_refuses_to_start(
    hub_factory: Callable[..., Awaitable[RealHub]],
) -> None:
    """auth_refresh_age = 0 turns JupyterHub's refresh_user off: a person removed from the access
    groups would keep an open session (and make new tokens in it) until the cookie expires, weeks
    later. The hub does not start and says what to fix, also when set after configure, on the
    authenticator's own section."""
    extra = f"""
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=[{ACCESS!r}])
c.DummyAuthenticator.auth_refresh_age = 0
"""
    with pytest.raises(RuntimeError, match=r"auth_refresh_age = 0 turns JupyterHub.s refresh_user off"):
        await hub_factory(extra_config=extra)
