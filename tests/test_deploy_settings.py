"""The app settings the Bicep deployment gives the Function App are settings hubpilot loads.

Nothing here runs the Functions host or ARM: the app settings are evaluated from main.bicep's
parsed form (pycep-parser, as tests/test_infra.py reads it) for a given set of parameters, the
way ARM would (unions, conditionals, string() of arrays and objects, interpolations), with
module outputs and the cloud's environment() given fixed values, and App Service's Key Vault
references resolved to the secret the deployment stored. The environment that results is loaded
with hubpilot's own load_settings(): a deployed app that refuses to start is the worst case.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from tests.test_infra import _file, _parsed, _resources

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
TENANT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SUBSCRIPTION_ID = "99999999-8888-7777-6666-555555555555"
STORAGE = "sthubpilotabc123"
HOST_NAME = "hubpilot-abc.azurewebsites.example"
VAULT_URI = "https://kv-hubpilot-abc.vault.example/"
# environment() of the public cloud, as ARM gives it (with the trailing '/')
ENVIRONMENT = {
    "resourceManager": "https://management.azure.com/",
    "authentication": {"loginEndpoint": "https://login.microsoftonline.com/"},
    "suffixes": {"storage": "core.windows.net"},
}
REFERENCES = {
    "storage.outputs.name": STORAGE,
    "storage.outputs.blobEndpoint": f"https://{STORAGE}.blob.core.windows.net/",
    "storage.outputs.queueEndpoint": f"https://{STORAGE}.queue.core.windows.net/",
    "storage.outputs.tableEndpoint": f"https://{STORAGE}.table.core.windows.net/",
    "monitoring.outputs.connectionString": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
    "identity.properties.clientId": CLIENT_ID,
    "app.properties.defaultHostName": HOST_NAME,
    "keyVault.outputs.uri": VAULT_URI,
    "environment().suffixes.storage": "core.windows.net",
}
RESOURCE_GROUP = "rg-hubpilot"


class _Bicep:
    """main.bicep's app settings for one set of parameters."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.doc = _file(_parsed(), "main.bicep")
        self.params = {name: p.get("default") for name, p in self.doc["parameters"].items()}
        self.params.update({"location": "westeurope", "appName": "hubpilot-abc",
                            "aksSubscriptionId": SUBSCRIPTION_ID})
        unknown = set(params) - set(self.params)
        assert not unknown, f"no such parameter in main.bicep: {unknown}"
        self.params.update(params)

    def app_settings(self) -> dict[str, str]:
        (config,) = [c for c in _resources(self.doc, "Microsoft.Web/sites/config").values()
                     if c["name"] == "appsettings"]
        settings = self.ev(config["properties"])
        assert isinstance(settings, dict)
        for name, value in settings.items():
            assert isinstance(value, str), f"app setting {name} is no string: {value!r}"
        return settings

    def ev(self, expr: Any) -> Any:
        if expr is None or isinstance(expr, (bool, int, float)):
            return expr
        if isinstance(expr, list):
            return [self.ev(x) for x in expr]
        if isinstance(expr, str):
            if expr in self.params:
                return self.ev(self.params[expr])
            if expr == "graphNotificationsOn":  # pycep reads `a == 'b' && c` as `a == ('b' && c)`
                return self.params["directoryKind"] == "entra" and bool(self.params["graphNotifications"])
            if expr in self.doc["variables"]:
                return self.ev(self.doc["variables"][expr]["value"])
            if "${" in expr:
                return re.sub(r"\$\{([^}]*)\}", lambda m: str(self._text(m.group(1))), expr)
            return expr
        assert isinstance(expr, dict)
        if "function" in expr:
            f = expr["function"]
            kind, args = f["type"], f.get("parameters") or {}
            if kind == "union":
                out: dict[str, Any] = {}
                for arg in args.values():
                    out.update(self.ev(arg))
                return out
            if kind == "string":
                value = self.ev(args["value_to_convert"])
                return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            if kind == "empty":
                return not self.ev(args["item_to_test"])
            if kind == "ends_with":
                return self.ev(args["string_to_search"]).endswith(self.ev(args["string_to_find"]))
            if kind == "substring":
                text = self.ev(args["string_to_parse"])
                start = self.ev(args["start_index"])
                return text[start:start + self.ev(args["length"])]
            if kind == "length":
                return len(self.ev(args["arg_1"]))
            if kind == "environment":
                return ENVIRONMENT[f["property_name"]]
            if kind == "tenant":
                return TENANT_ID
            if kind == "subscription":
                return SUBSCRIPTION_ID
            if kind == "resource_group":
                return RESOURCE_GROUP
            raise AssertionError(f"function {kind} not evaluated here: {expr}")
        if "operator" in expr:
            op = expr["operator"]
            kind, ops = op["type"], op["operands"]
            if kind == "conditional":
                return self.ev(ops["true_value"] if self.ev(ops["condition"]) else ops["false_value"])
            if kind == "equals":
                return self.ev(ops["operand_1"]) == self.ev(ops["operand_2"])
            if kind == "substract":
                return self.ev(ops["operand_1"]) - self.ev(ops["operand_2"])
            if kind == "property_accessor":
                left = ops["operand_1"]
                if isinstance(left, dict) and "function" in left:
                    return self.ev(left)[self._path(ops["operand_2"])]
                return REFERENCES[f"{left}.{self._path(ops['operand_2'])}"]
            raise AssertionError(f"operator {kind} not evaluated here: {expr}")
        return {key.strip("'"): self.ev(value) for key, value in expr.items()}

    def _path(self, expr: Any) -> str:
        if isinstance(expr, str):
            return expr
        ops = expr["operator"]["operands"]
        return f"{ops['operand_1']}.{self._path(ops['operand_2'])}"

    def _text(self, inner: str) -> Any:
        inner = inner.strip()
        if inner in REFERENCES:
            return REFERENCES[inner]
        assert IDENT.fullmatch(inner), f"interpolation ${{{inner}}} not evaluated here"
        return self.ev(inner)


IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _resolve_key_vault(settings: dict[str, str], secrets: dict[str, str]) -> dict[str, str]:
    """What App Service hands the app: each Key Vault reference replaced by its secret's value."""
    out = {}
    for name, value in settings.items():
        match = re.fullmatch(r"@Microsoft\.KeyVault\(SecretUri=(.*)\)", value)
        if match:
            assert match.group(1).startswith(VAULT_URI + "secrets/"), value
            value = secrets[match.group(1)[len(VAULT_URI + "secrets/"):]]
        out[name] = value
    return out


@pytest.fixture
def app_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """Set the Function App's environment from the deployment's app settings (only them)."""
    for key in list(os.environ):
        if key.startswith("HUBPILOT_") or key.startswith("AzureWebJobs"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray ./hubpilot.toml

    def apply(settings: dict[str, str]) -> None:
        for name, value in settings.items():
            monkeypatch.setenv(name, value)

    return apply


TOKEN_HASH = "a" * 64
SECRETS = {"hub-token": "hub-token-value", "graph-client-state": "client-state-value",
           "ldap-bind-password": "bind-password"}


def _bicepparam() -> dict[str, Any]:
    """main.bicepparam's parameters (literal values; the secrets read from the environment empty)."""
    from tests.test_infra import BICEP_DIR

    text = (BICEP_DIR / "main.bicepparam").read_text()
    out: dict[str, Any] = {}
    for name, value in re.findall(r"^param (\w+) = (.*?)(?=^param |\Z)", text, re.MULTILINE | re.DOTALL):
        value = re.sub(r"(?m)^\s*//.*$", "", value).strip()
        if value.startswith("readEnvironmentVariable("):
            continue
        if value.startswith("[") or value.startswith("{"):
            items = re.findall(r"'([^']*)'(?:\s*:\s*'([^']*)')?", value)
            out[name] = ({k: v for k, v in items} if value.startswith("{") else [k for k, _ in items])
        elif value in ("true", "false"):
            out[name] = value == "true"
        else:
            out[name] = value.strip("'")
    return out


DEPLOYMENTS = {
    "the example parameters file": {**_bicepparam(),
                                    "apiTokens": json.dumps([{"name": "ops", "role": "admin", "sha256": TOKEN_HASH}])},
    "the required parameter alone": {"hubApiUrl": "https://hub.example.org/hub/api"},
    "entra with notifications and a sovereign Graph": {
        "hubApiUrl": "https://hub.example.org/hub/api", "graphNotifications": True,
        "graphEndpoint": "https://graph.example.us/", "usersGroups": ["00000000-0000-0000-0000-000000000001"]},
    "ldap with a bind DN": {
        "hubApiUrl": "https://hub.example.org/hub/api", "directoryKind": "ldap", "ldapUrl": "ldaps://ldap.example.org",
        "ldapBaseDn": "dc=example,dc=org", "ldapBindDn": "cn=hubpilot,dc=example,dc=org", "usersGroups": ["staff"]},
    "scaling with another resource group and App Service authentication": {
        "hubApiUrl": "https://hub.example.org/hub/api", "scaleEnabled": True, "aksResourceGroup": "rg-aks",
        "aksClusterName": "aks", "gpuProfiles": ["gpu", "ml:accelerator=t4"], "pricePerNodeHour": "1.25",
        "stoppedVmPricePerHour": "0.04",
        "appServiceAuth": True},
}


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_the_deployed_app_settings_load(deployment: str, app_environment: Any) -> None:
    from hubpilot.settings import load_settings

    settings = _Bicep(DEPLOYMENTS[deployment]).app_settings()
    app_environment(_resolve_key_vault(settings, SECRETS))
    loaded = load_settings()
    assert loaded.api.run_mode == "queue"
    assert loaded.hub.token.get_secret_value() == SECRETS["hub-token"]
    assert loaded.state.kind == "azure" and loaded.state.azure_account_name == STORAGE
    if deployment == "entra with notifications and a sovereign Graph":
        entra = loaded.directory.entra if loaded.directory is not None else None
        # the Functions app refuses the in-memory queue (functions.get_context): the deployment sets azure
        assert entra is not None and entra.notifications and entra.queue == "azure"


def test_the_demand_url_output_in_the_hubs_demand_url_is_refused_with_what_to_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deployment's output ``demandUrl`` is the demand endpoint itself; the hub side's
    ``HUBPILOT_DEMAND_URL`` (deploy/z2jh) is hubpilot's API base, to which the part appends
    /scale/demand. An admin who gives the one for the other had every signal posted to
    .../scale/demand/scale/demand (404, one warning, then silence): the hub now refuses it at
    start, saying what to give; the API base itself is taken."""
    import yaml
    from traitlets.config import Config

    from hubpilot_hub import hooks
    from hubpilot_hub.scale_demand import PART_NAME
    from tests.test_z2jh_values import VALUES

    main = _file(_parsed(), "main.bicep")
    bicep = _Bicep({"hubApiUrl": "https://hub.example.org/hub/api"})
    demand_url = bicep.ev(main["outputs"]["demandUrl"]["value"])
    assert demand_url == f"https://{HOST_NAME}/api/v1/scale/demand"
    extra_config = yaml.safe_load(VALUES.read_text())["hub"]["extraConfig"]["hubpilot"]
    monkeypatch.setenv("HUBPILOT_API_TOKEN", "tok")
    monkeypatch.setenv("HUBPILOT_DEMAND_TOKEN", "demand-tok")
    saved = list(hooks._PARTS)

    def load_hub_config() -> None:
        c = Config()
        c.JupyterHub.services = [{"name": "hubpilot", "api_token": "chart-generated", "display": False}]
        exec(compile(extra_config, "hub.extraConfig.hubpilot", "exec"), {"c": c})

    try:
        for given in (demand_url, demand_url + "/"):
            monkeypatch.setenv("HUBPILOT_DEMAND_URL", given)
            with pytest.raises(ValueError, match=r"API base, ending in /api/v1.*demandUrl without /scale/demand"):
                load_hub_config()
            assert PART_NAME not in dict(hooks.registered_parts())
        monkeypatch.setenv("HUBPILOT_DEMAND_URL", demand_url.removesuffix("/scale/demand"))
        load_hub_config()
        (part,) = [p.fn for p in hooks._PARTS if p.name == PART_NAME]
        assert getattr(part, "endpoint", None) == demand_url
    finally:
        hooks._PARTS[:] = saved
