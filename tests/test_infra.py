"""The Azure deployment in infra/bicep/: its structure, read with pycep-parser, and a checkov scan.

Both tools run from .venv-infra (scripts/setup makes it from requirements-infra.txt; their pins
clash with .venv). pycep-parser is the version checkov pins, so a template these tests read is
one checkov scans. The parsed form keeps references as bare names ("hubToken") and
interpolations as text ("https://${app.properties.defaultHostName}/..."); the helpers below
resolve variable references within one file.
"""

from __future__ import annotations

import json
import re
import subprocess
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from hubpilot.settings import OTHER_ENV

ROOT = Path(__file__).resolve().parent.parent
BICEP_DIR = ROOT / "infra" / "bicep"
INFRA_VENV = ROOT / ".venv-infra"
INFRA_PYTHON = INFRA_VENV / "bin" / "python"
CHECKOV = INFRA_VENV / "bin" / "checkov"

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PUBLIC_CLOUD_HOSTS = ("management.azure.com", "login.microsoftonline.com", "graph.microsoft.com", "core.windows.net")

# checkov checks that do not apply, each with the reason. Everything else must pass.
SKIPPED_CHECKS = {
    # The app authenticates every request itself (bearer tokens of api.tokens, or App Service
    # authentication's principal when appServiceAuth is on, which needs an app registration
    # Bicep cannot create). Graph's webhook and the hub's demand hook cannot log in interactively.
    "CKV_AZURE_13": "App Service Authentication",
    # Graph's change notifications and the hub's demand calls present no client certificate.
    "CKV_AZURE_17": "incoming client certificates",
    # Graph delivers change notifications from the internet: the app keeps a public endpoint.
    "CKV_AZURE_222": "web app public network access",
    # Storage and Key Vault keep public endpoints reached with Entra ID only (shared keys off,
    # Key Vault RBAC); closing them needs private endpoints and private DNS in the cluster's
    # VNet, which this template does not create (infra/bicep/README.md, "Network").
    "CKV_AZURE_35": "storage default network rule deny",
    "CKV_AZURE_59": "storage public network access",
    "CKV_AZURE_109": "key vault firewall",
    "CKV_AZURE_189": "key vault public network access",
    # The SKU is a parameter (default Standard_ZRS); checkov does not resolve module
    # parameters, and geo-redundancy (GRS/GZRS) is unavailable in regions without a pair.
    "CKV_AZURE_206": "storage geo-replication",
    # Flex Consumption has no fixed instance count; zone redundancy is the zoneRedundant
    # parameter (region-dependent, off by default).
    "CKV_AZURE_212": "minimum instances for failover",
    "CKV_AZURE_225": "plan zone redundancy",
    # checkov wants siteConfig.ftpsState = Disabled, a property Flex Consumption deprecates (it has
    # no FTP(S)); test_site_sets_no_property_flex_consumption_deprecates keeps it out, and the ftp
    # basic-publishing policy is off (test_flex_consumption_app).
    "CKV_AZURE_78": "FTP deployments disabled",
    # App Service health check exists for Dedicated and Premium plans, not Flex Consumption.
    "CKV_AZURE_213": "health check",
    # checkov applies these site-config checks to the sites/config 'appsettings' resource, which
    # holds app settings only; and they do not apply to a Flex Consumption Python app anyway: no
    # file-system logs (Application Insights), no .NET, no Azure Files content share.
    "CKV_AZURE_63": "HTTP logging",
    "CKV_AZURE_65": "detailed error messages",
    "CKV_AZURE_66": "failed request tracing",
    "CKV_AZURE_80": ".NET Framework version",
    "CKV_AZURE_88": "Azure Files",
    # checkov's Bicep reader does not look inside conditional resources (`= if (...) {...}`), so
    # it reports the Key Vault secrets without their contentType and expiry, which they set:
    # test_key_vault_secrets asserts both on the parsed template instead.
    "CKV_AZURE_41": "secret expiration date",
    "CKV_AZURE_114": "secret content type",
}


def _venv_tool(path: Path) -> Path:
    if not path.exists():
        pytest.fail(
            f"{path.relative_to(ROOT)} is missing: run scripts/setup, which makes .venv-infra from "
            "requirements-infra.txt (checkov, pycep-parser)",
            pytrace=False,
        )
    return path


def _bicep_files() -> list[Path]:
    return sorted(BICEP_DIR.rglob("*.bicep"))


PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
parser = BicepParser()
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = parser.parse(file_path=Path(name))
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
json.dump(out, sys.stdout, default=str)
"""


@cache
def _parsed() -> dict[str, Any]:
    python = _venv_tool(INFRA_PYTHON)
    names = [str(p.relative_to(BICEP_DIR)) for p in _bicep_files()]
    proc = subprocess.run(
        [str(python), "-c", PARSE_SCRIPT, *names], cwd=BICEP_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def parsed() -> dict[str, Any]:
    return _parsed()


def _file(parsed: dict[str, Any], name: str) -> dict[str, Any]:
    doc = parsed[name]
    assert "error" not in doc, f"{name}: {doc.get('error')}"
    return doc


def _body(decl: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module declaration, inside a condition (`= if (...) {...}`)."""
    config: dict[str, Any] = decl["config"]
    if "condition" in config and "config" in config:
        inner: dict[str, Any] = config["config"]
        return inner
    return config


def _resources(doc: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {name: _body(r) for name, r in doc["resources"].items() if r["type"] == rtype and not r["existing"]}


def _strings(expr: Any) -> Iterator[str]:
    if isinstance(expr, str):
        yield expr
    elif isinstance(expr, dict):
        for key, value in expr.items():
            yield key
            yield from _strings(value)
    elif isinstance(expr, list):
        for item in expr:
            yield from _strings(item)


def _names_in(expr: Any) -> set[str]:
    """Every identifier an expression may refer to (bare names and those inside ${...})."""
    out: set[str] = set()
    for text in _strings(expr):
        if IDENTIFIER.fullmatch(text):
            out.add(text)
        for inner in re.findall(r"\$\{([^}]*)\}", text):
            out.update(IDENTIFIER.findall(inner))
    return out


def _reachable(doc: dict[str, Any], expr: Any) -> set[str]:
    """The names an expression reaches, following variables transitively."""
    variables = doc["variables"]
    seen: set[str] = set()
    todo = list(_names_in(expr))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in variables:
            todo.extend(_names_in(variables[name]["value"]))
    return seen


def _resolve(doc: dict[str, Any], expr: Any) -> Any:
    """Follow a bare variable reference to the variable's value (once per hop)."""
    while isinstance(expr, str) and expr in doc["variables"]:
        expr = doc["variables"][expr]["value"]
    return expr


def _setting_objects(doc: dict[str, Any], expr: Any) -> Iterator[dict[str, Any]]:
    """The object literals an app-settings expression is made of (through union, ?: and vars)."""
    expr = _resolve(doc, expr)
    if isinstance(expr, dict) and "function" in expr and expr["function"]["type"] == "union":
        for arg in expr["function"]["parameters"].values():
            yield from _setting_objects(doc, arg)
    elif isinstance(expr, dict) and "operator" in expr and expr["operator"]["type"] == "conditional":
        operands = expr["operator"]["operands"]
        yield from _setting_objects(doc, operands["true_value"])
        yield from _setting_objects(doc, operands["false_value"])
    elif isinstance(expr, dict) and not ({"function", "operator"} & expr.keys()):
        yield expr
    else:
        assert isinstance(expr, str) and expr in doc["parameters"], f"unexpected app-settings expression {expr!r}"


def _app_settings(parsed: dict[str, Any]) -> dict[str, Any]:
    main = _file(parsed, "main.bicep")
    configs = _resources(main, "Microsoft.Web/sites/config")
    (config,) = [c for c in configs.values() if c["name"] == "appsettings"]
    settings: dict[str, Any] = {}
    for obj in _setting_objects(main, config["properties"]):
        for name, value in obj.items():
            # The same name in two branches (e.g. HUBPILOT_DIRECTORY__KIND) keeps every value.
            settings.setdefault(name, []).append(value)
    return settings


def _secure_params(doc: dict[str, Any]) -> set[str]:
    return {
        name for name, p in doc["parameters"].items() if any(d["type"] == "secure" for d in p["decorators"])
    }


@cache
def _hubpilot_env_names() -> set[str]:
    """The environment variable of every setting, from the reference scripts/readme-settings writes."""
    from hubpilot.settings import settings_reference

    names = set()
    for line in settings_reference().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[1].startswith("`HUBPILOT_"):
            names.add(cells[1].strip("`"))
    return names


def _setting_annotation(env_name: str) -> Any:
    """The type annotation of the setting an environment variable sets (None if unknown)."""
    from hubpilot.settings import ENV_PREFIX, Settings

    model: Any = Settings
    ann: Any = None
    for part in env_name[len(ENV_PREFIX):].lower().split("__"):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        ann = fields[part].annotation
        model = next((a for a in (typing.get_args(ann) or (ann,)) if hasattr(a, "model_fields")), ann)
    return ann


# ---------------------------------------------------------------------------------------------
# Parsing and cloud independence
# ---------------------------------------------------------------------------------------------


def test_every_bicep_file_parses(parsed: dict[str, Any]) -> None:
    files = {str(p.relative_to(BICEP_DIR)) for p in _bicep_files()}
    assert {"main.bicep", "modules/storage.bicep", "modules/keyvault.bicep", "modules/monitoring.bicep",
            "modules/aks-access.bicep"} <= files
    errors = {name: doc["error"] for name, doc in parsed.items() if "error" in doc}
    assert not errors
    main = _file(parsed, "main.bicep")
    for module in main["modules"].values():
        assert module["detail"]["path"] in files, f"module {module['detail']['path']} is not parsed"


def test_no_public_cloud_host_in_the_templates() -> None:
    """Endpoints come from environment() or parameters (sovereign clouds), in comments too."""
    files = [*_bicep_files(), *BICEP_DIR.rglob("*.bicepparam")]
    assert any(f.suffix == ".bicepparam" for f in files)
    for path in files:
        text = path.read_text().lower()
        for host in PUBLIC_CLOUD_HOSTS:
            assert host not in text, f"{path.relative_to(ROOT)} names {host}; use environment() or a parameter"


def test_every_parameter_is_described(parsed: dict[str, Any]) -> None:
    for name in parsed:
        doc = _file(parsed, name)
        for pname, param in doc["parameters"].items():
            assert any(d["type"] == "description" for d in param["decorators"]), f"{name}: param {pname}"


def test_secure_parameters_are_never_output(parsed: dict[str, Any]) -> None:
    for name in parsed:
        doc = _file(parsed, name)
        secure = _secure_params(doc)
        for oname, output in doc.get("outputs", {}).items():
            leaked = _reachable(doc, output["value"]) & secure
            assert not leaked, f"{name}: output {oname} reaches the secure parameter(s) {sorted(leaked)}"
    assert {"hubToken", "apiTokens", "graphClientState", "ldapBindPassword"} <= _secure_params(
        _file(parsed, "main.bicep"))


def test_bicepparam_example_sets_no_secret(parsed: dict[str, Any]) -> None:
    """pycep-parser does not read .bicepparam: its `param x = ...` lines are checked as text."""
    main = _file(parsed, "main.bicep")
    secure = _secure_params(main)
    lines = (BICEP_DIR / "main.bicepparam").read_text().splitlines()
    assert "using 'main.bicep'" in lines
    assigned = dict(re.findall(r"^param (\w+) = (.*)$", "\n".join(lines), re.MULTILINE))
    assert assigned, "main.bicepparam sets no parameter"
    assert set(assigned) <= set(main["parameters"]), set(assigned) - set(main["parameters"])
    # every secret comes from the deploying shell (a secret left out must be typed on the command
    # line, which the README does not ask for), under a name hubpilot's settings leave alone
    assert secure <= set(assigned), f"main.bicepparam does not read {sorted(secure - set(assigned))}"
    for pname in secure:
        assert assigned[pname].startswith("readEnvironmentVariable("), f"{pname} has a value in main.bicepparam"
        env = re.match(r"readEnvironmentVariable\('(\w+)'", assigned[pname])
        assert env is not None and env[1] in OTHER_ENV, f"{pname}: its variable is not in settings.OTHER_ENV"
    required = {n for n, p in main["parameters"].items() if "default" not in p}
    assert required <= set(assigned), f"main.bicepparam misses the required {sorted(required - set(assigned))}"


# ---------------------------------------------------------------------------------------------
# The app settings
# ---------------------------------------------------------------------------------------------


def test_app_settings_hold_no_connection_string_or_key(parsed: dict[str, Any]) -> None:
    settings = _app_settings(parsed)
    for name in ("AzureWebJobsStorage", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
                 "HUBPILOT_STATE__AZURE_CONNECTION_STRING", "HUBPILOT_API__QUEUE_CONNECTION_STRING",
                 "HUBPILOT_DIRECTORY__ENTRA__QUEUE_CONNECTION_STRING"):
        assert name not in settings
    # App Insights' connection string names the ingestion endpoint; local auth is off (Entra).
    assert [n for n in settings if "CONNECTION_STRING" in n.upper()] == ["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    for text in _strings(list(settings.values())):
        for marker in ("AccountKey", "SharedAccessSignature", "DefaultEndpointsProtocol", "listKeys"):
            assert marker not in text
    for name in parsed:
        for text in _strings(_file(parsed, name)):
            assert text not in ("list_keys", "listKeys"), f"{name} reads account keys"


def test_host_storage_uses_the_managed_identity(parsed: dict[str, Any]) -> None:
    main = _file(parsed, "main.bicep")
    settings = _app_settings(parsed)
    assert settings["AzureWebJobsStorage__credential"] == ["managedidentity"]
    for name in ("AzureWebJobsStorage__accountName", "AzureWebJobsStorage__blobServiceUri",
                 "AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__tableServiceUri"):
        assert "storage" in _reachable(main, settings[name]), name
    for name in ("AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID", "HUBPILOT_DIRECTORY__ENTRA__CLIENT_ID"):
        assert "identity" in _reachable(main, settings[name]), name
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == ["ClientId=${clientId};Authorization=AAD"]


def test_flex_consumption_app(parsed: dict[str, Any]) -> None:
    main = _file(parsed, "main.bicep")
    settings = _app_settings(parsed)
    for name in ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
                 "WEBSITE_CONTENTSHARE", "SCM_DO_BUILD_DURING_DEPLOYMENT"):
        assert name not in settings, f"{name} is not an app setting on Flex Consumption"
    (plan,) = _resources(main, "Microsoft.Web/serverfarms").values()
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan["properties"]["reserved"] is True
    (site,) = _resources(main, "Microsoft.Web/sites").values()
    assert site["kind"] == "functionapp,linux"
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert "identity" in _names_in(props["keyVaultReferenceIdentity"])
    assert site["identity"]["type"] == "UserAssigned"
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert main["parameters"]["pythonVersion"]["default"] == "3.11"
    auth = config["deployment"]["storage"]["authentication"]
    assert auth["type"] == "UserAssignedIdentity"
    assert "identity" in _names_in(auth["userAssignedIdentityResourceId"])
    assert set(config["scaleAndConcurrency"]) == {"maximumInstanceCount", "instanceMemoryMB"}
    policies = _resources(main, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {p["name"]: p["properties"]["allow"] for p in policies.values()} == {"ftp": False, "scm": False}


# Site properties the Flex Consumption plan deprecates ("Flex Consumption plan deprecations" in the
# Functions app settings reference, learn.microsoft.com/azure/azure-functions/functions-app-settings):
# on the site or in its siteConfig, some regions reject them (ARM error 51021), others ignore them.
FLEX_DEPRECATED_SITE_PROPERTIES = (
    "alwaysOn", "containerSize", "dnsConfiguration", "ftpsState", "isReserved", "IsXenon", "javaVersion",
    "linuxFxVersion", "netFrameworkVersion", "powerShellVersion", "functionAppScaleLimit",
    "preWarmedInstanceCount", "use32BitWorkerProcess", "vnetBackupRestoreEnabled", "vnetContentShareEnabled",
    "vnetImagePullEnabled", "vnetRouteAllEnabled", "windowsFxVersion",
)


def test_site_sets_no_property_flex_consumption_deprecates(parsed: dict[str, Any]) -> None:
    main = _file(parsed, "main.bicep")
    (site,) = _resources(main, "Microsoft.Web/sites").values()
    props = site["properties"]
    given = {name.lower() for name in [*props, *props.get("siteConfig", {})]}
    deprecated = [name for name in FLEX_DEPRECATED_SITE_PROPERTIES if name.lower() in given]
    assert not deprecated, f"deprecated on Flex Consumption: {deprecated}"


def test_every_hubpilot_setting_is_a_real_setting(parsed: dict[str, Any]) -> None:
    """Names as the settings model reads them (lists of objects, e.g. api.tokens, as a whole)."""
    from hubpilot.settings import TIMER_SCHEDULE_ENV

    known = _hubpilot_env_names() | set(TIMER_SCHEDULE_ENV.values())  # the timers' flat names
    settings = [n for n in _app_settings(parsed) if n.startswith("HUBPILOT_")]
    assert len(settings) > 30
    unknown = [n for n in settings if n not in known and not any(k.startswith(n + "__") for k in known)]
    assert not unknown, f"not hubpilot settings: {unknown}"
    # The settings this deployment depends on (scale.kube_auth: the app's Kubernetes credential).
    assert {"HUBPILOT_SCALE__KUBE_AUTH", "HUBPILOT_API__RUN_MODE", "HUBPILOT_STATE__AZURE_ACCOUNT_NAME",
            "HUBPILOT_DIRECTORY__ENTRA__CREDENTIAL", *TIMER_SCHEDULE_ENV.values()} <= set(settings)
    assert not [n for n in settings if n.endswith("__SCHEDULE")], "a timer cannot read a schedule named with '__'"


def test_literal_setting_values_are_valid(parsed: dict[str, Any]) -> None:
    """A setting with a fixed choice of values (Literal) gets one of them; JSON lists stay JSON."""
    main = _file(parsed, "main.bicep")
    checked = 0
    for name, values in _app_settings(parsed).items():
        if not name.startswith("HUBPILOT_"):
            continue
        ann = _setting_annotation(name)
        for value in values:
            if typing.get_origin(ann) is typing.Literal and isinstance(value, str) and "${" not in value:
                assert value in typing.get_args(ann), f"{name} = {value!r}: expected one of {typing.get_args(ann)}"
                checked += 1
            if typing.get_origin(ann) in (list, dict):
                # lists and objects arrive as JSON: string(<array or object parameter>), or a
                # string parameter holding JSON (api.tokens)
                if isinstance(value, str):
                    assert main["parameters"][value]["type"] == "string", name
                else:
                    assert value["function"]["type"] == "string", name
                    arg = value["function"]["parameters"]["value_to_convert"]
                    assert main["parameters"][arg]["type"] in ("array", "object"), name
                checked += 1
    assert checked >= 10


def test_settings_point_at_the_cloud_of_the_deployment(parsed: dict[str, Any]) -> None:
    main = _file(parsed, "main.bicep")
    settings = _app_settings(parsed)

    def environment_properties(expr: Any) -> set[str]:
        """The environment() properties an expression uses, through the variables it reaches."""
        sources = [expr, *(main["variables"][n]["value"] for n in _reachable(main, expr) if n in main["variables"])]
        return set(re.findall(r'"type": "environment", "property_name": "(\w+)"', json.dumps(sources)))

    assert "suffixes" in environment_properties(settings["HUBPILOT_STATE__AZURE_ENDPOINT_SUFFIX"])
    assert "resourceManager" in environment_properties(settings["HUBPILOT_SCALE__ARM_ENDPOINT"])
    assert "resourceManager" in environment_properties(settings["HUBPILOT_SCALE__ARM_AUDIENCE"])
    assert "authentication" in environment_properties(settings["HUBPILOT_SCALE__AUTHORITY"])
    assert "authentication" in environment_properties(settings["HUBPILOT_DIRECTORY__ENTRA__AUTHORITY_HOST"])
    # environment().graph is the retired Azure AD Graph: the Microsoft Graph URL is a parameter.
    assert "graph" not in environment_properties(settings["HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL"])
    assert "graphEndpoint" in _reachable(main, settings["HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL"])
    assert settings["HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL"] == ["${graphRoot}/v1.0"]
    assert settings["HUBPILOT_SCALE__ARM_AUDIENCE"] == ["${armEndpoint}/.default"]
    assert settings["HUBPILOT_DIRECTORY__ENTRA__NOTIFICATION_URL"] == [
        "https://${app.properties.defaultHostName}/api/v1/graph/notifications"]
    assert settings["HUBPILOT_SCALE__KUBE_AUTH"] == ["entra"]
    assert main["outputs"]["demandUrl"]["value"] == "https://${app.properties.defaultHostName}/api/v1/scale/demand"


# ---------------------------------------------------------------------------------------------
# Storage, Key Vault, monitoring
# ---------------------------------------------------------------------------------------------


def test_storage_account_is_locked_to_entra_id(parsed: dict[str, Any]) -> None:
    storage = _file(parsed, "modules/storage.bicep")
    (account,) = _resources(storage, "Microsoft.Storage/storageAccounts").values()
    props = account["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["minimumTlsVersion"] == "TLS1_2"
    roles = _resolve(storage, _resources(storage, "Microsoft.Authorization/roleAssignments")["roleAssignments"])
    assert roles  # the loop over roleIds
    assert [storage["variables"][r]["value"] for r in storage["variables"]["roleIds"]["value"]] == [
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",  # Storage Blob Data Owner
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",  # Storage Queue Data Contributor
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",  # Storage Table Data Contributor
    ]


def test_queues_and_container_are_the_ones_the_code_uses(parsed: dict[str, Any]) -> None:
    from functions.graph import HINT_QUEUE
    from functions.timers import RUN_QUEUE
    from hubpilot.api.runs import QUEUE_NAME
    from hubpilot.config.entra import EntraSettings
    from hubpilot.config.state import StateSettings

    main = _file(parsed, "main.bicep")
    storage_params = _body(main["modules"]["storage"])["params"]
    queues = [_resolve(main, q) for q in storage_params["queueNames"]]
    assert sorted(queues) == sorted([QUEUE_NAME, HINT_QUEUE])
    assert RUN_QUEUE == QUEUE_NAME and EntraSettings.model_fields["queue_name"].default == HINT_QUEUE
    container = _resolve(main, storage_params["stateContainerName"])
    assert container == StateSettings.model_fields["azure_container"].default
    assert _app_settings(parsed)["HUBPILOT_STATE__AZURE_CONTAINER"] == ["stateContainerName"]

    storage = _file(parsed, "modules/storage.bicep")
    containers = _resources(storage, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert {c["name"] for c in containers.values()} == {"stateContainerName", "deploymentContainerName"}
    assert all(c["properties"]["publicAccess"] == "None" for c in containers.values())
    queue_loop = storage["resources"]["queues"]["config"]
    assert "queueNames" in _names_in(queue_loop)


def test_key_vault_secrets(parsed: dict[str, Any]) -> None:
    kv = _file(parsed, "modules/keyvault.bicep")
    (vault,) = _resources(kv, "Microsoft.KeyVault/vaults").values()
    props = vault["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enablePurgeProtection"] is True
    assert props["enableSoftDelete"] is True
    secure = _secure_params(kv)
    secrets = _resources(kv, "Microsoft.KeyVault/vaults/secrets")
    assert {s["name"] for s in secrets.values()} == {"hub-token", "graph-client-state", "ldap-bind-password"}
    for secret in secrets.values():
        assert secret["properties"]["value"] in secure
        assert secret["properties"]["contentType"] == "text/plain"
        assert "exp" in secret["properties"]["attributes"]
    assert kv["variables"]["keyVaultSecretsUserRoleId"]["value"] == "4633458b-17de-408a-b874-0445c86b69e6"

    main = _file(parsed, "main.bicep")
    assert main["variables"]["keyVaultReference"]["value"].startswith("@Microsoft.KeyVault(SecretUri=")
    settings = _app_settings(parsed)
    references = {
        "HUBPILOT_HUB__TOKEN": "hub-token",
        "HUBPILOT_DIRECTORY__ENTRA__CLIENT_STATE": "graph-client-state",
        "HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD": "ldap-bind-password",
    }
    for name, secret in references.items():
        assert settings[name] == [f"${{keyVaultReference}}{secret})"], name
    kv_params = _body(main["modules"]["keyVault"])["params"]
    for param in ("hubToken", "graphClientState", "ldapBindPassword"):
        assert kv_params[param] == param


def test_an_ldap_directory_can_be_deployed_with_start_tls(parsed: dict[str, Any]) -> None:
    """A bind password over ldap:// without StartTLS is refused at start: a server that offers
    StartTLS alone (ldap:// on 389) needs the parameter that sets it."""
    main = _file(parsed, "main.bicep")
    assert main["parameters"]["ldapStartTls"]["type"] == "bool"
    assert _app_settings(parsed)["HUBPILOT_DIRECTORY__LDAP__START_TLS"] == ["true"]


def test_every_key_vault_reference_is_one_the_settings_refuse_unresolved(
    parsed: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """App Service hands an app setting whose Key Vault reference it cannot resolve to the app as
    the reference text: every referenced setting is one load_settings() refuses in that state."""
    from hubpilot.settings import KEY_VAULT_REFERENCE, SettingsError, load_settings

    main = _file(parsed, "main.bicep")
    assert main["variables"]["keyVaultReference"]["value"].lower().startswith(KEY_VAULT_REFERENCE)
    referenced = sorted(name for name, values in _app_settings(parsed).items()
                        if any(isinstance(v, str) and v.startswith("${keyVaultReference}") for v in values))
    assert len(referenced) == 3 and all(name.startswith("HUBPILOT_") for name in referenced), referenced
    for name in referenced:
        monkeypatch.setenv(name, "@Microsoft.KeyVault(SecretUri=https://kv.vault.example/secrets/s)")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert all(name in str(err.value) for name in referenced)


def test_key_vault_reads_are_audited_in_the_workspace(parsed: dict[str, Any]) -> None:
    """Key Vault logs who read which secret (the hub token opens every hub account to hubpilot's
    role) only through a diagnostic setting; without one no read leaves a trace. The vault's
    AuditEvent log goes to the deployment's Log Analytics workspace (learn.microsoft.com/azure/
    azure-monitor/reference/supported-logs/microsoft-keyvault-vaults-logs)."""
    kv = _file(parsed, "modules/keyvault.bicep")
    (diag,) = [r for r in kv["resources"].values() if r["type"] == "Microsoft.Insights/diagnosticSettings"]
    body = _body(diag)
    assert body["scope"] == "vault"
    assert body["properties"]["workspaceId"] == "workspaceId" and "workspaceId" in kv["parameters"]
    assert {"category": "AuditEvent", "enabled": True} in body["properties"]["logs"]
    main = _file(parsed, "main.bicep")
    assert "monitoring" in _names_in(_body(main["modules"]["keyVault"])["params"]["workspaceId"])


def test_monitoring_uses_entra_auth(parsed: dict[str, Any]) -> None:
    mon = _file(parsed, "modules/monitoring.bicep")
    (ai,) = _resources(mon, "Microsoft.Insights/components").values()
    assert ai["properties"]["DisableLocalAuth"] is True
    assert "workspace" in _names_in(ai["properties"]["WorkspaceResourceId"])
    assert mon["variables"]["monitoringMetricsPublisherRoleId"]["value"] == "3913510d-42f4-4e42-8a64-420c390055eb"


# ---------------------------------------------------------------------------------------------
# Roles
# ---------------------------------------------------------------------------------------------


def test_role_definition_ids_are_guids(parsed: dict[str, Any]) -> None:
    count = 0
    for name in parsed:
        doc = _file(parsed, name)
        for vname, var in doc["variables"].items():
            if vname.endswith("RoleId"):
                assert isinstance(var["value"], str) and GUID.match(var["value"]), f"{name}: {vname}"
                count += 1
        for assignment in _resources(doc, "Microsoft.Authorization/roleAssignments").values():
            role = assignment["properties"]["roleDefinitionId"]
            assert role["function"]["type"] == "subscription_resource_id", f"{name}: {role}"
            assert role["function"]["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
            assert assignment["properties"]["principalType"] == "ServicePrincipal"
    assert count >= 6


def test_aks_access_grants_exactly_what_scale_needs(parsed: dict[str, Any]) -> None:
    main = _file(parsed, "main.bicep")
    module = main["modules"]["aksAccess"]
    assert module["config"]["condition"] == "scaleEnabled"
    scope = _body(module)["scope"]["function"]
    assert scope["type"] == "resource_group"
    assert scope["parameters"]["subscription_id"] == "aksSubscriptionId"
    assert _resolve(main, scope["parameters"]["resource_group_name"]) == \
        main["variables"]["aksResourceGroupName"]["value"]
    assert "aksResourceGroup" in _names_in(main["variables"]["aksResourceGroupName"]["value"])
    # the app is told the same resource group the roles were granted in (empty param: this one)
    scale = _resolve(main, "scaleSettings")
    assert "aksResourceGroupName" in _names_in(scale)
    assert "aksResourceGroup" not in _names_in(scale)

    aks = _file(parsed, "modules/aks-access.bicep")
    (cluster,) = [r for r in aks["resources"].values() if r["existing"]]
    assert cluster["type"] == "Microsoft.ContainerService/managedClusters"
    assert aks["variables"]["aksClusterUserRoleId"]["value"] == "4abbcc35-e782-43d8-92c5-2d3f1bd2253f"
    prefix = "Microsoft.ContainerService/managedClusters/"
    assert sorted(aks["variables"]["kubernetesDataActions"]["value"]) == [
        prefix + "nodes/read", prefix + "nodes/write", prefix + "pods/read"]
    assert sorted(aks["variables"]["agentPoolActions"]["value"]) == [
        prefix + "agentPools/deleteMachines/action", prefix + "agentPools/machines/read", prefix + "agentPools/read",
        prefix + "agentPools/write"]
    roles = _resources(aks, "Microsoft.Authorization/roleDefinitions")
    assert len(roles) == 2
    for role in roles.values():
        (permission,) = role["properties"]["permissions"]
        granted = [*_resolve(aks, permission["actions"]), *_resolve(aks, permission["dataActions"])]
        assert granted and not any("*" in a for a in granted)
        assert role["properties"]["type"] == "CustomRole"


def test_aks_operation_status_is_readable_at_the_clusters_subscription(parsed: dict[str, Any]) -> None:
    """AKS's operation status URLs are subscription-level (the ARM double answers the same way):
    only read actions on them, granted where the cluster's subscription is."""
    main = _file(parsed, "main.bicep")
    module = main["modules"]["aksOperationStatus"]
    assert _names_in(module["config"]["condition"]) >= {"scaleEnabled", "aksOperationStatusRead"}
    scope = _body(module)["scope"]["function"]
    assert scope["type"] == "subscription" and "aksSubscriptionId" in _names_in(scope["parameters"])
    status = _file(parsed, "modules/aks-operation-status.bicep")
    assert sorted(status["variables"]["operationStatusActions"]["value"]) == [
        "Microsoft.ContainerService/locations/operationresults/read",
        "Microsoft.ContainerService/locations/operations/read"]
    (role,) = _resources(status, "Microsoft.Authorization/roleDefinitions").values()
    (permission,) = role["properties"]["permissions"]
    assert all(a.endswith("/read") for a in _resolve(status, permission["actions"]))
    assert not _resolve(status, permission["dataActions"])


# ---------------------------------------------------------------------------------------------
# checkov
# ---------------------------------------------------------------------------------------------


def test_checkov_finds_no_failed_check() -> None:
    checkov = _venv_tool(CHECKOV)
    proc = subprocess.run(
        [str(checkov), "--directory", str(BICEP_DIR), "--framework", "bicep", "--skip-download",
         "--output", "json", "--skip-check", ",".join(sorted(SKIPPED_CHECKS))],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (bicep,) = [r for r in reports if r.get("check_type") == "bicep"]
    summary = bicep["summary"]
    results = bicep.get("results", {})
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for c in results.get("failed_checks", [])]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0, results.get("parsing_errors")
    assert summary["passed"] >= 20
    scanned = {c["file_path"].lstrip("/") for c in results.get("passed_checks", [])}
    assert {"main.bicep", "modules/storage.bicep", "modules/keyvault.bicep"} <= scanned
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_scale_timer_is_switched_off_exactly_when_scaling_is(parsed: dict[str, Any]) -> None:
    """Without scaling, the host's per-function switch (``AzureWebJobs.<name>.Disabled``) keeps the
    scale timer from waking the app every minute; with scaling it fires. The name is the function's."""
    from tests.test_functions import functions_by_name  # get_functions() indexes once per process

    timers = {name for name, f in functions_by_name().items()
              if any(b.type == "timerTrigger" for b in f.get_bindings())}
    assert "scale_timer" in timers
    main = _file(parsed, "main.bicep")
    expr = _resolve(main, "scaleSettings")
    operands = expr["operator"]["operands"]
    assert expr["operator"]["type"] == "conditional" and operands["condition"] == "scaleEnabled"
    switch = "AzureWebJobs.scale_timer.Disabled"

    def keys(obj: dict[str, Any]) -> dict[str, Any]:  # the parser keeps a quoted key's quotes
        return {k.strip("'"): v for k, v in obj.items()}

    assert keys(operands["false_value"]) == {switch: "true"}
    assert switch not in keys(operands["true_value"])
    # no other timer is switched off anywhere in the app settings (but the Graph subscription
    # timer without notifications, below)
    switched = {name.strip("'") for name in _app_settings(parsed) if name.strip("'").startswith("AzureWebJobs.")}
    assert switched == {switch, "AzureWebJobs.graph_subscriptions.Disabled"}


def test_graph_subscription_timer_is_switched_off_without_graph_notifications(parsed: dict[str, Any]) -> None:
    """The subscription manager's hourly timer has nothing to do unless the directory is Entra ID
    with notifications on (``directory.entra.notifications``): switched off otherwise, like the
    scale timer without scaling."""
    from tests.test_functions import functions_by_name

    assert any(b.type == "timerTrigger" for b in functions_by_name()["graph_subscriptions"].get_bindings())
    main = _file(parsed, "main.bicep")
    expr = _resolve(main, "graphTimerSettings")
    operands = expr["operator"]["operands"]
    assert expr["operator"]["type"] == "conditional" and operands["condition"] == "graphNotificationsOn"
    on = _resolve(main, "graphNotificationsOn")
    assert "directoryKind" in json.dumps(on) and "graphNotifications" in json.dumps(on), on
    switch = "AzureWebJobs.graph_subscriptions.Disabled"
    assert {k.strip("'"): v for k, v in operands["false_value"].items()} == {switch: "true"}
    assert not operands["true_value"]
    assert switch in {name.strip("'") for name in _app_settings(parsed)}


def test_the_readme_says_a_redeploy_without_api_tokens_removes_them(parsed: dict[str, Any]) -> None:
    """A redeploy keeps a Key Vault secret whose parameter is left empty, but the app settings are
    replaced whole: a secure parameter that is no vault secret (apiTokens) is gone after a redeploy
    without it (the hub's demand calls and every admin then get 401). The deploy steps, whose
    comment says unset secrets keep what Key Vault holds, must say which one is not kept."""
    main = _file(parsed, "main.bicep")
    kept = set(_body(main["modules"]["keyVault"])["params"]) & _secure_params(main)
    not_kept = _secure_params(main) - kept
    assert not_kept == {"apiTokens"}
    # the setting is left out when the parameter is empty (so the redeploy drops it)
    tokens = main["variables"]["apiTokenSettings"]["value"]["operator"]
    assert tokens["type"] == "conditional" and tokens["operands"]["true_value"] == {}
    text = (BICEP_DIR / "README.md").read_text()
    deploy = " ".join(text[text.index("## Deploy"):text.index("## Publish the code")].split())
    for name in sorted(not_kept):
        assert re.search(rf"`{name}`[^.]*(not in Key Vault|removes)", deploy), \
            f"infra/bicep/README.md does not say a redeploy without `{name}` removes its setting"


def test_without_scaling_the_docs_do_not_promise_a_manual_scale_run(parsed: dict[str, Any]) -> None:
    """Without scaleEnabled the template sets no cluster and grants no role on it: a manual
    ``POST /api/v1/scale`` has nothing to act on (NotConfigured), so the README must not say it runs."""
    from hubpilot.config.scale import ScaleSettings
    from hubpilot.wiring import NotConfigured
    from hubpilot.wiring.scale import build_pool

    main = _file(parsed, "main.bicep")
    off = {k.strip("'") for k in _resolve(main, "scaleSettings")["operator"]["operands"]["false_value"]}
    assert not {n for n in off if n.startswith("HUBPILOT_SCALE__")}
    with pytest.raises(NotConfigured):
        build_pool(ScaleSettings())  # what the app has for scale without scaleEnabled
    row = next(line for line in (BICEP_DIR / "README.md").read_text().splitlines()
               if line.startswith("| without `scaleEnabled`"))
    assert "still runs" not in row and "still runs by hand" not in (BICEP_DIR / "main.bicep").read_text()
    assert re.search(r"`POST /api/v1/scale` [^|]*(cluster|scaleEnabled)", row), row


def test_every_bicep_parameter_a_settings_error_names_is_one_of_main_bicep(parsed: dict[str, Any]) -> None:
    """A refused setting names the Bicep parameter that sets it; a name that is no parameter (a
    variable of the template, a misspelling) sends the user looking for what does not exist."""
    params = set(_file(parsed, "main.bicep")["parameters"])
    named: set[str] = set()
    for path in (ROOT / "hubpilot").rglob("*.py"):
        text = path.read_text()
        # camelCase words after "Bicep parameter"
        named |= set(re.findall(r"Bicep parameters? ([a-z]+[A-Z][A-Za-z0-9]*)", text))
    from hubpilot.config.scale import AZURE_NAMES

    named |= {bicep for _, bicep in AZURE_NAMES.values()}
    assert len(named) >= 6, named
    assert sorted(named - params) == []
