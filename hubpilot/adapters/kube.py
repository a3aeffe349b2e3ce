"""The Kubernetes view of the GPU pool through the official ``kubernetes`` client.

Selectors are sent to the API server and applied again here: a server (or an emulator) that
ignores them must never make a non-pool node removable or hide a user pod.
The client is synchronous; each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as _k8s_config
from kubernetes.client.exceptions import ApiException

from hubpilot.ports.cluster import CORDON_ANNOTATION, ClusterError, ClusterView, NodeInfo, UserPod

log = logging.getLogger(__name__)

CORDON_MARK = CORDON_ANNOTATION
USER_ANNOTATION = "hub.jupyter.org/username"
SERVER_ANNOTATION = "hub.jupyter.org/servername"

T = TypeVar("T")
k8s_config: Any = _k8s_config


def parse_selector(selector: str) -> dict[str, str | None]:
    """``a=b,c`` → {"a": "b", "c": None} (equality and existence terms)."""
    out: dict[str, str | None] = {}
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term or " in " in term or "notin" in term:
            raise ValueError(f"selector term {term!r}: only 'key=value' and 'key' are supported")
        key, _, value = term.partition("=")
        out[key.strip().rstrip("=")] = value.strip().lstrip("=") if _ else None
    return out


def matches(labels: Mapping[str, str] | None, selector: Mapping[str, str | None]) -> bool:
    labels = labels or {}
    return all(k in labels and (v is None or labels[k] == v) for k, v in selector.items())


class KubeCluster:
    def __init__(
        self,
        *,
        namespace: str,
        pool: str,
        node_pool_label: str = "kubernetes.azure.com/agentpool",
        user_pod_selector: str = "component=singleuser-server",
        gpu_resource: str = "nvidia.com/gpu",
        api_url: str | None = None,
        kubeconfig: str | None = None,
        api_client: Any = None,
    ) -> None:
        self.namespace = namespace
        self.pool = pool
        self.node_label = node_pool_label
        self.pod_selector_text = user_pod_selector
        self.pod_selector = parse_selector(user_pod_selector)
        self.gpu_resource = gpu_resource
        if api_client is None:
            api_client = _api_client(api_url, kubeconfig)
        self._api_client = api_client
        self.api: Any = k8s.CoreV1Api(api_client)

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await asyncio.to_thread(fn)
        except ApiException as exc:
            raise ClusterError(f"{what}: {exc.status} {exc.reason}") from exc
        except Exception as exc:  # connection errors, bad answers
            raise ClusterError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def read(self) -> ClusterView:
        node_sel = f"{self.node_label}={self.pool}"
        nodes = await self._call(lambda: self.api.list_node(label_selector=node_sel), "list GPU nodes")
        pods = await self._call(
            lambda: self.api.list_namespaced_pod(self.namespace, label_selector=self.pod_selector_text),
            f"list user pods in {self.namespace}",
        )
        infos = tuple(
            self._node(n) for n in nodes.items or []
            if (n.metadata.labels or {}).get(self.node_label) == self.pool
        )
        names = {n.name for n in infos}
        user_pods = []
        for p in pods.items or []:
            if p.metadata.namespace not in (None, self.namespace):
                continue
            if not matches(p.metadata.labels, self.pod_selector):
                continue
            pod = self._pod(p)
            # pods on other pools are none of ours; unscheduled ones count only if they want a GPU
            if (pod.node is None and pod.gpu) or (pod.node in names):
                user_pods.append(pod)
        return ClusterView(tuple(sorted(infos, key=lambda n: n.name)),
                           tuple(sorted(user_pods, key=lambda p: p.name)))

    async def pods_on(self, node: str) -> list[UserPod]:
        field = f"spec.nodeName={node}"
        pods = await self._call(
            lambda: self.api.list_namespaced_pod(
                self.namespace, label_selector=self.pod_selector_text, field_selector=field),
            f"list user pods on {node}",
        )
        out = []
        for p in pods.items or []:
            if (p.spec.node_name == node and matches(p.metadata.labels, self.pod_selector)
                    and (p.status.phase if p.status else None) not in ("Succeeded", "Failed")):
                out.append(self._pod(p))
        return out

    async def cordon(self, node: str, by: str) -> bool:
        body = {"metadata": {"annotations": {CORDON_MARK: by}}, "spec": {"unschedulable": True}}
        return await self._patch(node, body, "cordon")

    async def uncordon(self, node: str) -> bool:
        body = {"metadata": {"annotations": {CORDON_MARK: None}}, "spec": {"unschedulable": False}}
        return await self._patch(node, body, "uncordon")

    async def _patch(self, node: str, body: dict[str, Any], what: str) -> bool:
        def call() -> bool:
            try:
                self.api.patch_node(node, body)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True
        return await self._call(call, f"{what} {node}")

    def _node(self, n: Any) -> NodeInfo:
        ready = any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or [])) \
            if n.status else False
        return NodeInfo(
            name=n.metadata.name,
            ready=ready,
            unschedulable=bool(n.spec.unschedulable) if n.spec else False,
            created=_ts(n.metadata.creation_timestamp),
            machine=n.metadata.name,
            labels=dict(n.metadata.labels or {}),
            annotations=dict(n.metadata.annotations or {}),
        )

    def _pod(self, p: Any) -> UserPod:
        gpu = False
        for c in (p.spec.containers or []) if p.spec else []:
            res = c.resources
            for group in (res.requests, res.limits) if res else ():
                if group and str(group.get(self.gpu_resource, "0")) not in ("0", ""):
                    gpu = True
        unsched = any(c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                      for c in (p.status.conditions or [])) if p.status else False
        ann = p.metadata.annotations or {}
        return UserPod(
            name=p.metadata.name,
            node=p.spec.node_name if p.spec else None,
            phase=(p.status.phase if p.status else None) or "Pending",
            unschedulable=unsched,
            created=_ts(p.metadata.creation_timestamp),
            user=ann.get(USER_ANNOTATION, ""),
            server=ann.get(SERVER_ANNOTATION, ""),
            gpu=gpu,
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._api_client.close)


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _api_client(api_url: str | None, kubeconfig: str | None) -> Any:
    if api_url:
        cfg = k8s.Configuration()
        cfg.host = api_url.rstrip("/")
        return k8s.ApiClient(cfg)
    cfg = k8s.Configuration()
    try:
        if kubeconfig:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            k8s_config.load_incluster_config(client_configuration=cfg)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=cfg)
    return k8s.ApiClient(cfg)
