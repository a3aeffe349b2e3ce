"""hubpilot_hub.configure on a hub configuration that extends a container setting rather than
assigning it (``c.JupyterHub.load_groups.update(...)``, ``c.JupyterHub.load_roles.append(...)``,
``c.Authenticator.admin_users.add(...)``): traitlets keeps such a value as a LazyConfigValue,
which the hub applies to the setting's default. configure failed on it with "'LazyConfigValue'
object is not iterable", so the hub did not start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from traitlets.config import Config

import hubpilot_hub
from hubpilot_hub import hooks
from tests.realhub import RealHub, read_all


@pytest.fixture
def clean_hooks() -> Iterator[None]:
    saved = list(hooks._PARTS)
    hooks._PARTS.clear()
    yield
    hooks._PARTS[:] = saved


def test_roles_and_groups_extended_in_place_keep_their_items_and_get_the_admin_binding(clean_hooks: None) -> None:
    c = Config()
    c.JupyterHub.load_roles.append({"name": "culler", "scopes": ["list:users"], "services": ["culler"]})
    c.JupyterHub.load_roles.append({"name": "admin", "users": ["root"]})
    c.JupyterHub.load_groups.update({"staff": {"users": ["ann"]}})
    hubpilot_hub.configure(c, access_groups=["dir-analysts"], admin_groups=["dir-hub-admins"])
    assert c.JupyterHub.load_roles == [
        {"name": "culler", "scopes": ["list:users"], "services": ["culler"]},
        {"name": "admin", "users": ["root"], "groups": ["dir-hub-admins"]},
    ]
    assert c.JupyterHub.load_groups == {"staff": {"users": ["ann"]}, "dir-hub-admins": {}}


def test_admin_users_added_in_place_are_refused_saying_what_to_remove(clean_hooks: None) -> None:
    c = Config()
    c.Authenticator.admin_users.add("root")
    with pytest.raises(hubpilot_hub.ConfigurationError, match=r"remove Authenticator\.admin_users \(\['root'\]\)"):
        hubpilot_hub.configure(c, access_groups=["dir-analysts"])
    c = Config()
    c.Authenticator.admin_users.update(set())  # extended by nothing: no admin users
    hubpilot_hub.configure(c, access_groups=["dir-analysts"])


@pytest.mark.hub
async def test_a_hub_whose_groups_are_extended_in_place_starts_with_the_admin_group(
        hub_factory: Callable[..., Awaitable[RealHub]]) -> None:
    extra = """
c.JupyterHub.load_groups.update({"staff": {}})
import hubpilot_hub
hubpilot_hub.configure(c, access_groups=["dir-analysts"], admin_groups=["dir-hub-admins"])
"""
    hub = await hub_factory(extra_config=extra)
    async with hub.admin() as admin:
        names = {g["name"] for g in await read_all(admin, "/groups")}
    assert {"staff", "dir-hub-admins"} <= names
