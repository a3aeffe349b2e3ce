"""Reaching AKS's Kubernetes API with an Entra token (``scale.kube_auth = "entra"``), as the
Functions app must: the API server and its CA come from ARM's ``listClusterUserCredential``
(the ARM double, driven by the real ``ContainerServiceClient``), and the real ``kubernetes``
client talks TLS to kmock with that CA and a bearer token of the pool's credential."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from azure.core.credentials import AccessToken
from kmock._internal import apps
from pydantic import ValidationError

from hubpilot.adapters.aks import AksPool
from hubpilot.adapters.kube import AKS_SERVER_ID, KubeCluster, endpoint_from_kubeconfig
from hubpilot.config.scale import ScaleSettings
from hubpilot.ports.cluster import ClusterError
from hubpilot.wiring import NotConfigured
from hubpilot.wiring.scale import build_cluster, build_pool
from tests.doubles.arm import MSI_SECRET, ArmDouble
from tests.fixtures.kmock import NS, POOL_LABEL
from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    made = make_pki(tmp_path_factory.mktemp("pki"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(made.cert_file, made.key_file)
    return {"ssl": ctx, "ca_pem": made.ca_pem, "ca_file": str(made.ca_file), "other_ca_pem": made.other_ca_pem}


class _TlsServer(RawTestServer):
    tls: ssl.SSLContext

    async def start_server(self, **kwargs: Any) -> None:
        await super().start_server(ssl=self.tls, **kwargs)


class AudienceEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock that, with ``audience`` set, takes only a bearer token for that Entra server id (the
    ARM double's managed-identity endpoint issues ``aud=<resource>``) and answers any other 401
    Unauthorized, as AKS's API server answers a token for another audience."""

    audience: str | None = None

    async def _handle(self, request: Any) -> Any:
        if self.audience is not None and request.headers.get("Authorization") != f"Bearer aud={self.audience}":
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": "Unauthorized", "reason": "Unauthorized", "code": 401},
                                     status=401)
        return await super()._handle(request)


@pytest.fixture(scope="module")
async def tls_kube(pki: dict[str, Any]) -> AsyncIterator[tuple[Any, str]]:
    """kmock behind TLS, as AKS's API server is (https only, its own CA)."""
    server_cls = type("TlsServer", (_TlsServer,), {"tls": pki["ssl"]})
    async with AudienceEmulator() as k, apps.Server(k, server_cls=server_cls) as srv:
        k.resources["v1/nodes"] = {}
        k.resources["v1/pods"] = {}
        k.objects["v1/nodes", None, "gpu-0"] = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "gpu-0", "labels": {POOL_LABEL: "gpu"}, "annotations": {}},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        k.objects["v1/nodes", None, "cpu-0"] = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "cpu-0", "labels": {POOL_LABEL: "system"}, "annotations": {}},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        url = str(srv.url).rstrip("/")
        assert url.startswith("https://127.0.0.1:")
        yield k, url


def _kubeconfig(server: str, ca_pem: bytes | None, *, server_id: str | None = "custom-server-id",
                legacy: bool = False) -> bytes:
    """A user kubeconfig shaped as AKS returns it for an Entra cluster (exec format: kubelogin)."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    if legacy:
        user: dict[str, Any] = {"auth-provider": {"name": "azure", "config": {
            "apiserver-id": server_id, "client-id": "80faf920-1908-4b52-b5ef-a8e7bedfc67a",
            "config-mode": "1", "environment": "AzurePublicCloud", "tenant-id": "t"}}}
    else:
        args = ["get-token", "--environment", "AzurePublicCloud", "--login", "devicecode",
                "--client-id", "80faf920-1908-4b52-b5ef-a8e7bedfc67a", "--tenant-id", "t"]
        if server_id:
            args[1:1] = ["--server-id", server_id]
        user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
                         "args": args, "interactiveMode": "IfAvailable"}}
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "aks1",
           "clusters": [{"name": "decoy", "cluster": {"server": "https://decoy.invalid"}},
                        {"name": "aks1", "cluster": cluster}],
           "contexts": [{"name": "aks1", "context": {"cluster": "aks1", "user": "clusterUser_rg1_aks1"}}],
           "users": [{"name": "clusterUser_rg1_aks1", "user": user}]}
    return yaml.safe_dump(doc).encode()


class IssuingToken:
    """An azure-core async credential that issues numbered tokens living ``lifetime`` seconds."""

    def __init__(self, lifetime: float = 3600) -> None:
        self.lifetime = lifetime
        self.issued: list[tuple[str, tuple[str, ...]]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append((token, scopes))
        return AccessToken(token, int(time.time() + self.lifetime))

    async def close(self) -> None:
        return None


def _settings(arm: ArmDouble, **kw: Any) -> ScaleSettings:
    return ScaleSettings(subscription_id=arm.subscription, resource_group=arm.resource_group,
                         cluster=arm.cluster, pool="gpu", namespace=NS, kube_auth="entra",
                         arm_endpoint=arm.base_url, **kw)


def _pool(arm: ArmDouble, credential: Any) -> AksPool:
    return AksPool(credential, subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=0)


def _bearers(k: Any) -> list[str | None]:
    return [r.headers.get("Authorization") for r in k]


# --- the kubeconfig's parts -------------------------------------------------------------------
def test_endpoint_from_an_exec_kubeconfig_takes_the_current_context() -> None:
    ep = endpoint_from_kubeconfig(_kubeconfig("https://aks1.hcp.example:443/", b"PEM"))
    assert ep.url == "https://aks1.hcp.example:443"
    assert ep.ca_pem == b"PEM"
    assert ep.server_id == "custom-server-id"


def test_endpoint_from_a_legacy_azure_auth_provider_kubeconfig() -> None:
    ep = endpoint_from_kubeconfig(_kubeconfig("https://aks1.hcp.example:443", None, legacy=True))
    assert ep.server_id == "custom-server-id" and ep.ca_pem is None


@pytest.mark.parametrize(("data", "says"), [
    (b"clusters: [", "no YAML"),
    (b"- a list", "no mapping"),
    (_kubeconfig("http://aks1.hcp.example", None), "no https:// server"),
    (yaml.safe_dump({"current-context": "x", "contexts": [{"name": "y", "context": {}}]}).encode(),
     "no context x"),
    (yaml.safe_dump({"clusters": [{"name": "a", "cluster": {"server": "https://a",
                                                             "certificate-authority-data": "%%"}}]}).encode(),
     "no base64"),
])
def test_a_broken_kubeconfig_says_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(ClusterError, match=says):
        endpoint_from_kubeconfig(data)


# --- the whole path: ARM → kubeconfig → TLS with its CA → bearer token ------------------------
async def test_entra_auth_reads_and_cordons_through_tls_with_the_clusters_ca(
        arm: ArmDouble, tls_kube: tuple[Any, str], pki: dict[str, Any]) -> None:
    k, url = tls_kube
    arm.kubeconfig = _kubeconfig(url, pki["ca_pem"])
    credential = IssuingToken()
    pool = _pool(arm, credential)
    cluster = build_cluster(_settings(arm), pool)
    try:
        seen = len(list(k))
        view = await cluster.read()
        assert [n.name for n in view.nodes] == ["gpu-0"]  # the selector's work, redone here
        assert await cluster.cordon("gpu-0", "hubpilot")
        assert k.objects["v1/nodes", None, "gpu-0"]["spec"]["unschedulable"] is True
        assert await cluster.uncordon("gpu-0")
    finally:
        await cluster.close()
        await pool.close()
    new = _bearers(k)[seen:]
    assert len(new) == 5 and set(new) == {"Bearer tok-2"}  # tok-1 went to ARM; cordon reads the node first
    scopes = [s for _, s in credential.issued]
    assert scopes[1] == ("custom-server-id/.default",)  # the kubeconfig's --server-id
    posts = [c.path for c in arm.calls if c.method == "POST"]
    assert posts == [f"/subscriptions/{arm.subscription}/resourceGroups/{arm.resource_group}/providers/"
                     f"Microsoft.ContainerService/managedClusters/{arm.cluster}/listClusterUserCredential"]


async def test_the_setting_names_the_server_id_and_aks_default_otherwise(
        arm: ArmDouble, tls_kube: tuple[Any, str], pki: dict[str, Any]) -> None:
    _, url = tls_kube
    setting_id = "0b9a3c4e-2f6d-4d7a-9c1e-5a8b7f6e4d3c"  # scale.kube_server_id takes an application id alone
    for kubeconfig_id, setting, want in (("from-kubeconfig", setting_id, setting_id),
                                         (None, None, AKS_SERVER_ID)):
        arm.kubeconfig = _kubeconfig(url, pki["ca_pem"], server_id=kubeconfig_id)
        credential = IssuingToken()
        pool = _pool(arm, credential)
        cluster = build_cluster(_settings(arm, kube_server_id=setting), pool)
        try:
            await cluster.read()
        finally:
            await cluster.close()
            await pool.close()
        assert credential.issued[-1][1] == (f"{want}/.default",)


async def test_a_server_the_clusters_ca_did_not_sign_is_refused(
        arm: ArmDouble, tls_kube: tuple[Any, str], pki: dict[str, Any]) -> None:
    k, url = tls_kube
    arm.kubeconfig = _kubeconfig(url, pki["other_ca_pem"])
    pool = _pool(arm, IssuingToken())
    cluster = build_cluster(_settings(arm), pool)
    seen = len(list(k))
    try:
        with pytest.raises(ClusterError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await cluster.read()
    finally:
        await cluster.close()
        await pool.close()
    assert len(list(k)) == seen  # no request got through, so no token was shown to it


async def test_the_token_is_renewed_before_it_expires_and_kept_while_it_lives(
        arm: ArmDouble, tls_kube: tuple[Any, str], pki: dict[str, Any]) -> None:
    k, url = tls_kube
    arm.kubeconfig = _kubeconfig(url, pki["ca_pem"])
    for lifetime, want in ((3600, {"Bearer tok-2"}), (120, {"Bearer tok-2", "Bearer tok-3", "Bearer tok-4"})):
        pool = _pool(arm, IssuingToken(lifetime))
        cluster = build_cluster(_settings(arm), pool)
        seen = len(list(k))
        try:
            for _ in range(3):
                await cluster.pods_on("gpu-0")
        finally:
            await cluster.close()
            await pool.close()
        assert set(_bearers(k)[seen:]) == want


async def test_without_the_clusters_credentials_the_read_fails_and_says_why(
        arm: ArmDouble, tls_kube: tuple[Any, str]) -> None:
    arm.kubeconfig = None  # ARM answers 404
    pool = _pool(arm, IssuingToken())
    cluster = build_cluster(_settings(arm), pool)
    try:
        with pytest.raises(ClusterError, match="cannot read the user kubeconfig of cluster clustername1: 404"):
            await cluster.read()
    finally:
        await cluster.close()
        await pool.close()


async def test_a_configured_api_url_and_ca_file_skip_arm(
        arm: ArmDouble, tls_kube: tuple[Any, str], pki: dict[str, Any]) -> None:
    k, url = tls_kube
    pool = _pool(arm, IssuingToken())
    cluster = build_cluster(_settings(arm, kube_api_url=url, kube_ca_file=pki["ca_file"]), pool)
    seen = len(list(k))
    try:
        assert [n.name for n in (await cluster.read()).nodes] == ["gpu-0"]
    finally:
        await cluster.close()
        await pool.close()
    assert set(_bearers(k)[seen:]) == {"Bearer tok-1"}
    assert not [c for c in arm.calls if c.method == "POST"]


_IDENTITY_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "MSI_ENDPOINT",
                 "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_TOKEN_CREDENTIALS")


async def test_a_token_the_api_server_refuses_or_none_at_all_says_which_settings_to_fix(
        arm: ArmDouble, tls_kube: tuple[Any, str], pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The real DefaultAzureCredential through the ARM double's managed-identity endpoint. A token
    for another server id (scale.kube_server_id naming another application than the cluster's
    kubeconfig): the API server's 401 (its text is "Unauthorized" alone) is reported with the scope
    asked for and the settings that make the token; a credential that gives no token at all is
    reported so too, not as azure-identity's ClientAuthenticationError alone."""
    k, url = tls_kube
    for var in _IDENTITY_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{arm.base_url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", MSI_SECRET)
    arm.kubeconfig = _kubeconfig(url, pki["ca_pem"])  # --server-id custom-server-id

    async def read(**kw: Any) -> str:
        settings = _settings(arm, retry_total=0, **kw)
        pool = build_pool(settings)
        cluster = build_cluster(settings, pool)
        try:
            with pytest.raises(ClusterError) as err:
                await cluster.read()
        finally:
            await cluster.close()
            await pool.close()
        return str(err.value)

    k.audience = "custom-server-id"
    try:
        seen = len(list(k))
        wrong = "0b9a3c4e-2f6d-4d7a-9c1e-5a8b7f6e4d3c"  # another application than the cluster's
        refused = await read(kube_server_id=wrong)
        assert "401" in refused and f"{wrong}/.default" in refused, refused
        assert all(name in refused for name in ("scale.kube_server_id", "scale.authority")), refused
        assert _bearers(k)[seen:] == [f"Bearer aud={wrong}"]  # refused once, not tried again

        monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")  # the identity endpoint answers 400
        seen = len(list(k))
        none = await read(kube_api_url=url, kube_ca_file=pki["ca_file"])
        assert "ClientAuthenticationError" not in none, none
        assert f"no token for the Kubernetes API, asked for {AKS_SERVER_ID}/.default" in none, none
        assert all(name in none for name in ("scale.kube_server_id", "scale.authority")), none
        assert len(list(k)) == seen  # nothing reached the API server
    finally:
        k.audience = None


# --- settings and wiring -----------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "says"), [
    ({"kube_auth": "entra", "kubeconfig": "/k"}, "unset scale.kubeconfig"),
    ({"kube_auth": "entra", "kube_api_url": "http://aks1.example"}, "scale.kube_api_url must use https"),
    ({"kube_ca_file": "/ca.pem"}, "kube_ca_file is used only with"),
    ({"kube_auth": "kubelogin"}, "kube_auth"),
])
def test_settings_refuse_what_cannot_work(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        ScaleSettings(**kw)


async def test_entra_auth_needs_the_aks_pool(tmp_path: Path) -> None:
    with pytest.raises(NotConfigured, match="uses the AKS pool's credential"):
        build_cluster(ScaleSettings(kube_auth="entra"), None)
    arm = ArmDouble(base_url="http://127.0.0.1:9")
    pool = _pool(arm, IssuingToken())
    # a CA file that cannot be read fails the run (its first call), naming the setting
    cluster = build_cluster(_settings(arm, kube_api_url="https://127.0.0.1:6443",
                                      kube_ca_file=str(tmp_path / "missing.pem")), pool)
    with pytest.raises(ClusterError, match=r"list GPU nodes: scale\.kube_ca_file: cannot read"):
        await cluster.read()
    await cluster.close()


def test_kubeconfig_auth_is_unchanged_by_default(tls_kube: tuple[Any, str]) -> None:
    cluster = build_cluster(ScaleSettings(kube_api_url="http://127.0.0.1:6443"), None)
    assert isinstance(cluster, KubeCluster) and cluster.api is not None
