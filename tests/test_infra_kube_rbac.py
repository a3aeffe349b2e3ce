"""The Kubernetes rights the deployment grants cover every request the Kubernetes adapter makes.

The adapter's whole port (read, pods_on, cordon, uncordon) runs against kmock with the real
``kubernetes`` client; kmock records each request, which is mapped to the Kubernetes RBAC verb the
API server checks (GET on a collection: list, on a named object: get, PATCH: patch...). Both ways
of granting them must cover all: the Kubernetes ClusterRole/Role of infra/bicep/README.md
(``aksAzureRbac = false``) and the Azure RBAC data actions of infra/bicep/modules/aks-access.bicep
(``read`` covers get, list and watch; ``write`` create, update and patch: "Azure RBAC for
Kubernetes authorization", learn.microsoft.com/azure/aks/manage-azure-rbac).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from hubpilot.adapters.kube import KubeCluster
from tests.fixtures.kmock import NS, Emulator
from tests.test_infra import _file, _parsed

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "infra" / "bicep" / "README.md"
AZURE_VERB = {"get": "read", "list": "read", "watch": "read", "create": "write", "update": "write",
              "patch": "write", "delete": "delete"}


def _verb(method: str, path: str, query: str) -> str:
    named = re.fullmatch(r"/api/v1(/namespaces/[^/]+)?/[a-z]+/[^/]+", path) is not None
    if method == "GET":
        if "true" in parse_qs(query).get("watch", []):
            return "watch"
        return "get" if named else "list"
    return {"PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}[method]


async def _requests_of_the_port(kube: Emulator, user_namespaces: bool = False) -> set[tuple[str, str, str | None]]:
    """(resource, verb, namespace or None for cluster-wide) of every request the port makes
    (``user_namespaces``: scale.user_namespaces, user pods in namespaces of their own)."""
    kube.clear()
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0", ns="jupyter-alice" if user_namespaces else NS)
    kube.pod("bob", None, ns="jupyter-bob" if user_namespaces else NS)
    seen = len(list(kube.k))
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url, all_namespaces=user_namespaces)
    try:
        view = await cluster.read()
        assert {p.name for p in view.pods} == {"alice", "bob"}  # the pods were seen where they are
        assert [p.name for p in await cluster.pods_on("gpu-0")] == ["alice"]
        assert await cluster.cordon("gpu-0", "hubpilot-test")
        assert await cluster.uncordon("gpu-0")
    finally:
        await cluster.close()
    used = set()
    for request in list(kube.k)[seen:]:
        url = urlsplit(str(request.url))
        match = re.fullmatch(r"/api/v1(?:/namespaces/([^/]+))?/([a-z]+)(?:/[^/]+)?", url.path)
        assert match, url.path
        used.add((match.group(2), _verb(str(request.method.name), url.path, url.query), match.group(1)))
    return used


def _readme_grants(user_namespaces: bool = False) -> set[tuple[str, str, str | None]]:
    """What the README's ClusterRole/Role, bound to the identity, allow; with ``user_namespaces``,
    its manifest for scale.user_namespaces in place of the Role and RoleBinding of the pods."""
    text = README.read_text()
    section = text[text.index("### Kubernetes authorization"):]
    section = section[:section.index("\n### ", 1)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert blocks, "infra/bicep/README.md shows no Kubernetes RBAC manifest"
    docs = [d for d in yaml.safe_load_all(blocks[0]) if d]
    if user_namespaces:
        assert len(blocks) == 2, "infra/bicep/README.md shows no manifest for scale.user_namespaces"
        docs = [d for d in docs if d["kind"] not in ("Role", "RoleBinding")]
        docs += [d for d in yaml.safe_load_all(blocks[1]) if d]
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("ClusterRole", "Role")}
    grants = set()
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert any(s["kind"] == "User" and s["name"] == "<identityPrincipalId>" for s in binding["subjects"])
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        assert role["metadata"].get("namespace") == namespace
        for rule in role["rules"]:
            assert rule["apiGroups"] == [""]
            grants |= {(r, v, namespace) for r in rule["resources"] for v in rule["verbs"]}
    return grants


@pytest.mark.parametrize("user_namespaces", [False, True])
async def test_the_readme_kubernetes_roles_allow_every_request_of_the_adapter(
        kube: Emulator, user_namespaces: bool) -> None:
    """In either mode: with scale.user_namespaces the adapter lists pods in every namespace."""
    used = await _requests_of_the_port(kube, user_namespaces)
    assert {verb for _, verb, _ in used} >= {"list", "get", "patch"}  # the port was exercised
    assert (("pods", "list", None) in used) is user_namespaces
    grants = _readme_grants(user_namespaces)

    def granted(resource: str, verb: str, namespace: str | None) -> bool:
        return (resource, verb, None) in grants or (namespace is not None and (resource, verb, namespace) in grants)

    missing = sorted((r, v, ns or "(cluster)") for r, v, ns in used if not granted(r, v, ns))
    assert not missing, f"the README's roles do not allow: {missing}"


@pytest.mark.parametrize("user_namespaces", [False, True])
async def test_the_azure_rbac_data_actions_allow_every_request_of_the_adapter(
        kube: Emulator, user_namespaces: bool) -> None:
    """The custom role is assigned on the cluster: its data actions hold in every namespace."""
    used = await _requests_of_the_port(kube, user_namespaces)
    aks = _file(_parsed(), "modules/aks-access.bicep")
    # assigned on the cluster, not on a namespace (.../namespaces/<ns>): it holds in every one
    assert aks["resources"]["kubernetesAssignment"]["config"]["config"]["scope"] == "cluster"
    actions = set(aks["variables"]["kubernetesDataActions"]["value"])
    needed = {f"Microsoft.ContainerService/managedClusters/{r}/{AZURE_VERB[v]}" for r, v, _ in used}
    assert not needed - actions, f"aks-access.bicep grants no {sorted(needed - actions)}"
    assert not actions - needed, f"aks-access.bicep grants the unused {sorted(actions - needed)}"


def test_request_verbs_are_the_ones_the_api_server_checks() -> None:
    assert _verb("GET", "/api/v1/nodes", "") == "list"
    assert _verb("GET", "/api/v1/nodes/gpu-0", "") == "get"
    assert _verb("GET", "/api/v1/namespaces/jhub/pods", "watch=true") == "watch"
    assert _verb("GET", "/api/v1/namespaces/jhub/pods/alice", "") == "get"
    assert _verb("PATCH", "/api/v1/nodes/gpu-0", "") == "patch"
    grants: Any = _readme_grants()
    assert ("pods", "list", NS) in grants


# --- ARM: the agent pool, the cluster's user credential, the status of AKS operations -------------
ARM_ACTIONS = (
    # (method, path pattern, action, scope the action must be granted at)
    ("GET", r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerService/managedClusters/"
            r"[^/]+/agentPools/[^/]+", "Microsoft.ContainerService/managedClusters/agentPools/read", "cluster"),
    ("GET", r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerService/managedClusters/"
            r"[^/]+/agentPools/[^/]+/machines",
     "Microsoft.ContainerService/managedClusters/agentPools/machines/read", "cluster"),
    ("PUT", r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerService/managedClusters/"
            r"[^/]+/agentPools/[^/]+", "Microsoft.ContainerService/managedClusters/agentPools/write", "cluster"),
    ("POST", r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerService/managedClusters/"
             r"[^/]+/agentPools/[^/]+/deleteMachines",
     "Microsoft.ContainerService/managedClusters/agentPools/deleteMachines/action", "cluster"),
    ("POST", r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerService/managedClusters/"
             r"[^/]+/listClusterUserCredential",
     "Microsoft.ContainerService/managedClusters/listClusterUserCredential/action", "cluster"),
    ("GET", r"/subscriptions/[^/]+/providers/Microsoft\.ContainerService/locations/[^/]+/operations/[^/]+",
     "Microsoft.ContainerService/locations/operations/read", "subscription"),
    ("GET", r"/subscriptions/[^/]+/providers/Microsoft\.ContainerService/locations/[^/]+/operationresults/[^/]+",
     "Microsoft.ContainerService/locations/operationresults/read", "subscription"),
)
# The built-in "Azure Kubernetes Service Cluster User Role" (aks-access.bicep assigns it on the
# cluster): listClusterUserCredential/action (learn.microsoft.com/azure/role-based-access-control/
# built-in-roles/containers#azure-kubernetes-service-cluster-user-role).
CLUSTER_USER_ROLE_ACTIONS = {"Microsoft.ContainerService/managedClusters/listClusterUserCredential/action",
                             "Microsoft.ContainerService/managedClusters/read"}


async def test_the_arm_roles_allow_every_request_of_the_pool_adapter_and_nothing_unused(arm: Any) -> None:
    from hubpilot.adapters.aks import AksPool
    from tests.doubles.arm import StaticToken

    arm.add_pool("gpu", count=2, machines=["m0", "m1"])
    arm.kubeconfig = b"apiVersion: v1\nkind: Config\n"
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url,
                   credential_scopes=("https://management.azure.com/.default",),
                   retry_total=0, retry_backoff=0.01, polling_interval=0.01, lro_wait=5.0)
    first = len(arm.calls)
    try:
        state = await pool.get()
        await pool.set_count(3, etag=state.etag)
        await pool.delete_machines(["m0"])
        assert await pool.machines()  # after a removal that failed: which machines went
        assert await pool.user_kubeconfig()
    finally:
        await pool.close()
    needed: dict[str, str] = {}
    for call in arm.calls[first:]:
        rows = [(action, scope) for method, pattern, action, scope in ARM_ACTIONS
                if call.method == method and re.fullmatch(pattern, call.path)]
        assert rows, f"no action known for {call.method} {call.path}"
        needed.setdefault(*rows[0])
    assert {"cluster", "subscription"} <= set(needed.values())

    aks = _file(_parsed(), "modules/aks-access.bicep")
    status = _file(_parsed(), "modules/aks-operation-status.bicep")
    on_cluster = set(aks["variables"]["agentPoolActions"]["value"]) | CLUSTER_USER_ROLE_ACTIONS
    on_subscription = set(status["variables"]["operationStatusActions"]["value"])
    granted = {"cluster": on_cluster, "subscription": on_subscription}
    missing = sorted(a for a, scope in needed.items() if a not in granted[scope])
    assert not missing, f"not granted: {missing}"
    # least privilege: the custom roles grant nothing the adapter does not use
    unused = sorted((set(aks["variables"]["agentPoolActions"]["value"]) | on_subscription) - set(needed))
    assert not unused, f"granted but never used: {unused}"
