"""hubpilot's service role is least privilege: every scope in HUBPILOT_SCOPES exists in
JupyterHub 5.5, none is implied by another, and dropping any one makes a hubpilot operation fail
with 403 — shown in ONE real hub that carries a service per dropped scope (tests/fixtures/hub.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from jupyterhub import roles as jh_roles
from jupyterhub import scopes as jh_scopes
from jupyterhub.app import JupyterHub
from traitlets.config import Config

from hubpilot.adapters.hub import HubClient
from hubpilot.ports.hub import HubError
from hubpilot_hub.scopes import FEATURE_SCOPES, HUBPILOT_SCOPES, IMPLIED_SCOPES, minimal_role
from tests.fixtures.hub import unique_name
from tests.realhub import PROJECT_ROOT, RealHub, drop_one_services

# scope → the hubpilot operation that needs it (on an existing user ``name``)
OPERATIONS: dict[str, Callable[[HubClient, str], Awaitable[Any]]] = {
    "admin:users": lambda c, name: c.create_users([unique_name("new")]),  # sync: create users
    "admin:groups": lambda c, name: c.create_group(unique_name("grp")),  # sync: create groups
    "read:servers": lambda c, name: c.list_users(),  # cull/scale: see servers
    "delete:servers": lambda c, name: c.stop_server(name),  # sync/cull: stop servers
    "tokens": lambda c, name: c.revoke_tokens(name),  # sync: revoke tokens of removed people
}


def test_every_scope_has_an_operation() -> None:
    assert set(OPERATIONS) == set(HUBPILOT_SCOPES)


def test_scopes_exist_and_are_valid_for_a_role() -> None:
    for feature, scopes in FEATURE_SCOPES.items():
        for s in scopes:
            assert s in jh_scopes.scope_definitions, (feature, s)
    jh_scopes._check_scopes_exist(HUBPILOT_SCOPES, who_for="role hubpilot")
    assert jh_roles._validate_role_name("hubpilot")


def test_implication_table_matches_jupyterhub() -> None:
    for scope, implied in IMPLIED_SCOPES.items():
        assert set(jh_scopes._expand_scope(scope)) - {scope} == set(implied), scope


def test_role_is_the_minimal_union_of_features() -> None:
    union = {s for scopes in FEATURE_SCOPES.values() for s in scopes}
    assert HUBPILOT_SCOPES == sorted(HUBPILOT_SCOPES)
    assert HUBPILOT_SCOPES == minimal_role(union)
    granted = set().union(*(jh_scopes._expand_scope(s) for s in HUBPILOT_SCOPES))
    assert union <= granted  # every feature's scope is granted
    for s in HUBPILOT_SCOPES:  # and none is implied by the others
        others = set().union(*(jh_scopes._expand_scope(o) for o in HUBPILOT_SCOPES if o != s))
        assert s not in others, s


@pytest.fixture(scope="module")
async def victim(real_hub: RealHub) -> str:
    name = unique_name("scoped")
    async with real_hub.admin() as admin:
        assert (await admin.post(f"/users/{name}")).status_code == 201
    return name


@pytest.mark.hub
@pytest.mark.parametrize("scope", HUBPILOT_SCOPES)
async def test_dropping_one_scope_breaks_an_operation(real_hub: RealHub, victim: str, scope: str) -> None:
    op = OPERATIONS[scope]
    async with HubClient(real_hub.api_url, real_hub.hubpilot_token, retries=0) as full:
        await op(full, victim)  # the full role may
    service = next(s for s in drop_one_services() if scope not in s.scopes)
    async with HubClient(real_hub.api_url, real_hub.tokens[service.name], retries=0) as reduced:
        with pytest.raises(HubError) as e:
            await op(reduced, victim)
    # the error names what to grant: the hub's "requires any of [<scope>]" (tokens: read:tokens)
    assert e.value.status == 403 and scope in str(e.value), str(e.value)


def test_the_documented_z2jh_admin_binding_works_pasted() -> None:
    """docs/hub-scopes.md's hub.extraConfig snippet, run on a Config where load_roles is not set
    yet and on one that has an admin role already: one admin role, bound to the group, as
    hubpilot_hub.configure binds it."""
    doc = (PROJECT_ROOT / "docs" / "hub-scopes.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "load_groups" in b]
    # a JupyterHub application made in this process sets up its logger ("JupyterHub": its own
    # handler, no propagation), which would hide the hub-side modules' log lines from later
    # tests' caplog: put it back as it was
    logger = logging.getLogger("JupyterHub")
    saved = (logger.propagate, list(logger.handlers), logger.level)
    try:
        for before in ([], [{"name": "admin", "users": ["root"]}]):
            c = Config()
            if before:
                c.JupyterHub.load_roles = before
            exec(snippet, {"c": c})
            hub = JupyterHub(config=c)
            assert [r for r in hub.load_roles if r["name"] == "admin"] == [
                {**(before[0] if before else {"name": "admin"}), "groups": ["dir-hub-admins"]}]
            assert "dir-hub-admins" in hub.load_groups
    finally:
        logger.propagate, logger.handlers[:], logger.level = saved[0], saved[1], saved[2]
