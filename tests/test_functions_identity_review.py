"""The run queue reached with the identity the Functions host takes its ``AzureWebJobsStorage__*``
settings for, in each form the host accepts.

The parts: Azurite over HTTPS with OAuth (it checks the token's audience, issuer and lifetime),
the Entra authority double (``tests/doubles/login.py``) that azure-identity's real client-secret
credential asks for its token, and ``enqueue`` configured only by app settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from hubpilot.api.runs import QUEUE_NAME, RunRequest, enqueue
from tests.azurite import Azurite
from tests.doubles.login import CLIENT_ID, SECRET, TENANT, LoginDouble
from tests.pki import Pki
from tests.test_api_kit import make_context, make_settings
from tests.test_run_queue_identity import IDENTITY_HEADER, IdentityEndpoint, jwt

STORAGE_SCOPE = "https://storage.azure.com/.default"


@pytest.fixture(scope="module")
def sp_azurite(login_pki: Pki) -> Iterator[Azurite]:
    # the login double's CA: the one the process's aiohttp clients trust for the test
    with Azurite.start(tls=(login_pki.cert_file, login_pki.key_file), oauth=True) as azurite:
        yield azurite


def _host_environment(monkeypatch: pytest.MonkeyPatch, **storage: str) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("AzureWebJobs", "AZURE_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(name)
    for name, value in storage.items():
        monkeypatch.setenv(name, value)


@pytest.mark.azurite
async def test_a_service_principal_in_the_hosts_storage_settings_puts_the_run_request_on_the_queue(
        sp_azurite: Azurite, login: LoginDouble, login_pki: Pki, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """AzureWebJobsStorage__tenantId, __clientId and __clientSecret (no __credential): the host reads
    its queues as that service principal, so hubpilot must post run requests as it too (it took the
    client id for a managed identity's and failed, or used whatever identity the machine had)."""
    login.tokens[STORAGE_SCOPE] = jwt("https://storage.azure.com")
    _host_environment(monkeypatch, AZURE_AUTHORITY_HOST=login.url, **{
        "AzureWebJobsStorage__queueServiceUri": sp_azurite.queue_endpoint,
        "AzureWebJobsStorage__tenantId": TENANT,
        "AzureWebJobsStorage__clientId": CLIENT_ID,
        "AzureWebJobsStorage__clientSecret": SECRET,
    })
    ctx = make_context(tmp_path, make_settings(run_mode="queue"))[0]
    try:
        for i in (1, 2):
            await enqueue(ctx, RunRequest(f"run-{i}", "sync", "api", "ops"))
    finally:
        await ctx.close()
    assert [(r["path"], r["client_id"], r["scope"]) for r in login.requests] == \
        [(f"/{TENANT}/oauth2/v2.0/token", CLIENT_ID, STORAGE_SCOPE)]  # one token for both

    queue = QueueClient.from_connection_string(sp_azurite.connection_string, QUEUE_NAME,
                                               message_decode_policy=TextBase64DecodePolicy(),
                                               connection_verify=str(login_pki.ca_file))
    got = [json.loads(m.content) for m in queue.receive_messages(max_messages=32)]
    queue.close()
    assert {"run-1", "run-2"} <= {m["run_id"] for m in got}  # the module's Azurite: other tests' too


RESOURCE_ID = ("/subscriptions/00000000-0000-0000-0000-0000000000ab/resourceGroups/rg-hub/providers/"
               "Microsoft.ManagedIdentity/userAssignedIdentities/id-hubpilot")


@pytest.mark.azurite
async def test_a_user_assigned_identity_named_by_its_resource_id_puts_the_run_request_on_the_queue_as_itself(
        sp_azurite: Azurite, login: LoginDouble, login_pki: Pki, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """AzureWebJobsStorage__credential = managedidentity with __managedIdentityResourceId: the host
    reads its queues as that user-assigned identity; hubpilot asked the identity endpoint for the
    system-assigned identity's token (none, or one without the Storage role: the POST failed)."""
    del login  # its fixture makes the process trust the test CA, Azurite's too
    identity = IdentityEndpoint()
    try:
        _host_environment(monkeypatch, IDENTITY_ENDPOINT=identity.url, IDENTITY_HEADER=IDENTITY_HEADER, **{
            "AzureWebJobsStorage__queueServiceUri": sp_azurite.queue_endpoint,
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__managedIdentityResourceId": RESOURCE_ID,
        })
        ctx = make_context(tmp_path, make_settings(run_mode="queue"))[0]
        try:
            await enqueue(ctx, RunRequest("run-rid", "sync", "api", "ops"))
        finally:
            await ctx.close()
    finally:
        identity.close()
    assert [r["query"].get("mi_res_id") for r in identity.requests] == [RESOURCE_ID]
    assert all("client_id" not in r["query"] for r in identity.requests)
    queue = QueueClient.from_connection_string(sp_azurite.connection_string, QUEUE_NAME,
                                               message_decode_policy=TextBase64DecodePolicy(),
                                               connection_verify=str(login_pki.ca_file))
    got = [json.loads(m.content)["run_id"] for m in queue.receive_messages(max_messages=32)]
    queue.close()
    assert "run-rid" in got


def test_the_service_principals_secret_is_never_in_the_targets_repr(tmp_path: Path) -> None:
    from hubpilot.api.runs import queue_target

    ctx = make_context(tmp_path, make_settings(run_mode="queue"))[0]
    t = queue_target(ctx, {"AzureWebJobsStorage__accountName": "st1", "AzureWebJobsStorage__tenantId": TENANT,
                           "AzureWebJobsStorage__clientId": CLIENT_ID, "AzureWebJobsStorage__clientSecret": SECRET})
    assert (t.tenant_id, t.client_id, t.client_secret, t.managed_identity) == (TENANT, CLIENT_ID, SECRET, False)
    assert SECRET not in repr(t)


@pytest.mark.parametrize("value", ["", "  ", "\n"])
def test_a_blank_gpu_pool_is_refused_at_load_naming_the_setting_and_its_bicep_parameter(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    """ARM was asked for the agent pool '' and the nodes for that label value: every scale run
    failed (ARM's 404, or its list of pools read as a pool without a count), naming no setting."""
    import os

    from tests.test_settings_limits import refusal

    for name in [n for n in os.environ if n.startswith("HUBPILOT_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray ./hubpilot.toml
    message = refusal(monkeypatch, HUBPILOT_SCALE__POOL=value)
    assert "scale.pool (the Bicep parameter gpuPool) is blank" in message, message
    assert "[env HUBPILOT_SCALE__POOL]" in message and "'gpu'" in message, message


@pytest.mark.parametrize("variable", ["HUBPILOT_SCALE__NODE_POOL_LABEL", "HUBPILOT_SCALE__GPU_RESOURCE"])
@pytest.mark.parametrize("value", ["", " ", "nvidia.com/ gpu"])
def test_a_blank_node_pool_label_or_gpu_resource_is_refused_at_load_naming_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str) -> None:
    """Blank, the GPU nodes were listed under a label no node has and no pending pod asked for the
    GPU resource: no scale run could work, and none said which setting."""
    import os

    from tests.test_settings_limits import refusal

    for name in [n for n in os.environ if n.startswith("HUBPILOT_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    message = refusal(monkeypatch, **{variable: value})
    said = variable.removeprefix("HUBPILOT_SCALE__").lower()
    wrong = "holds a space or line break" if value.strip() else "is blank"
    assert f"scale.{said} {wrong}" in message and f"[env {variable}]" in message, message


def test_a_node_pool_label_and_gpu_resource_copied_with_a_line_break_load_without_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Kept as given, no node carried the label and no pod requested the resource so named."""
    import os

    from hubpilot.settings import load_settings

    for name in [n for n in os.environ if n.startswith("HUBPILOT_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HUBPILOT_SCALE__NODE_POOL_LABEL", "kubernetes.azure.com/agentpool\n")
    monkeypatch.setenv("HUBPILOT_SCALE__GPU_RESOURCE", " nvidia.com/gpu")
    s = load_settings().scale
    assert (s.node_pool_label, s.gpu_resource) == ("kubernetes.azure.com/agentpool", "nvidia.com/gpu")
