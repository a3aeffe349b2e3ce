"""deploy/z2jh/hubpilot-values.yaml: valid for the z2jh chart when merged over its defaults, its
role cannot drift from HUBPILOT_SCOPES, and its extraConfig works in a real hub."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from traitlets.config import Config

from hubpilot.adapters.hub import HubClient
from hubpilot_hub import hooks
from hubpilot_hub.scopes import HUBPILOT_SCOPES
from tests.realhub import start_hub

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
VALUES = ROOT / "deploy" / "z2jh" / "hubpilot-values.yaml"


def helm_merge(base: Any, over: Any) -> Any:
    """Helm's deep merge of values files: maps merge, lists and scalars replace; null deletes."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = helm_merge(base.get(k), v)
        return out
    return copy.deepcopy(over)


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def merged(ours: dict[str, Any]) -> dict[str, Any]:
    base = yaml.safe_load((SHARED / "z2jh" / "values.yaml").read_text())
    return helm_merge(base, ours)


def test_the_hub_side_package_installs_without_dependencies() -> None:
    """The hub image gets hubpilot_hub with ``pip install --no-deps hubpilot``: it imports nothing
    but the standard library and what the z2jh hub image has (JupyterHub, its tornado and traitlets,
    KubeSpawner's python-slugify, optional), so none of requirements.txt is installed into, or
    re-pins packages of, the hub's environment."""
    import ast
    import sys

    imported = set()
    for path in (ROOT / "hubpilot_hub").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    outside = imported - set(sys.stdlib_module_names) - {"hubpilot_hub"}
    assert outside <= {"jupyterhub", "tornado", "traitlets", "slugify"}, outside
    assert "pip install --no-deps hubpilot" in VALUES.read_text()


def test_merge_is_helm_like() -> None:
    assert helm_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "d": None}) == {
        "a": {"b": 1, "c": [2]}
    }


def test_merged_values_are_valid_for_the_chart(merged: dict[str, Any]) -> None:
    schema = yaml.safe_load((SHARED / "z2jh" / "values.schema.yaml").read_text())
    jsonschema.validate(merged, schema)


def test_a_broken_value_is_caught_by_the_schema(merged: dict[str, Any]) -> None:
    schema = yaml.safe_load((SHARED / "z2jh" / "values.schema.yaml").read_text())
    broken = helm_merge(merged, {"cull": {"enabled": "no"}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_role_equals_hubpilot_scopes(ours: dict[str, Any]) -> None:
    role = ours["hub"]["loadRoles"]["hubpilot"]
    assert role["scopes"] == HUBPILOT_SCOPES
    assert role["services"] == ["hubpilot"]
    assert "hubpilot" in ours["hub"]["services"]


def test_culler_off_groups_unmanaged_no_admin_users(merged: dict[str, Any]) -> None:
    assert merged["cull"]["enabled"] is False
    auth = merged["hub"]["config"]["Authenticator"]
    assert auth["manage_groups"] is False and "admin_users" not in auth


def _z2jh_like_config(extra_config: str, token: str | None, monkeypatch: pytest.MonkeyPatch) -> Config:
    c = Config()
    c.JupyterHub.services = [{"name": "hubpilot", "api_token": "chart-generated", "display": False}]
    if token is None:
        monkeypatch.delenv("HUBPILOT_API_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HUBPILOT_API_TOKEN", token)
    exec(compile(extra_config, "hub.extraConfig.hubpilot", "exec"), {"c": c})
    return c


def test_extra_config_sets_token_and_configures(ours: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    saved = list(hooks._PARTS)
    try:
        c = _z2jh_like_config(ours["hub"]["extraConfig"]["hubpilot"], "tok-123", monkeypatch)
        assert c.JupyterHub.services[0]["api_token"] == "tok-123"
        assert c.Authenticator.manage_groups is False
        assert c.Spawner.pre_spawn_hook is hooks.pre_spawn_hook
        with pytest.raises(SystemExit, match="hubpilot-hub-token"):
            _z2jh_like_config(ours["hub"]["extraConfig"]["hubpilot"], None, monkeypatch)
    finally:
        hooks._PARTS[:] = saved


@pytest.mark.hub
async def test_extra_config_in_a_real_hub(ours: dict[str, Any], tmp_path: Path) -> None:
    """The values' extraConfig, run by a real JupyterHub: the hubpilot service's token is the
    Secret's, and its role works for hubpilot's operations."""
    token = secrets.token_hex(24)
    snippet = ours["hub"]["extraConfig"]["hubpilot"]
    scopes = ours["hub"]["loadRoles"]["hubpilot"]["scopes"]
    async with start_hub(
        tmp_path, extra_config=snippet, env={"HUBPILOT_API_TOKEN": token}, hubpilot_scopes=scopes
    ) as hub:
        async with HubClient(hub.api_url, token, retries=0) as hp:
            assert await hp.create_group("dir-hub-admins") is False  # configure created it
            assert await hp.create_group("dir-analysts") is True
            assert await hp.create_users(["z2jh-user"]) == ["z2jh-user"]
            await hp.add_group_members("dir-analysts", ["z2jh-user"])
            assert (await hub.login("z2jh-user")).status_code == 302
            assert (await hub.login("someone-else")).status_code == 403


def test_gpu_start_timeout_without_the_demand_signal(ours: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The values ship HUBPILOT_DEMAND_URL empty (scale timer only): GPU spawns still wait for a
    new node, so their start timeout is raised all the same."""
    from hubpilot_hub.scale_demand import START_TIMEOUT_PART_NAME

    assert ours["hub"]["extraEnv"]["HUBPILOT_DEMAND_URL"] == ""
    monkeypatch.delenv("HUBPILOT_DEMAND_URL", raising=False)
    monkeypatch.setenv("HUBPILOT_API_TOKEN", "tok")
    saved = list(hooks._PARTS)
    try:
        c = Config()
        c.JupyterHub.services = [{"name": "hubpilot", "api_token": "chart-generated", "display": False}]
        c.KubeSpawner.start_timeout = 300  # singleuser.startTimeout
        c.KubeSpawner.profile_list = [{"slug": "cpu", "display_name": "CPU"}, {"slug": "gpu", "display_name": "GPU"}]
        exec(compile(ours["hub"]["extraConfig"]["hubpilot"], "hub.extraConfig.hubpilot", "exec"), {"c": c})
        assert c.KubeSpawner.profile_list[1]["kubespawner_override"]["start_timeout"] >= 900
        assert START_TIMEOUT_PART_NAME in dict(hooks.registered_parts())
    finally:
        hooks._PARTS[:] = saved


def test_demand_url_without_its_token_stops_the_hub_with_what_to_fix(
    ours: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demand-token key of the Secret is optional (the signal is): set the URL without it and
    every signal would be refused (401) spawn after spawn; the hub says what to add instead."""
    monkeypatch.setenv("HUBPILOT_DEMAND_URL", "https://hubpilot.example.org/api/v1")
    monkeypatch.delenv("HUBPILOT_DEMAND_TOKEN", raising=False)
    saved = list(hooks._PARTS)
    try:
        with pytest.raises(SystemExit, match="demand-token"):
            _z2jh_like_config(ours["hub"]["extraConfig"]["hubpilot"], "tok", monkeypatch)
        monkeypatch.setenv("HUBPILOT_DEMAND_TOKEN", "demand-tok")
        _z2jh_like_config(ours["hub"]["extraConfig"]["hubpilot"], "tok", monkeypatch)
        from hubpilot_hub.scale_demand import PART_NAME

        assert PART_NAME in dict(hooks.registered_parts())
    finally:
        hooks._PARTS[:] = saved
