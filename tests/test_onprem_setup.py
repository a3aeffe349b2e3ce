"""An on-prem set-up as the README and docs/hub-scopes.md describe it, against a real hub: what
the checks an admin runs say of a set-up that is not right yet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.realhub import RealHub
from tests.test_api_kit import asgi_client, auth, make_context, make_settings

pytestmark = pytest.mark.hub


async def test_readyz_is_not_ready_when_the_hub_gives_the_service_no_scopes(
        tmp_path: Path, hub_factory: Callable[..., Awaitable[RealHub]]) -> None:
    """The hub knows the service and its token but no role grants it anything (load_roles left out,
    or the role names another service): every run then fails with 403. /readyz said ready."""
    hub = await hub_factory(hubpilot_scopes=[])
    ctx, _ = make_context(tmp_path, make_settings(hub_url=hub.api_url, hub_token=hub.hubpilot_token))
    try:
        async with asgi_client(ctx) as client:
            r = await client.get("/readyz", headers=auth("reader"))
        assert r.status_code == 503, r.text
        detail = r.json()["checks"]["hub"]["detail"]
        assert "the hub grants the hubpilot service no scopes" in detail and "docs/hub-scopes.md" in detail, detail
        assert hub.hubpilot_token not in r.text
    finally:
        await ctx.close()
