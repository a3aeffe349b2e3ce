"""HubClient with a hub.api_url that is not the hub's REST API (a real JupyterHub answers with
its HTML pages and redirects there): never 'no such user', always an error saying what to fix."""

from __future__ import annotations

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.ports.hub import HubError
from tests.realhub import RealHub

pytestmark = pytest.mark.hub


@pytest.mark.parametrize("suffix", ["/hub", "/hub/", "", "/"])
async def test_wrong_api_url_is_an_error_naming_the_setting(real_hub: RealHub, suffix: str) -> None:
    api_url = real_hub.url + suffix
    async with HubClient(api_url, real_hub.hubpilot_token, retries=0) as c:
        for call in (c.list_users, lambda: c.get_user("nobody"), lambda: c.revoke_tokens("nobody"),
                     lambda: c.stop_server("nobody"), lambda: c.delete_user("nobody")):
            with pytest.raises(HubError) as e:
                await call()
            msg = str(e.value)
            assert "hub.api_url" in msg and "/hub/api" in msg, msg
            assert "<html" not in msg.lower() and real_hub.hubpilot_token not in msg


async def test_api_url_with_trailing_slash(real_hub: RealHub) -> None:
    async with HubClient(real_hub.api_url + "/", real_hub.hubpilot_token) as c:
        assert await c.get_user("nobody-at-all") is None
        assert isinstance(await c.list_groups(), list)
