"""Kubernetes side: a waiting GPU pod pinned to another agent pool (a second GPU pool, e.g. T4 and
A100 pools, each with its own hubpilot) by ``nodeSelector`` or a required node affinity on the
pool label is no demand for this pool; one pinned to this pool, or not pinned, is (kmock + the ARM
double, through the real clients)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from hubpilot.adapters.kube import KubeCluster
from hubpilot.config.scale import ScaleSettings
from hubpilot.loop import Outcome
from hubpilot.ports.cluster import ClusterError
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import NS, POOL_LABEL, Emulator
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)
from tests.test_scale_kube_taints import edit


def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    """A required node affinity with these nodeSelectorTerms (each a list of matchExpressions)."""
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}}}


def pinned(kube: Emulator) -> None:
    """Waiting GPU pods: some can land on pool ``gpu`` only, some never can."""
    for name in ("mine", "free", "sel-other", "aff-other", "aff-notin", "aff-either", "aff-one-term-other",
                 "aff-unlabelled", "aff-exists"):
        kube.pod(name, None)
    edit(kube, "pods", "mine", NS, spec={"nodeSelector": {POOL_LABEL: "gpu"}})
    edit(kube, "pods", "sel-other", NS, spec={"nodeSelector": {POOL_LABEL: "a100"}})
    edit(kube, "pods", "aff-other", NS, spec={"affinity": affinity(
        [{"key": POOL_LABEL, "operator": "In", "values": ["a100", "h100"]}])})
    edit(kube, "pods", "aff-notin", NS, spec={"affinity": affinity(
        [{"key": POOL_LABEL, "operator": "NotIn", "values": ["gpu"]}])})
    # terms are ORed: one of them allows pool gpu
    edit(kube, "pods", "aff-either", NS, spec={"affinity": affinity(
        [{"key": POOL_LABEL, "operator": "In", "values": ["a100"]}],
        [{"key": POOL_LABEL, "operator": "In", "values": ["gpu"]}])})
    edit(kube, "pods", "aff-one-term-other", NS, spec={"affinity": affinity(
        [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
         {"key": POOL_LABEL, "operator": "In", "values": ["a100"]}])})
    # a node without the pool label (none of AKS's pools): never this pool's; any pool's node
    edit(kube, "pods", "aff-unlabelled", NS, spec={"affinity": affinity(
        [{"key": POOL_LABEL, "operator": "DoesNotExist"}])})
    edit(kube, "pods", "aff-exists", NS, spec={"affinity": affinity(
        [{"key": POOL_LABEL, "operator": "Exists"}])})


async def test_a_waiting_pod_pinned_to_another_pool_is_no_demand(world: dict[str, Any]) -> None:  # noqa: F811
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    pinned(kube)
    view = await world["cluster"].read()
    assert sorted(p.name for p in view.pods) == ["aff-either", "aff-exists", "free", "mine"]


async def test_no_scale_up_for_pods_that_wait_for_another_pool(world: dict[str, Any]) -> None:  # noqa: F811
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    for name in ("sel-other", "aff-other"):
        kube.pod(name, None)
    edit(kube, "pods", "sel-other", NS, spec={"nodeSelector": {POOL_LABEL: "a100"}})
    edit(kube, "pods", "aff-other", NS, spec={"affinity": affinity(
        [{"key": POOL_LABEL, "operator": "In", "values": ["a100"]}])})
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.plan is not None and rec.plan.empty, rec.render()
    assert arm.pools["gpu"]["count"] == 1
    kube.pod("bob", None)  # not pinned: ours
    edit(kube, "pods", "bob", NS, spec={"nodeSelector": {POOL_LABEL: "gpu"}})
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED, rec.render()
    assert arm.pools["gpu"]["count"] == 2


FORBIDDEN = ('nodes is forbidden: User "system:serviceaccount:jhub:hubpilot" cannot list resource "nodes" '
             'in API group "" at the cluster scope')


async def test_a_refused_request_says_what_the_api_server_said() -> None:
    """An API server that refuses the list (RBAC, 403) answers a Status whose message names the
    identity, the verb and the resource: the error passes it on (not only '403 Forbidden'), and says
    every permission scale needs and where the roles granting them are (it named neither)."""
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": FORBIDDEN, "reason": "Forbidden", "details": {"kind": "nodes"},
                                  "code": 403}, status=403)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(ClusterError) as err:
            await cluster.read()
        assert str(err.value).startswith(f"list GPU nodes: 403 Forbidden: {FORBIDDEN}; "), err.value
        # and what to grant, where the roles that grant it are (as the hub's 403 names docs/hub-scopes.md)
        assert (f"grant hubpilot's identity get, list and patch on nodes and list on pods in namespace {NS}"
                in str(err.value)), err.value
        assert "infra/bicep/README.md" in str(err.value) and "docs/scale.md" in str(err.value), err.value
    finally:
        await cluster.close()
        await runner.cleanup()


@pytest.mark.parametrize("selector", ["component=singleuser-server,!hub.jupyter.org/idle",
                                      "component=singleuser-server, !hub.jupyter.org/idle"])
def test_a_selector_term_that_would_hide_every_user_pod_is_refused(selector: str) -> None:
    """``!key`` (the label is absent) is a selector the API server takes; read as a key named
    ``!key`` it matched no pod here, every node looked empty and could be removed under its users.
    Like ``!=`` and set terms it is refused, saying which term and what is supported."""
    with pytest.raises(ValueError, match=r"selector term '!hub.jupyter.org/idle': only 'key=value' and 'key'"):
        KubeCluster(namespace=NS, pool="gpu", api_url="http://127.0.0.1:9", user_pod_selector=selector)


@pytest.mark.parametrize("selector", ["component=singleuser-server,!hub.jupyter.org/idle",
                                      "component in (singleuser-server)", "app notin (batch)"])
def test_a_pod_selector_the_adapter_cannot_apply_is_refused_with_the_settings(selector: str) -> None:
    """The settings refuse it at load (``hubpilot check``, the Functions app's start), not the
    first scale run that builds the cluster client."""
    with pytest.raises(ValidationError, match="user_pod_selector"):
        ScaleSettings(user_pod_selector=selector)


@pytest.mark.parametrize("selector", ["app=notinuse", "component=singleuser-server,tier=inner"])
def test_a_pod_selector_whose_value_contains_in_or_notin_is_taken(selector: str) -> None:
    assert ScaleSettings(user_pod_selector=selector).user_pod_selector == selector
    KubeCluster(namespace=NS, pool="gpu", api_url="http://127.0.0.1:9", user_pod_selector=selector)


async def test_a_pod_pinned_by_aks_older_agentpool_label_is_recognised(world: dict[str, Any]) -> None:  # noqa: F811
    """AKS labels every node with its pool twice: ``kubernetes.azure.com/agentpool`` and the older
    ``agentpool`` (which many GPU profiles' ``node_selector`` still use). A waiting pod pinned to
    another pool by ``agentpool`` (nodeSelector or required affinity) lands there only: no demand
    here; one pinned to this pool by it is."""
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    for name in ("old-mine", "old-sel-other", "old-aff-other", "old-aff-notin"):
        kube.pod(name, None)
    edit(kube, "pods", "old-mine", NS, spec={"nodeSelector": {"agentpool": "gpu"}})
    edit(kube, "pods", "old-sel-other", NS, spec={"nodeSelector": {"agentpool": "a100"}})
    edit(kube, "pods", "old-aff-other", NS, spec={"affinity": affinity(
        [{"key": "agentpool", "operator": "In", "values": ["a100"]}])})
    edit(kube, "pods", "old-aff-notin", NS, spec={"affinity": affinity(
        [{"key": "agentpool", "operator": "NotIn", "values": ["gpu"]}])})
    view = await world["cluster"].read()
    assert sorted(p.name for p in view.pods) == ["old-mine"]


async def test_a_pod_selector_with_an_existence_term_takes_the_pods_with_every_term(
        kube: Emulator) -> None:
    """``key=value`` and ``key`` terms are ANDed, as the API server does (kmock ignores the
    selector: the adapter applies it again): a pod with the key, whatever its value, is a user pod;
    one without it, or with the key but another component, is not (on the node or waiting)."""
    kube.clear()
    kube.node("gpu-0")
    for name, node in (("alice", "gpu-0"), ("bob", "gpu-0"), ("carol", None), ("dave", None)):
        kube.pod(name, node)
    kube.pod("hub-0", "gpu-0", component="hub")
    for name in ("alice", "carol", "hub-0"):
        edit(kube, "pods", name, NS, metadata={"labels": {"component": "hub" if name == "hub-0"
                                                          else "singleuser-server", "hub.jupyter.org/user": name}})
    cluster = KubeCluster(namespace=NS, pool="gpu", api_url=kube.url,
                          user_pod_selector="component=singleuser-server,hub.jupyter.org/user")
    try:
        assert sorted(p.name for p in (await cluster.read()).pods) == ["alice", "carol"]
        assert [p.name for p in await cluster.pods_on("gpu-0")] == ["alice"]
    finally:
        await cluster.close()


async def test_the_selectors_are_sent_to_the_api_server(world: dict[str, Any]) -> None:  # noqa: F811
    """The adapter applies them again (kmock ignores them), but a real API server must get them
    too: without, each run lists every node and pod of the cluster."""
    kube: Emulator = world["kube"]
    kube.node("gpu-0")
    seen = len(list(kube.k))
    await world["cluster"].read()
    await world["cluster"].pods_on("gpu-0")
    lists = [(r.url.path, dict(r.params)) for r in list(kube.k)[seen:]]
    assert lists == [
        ("/api/v1/nodes", {"labelSelector": f"{POOL_LABEL}=gpu"}),
        (f"/api/v1/namespaces/{NS}/pods", {"labelSelector": "component=singleuser-server"}),
        (f"/api/v1/namespaces/{NS}/pods", {"labelSelector": "component=singleuser-server",
                                           "fieldSelector": "spec.nodeName=gpu-0"}),
    ], lists
