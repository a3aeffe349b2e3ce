"""The Azure Functions app: bindings from ``app.get_functions()``, and the entry points called directly.

The HTTP tests go through ``admin_api`` (AsgiFunctionApp → front → admin app) with
``api.run_mode = "queue"`` on Azurite: POST puts a run request on the ``hubpilot-runs`` queue and
the ``run_queue`` function, called with the message as the host would, executes it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from azure.storage.queue import TextBase64DecodePolicy
from azure.storage.queue.aio import QueueClient

import function_app
import functions
from functions.timers import SCHEDULE_SETTINGS, execute_message, run_timer
from hubpilot.adapters.store_azure import AzureStore
from hubpilot.api.runs import QUEUE_CONNECTION_SETTING, QUEUE_NAME, drain_tasks
from hubpilot.api.scheduling import configured_schedules
from hubpilot.settings import TIMER_SCHEDULE_ENV, SettingsError, load_settings
from hubpilot.wiring import OPERATIONS, Context
from tests.azurite import Azurite
from tests.test_api_kit import World, auth, make_context, make_settings

ROOT = Path(__file__).resolve().parents[1]
ADMIN, READER = auth("admin"), auth("reader")


@functools.cache
def functions_by_name() -> dict[str, Any]:
    """``app.get_functions()`` as the worker's indexing calls it (once: it validates names)."""
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


# --- bindings ----------------------------------------------------------------------------------

def test_admin_api_is_one_anonymous_catch_all_http_function() -> None:
    fns = functions_by_name()
    assert {"admin_api", "sync_timer", "cull_timer", "scale_timer", "run_queue", "graph_hints",
            "graph_subscriptions"} <= set(fns)
    bindings = json.loads(fns["admin_api"].get_function_json())["bindings"]
    trigger = next(b for b in bindings if b["type"] == "httpTrigger")
    assert trigger["authLevel"] == "ANONYMOUS" and trigger["route"] == "/{*route}"
    assert {"GET", "POST", "HEAD"} <= set(trigger["methods"])


def test_host_json_serves_the_routes_without_a_prefix() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0" and host["extensions"]["http"]["routePrefix"] == ""
    assert host["extensionBundle"]["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "base64"  # what enqueue() writes
    # A hint that finds the sync lock held is retried after visibilityTimeout (default zero: all
    # maxDequeueCount attempts at once, then the poison queue, while the other sync still runs).
    h, m, sec = (int(x) for x in queues["visibilityTimeout"].split(":"))
    assert h * 3600 + m * 60 + sec >= 15 and queues["maxDequeueCount"] >= 3


def test_a_graph_round_gives_up_waiting_well_before_the_functions_timeout() -> None:
    """A throttled Graph read stops waiting at directory.entra.round_deadline_seconds: by default
    at most half the function's time, the rest left for the hub's part of the run."""
    from hubpilot.config.entra import EntraSettings

    h, m, sec = (int(x) for x in json.loads((ROOT / "host.json").read_text())["functionTimeout"].split(":"))
    assert EntraSettings().round_deadline_seconds <= (h * 3600 + m * 60 + sec) / 2


def test_timer_schedules_are_the_settings_app_settings() -> None:
    """The host resolves %NAME% in its configuration, where an app setting's ``__`` is a section
    delimiter: the timers read flat names, which the settings read as ``<op>.schedule``."""
    fns = functions_by_name()
    by_op = {s.name: s for s in configured_schedules(make_settings())}
    for op in OPERATIONS:
        (binding,) = json.loads(fns[f"{op}_timer"].get_function_json())["bindings"]
        assert binding["type"] == "timerTrigger" and binding["useMonitor"] is True
        assert by_op[op].app_setting() == SCHEDULE_SETTINGS[op] == TIMER_SCHEDULE_ENV[op]
        assert binding["schedule"] == f"%HUBPILOT_{op.upper()}_SCHEDULE%"


def test_the_timers_schedule_app_settings_are_hubpilots_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the timer fires on is what hubpilot validates (and ``serve`` would fire on)."""
    monkeypatch.setenv("HUBPILOT_CULL_SCHEDULE", "0 */3 * * * *")
    assert load_settings().cull.schedule == "0 */3 * * * *"
    monkeypatch.setenv("HUBPILOT_CULL_SCHEDULE", "*/5 * * * *")
    with pytest.raises(SettingsError, match="HUBPILOT_CULL_SCHEDULE"):
        load_settings()


def test_no_binding_expression_names_a_setting_the_host_cannot_resolve() -> None:
    """Neither ``__`` nor ``:`` (Azure/azure-functions-host#10246, MicrosoftDocs/azure-docs#71095)."""
    seen = 0
    for name, fn in functions_by_name().items():
        for binding in json.loads(fn.get_function_json())["bindings"]:
            for value in binding.values():
                if isinstance(value, str):
                    for setting in re.findall(r"%([^%]*)%", value):
                        seen += 1
                        assert "__" not in setting and ":" not in setting, (name, value)
    assert seen >= 3  # the three timers at least


def test_run_queue_binding_matches_what_the_api_enqueues() -> None:
    (binding,) = json.loads(functions_by_name()["run_queue"].get_function_json())["bindings"]
    assert binding["type"] == "queueTrigger"
    assert binding["queueName"] == QUEUE_NAME and binding["connection"] == QUEUE_CONNECTION_SETTING


def test_graph_hints_reads_the_hint_queue_through_the_hosts_storage() -> None:
    """The webhook puts its hints on directory.entra.queue_name (``hubpilot-graph``), which the
    start-up check holds to the account of AzureWebJobsStorage: the trigger must read that queue
    through that connection, or every notification is acknowledged and never synced."""
    from hubpilot.config.entra import EntraSettings

    (binding,) = json.loads(functions_by_name()["graph_hints"].get_function_json())["bindings"]
    assert binding["type"] == "queueTrigger" and binding["direction"] == "IN"
    assert binding["queueName"] == EntraSettings().queue_name == "hubpilot-graph"
    assert binding["connection"] == QUEUE_CONNECTION_SETTING == "AzureWebJobsStorage"


def test_every_timer_function_is_the_one_its_schedules_disabled_setting_names() -> None:
    """GET /status says a schedule is off when ``AzureWebJobs.<function>.Disabled`` is true: the
    name must be the timer function's, or a timer switched off in the portal shows as firing."""
    timers = {name for name, fn in functions_by_name().items()
              if any(b["type"] == "timerTrigger" for b in json.loads(fn.get_function_json())["bindings"])}
    assert set(functions.TIMERS.values()) == timers
    for schedule, fn in functions.TIMERS.items():
        assert set(functions.disabled_timers({f"AzureWebJobs.{fn}.Disabled": "true"})) == {schedule}


def test_the_subscription_manager_timer_fires_hourly_and_never_on_startup() -> None:
    """graph_subscriptions: six NCRONTAB fields (the host reads five as an error), hourly at :05
    as GET /status shows it (functions.graph.SUBSCRIPTION_SCHEDULE); not run on every start,
    scale-out and wake-up of the app (runOnStartup, "should rarely if ever be set to true"); its
    schedule persisted through restarts (useMonitor), as the operations' timers are."""
    from functions.graph import SUBSCRIPTION_SCHEDULE

    fns = functions_by_name()
    (binding,) = json.loads(fns["graph_subscriptions"].get_function_json())["bindings"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == SUBSCRIPTION_SCHEDULE == "0 5 * * * *"
    assert binding["useMonitor"] is True and binding.get("runOnStartup", False) is False
    for op in OPERATIONS:
        (timer,) = json.loads(fns[f"{op}_timer"].get_function_json())["bindings"]
        assert timer.get("runOnStartup", False) is False, op


def test_example_app_settings_carry_valid_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    for name in SCHEDULE_SETTINGS.values():
        monkeypatch.setenv(name, values[name])
    settings = load_settings()
    for op in OPERATIONS:
        assert getattr(settings, op).schedule == values[SCHEDULE_SETTINGS[op]]


def test_a_bad_schedule_app_setting_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBPILOT_CULL__SCHEDULE", "*/5 * * * *")
    with pytest.raises(SettingsError, match="HUBPILOT_CULL__SCHEDULE") as err:
        load_settings()
    assert "six" in str(err.value)


def _functions_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **schedules: str) -> None:
    """What a Functions deployment sets (but the timers' schedules: ``schedules``, op → value)."""
    for name, value in {"HUB__API_URL": "http://127.0.0.1:9/hub/api", "HUB__TOKEN": "hub-secret",
                        "STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"), "API__RUN_MODE": "queue",
                        "API__QUEUE_CONNECTION_STRING": "UseDevelopmentStorage=true"}.items():
        monkeypatch.setenv(f"HUBPILOT_{name}", value)
    for op, name in SCHEDULE_SETTINGS.items():
        monkeypatch.delenv(name, raising=False)
        if op in schedules:
            monkeypatch.setenv(name, schedules[op])


@pytest.mark.parametrize("missing", OPERATIONS)
async def test_a_timer_whose_schedule_app_setting_is_unset_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str) -> None:
    """The host resolves a timer's ``%HUBPILOT_SYNC_SCHEDULE%`` from the app settings; unset, it
    does not load the function ("Error indexing method ... does not resolve to a value",
    Azure/azure-functions-host#10346, even for a timer disabled by AzureWebJobs.<name>.Disabled),
    so the operation never runs on its schedule while hubpilot's settings took the default
    schedule and GET /status showed its next fire. The Functions app refuses to start instead,
    naming the setting and the value to give it."""
    given = {op: "0 */7 * * * *" for op in OPERATIONS if op != missing}
    _functions_env(monkeypatch, tmp_path, **given)
    functions.set_context(None)
    try:
        with pytest.raises(SettingsError) as err:
            functions.get_context()
        default = getattr(load_settings(), missing).schedule
        assert f"{SCHEDULE_SETTINGS[missing]}='{default}'" in str(err.value), str(err.value)
        assert f"{missing}_timer" in str(err.value)
        assert not any(SCHEDULE_SETTINGS[op] in str(err.value) for op in given)
        monkeypatch.setenv(f"HUBPILOT_{missing.upper()}__SCHEDULE", "0 */9 * * * *")  # the nested name alone
        with pytest.raises(SettingsError, match=re.escape(f"{SCHEDULE_SETTINGS[missing]}='0 */9 * * * *'")):
            functions.get_context()

        monkeypatch.setenv(SCHEDULE_SETTINGS[missing], "0 */9 * * * *")  # what the timer reads
        ctx = functions.get_context()
        assert getattr(ctx.settings, missing).schedule == "0 */9 * * * *"
        await ctx.close()
    finally:
        functions.set_context(None)


OTHER_ACCOUNT = "DefaultEndpointsProtocol=https;AccountName=otherst;AccountKey=a2V5;EndpointSuffix=core.windows.net"
HOST_ACCOUNT = "DefaultEndpointsProtocol=https;AccountName=hubpilotst;AccountKey=a2V5;EndpointSuffix=core.windows.net"
ENTRA_AZURE_HINTS = {"HUBPILOT_DIRECTORY__KIND": "entra", "HUBPILOT_DIRECTORY__ENTRA__NOTIFICATIONS": "true",
                     "HUBPILOT_DIRECTORY__ENTRA__CLIENT_STATE": "client-state",
                     "HUBPILOT_DIRECTORY__ENTRA__TENANT_ID": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
                     "HUBPILOT_DIRECTORY__ENTRA__NOTIFICATION_URL": "https://app.example.net/api/v1/graph/notifications",
                     "HUBPILOT_DIRECTORY__ENTRA__QUEUE": "azure"}


@pytest.mark.parametrize("host_storage, queue_settings, refused", [
    # run requests: api.queue_connection_string is taken before AzureWebJobsStorage
    ({"AzureWebJobsStorage": HOST_ACCOUNT}, {"HUBPILOT_API__QUEUE_CONNECTION_STRING": OTHER_ACCOUNT},
     "HUBPILOT_API__QUEUE_CONNECTION_STRING"),
    ({"AzureWebJobsStorage__accountName": "hubpilotst"}, {"HUBPILOT_API__QUEUE_CONNECTION_STRING": OTHER_ACCOUNT},
     "HUBPILOT_API__QUEUE_CONNECTION_STRING"),
    ({"AzureWebJobsStorage": HOST_ACCOUNT}, {"HUBPILOT_API__QUEUE_CONNECTION_STRING": HOST_ACCOUNT}, None),
    # Graph hints: directory.entra.queue_account_url / _connection_string, which have no default
    ({"AzureWebJobsStorage__accountName": "hubpilotst", "AzureWebJobsStorage__credential": "managedidentity"},
     {**ENTRA_AZURE_HINTS, "HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL": "https://otherst.queue.core.windows.net"},
     "HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL"),
    ({"AzureWebJobsStorage__queueServiceUri": "https://hubpilotst.queue.core.windows.net/"},
     {**ENTRA_AZURE_HINTS, "HUBPILOT_DIRECTORY__ENTRA__QUEUE_CONNECTION_STRING": OTHER_ACCOUNT},
     "HUBPILOT_DIRECTORY__ENTRA__QUEUE_CONNECTION_STRING"),
    ({"AzureWebJobsStorage__accountName": "hubpilotst"},
     {**ENTRA_AZURE_HINTS, "HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL": "https://HubpilotSt.queue.core.windows.net/"},
     None),
    ({"AzureWebJobsStorage": "UseDevelopmentStorage=true"},
     {**ENTRA_AZURE_HINTS, "HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL": "http://127.0.0.1:10001/devstoreaccount1"},
     None),
    # both given: the connection string is the one the hints go through
    ({"AzureWebJobsStorage__accountName": "hubpilotst"},
     {**ENTRA_AZURE_HINTS, "HUBPILOT_DIRECTORY__ENTRA__QUEUE_CONNECTION_STRING": OTHER_ACCOUNT,
      "HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL": "https://hubpilotst.queue.core.windows.net"},
     "HUBPILOT_DIRECTORY__ENTRA__QUEUE_CONNECTION_STRING"),
    # an account the URL does not name (a custom domain): not known, so not refused
    ({"AzureWebJobsStorage__accountName": "hubpilotst"},
     {**ENTRA_AZURE_HINTS, "HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL": "https://hints.example.net"}, None),
], ids=["runs-connection-string", "runs-identity-host", "runs-same-account", "hints-account-url",
        "hints-connection-string", "hints-same-account", "hints-azurite", "hints-both-given",
        "hints-account-unknown"])
async def test_a_queue_on_another_account_than_the_triggers_is_refused_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host_storage: dict[str, str],
        queue_settings: dict[str, str], refused: str | None) -> None:
    """``run_queue`` and ``graph_hints`` read their queues through the connection AzureWebJobsStorage
    (the host's storage). A run request or a Graph hint put on a queue of another storage account is
    never read: the POST answered 202 'queued' and the run never ran (its document 'queued' for good),
    a notification was acknowledged and never synced. The Functions app refuses to start, naming the
    setting and both accounts."""
    _functions_env(monkeypatch, tmp_path, **{op: "0 */7 * * * *" for op in OPERATIONS})
    monkeypatch.delenv("HUBPILOT_API__QUEUE_CONNECTION_STRING")
    for name in [n for n in os.environ if n.startswith("AzureWebJobsStorage")]:
        monkeypatch.delenv(name)
    for name, value in {**host_storage, **queue_settings}.items():
        monkeypatch.setenv(name, value)
    functions.set_context(None)
    try:
        if refused is None:
            await functions.get_context().close()
            return
        with pytest.raises(SettingsError) as err:
            functions.get_context()
        message = str(err.value)
        assert refused in message and "'otherst'" in message and "'hubpilotst'" in message, message
        assert "a2V5" not in message  # no account key
    finally:
        functions.set_context(None)


# --- what a deployment installs -----------------------------------------------------------------

def _pins(path: Path) -> dict[str, str]:
    """name → version of every ``name==version`` line of a pip requirements/constraints file."""
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and not line.startswith("-"), f"{path.name}: {line!r} is not a name==version pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_remote_build_installs_the_tested_version_of_every_runtime_package() -> None:
    """The Functions remote build (Oryx) runs ``pip install -r requirements.txt`` and nothing else
    (infra/bicep/README.md, "Publish the code"): a transitive package requirements.txt leaves
    unpinned (aiohttp under the Kubernetes client, msgraph-core, the kiota packages, azure-core)
    would be whatever is newest on the day of the deployment, not the version the tests ran with.
    Every package the runtime needs, as .venv's metadata resolves it, is pinned there at the
    version of constraints.txt. (``-c constraints.txt`` in requirements.txt is no way out:
    pyproject.toml reads requirements.txt as the package's dependencies, which take no pip option.)"""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    runtime = _pins(ROOT / "requirements.txt")
    tested = _pins(ROOT / "constraints.txt")
    needed: dict[str, str] = {}
    todo = [Requirement(f"{name}=={version}") for name, version in runtime.items()]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        needed[key[0]] = dist.version
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append(dep)
    assert {"aiohttp", "azure-core", "msgraph-core", "microsoft-kiota-http"} <= set(needed)
    unpinned = sorted(name for name in needed if name not in runtime)
    assert not unpinned, f"requirements.txt leaves these runtime packages unpinned: {unpinned}"
    assert {name: runtime[name] for name in needed} == {name: tested[name] for name in needed} == needed
    assert set(runtime) == set(needed), f"not needed at runtime: {sorted(set(runtime) - set(needed))}"


UNRESOLVED_REFERENCE = "@Microsoft.KeyVault(SecretUri=https://kv-hubpilot-x.vault.azure.net/secrets/hub-token)"


def test_an_unresolved_key_vault_reference_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service passes a Key Vault reference it cannot resolve (secret missing, no access yet) as
    its own text ("If a reference isn't resolved properly, the reference string is used instead",
    learn.microsoft.com/azure/app-service/app-service-key-vault-references): the hub token would be
    that text, sent to the hub as a bearer token. Every trigger stops at the settings instead."""
    monkeypatch.setenv("HUBPILOT_HUB__TOKEN", UNRESOLVED_REFERENCE)
    monkeypatch.setenv("HUBPILOT_API__QUEUE_CONNECTION_STRING", "  " + UNRESOLVED_REFERENCE.lower())
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "HUBPILOT_HUB__TOKEN" in message and "HUBPILOT_API__QUEUE_CONNECTION_STRING" in message
    assert "Key Vault Secrets User" in message and "kv-hubpilot-x" not in message
    monkeypatch.delenv("HUBPILOT_API__QUEUE_CONNECTION_STRING")
    monkeypatch.setenv("HUBPILOT_HUB__TOKEN", "resolved-secret-value")
    assert load_settings().hub.token is not None


def test_an_ldap_deployment_without_a_search_base_is_refused_at_start_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """infra/bicep writes HUBPILOT_DIRECTORY__LDAP__BASE_DN from ldapBaseDn, '' unless given: the app
    started, and every sync then failed (noSuchObject under ''); a domain name in its place failed
    each sync with "'example.org' is no attribute=value pair". The settings refuse both at start."""
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", "ldaps://ldap.example.org")
    for bad in ("", "   ", "example.org"):
        monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", bad)
        with pytest.raises(SettingsError) as err:
            load_settings()
        message = str(err.value)
        assert "HUBPILOT_DIRECTORY__LDAP__BASE_DN" in message and "ldapBaseDn" in message, bad
        assert "dc=example,dc=org" in message, bad
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    for blank in ("", "  "):  # a group base left blank is the base_dn, as unset
        monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__GROUP_BASE_DN", blank)
        ldap = load_settings().directory.ldap  # type: ignore[union-attr]
        assert ldap is not None and ldap.group_base_dn is None, repr(blank)
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__GROUP_BASE_DN", "groups")
    with pytest.raises(SettingsError, match=r"directory\.ldap\.group_base_dn.*HUBPILOT_DIRECTORY__LDAP__GROUP_BASE_DN"):
        load_settings()


def test_an_ldap_deployment_without_a_server_url_is_refused_at_start_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """infra/bicep writes HUBPILOT_DIRECTORY__LDAP__URL from ldapUrl, '' unless given: the app
    started, and every sync then failed in the LDAP adapter. The settings refuse it at start."""
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    for bad in ("", "ldap.example.org", "https://ldap.example.org", "ldaps://"):
        monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", bad)
        with pytest.raises(SettingsError) as err:
            load_settings()
        assert "HUBPILOT_DIRECTORY__LDAP__URL" in str(err.value) and "ldaps://" in str(err.value), bad
    for good in ("ldap://ldap.example.org", "ldaps://ldap.example.org:636", "ldap://[::1]:389"):
        monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", good)
        settings = load_settings()
        assert settings.directory is not None and settings.directory.ldap is not None
        assert settings.directory.ldap.url == good


def test_a_graph_base_url_without_or_with_a_doubled_api_version_is_refused_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """infra/bicep appends /v1.0 to graphEndpoint: given with the version
    (https://graph.microsoft.us/v1.0) it became .../v1.0/v1.0, and without any version (an app
    setting written by hand) every Graph request missed the API; each sync then failed as
    'directory unknown'. The settings say what to fix at start instead."""
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "entra")
    for bad in ("https://graph.microsoft.us/v1.0/v1.0", "https://graph.microsoft.us/v1.0/v1.0/",
                "https://graph.microsoft.us", "https://graph.microsoft.us/"):
        monkeypatch.setenv("HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL", bad)
        with pytest.raises(SettingsError) as err:
            load_settings()
        assert "HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL" in str(err.value), bad
        assert "https://graph.microsoft.us/v1.0" in str(err.value), bad
    for good in ("https://graph.microsoft.us/v1.0", "https://microsoftgraph.chinacloudapi.cn/v1.0/",
                 "http://127.0.0.1:9/v1.0"):
        monkeypatch.setenv("HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL", good)
        settings = load_settings()
        assert settings.directory is not None and settings.directory.entra is not None
        assert settings.directory.entra.graph_base_url == good.rstrip("/")


def test_importing_the_app_and_answering_health_and_handshake_loads_no_web_framework() -> None:
    code = """
import asyncio, sys
import azure.functions as func
import function_app
fn = {f.get_function_name(): f for f in function_app.app.get_functions()}["admin_api"].get_user_function()
async def main():
    h = await fn(func.HttpRequest("GET", "http://localhost/healthz", headers={}, body=b""), None)
    v = await fn(func.HttpRequest(
        "POST", "http://localhost/api/v1/graph/notifications?validationToken=Validation%3A%20a%26b+%3Ctok%3E",
        params={"validationToken": "Validation: a&b <tok>"}, headers={}, body=b""), None)
    print(h.status_code, h.get_body().decode(), v.status_code, v.mimetype, v.get_body().decode())
asyncio.run(main())
heavy = [m for m in ("fastapi", "pydantic", "starlette", "httpx", "hubpilot.settings", "hubpilot.wiring",
                     "azure.storage.queue", "azure.identity", "msgraph") if m in sys.modules]
print("heavy:", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout.splitlines()
    assert out[0] == '200 {"status":"ok"} 200 text/plain Validation: a&b <tok>'
    assert out[1] == "heavy: []"


# --- entry points ------------------------------------------------------------------------------

@dataclass
class Fx:
    ctx: Context
    worlds: dict[str, World]
    queue: QueueClient

    async def http(self, method: str, path: str, headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> func.HttpResponse:
        fn = functions_by_name()["admin_api"].get_user_function()
        query = f"?{urlencode(params)}" if params else ""
        req = func.HttpRequest(method, f"http://localhost{path}{query}", headers=headers or {}, params=params or {},
                               route_params={"route": path.lstrip("/")}, body=b"")
        resp: func.HttpResponse = await fn(req, None)
        return resp

    async def deliver_queue(self) -> list[str]:
        """What the host does: take each message and call run_queue with its decoded body."""
        outcomes = []
        async for m in self.queue.receive_messages(max_messages=32):
            await functions_by_name()["run_queue"].get_user_function()(
                func.QueueMessage(id=m.id, body=m.content.encode(), pop_receipt=m.pop_receipt))
            await self.queue.delete_message(m)
            outcomes.append(json.loads(m.content)["run_id"])
        return outcomes


@pytest.fixture(scope="module")
async def fx(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fx]:
    unique = uuid.uuid4().hex[:10]
    settings = make_settings(run_mode="queue", queue_connection_string=azurite.connection_string)
    ctx, worlds = make_context(tmp_path_factory.mktemp("fn"), settings)
    await ctx.store.close()
    ctx.store = AzureStore.from_settings(connection_string=azurite.connection_string,
                                         table_prefix=f"f{unique}", container=f"f{unique}")
    functions.set_context(ctx)
    queue = QueueClient.from_connection_string(azurite.connection_string, QUEUE_NAME,
                                               message_decode_policy=TextBase64DecodePolicy())
    async with queue:
        try:
            await queue.clear_messages()
        except Exception:
            pass
        yield Fx(ctx, worlds, queue)
    functions.set_context(None)
    await drain_tasks()
    await ctx.close()


@pytest.fixture
def world(fx: Fx) -> dict[str, World]:
    for op, w in fx.worlds.items():
        w.items, w.desired, w.fail_observe, w.gate, w.applies = set(), {f"{op}-a", f"{op}-b"}, False, None, 0
    return fx.worlds


@pytest.mark.azurite
async def test_post_enqueues_and_the_queue_function_runs_it(fx: Fx, world: dict[str, World]) -> None:
    r = await fx.http("POST", "/api/v1/sync", ADMIN)
    assert r.status_code == 202, r.get_body()
    run = json.loads(r.get_body())
    assert run["outcome"] == "queued" and r.headers["Location"] == f"/api/v1/runs/{run['run_id']}"
    queued = json.loads((await fx.http("GET", f"/api/v1/runs/{run['run_id']}", READER)).get_body())
    assert queued["outcome"] == "queued" and world["sync"].applies == 0

    again = await fx.http("POST", "/api/v1/sync", ADMIN)
    assert again.status_code == 409 and int(again.headers["Retry-After"]) >= 1
    assert json.loads(again.get_body())["holder"] == f"token:admin-caller:{run['run_id']}"

    assert await fx.deliver_queue() == [run["run_id"]]
    done = json.loads((await fx.http("GET", f"/api/v1/runs/{run['run_id']}", READER)).get_body())
    assert done["outcome"] == "applied" and done["trigger"] == "api"
    assert world["sync"].items == {"sync-a", "sync-b"}
    assert (await fx.http("POST", "/api/v1/sync", ADMIN)).status_code == 202  # reservation released
    await fx.deliver_queue()


@pytest.mark.azurite
async def test_an_approval_is_queued_as_an_approval_and_runs_only_from_the_queue(
        fx: Fx, world: dict[str, World]) -> None:
    """POST /plans/{id}/approve in queue mode: the answer is the queued approval (not a dry-run, the
    plan it approves), the HTTP process runs nothing itself, and the queue function applies exactly
    the approved plan (a request that lost its plan id on the queue ran as a plain run: refused again)."""
    w = world["sync"]
    w.items, w.desired = {"a", "b", "c", "d"}, set()
    first = json.loads((await fx.http("POST", "/api/v1/sync", ADMIN)).get_body())
    assert await fx.deliver_queue() == [first["run_id"]]
    refused = json.loads((await fx.http("GET", f"/api/v1/runs/{first['run_id']}", READER)).get_body())
    assert refused["outcome"] == "refused" and w.items == {"a", "b", "c", "d"}

    r = await fx.http("POST", f"/api/v1/plans/{refused['plan_id']}/approve", ADMIN)
    assert r.status_code == 202, r.get_body()
    queued = json.loads(r.get_body())
    assert queued["outcome"] == "queued" and queued["dry_run"] is False, queued
    assert queued["approved_plan"] == refused["plan_id"] and queued["trigger"] == "approval"
    await drain_tasks()  # nothing runs in the HTTP process: the queue function runs it
    assert w.applies == 0
    still = json.loads((await fx.http("GET", f"/api/v1/runs/{queued['run_id']}", READER)).get_body())
    assert still["outcome"] == "queued"

    assert await fx.deliver_queue() == [queued["run_id"]]
    done = json.loads((await fx.http("GET", f"/api/v1/runs/{queued['run_id']}", READER)).get_body())
    assert done["outcome"] == "applied", done
    assert done["approved_plan"] == refused["plan_id"] and done["plan_id"] == refused["plan_id"]
    assert w.items == set() and w.applies == 1


@pytest.mark.azurite
async def test_http_entry_authenticates_and_serves_health_without_credentials(fx: Fx, world: Any) -> None:
    assert (await fx.http("GET", "/healthz")).status_code == 200
    assert (await fx.http("GET", "/api/v1/status")).status_code == 401
    assert (await fx.http("POST", "/api/v1/cull", READER)).status_code == 403
    status = await fx.http("GET", "/api/v1/status", READER)
    assert status.status_code == 200 and json.loads(status.get_body())["run_mode"] == "queue"
    dry = await fx.http("POST", "/api/v1/cull", ADMIN, {"dry_run": "true"})
    assert dry.status_code == 200 and json.loads(dry.get_body())["outcome"] == "planned"
    ready = json.loads((await fx.http("GET", "/api/v1/readyz", READER)).get_body())
    assert ready["checks"]["state_store"]["ok"] is True


@pytest.mark.azurite
async def test_a_malformed_queue_message_is_dropped_not_raised(fx: Fx, world: Any) -> None:
    assert await execute_message(b"not json") == "rejected"
    assert await execute_message(json.dumps({"run_id": "x", "operation": "nuke", "trigger": "t",
                                             "actor": "a"})) == "rejected"


@pytest.mark.azurite
async def test_each_timer_runs_its_own_operation_and_no_other(fx: Fx, world: dict[str, World]) -> None:
    fns = functions_by_name()
    for op in OPERATIONS:
        before = {o: w.applies for o, w in world.items()}
        await fns[f"{op}_timer"].get_user_function()(TimerRequest())
        assert {o: w.applies - before[o] for o, w in world.items()} == {o: int(o == op) for o in world}, op
        last = await fx.ctx.runner.last_run(op)
        assert last is not None and last["trigger"] == "timer" and last["outcome"] == "applied", op
        assert world[op].items == {f"{op}-a", f"{op}-b"}


async def test_a_hint_message_that_is_not_a_hint_object_is_dropped_not_retried() -> None:
    """A queued body that is JSON but not a hint (a list, a number in place of the groups) is
    dropped with an error line, as a malformed one is: raising would have the host deliver it
    maxDequeueCount times and leave it in the poison queue, to no end."""
    from functions.graph import handle_hint_message

    for body in (b"[]", b'"sync"', b"3", b'{"kind": "sync", "groups": 5}', b"not json", b'{"kind": "rm"}'):
        assert await handle_hint_message(body) == "rejected", body


@pytest.mark.azurite
async def test_timers_run_skip_on_lock_and_report_refused_and_paused(fx: Fx, world: dict[str, World]) -> None:
    fns = functions_by_name()
    await fns["cull_timer"].get_user_function()(TimerRequest(past_due=True))
    assert world["cull"].items == {"cull-a", "cull-b"}
    last = await fx.ctx.runner.last_run("cull")
    assert last is not None and last["trigger"] == "timer" and last["outcome"] == "applied"

    now = fx.ctx.clock()
    lease = await fx.ctx.store.acquire_lock("scale", "someone-else", timedelta(minutes=5), now)
    assert lease is not None
    assert await run_timer("scale") == "skipped"
    await fns["scale_timer"].get_user_function()(TimerRequest())  # does not raise
    assert world["scale"].applies == 0
    await fx.ctx.store.release_lock(lease)

    world["sync"].items, world["sync"].desired = {"1", "2", "3", "4"}, set()
    assert await run_timer("sync") == "refused"
    await fns["sync_timer"].get_user_function()(TimerRequest())
    assert world["sync"].items == {"1", "2", "3", "4"}

    await fx.ctx.runner.set_paused("scale", True, "test")
    assert await run_timer("scale") == "paused"
    await fx.ctx.runner.set_paused("scale", False, "test")
    assert await run_timer("scale") == "applied"


# --- where run requests go without a connection string (identity-based storage) -----------------
def _target_ctx(tmp_path: Path, **state: Any) -> Context:
    from hubpilot.settings import Settings

    base = make_settings(run_mode="queue")
    settings = Settings(hub=base.hub, api=base.api, state=state) if state else base
    return make_context(tmp_path, settings)[0]


def test_queue_target_follows_the_functions_hosts_storage_settings(tmp_path: Path) -> None:
    from hubpilot.api.runs import queue_target

    ctx = _target_ctx(tmp_path)
    conn = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k;EndpointSuffix=core.windows.net"
    assert queue_target(ctx, {QUEUE_CONNECTION_SETTING: conn}).connection_string == conn
    # the host's identity-based form, as infra/bicep sets it
    t = queue_target(ctx, {"AzureWebJobsStorage__accountName": "hubpilotst",
                           "AzureWebJobsStorage__credential": "managedidentity",
                           "AzureWebJobsStorage__clientId": "0000-client"})
    assert (t.connection_string, t.account_url, t.client_id, t.managed_identity) == (
        None, "https://hubpilotst.queue.core.windows.net", "0000-client", True)
    t = queue_target(ctx, {"AzureWebJobsStorage__queueServiceUri": "https://q.example.net/"})
    assert t.account_url == "https://q.example.net" and not t.managed_identity and t.client_id is None
    with pytest.raises(RuntimeError, match="must be an https:// URL"):
        queue_target(ctx, {"AzureWebJobsStorage__queueServiceUri": "http://q.example.net"})
    with pytest.raises(RuntimeError, match="AzureWebJobsStorage__accountName"):
        queue_target(ctx, {})


def test_queue_target_uses_the_sovereign_clouds_suffix_and_prefers_an_explicit_string(tmp_path: Path) -> None:
    from hubpilot.api.runs import queue_target

    ctx = _target_ctx(tmp_path, azure_endpoint_suffix="core.chinacloudapi.cn")
    assert queue_target(ctx, {"AzureWebJobsStorage__accountName": "st1"}).account_url == \
        "https://st1.queue.core.chinacloudapi.cn"
    explicit = make_context(tmp_path, make_settings(run_mode="queue",
                                                    queue_connection_string="UseDevelopmentStorage=true"))[0]
    assert queue_target(explicit, {"AzureWebJobsStorage__accountName": "st1"}).connection_string == \
        "UseDevelopmentStorage=true"


async def test_identity_queue_client_is_built_once_with_the_managed_identity(tmp_path: Path) -> None:
    from azure.identity.aio import ManagedIdentityCredential

    from hubpilot.api.runs import _identity_queue, queue_target

    ctx = _target_ctx(tmp_path)
    target = queue_target(ctx, {"AzureWebJobsStorage__accountName": "hubpilotst",
                                "AzureWebJobsStorage__credential": "managedidentity",
                                "AzureWebJobsStorage__clientId": "0000-client"})
    client = _identity_queue(ctx, target)
    assert client is _identity_queue(ctx, target)
    assert client.url == "https://hubpilotst.queue.core.windows.net/hubpilot-runs"
    assert isinstance(client.credential, ManagedIdentityCredential)
    await ctx.close()  # closes the client and its credential


def test_funcignore_leaves_out_what_the_zip_package_leaves_out() -> None:
    """`func azure functionapp publish` uploads the folder but what .funcignore names: it must ship
    the same files as the documented zip package (function_app.py, host.json, requirements.txt,
    functions/, hubpilot/), so that neither way ships the tests, the virtualenvs or node_modules, and
    neither leaves out a file the app imports. Checked for every file git tracks, with the patterns'
    gitignore meaning for names (a pattern ending in / names a folder at any depth)."""
    import fnmatch

    root = Path(function_app.__file__).resolve().parent
    readme = (root / "infra" / "bicep" / "README.md").read_text()
    zipped = re.search(r"zip -r hubpilot-app\.zip (.+?) -x", readme)
    assert zipped, "infra/bicep/README.md shows no zip command"
    shipped = zipped.group(1).split()
    patterns = [line.strip() for line in (root / ".funcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        for p in patterns:
            if p.endswith("/"):  # a folder of that name anywhere
                if any(fnmatch.fnmatch(part, p[:-1]) for part in parts[:-1]):
                    return True
            elif any(fnmatch.fnmatch(part, p) for part in parts):
                return True
        return False

    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert files, "git ls-files listed nothing"
    for path in files:
        in_zip = path.split("/")[0] in shipped and "__pycache__" not in path
        assert ignored(path) != in_zip, f"{path}: {'shipped by one way only' if in_zip else 'uploaded by func publish'}"
