"""The AKS adapter driven through the real ContainerServiceClient against the HTTP-level ARM double."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from hubpilot.adapters.aks import AksPool
from hubpilot.config.scale import ScaleSettings
from hubpilot.ports.pool import PoolError, PoolOutcome
from hubpilot.wiring.scale import build_pool
from tests.doubles.arm import MSI_SECRET, ArmDouble, StaticToken
from tests.doubles.login import TENANT, LoginDouble
from tests.faultproxy import FaultProxy

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "aks"


def make_pool(arm: ArmDouble, pool: str = "gpu", **kw: object) -> AksPool:
    return AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool=pool, base_url=arm.base_url,
                   credential_scopes=("https://management.azure.com/.default",),
                   retry_total=2, retry_backoff=0.01, polling_interval=0.01, lro_wait=kw.pop("lro_wait", 5.0),  # type: ignore[arg-type]
                   )


def test_double_speaks_the_published_examples() -> None:
    """The double's GET body carries every property the published AgentPools_Get example has."""
    example = json.loads((FIXTURES / "2026-08-01" / "AgentPoolsGet.json").read_text())
    arm = ArmDouble()
    arm.add_pool("agentpool1", count=3)
    ours = arm._body("agentpool1")
    theirs = example["responses"]["200"]["body"]
    assert set(theirs) <= set(ours)
    missing = set(theirs["properties"]) - set(ours["properties"]) - {"nodeImageVersion"}
    assert not missing
    assert ours["id"].lower() == theirs["id"].replace("00000000-0000-0000-0000-000000000000", arm.subscription) \
        .replace("clustername1", arm.cluster).lower()
    delete = json.loads((FIXTURES / "2026-08-01" / "AgentPoolsDeleteMachines.json").read_text())
    assert "202" in delete["responses"] and "location" in delete["responses"]["202"]["headers"]
    assert example["parameters"]["api-version"] in {"2026-08-01"}


async def test_get_reads_the_pool(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=2, autoscaling=True, min_count=1, max_count=5)
    pool = make_pool(arm)
    try:
        state = await pool.get()
    finally:
        await pool.close()
    assert (state.count, state.min_count, state.max_count, state.autoscaling) == (2, 1, 5, True)
    assert state.provisioning_state == "Succeeded" and state.power_state == "Running"
    assert state.vm_size == "Standard_NC4as_T4_v3" and state.etag
    assert state.node_taints == ("nvidia.com/gpu=present:NoSchedule",)
    assert not state.busy


async def test_get_reads_a_stopped_pool_as_stopped(arm: ArmDouble) -> None:
    """``properties.powerState.code`` as the wire has it (Running or Stopped): a stopped pool
    (``az aks nodepool stop``) is never read as running."""
    arm.add_pool("gpu", count=0, power="Stopped")
    pool = make_pool(arm)
    try:
        state = await pool.get()
    finally:
        await pool.close()
    assert state.power_state == "Stopped" and state.count == 0


async def test_set_count_polls_the_operation_to_the_end(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=1)
    arm.polls = 2
    pool = make_pool(arm)
    try:
        state = await pool.get()
        res = await pool.set_count(3, etag=state.etag)
        assert res.outcome is PoolOutcome.DONE
        assert arm.pools["gpu"]["count"] == 3
        polls = [c for c in arm.calls if "/locations/eastus/operations/" in c.path]
        assert len(polls) >= 3
        put = next(c for c in arm.calls if c.method == "PUT")
        assert put.body["properties"]["count"] == 3
        again = await pool.set_count(3)
        assert again.outcome is PoolOutcome.NOOP
    finally:
        await pool.close()


async def test_set_min_count_never_sends_a_new_count(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=1, autoscaling=True, min_count=0, max_count=4)
    pool = make_pool(arm)
    try:
        res = await pool.set_min_count(2)
        assert res.outcome is PoolOutcome.DONE
        put = next(c for c in arm.calls if c.method == "PUT")
        assert put.body["properties"]["count"] == 1 and put.body["properties"]["minCount"] == 2
        # AKS's autoscaler enforces the raised floor (AKS release 2021-07-22): the count follows
        assert arm.pools["gpu"]["minCount"] == 2 and arm.pools["gpu"]["count"] == 2
        with pytest.raises(PoolError, match="autoscaler is on"):
            await pool.set_count(3)
        # with the eTag it has now (nothing changed since): still an error, not a conflict
        with pytest.raises(PoolError, match="autoscaler is on"):
            await pool.set_count(3, etag=(await pool.get()).etag)
    finally:
        await pool.close()


async def test_an_accepted_operation_whose_status_is_not_readable_is_pending_not_failed(arm: ArmDouble) -> None:
    """AKS answers with subscription-level status URLs; an identity whose roles stop at the
    cluster may get 403 there. The change was accepted: report it pending, say what to grant,
    and let the next run re-observe."""
    arm.add_pool("gpu", count=1, machines=["m0"])
    arm.status_readable = False
    arm.polls = 0  # each operation ends by the time it is first polled
    pool = make_pool(arm)
    try:
        res = await pool.set_count(2)
        assert res.outcome is PoolOutcome.PENDING
        assert "status cannot be read (403 AuthorizationFailed" in res.detail
        assert "locations/operations/read" in res.detail
        gone = await pool.delete_machines(["m0"])
        assert gone.outcome is PoolOutcome.PENDING and "403" in gone.detail
        arm.status_readable = True
        assert (await pool.get()).count == 1  # both ran: 2 machines, then m0 deleted
        assert arm.machines["gpu"] == ["aks-gpu-12345678-vmss0003e9"]
    finally:
        await pool.close()


async def test_a_put_arm_refuses_is_an_error_that_says_why(arm: ArmDouble) -> None:
    """An identity that may read the pool but not write it (a Reader role): ARM refuses the PUT
    (403 AuthorizationFailed). The refusal is an error that names the change, the status and ARM's
    own message, never an outcome that looks like a change not needed; the pool is unchanged."""
    arm.add_pool("gpu", count=1, machines=["m0"])
    arm.add_pool("auto", count=2, autoscaling=True, min_count=1, max_count=4)
    denied = {"code": "AuthorizationFailed", "message": "The client 'x' does not have authorization to perform "
              "action 'Microsoft.ContainerService/managedClusters/agentPools/write'"}
    arm.fault("PUT", 403, error=denied)
    arm.fault("PUT", 403, error=denied)
    pool, auto = make_pool(arm), make_pool(arm, "auto")
    try:
        with pytest.raises(PoolError) as err:
            await pool.set_count(2)
        assert err.value.status == 403 and err.value.code == "AuthorizationFailed", err.value
        assert "cannot set count 2 on agent pool gpu" in str(err.value) and "agentPools/write" in str(err.value)
        with pytest.raises(PoolError) as err:
            await auto.set_min_count(3)
        assert err.value.status == 403 and "cannot set min_count 3 on agent pool auto" in str(err.value)
    finally:
        await pool.close()
        await auto.close()
    assert [c.status for c in arm.calls if c.method == "PUT"] == [403, 403]  # neither sent again
    assert arm.pools["gpu"]["count"] == 1 and arm.pools["auto"]["minCount"] == 1


async def test_delete_machines_removes_exactly_those(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=3, machines=["m0", "m1", "m2"])
    pool = make_pool(arm)
    try:
        res = await pool.delete_machines(["m1"])
    finally:
        await pool.close()
    assert res.outcome is PoolOutcome.DONE
    assert arm.machines["gpu"] == ["m0", "m2"] and arm.pools["gpu"]["count"] == 2
    post = next(c for c in arm.calls if c.method == "POST")
    assert post.path.endswith("/agentPools/gpu/deleteMachines") and post.body == {"machineNames": ["m1"]}


async def test_409_is_a_conflict_and_not_retried(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=3, machines=["m0", "m1", "m2"])
    arm.hold_operations = True
    pool = make_pool(arm, lro_wait=0.05)
    try:
        first = await pool.delete_machines(["m0"])
        assert first.outcome is PoolOutcome.PENDING
        assert (await pool.get()).busy
        n = len(arm.calls)
        second = await pool.set_count(4)
        assert second.outcome is PoolOutcome.CONFLICT and "OperationNotAllowed" in second.detail
        assert [c.status for c in arm.calls[n:] if c.method == "PUT"] == [409]
        arm.release()
    finally:
        await pool.close()


async def test_429_honours_retry_after_then_succeeds(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=1)
    arm.fault("GET", 429, {"Retry-After": "0.05"})
    pool = make_pool(arm)
    try:
        state = await pool.get()
    finally:
        await pool.close()
    assert state.count == 1
    gets = [c for c in arm.calls if c.method == "GET"]
    assert [c.status for c in gets[:2]] == [429, 200]
    assert gets[1].at - gets[0].at >= 0.04


async def test_429_until_retries_run_out_is_an_error(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=1)
    for _ in range(3):
        arm.fault("GET", 429, {"Retry-After": "0"})
    pool = make_pool(arm)
    try:
        with pytest.raises(PoolError) as err:
            await pool.get()
    finally:
        await pool.close()
    assert err.value.status == 429


async def test_failed_operation_is_reported(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=1)
    arm.fail_next_operation = "QuotaExceeded"
    pool = make_pool(arm)
    try:
        with pytest.raises(PoolError, match="operation failed"):
            await pool.set_count(2)
        # as ARM: the failed operation's count stays the pool's goal, above the machines that exist
        assert arm.pools["gpu"]["count"] == 2 and arm.pools["gpu"]["provisioningState"] == "Failed"
        assert len(arm.machines["gpu"]) == 1
    finally:
        await pool.close()


async def test_stale_etag_is_a_conflict(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=1)
    pool = make_pool(arm)
    try:
        res = await pool.set_count(2, etag="etag-stale")
    finally:
        await pool.close()
    assert res.outcome is PoolOutcome.CONFLICT
    assert arm.pools["gpu"]["count"] == 1


@pytest.mark.parametrize("autoscaling", [False, True])
async def test_a_change_sends_the_pool_back_whole(arm: ArmDouble, autoscaling: bool) -> None:
    """A PUT is the whole pool (the double keeps nothing the body leaves out): set_count and
    set_min_count send every property read, those this SDK does not know included, so no taint,
    label, max pods, surge, scale-down mode or newer setting is reset."""
    arm.add_pool("gpu", count=1, autoscaling=autoscaling, min_count=1, max_count=4)
    extra = {"nodeLabels": {"hub.jupyter.org/node-purpose": "user"}, "maxPods": 30,
             "upgradeSettings": {"maxSurge": "1", "drainTimeoutInMinutes": 30},
             "scaleDownMode": "Deallocate", "nodeTaints": ["sku=gpu:NoSchedule"],
             "aPropertyOfALaterApiVersion": {"on": True}}
    arm.pools["gpu"].update(extra)
    before = {k: v for k, v in arm.pools["gpu"].items() if k not in ("count", "minCount", "eTag")}
    pool = make_pool(arm)
    try:
        state = await pool.get()
        res = await (pool.set_min_count(2, etag=state.etag) if autoscaling else pool.set_count(2, etag=state.etag))
    finally:
        await pool.close()
    assert res.outcome is PoolOutcome.DONE, res
    after = {k: v for k, v in arm.pools["gpu"].items() if k not in ("count", "minCount", "eTag")}
    assert after == before
    put = next(c for c in arm.calls if c.method == "PUT")
    assert not {"provisioningState", "eTag", "currentOrchestratorVersion"} & set(put.body["properties"])


async def test_a_change_to_a_pool_mid_upgrade_is_a_conflict(arm: ArmDouble) -> None:
    """ARM answers 409 OperationNotAllowed while the pool's own operation (an upgrade) runs."""
    arm.add_pool("gpu", count=1)
    arm.pools["gpu"]["provisioningState"] = "Upgrading"
    pool = make_pool(arm)
    try:
        res = await pool.set_count(2)
        gone = await pool.delete_machines(["aks-gpu-12345678-vmss000000"])
    finally:
        await pool.close()
    assert res.outcome is PoolOutcome.CONFLICT and gone.outcome is PoolOutcome.CONFLICT
    assert arm.pools["gpu"]["count"] == 1 and not arm.writes()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("autoscaling", [False, True])
async def test_a_put_answered_5xx_with_retry_after_is_not_sent_again_blind(
        arm: ArmDouble, status: int, autoscaling: bool) -> None:
    """ARM carried out the PUT and a gateway answered 5xx with a ``Retry-After`` (ARM sends one
    with its 503s). azure-core retries any error status that carries Retry-After, whatever the
    method: the PUT would go out again, meet its own eTag (412) and the scale-up that happened
    would be reported a conflict. It is sent once; the pool read again shows it accepted."""
    arm.add_pool("gpu", count=1, autoscaling=autoscaling, min_count=1, max_count=4)
    arm.enforce_min_count = False
    arm.answer_failed("PUT", status, {"Retry-After": "0"})
    pool = make_pool(arm)
    try:
        state = await pool.get()
        if autoscaling:
            res = await pool.set_min_count(2, etag=state.etag)
        else:
            res = await pool.set_count(2, etag=state.etag)
    finally:
        await pool.close()
    puts = [c.status for c in arm.calls if c.method == "PUT"]
    assert puts == [status], (puts, res)
    assert res.outcome in (PoolOutcome.PENDING, PoolOutcome.DONE), res
    assert str(status) in res.detail and "answer" in res.detail, res


async def test_a_put_throttled_429_honours_retry_after_and_is_sent_again(arm: ArmDouble) -> None:
    """A 429 is ARM's refusal before it takes the request: the PUT is sent again after Retry-After."""
    arm.add_pool("gpu", count=1)
    arm.fault("PUT", 429, {"Retry-After": "0.05"})
    pool = make_pool(arm)
    try:
        state = await pool.get()
        res = await pool.set_count(2, etag=state.etag)
    finally:
        await pool.close()
    puts = [c for c in arm.calls if c.method == "PUT"]
    assert [c.status for c in puts] == [429, 201] and res.outcome is PoolOutcome.DONE, res
    assert puts[1].at - puts[0].at >= 0.04
    assert arm.pools["gpu"]["count"] == 2


async def test_a_put_a_gateway_refused_before_arm_took_it_is_sent_again_after_a_read(arm: ArmDouble) -> None:
    """A 503 that came before ARM took the PUT: the pool read again does not show the count, so
    the PUT is sent once more (never blind: the read comes between) and is carried out."""
    arm.add_pool("gpu", count=1)
    arm.fault("PUT", 503)
    pool = make_pool(arm)
    try:
        state = await pool.get()
        res = await pool.set_count(2, etag=state.etag)
    finally:
        await pool.close()
    writes = [(c.method, c.status) for c in arm.calls if c.method == "PUT" or c.path.endswith("/agentPools/gpu")]
    assert writes[2:5] == [("PUT", 503), ("GET", 200), ("PUT", 201)], writes  # after get() and set_count's read
    assert res.outcome is PoolOutcome.DONE and arm.pools["gpu"]["count"] == 2, res


async def test_the_machines_of_a_pool_are_read_across_machines_list_pages(arm: ArmDouble) -> None:
    """Machines_List pages its answer (``nextLink``, as in the published example): every page is
    read, so after a failed removal a machine on a later page is not taken for one that went."""
    names = [f"aks-gpu-12345678-vmss{i:06x}" for i in range(5)]
    arm.add_pool("gpu", count=5, machines=names)
    arm.machines_page_size = 2
    pool = make_pool(arm)
    try:
        assert await pool.machines() == names
    finally:
        await pool.close()
    pages = [c for c in arm.calls if c.method == "GET" and c.path.endswith("/agentPools/gpu/machines")]
    assert len(pages) == 3 and all(c.status == 200 for c in pages)


# --- clouds: the token's audience ----------------------------------------------------------------

_IDENTITY_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "MSI_ENDPOINT",
                 "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_TOKEN_CREDENTIALS")


def _managed_identity_of(arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-identity's own credential finds the double's managed-identity endpoint (App Service's)."""
    for var in _IDENTITY_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{arm.base_url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", MSI_SECRET)


def _scale_settings(arm: ArmDouble, **kw: Any) -> ScaleSettings:
    return ScaleSettings(subscription_id=arm.subscription, resource_group=arm.resource_group,
                         cluster=arm.cluster, pool="gpu", arm_endpoint=arm.base_url, retry_total=0, **kw)


async def test_an_arm_endpoint_of_another_cloud_gets_tokens_for_its_own_audience(
        arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only scale.arm_endpoint set (a cloud other than the global one: the double on loopback,
    which takes only tokens for its own audience): the real DefaultAzureCredential asks for
    '<arm_endpoint>/.default', as directory.entra.graph_scope follows graph_base_url, not for
    the global ARM's audience (ARM would answer 401 InvalidAuthenticationTokenAudience)."""
    gov = ScaleSettings(arm_endpoint="https://management.usgovcloudapi.net/")
    assert gov.effective_arm_audience == "https://management.usgovcloudapi.net/.default"
    assert ScaleSettings().effective_arm_audience == "https://management.azure.com/.default"
    assert ScaleSettings(arm_endpoint="https://management.chinacloudapi.cn", arm_audience="https://x/.default") \
        .effective_arm_audience == "https://x/.default"
    _managed_identity_of(arm, monkeypatch)
    arm.audience = arm.base_url
    arm.add_pool("gpu", count=2)
    pool = build_pool(_scale_settings(arm))
    try:
        state = await pool.get()
    finally:
        await pool.close()
    assert state.count == 2
    assert [r.get("resource") for r in arm.token_requests] == [arm.base_url]


async def test_a_token_arm_refuses_or_none_at_all_says_which_settings_to_fix(
        arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token for another cloud's ARM (scale.arm_audience set to the global one while
    scale.arm_endpoint names another): ARM's 401 InvalidAuthenticationTokenAudience is reported
    with the scope asked for and the settings that make it; a credential that gives no token at
    all is reported so too, without azure-core's missing status ('None')."""
    _managed_identity_of(arm, monkeypatch)
    arm.audience = arm.base_url
    arm.add_pool("gpu", count=2)
    pool = build_pool(_scale_settings(arm, arm_audience="https://management.azure.com/.default"))
    try:
        with pytest.raises(PoolError) as refused:
            await pool.get()
    finally:
        await pool.close()
    text = str(refused.value)
    assert refused.value.status == 401 and "InvalidAuthenticationTokenAudience" in text
    assert "https://management.azure.com/.default" in text
    assert all(name in text for name in ("scale.arm_audience", "scale.arm_endpoint", "scale.authority")), text
    assert [c.status for c in arm.calls] == [401]  # refused, not tried again

    monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")  # the identity endpoint answers 400
    arm.calls.clear()
    pool = build_pool(_scale_settings(arm))
    try:
        with pytest.raises(PoolError) as no_token:
            await pool.get()
    finally:
        await pool.close()
    text = str(no_token.value)
    assert not arm.calls and "None" not in text.split(":")[1], text
    assert f"no token for {arm.base_url}/.default" in text and "scale.authority" in text, text


async def test_a_token_endpoint_that_never_answers_fails_the_read_within_the_arm_timeout(
        arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    """The managed-identity endpoint (App Service's IDENTITY_ENDPOINT, the double's, behind a proxy)
    accepts the token request and never answers: each try of it has scale.arm_timeout_seconds
    (azure-core's default is 300 s a try, which held a scale run and its lock for minutes); the
    read fails saying so, and no request reached ARM. Once the endpoint answers, the next read
    goes through."""
    _managed_identity_of(arm, monkeypatch)
    arm.add_pool("gpu", count=2)
    where = urlsplit(arm.base_url)
    proxy = FaultProxy(where.hostname or "127.0.0.1", where.port or 80)
    await proxy.start()
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{proxy.port}/msi/token")
    proxy.rule(lambda method, path: path.startswith("/msi/token"), "hang")
    pool = build_pool(_scale_settings(arm, arm_timeout_seconds=1))
    try:
        # a bound for the test only, far above the tries' timeouts; without them it waits 300 s a try
        with pytest.raises(PoolError) as err:
            await asyncio.wait_for(pool.get(), 90)
        text = str(err.value)
        assert "the token endpoint gave no answer within 1 s a try (scale.arm_timeout_seconds)" in text, text
        assert proxy.seen and all(s.path.startswith("/msi/token") for s in proxy.seen)
        assert not arm.calls

        proxy.reset()  # the endpoint answers again
        assert (await pool.get()).count == 2
    finally:
        await pool.close()
        await proxy.stop()


async def test_a_service_principal_of_another_cloud_gets_its_token_from_azure_authority_host(
        arm: ArmDouble, login: LoginDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service principal from the environment (AZURE_TENANT_ID, AZURE_CLIENT_ID,
    AZURE_CLIENT_SECRET) in another cloud, which says so the Azure SDKs' way, AZURE_AUTHORITY_HOST
    (the double, its Entra), with scale.authority unset: its ARM token comes from that authority,
    as the state store's does, not from the global one (which does not know the tenant). Set,
    scale.authority still names the authority."""
    _managed_identity_of(arm, monkeypatch)
    monkeypatch.delenv("IDENTITY_ENDPOINT")
    login.service_principal(monkeypatch)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", login.url)
    arm.audience = arm.base_url
    arm.add_pool("gpu", count=2)
    for settings in (_scale_settings(arm, arm_timeout_seconds=5),
                     _scale_settings(arm, arm_timeout_seconds=5, authority=login.url)):
        pool = build_pool(settings)
        try:
            assert (await pool.get()).count == 2
        finally:
            await pool.close()
    assert [(r["path"], r["scope"]) for r in login.requests] == \
        [(f"/{TENANT}/oauth2/v2.0/token", f"{arm.base_url}/.default")] * 2
