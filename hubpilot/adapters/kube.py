"""The Kubernetes view of the GPU pool through the official ``kubernetes`` client.

Selectors are sent to the API server and applied again here: a server (or an emulator) that
ignores them must never make a non-pool node removable or hide a user pod.
The client is synchronous; each call runs in a worker thread.

Credentials: a kubeconfig or the in-cluster service account, or (``EntraKubeAuth``) an Entra
token of an azure-core credential for AKS-managed Entra ID clusters, where the API server and
its CA come from the cluster's user kubeconfig. That is how hubpilot reaches the cluster from
Azure Functions, which has neither a kubeconfig nor kubelogin.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import urllib3.exceptions
import yaml
from azure.core.exceptions import ClientAuthenticationError
from kubernetes import client as k8s
from kubernetes import config as _k8s_config
from kubernetes.client.exceptions import ApiException

from hubpilot.ports.cluster import (
    AUTOSCALER_DELETING,
    CORDON_ANNOTATION,
    ClusterError,
    ClusterView,
    NodeInfo,
    Taint,
    Toleration,
    UserPod,
    parse_selector,
)

log = logging.getLogger(__name__)

CORDON_MARK = CORDON_ANNOTATION
USER_ANNOTATION = "hub.jupyter.org/username"
SERVER_ANNOTATION = "hub.jupyter.org/servername"

T = TypeVar("T")
k8s_config: Any = _k8s_config

AKS_POOL_LABELS = ("kubernetes.azure.com/agentpool", "agentpool")
"""The labels AKS puts on every node of an agent pool, with the pool's name as their value."""

AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
"""Application id of "Azure Kubernetes Service AAD Server", the audience of tokens for the API
server of every AKS cluster with AKS-managed Entra ID."""


@dataclass(frozen=True)
class KubeEndpoint:
    """Where the API server is and how to trust it."""

    url: str
    ca_pem: bytes | None = None
    server_id: str | None = None  # the kubeconfig's Entra server application id, if it names one


def endpoint_from_kubeconfig(data: bytes, source: str = "the cluster's kubeconfig") -> KubeEndpoint:
    """The current context's server, CA and Entra server id (kubelogin's ``--server-id``, or the
    legacy azure auth-provider's ``apiserver-id``) from a kubeconfig; its user credentials are
    not used. Raises ``ClusterError`` saying what is missing in ``source`` (the kubeconfig named)."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        # never the YAML error's own text: it quotes the line it stopped at, which in a local-
        # accounts cluster's kubeconfig can be its token or client key (nor the error as the cause:
        # a logged traceback would quote it)
        raise ClusterError(f"{source} is no YAML: {_yaml_problem(exc)}") from None
    if not isinstance(doc, dict):
        raise ClusterError(f"{source} is no mapping")

    def named(kind: str, name: str | None) -> dict[str, Any]:
        items = [i for i in doc.get(kind) or [] if isinstance(i, dict)]
        chosen = next((i for i in items if name is None or i.get("name") == name), None)
        if chosen is None:
            raise ClusterError(f"{source} has no {kind[:-1]} {name or ''}".rstrip())
        body = chosen.get(kind[:-1])
        return body if isinstance(body, dict) else {}

    ctx_name = doc.get("current-context") or None
    ctx = named("contexts", ctx_name) if doc.get("contexts") else {}
    cluster = named("clusters", ctx.get("cluster"))
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise ClusterError(f"{source} names no https:// server (got {server!r})")
    ca: bytes | None = None
    if cluster.get("certificate-authority-data"):
        try:
            ca = base64.b64decode(str(cluster["certificate-authority-data"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClusterError(f"{source} has a certificate-authority-data that is no base64") from exc
    server_id: str | None = None
    user = named("users", ctx.get("user")) if doc.get("users") else {}
    args = (user.get("exec") or {}).get("args") or []
    for i, arg in enumerate(args):
        if arg == "--server-id" and i + 1 < len(args):
            server_id = str(args[i + 1])
        elif isinstance(arg, str) and arg.startswith("--server-id="):
            server_id = arg.split("=", 1)[1]
    provider = (user.get("auth-provider") or {}).get("config") or {}
    server_id = server_id or provider.get("apiserver-id") or None
    return KubeEndpoint(url=server.rstrip("/"), ca_pem=ca, server_id=server_id)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML error found and where (line and column), without the text it quotes."""
    if isinstance(exc, yaml.MarkedYAMLError):
        said = [f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else text
                for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)) if text]
        return ": ".join(said) or type(exc).__name__
    if isinstance(exc, yaml.reader.ReaderError):  # a byte no YAML text may hold: its position only
        return f"a character YAML does not allow at byte {exc.position}"
    return type(exc).__name__


class EntraKubeAuth:
    """Bearer tokens of an azure-core async credential for the API server of an AKS cluster with
    AKS-managed Entra ID (the identity needs Azure RBAC for Kubernetes roles or a Kubernetes
    RoleBinding). The endpoint is looked up once; the token is renewed five minutes before it
    expires. The credential belongs to the caller, which closes it."""

    def __init__(
        self,
        credential: Any,
        endpoint: Callable[[], Awaitable[KubeEndpoint]],
        *,
        server_id: str | None = None,
        renew_before: float = 300.0,
        token_timeout: float | None = None,
    ) -> None:
        self._credential = credential
        self._token_timeout = token_timeout  # each try of the credential's token request (scale.arm_timeout_seconds)
        self._endpoint = endpoint
        self._server_id = server_id
        self._renew_before = renew_before
        self._config: Any = None
        self._expires = 0.0
        self._ca_path: str | None = None
        self._lock = asyncio.Lock()
        self._scope = ""
        self._scope_from = ""

    async def configuration(self) -> Any:
        """The client configuration, with a token valid for at least ``renew_before`` more seconds."""
        async with self._lock:
            if self._config is None:
                ep = await self._endpoint()
                cfg = k8s.Configuration()
                cfg.host = ep.url
                if ep.ca_pem:
                    fd, path = tempfile.mkstemp(prefix="hubpilot-kube-ca-", suffix=".pem")
                    with os.fdopen(fd, "wb") as f:
                        f.write(ep.ca_pem)
                    self._ca_path = cfg.ssl_ca_cert = path
                cfg.api_key_prefix["authorization"] = "Bearer"
                self._scope = f"{self._server_id or ep.server_id or AKS_SERVER_ID}/.default"
                self._scope_from = ("scale.kube_server_id" if self._server_id else
                                    "the --server-id of the cluster's kubeconfig" if ep.server_id else "AKS's default")
                self._config = cfg
            if self._expires - time.time() < self._renew_before:
                try:
                    token = await self._credential.get_token(self._scope)
                except ClientAuthenticationError as exc:  # azure-identity's: no token at all
                    from hubpilot.adapters.aks import _token_timed_out

                    if self._token_timeout is not None and _token_timed_out(exc):  # not the scope's fault
                        raise ClusterError(f"no token for the Kubernetes API ({self._scope}): the token endpoint "
                                           f"gave no answer within {self._token_timeout:g} s a try "
                                           f"(scale.arm_timeout_seconds): {exc.message or exc}") from exc
                    raise ClusterError(f"no token for the Kubernetes API, asked for {self.token_made()}: "
                                       f"{exc.message or exc}") from exc
                self._config.api_key["authorization"] = token.token
                self._expires = float(token.expires_on)
            return self._config

    def token_made(self) -> str:
        """The scope of the token and the settings that make it, for an error about the token."""
        return (f"{self._scope} (its server id from {self._scope_from}: scale.kube_server_id, unset: the "
                f"--server-id of the cluster's kubeconfig, else AKS's {AKS_SERVER_ID}) from the credential's "
                "authority (scale.authority): the server id must be the cluster's Entra server application, the "
                "authority of the cluster's cloud")

    def close(self) -> None:
        if self._ca_path:
            with contextlib.suppress(OSError):
                os.unlink(self._ca_path)
            self._ca_path = None


def matches(labels: Mapping[str, str] | None, selector: Mapping[str, str | None]) -> bool:
    labels = labels or {}
    return all(k in labels and (v is None or labels[k] == v) for k, v in selector.items())


class KubeCluster:
    def __init__(
        self,
        *,
        namespace: str,
        pool: str,
        all_namespaces: bool = False,
        node_pool_label: str = "kubernetes.azure.com/agentpool",
        user_pod_selector: str = "component=singleuser-server",
        gpu_resource: str = "nvidia.com/gpu",
        api_url: str | None = None,
        kubeconfig: str | None = None,
        api_client: Any = None,
        auth: EntraKubeAuth | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self.namespace = namespace
        # every request's connect and read timeout: the client has none of its own, and an API
        # server that accepts the connection and never answers would hold the run (and the scale
        # lock, which its keeper renews) for ever. The client retries a GET that timed out.
        self.request_timeout = request_timeout
        self.all_namespaces = all_namespaces  # KubeSpawner's user namespaces: user pods anywhere
        self.pool = pool
        self.node_label = node_pool_label
        self.pod_selector_text = user_pod_selector
        self.pod_selector = parse_selector(user_pod_selector)
        self.gpu_resource = gpu_resource
        self._auth = auth
        # a client the settings cannot make (no kubeconfig file, no credentials at all) fails each
        # call, so that a run of an enabled scale fails naming the setting, as an LDAP CA file
        # that cannot be read fails the sync: never a round skipped as "not configured". Each call
        # tries again, so a file put in place after start is used (as kube_ca_file is read again)
        self._client_error: str | None = None
        self._client_from = (api_url, kubeconfig)
        if api_client is None and auth is None:
            try:
                api_client = _api_client(api_url, kubeconfig)
            except ValueError as exc:
                self._client_error = str(exc)
        self._api_client = api_client
        self.api: Any = k8s.CoreV1Api(api_client) if api_client is not None else None

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            if self._client_error is not None:
                try:
                    client = await asyncio.to_thread(_api_client, *self._client_from)
                except ValueError as exc:
                    self._client_error = str(exc)
                    raise ClusterError(self._client_error) from exc
                self._client_error = None
                self._api_client = client
                self.api = k8s.CoreV1Api(client)
            if self._auth is not None:
                cfg = await self._auth.configuration()
                if self._api_client is None:
                    self._api_client = k8s.ApiClient(cfg)
                    self.api = k8s.CoreV1Api(self._api_client)
            return await asyncio.to_thread(fn)
        except ApiException as exc:
            said = _status_message(exc)
            refused = (f"; the API server refused the token, which was asked for {self._auth.token_made()}"
                       if exc.status == 401 and self._auth is not None else "")
            if exc.status == 403:  # RBAC: say every permission scale needs, and where the roles are
                pods_where = ("every namespace (scale.user_namespaces)" if self.all_namespaces
                              else f"namespace {self.namespace}")
                refused = (f"; grant hubpilot's identity get, list and patch on nodes and list on pods in {pods_where} "
                           "(docs/scale.md; infra/bicep/README.md has the Azure RBAC role and the Kubernetes roles)")
            raise ClusterError(f"{what}: {exc.status} {exc.reason}" + (f": {said}" if said else "") + refused) from exc
        except ClusterError as exc:  # the token's, the cluster's kubeconfig's, or the client's settings
            raise ClusterError(f"{what}: {exc}") from exc
        except Exception as exc:  # connection errors, bad answers
            timeout = _timeout_of(exc)
            if timeout is not None:
                raise ClusterError(f"{what}: no answer from the Kubernetes API within {self.request_timeout:g} s "
                                   f"({type(timeout).__name__})") from exc
            raise ClusterError(f"{what}: {type(exc).__name__}: {exc}") from exc

    @property
    def _where(self) -> str:
        return "every namespace" if self.all_namespaces else self.namespace

    def _list_pods(self, field: str | None = None) -> Any:
        """User pods (the selectors are sent, and applied again by the callers: kmock ignores them)."""
        kw: dict[str, Any] = {"label_selector": self.pod_selector_text,
                              "_request_timeout": self.request_timeout}
        if field:
            kw["field_selector"] = field
        if self.all_namespaces:
            return self.api.list_pod_for_all_namespaces(**kw)
        return self.api.list_namespaced_pod(self.namespace, **kw)

    async def read(self) -> ClusterView:
        node_sel = f"{self.node_label}={self.pool}"
        nodes = await self._call(lambda: self.api.list_node(label_selector=node_sel,
                                                              _request_timeout=self.request_timeout), "list GPU nodes")
        pods = await self._call(lambda: self._list_pods(), f"list user pods in {self._where}")
        infos = tuple(
            self._node(n) for n in nodes.items or []
            if (n.metadata.labels or {}).get(self.node_label) == self.pool
        )
        names = {n.name for n in infos}
        user_pods = []
        for p in pods.items or []:
            if not self.all_namespaces and p.metadata.namespace not in (None, self.namespace):
                continue
            if not matches(p.metadata.labels, self.pod_selector):
                continue
            pod = self._pod(p)
            # pods on other pools are none of ours; unscheduled ones count only if they want a GPU
            # and may land on this pool (not pinned to another one by the pool label)
            if (pod.node is None and pod.gpu and self._may_land_here(p)) or (pod.node in names):
                user_pods.append(pod)
        return ClusterView(tuple(sorted(infos, key=lambda n: n.name)),
                           tuple(sorted(user_pods, key=lambda p: p.name)))

    async def pods_on(self, node: str) -> list[UserPod]:
        field = f"spec.nodeName={node}"
        pods = await self._call(lambda: self._list_pods(field), f"list user pods on {node}")
        out = []
        for p in pods.items or []:
            if not self.all_namespaces and p.metadata.namespace not in (None, self.namespace):
                continue
            if (p.spec.node_name == node and matches(p.metadata.labels, self.pod_selector)
                    and (p.status.phase if p.status else None) not in ("Succeeded", "Failed")):
                out.append(self._pod(p))
        return out

    async def cordon(self, node: str, by: str, *, resource_version: str = "") -> bool:
        """False when the node is gone, cordoned by someone else since it was observed, or being
        deleted (deletionTimestamp, the cluster autoscaler's removal mark): such a node is not
        touched (marking it ours would let a later uncordon undo their cordon, and a node the
        autoscaler deletes is not ours to remove)."""
        def not_ours() -> bool | None:
            try:
                n = self.api.read_node(node, _request_timeout=self.request_timeout)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            if n.metadata.deletion_timestamp is not None or any(
                    t.key == AUTOSCALER_DELETING for t in (n.spec.taints if n.spec else None) or []):
                return True
            return bool(n.spec and n.spec.unschedulable) and CORDON_MARK not in (n.metadata.annotations or {})
        others = await self._call(not_ours, f"read {node}")
        if others is None or others:
            return False
        meta: dict[str, Any] = {"annotations": {CORDON_MARK: by}}
        if resource_version:  # a precondition the API server checks: changed since observed, 409
            meta["resourceVersion"] = resource_version
        return await self._patch(node, {"metadata": meta, "spec": {"unschedulable": True}}, "cordon",
                                 stale=bool(resource_version))

    async def uncordon(self, node: str) -> bool:
        body = {"metadata": {"annotations": {CORDON_MARK: None}}, "spec": {"unschedulable": False}}
        return await self._patch(node, body, "uncordon")

    async def _patch(self, node: str, body: dict[str, Any], what: str, *, stale: bool = False) -> bool:
        """False when the node is gone (404), or, ``stale``, changed since the resourceVersion the
        body carries (409)."""
        def call() -> bool:
            try:
                self.api.patch_node(node, body, _request_timeout=self.request_timeout)
            except ApiException as exc:
                if exc.status == 404 or (stale and exc.status == 409):
                    return False
                raise
            return True
        return await self._call(call, f"{what} {node}")

    def _may_land_here(self, p: Any) -> bool:
        """False when the pod's ``nodeSelector`` or required node affinity on the pool label (or
        AKS's own pool labels, ``agentpool`` among them) rules out this pool (a pod waiting for
        another agent pool is no demand for this one); True when they allow it or say nothing of
        the pool labels."""
        spec = p.spec
        if spec is None:
            return True
        # AKS labels a pool's nodes with its name twice: the pool label and the older "agentpool"
        # (still in many profiles' node_selector); a pod pinned by either lands on that pool only
        keys = {self.node_label, *AKS_POOL_LABELS}
        selector = spec.node_selector or {}
        if any(selector.get(k) not in (None, self.pool) for k in keys):
            return False
        node_affinity = spec.affinity.node_affinity if spec.affinity else None
        required = node_affinity.required_during_scheduling_ignored_during_execution if node_affinity else None
        terms = (required.node_selector_terms if required else None) or []

        def allows(term: Any) -> bool:
            for e in term.match_expressions or []:
                if e.key not in keys:
                    continue
                values = e.values or []
                if ((e.operator == "In" and self.pool not in values)
                        or (e.operator == "NotIn" and self.pool in values) or e.operator == "DoesNotExist"):
                    return False
            return True
        # the terms are ORed: the pool is ruled out only when every term rules it out
        return not terms or any(allows(t) for t in terms)

    def _node(self, n: Any) -> NodeInfo:
        conditions = (n.status.conditions if n.status else None) or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        ready_since = next((_ts(c.last_transition_time) for c in conditions
                            if c.type == "Ready" and c.status == "True"), None)
        return NodeInfo(
            name=n.metadata.name,
            ready=ready,
            unschedulable=bool(n.spec.unschedulable) if n.spec else False,
            created=_ts(n.metadata.creation_timestamp),
            machine=n.metadata.name,
            labels=dict(n.metadata.labels or {}),
            annotations=dict(n.metadata.annotations or {}),
            taints=tuple(Taint(t.key or "", t.value or "", t.effect or "")
                         for t in ((n.spec.taints if n.spec else None) or [])),
            deleting=n.metadata.deletion_timestamp is not None,
            resource_version=n.metadata.resource_version or "",
            gpus=_count((n.status.allocatable if n.status else None) or {}, self.gpu_resource),
            ready_since=ready_since,
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
            tolerations=tuple(Toleration(t.key or "", t.operator or "Equal", t.value or "", t.effect or "",
                                         t.toleration_seconds)
                              for t in ((p.spec.tolerations if p.spec else None) or [])),
            deleting=p.metadata.deletion_timestamp is not None,
        )

    async def close(self) -> None:
        if self._api_client is not None:
            await asyncio.to_thread(self._api_client.close)
        if self._auth is not None:
            self._auth.close()


def _status_message(exc: ApiException) -> str:
    """The message of the API server's ``Status`` answer (e.g. which identity may not do what), or ""."""
    try:
        body = json.loads(exc.body) if exc.body else None
    except (TypeError, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return message.strip() if isinstance(message, str) else ""


def _timeout_of(exc: BaseException) -> BaseException | None:
    """The urllib3 timeout behind ``exc`` (itself, or the reason its retries gave up), if any. A
    refused connection is none, though urllib3 makes NewConnectionError a ConnectTimeoutError."""
    def timed_out(e: object) -> bool:
        return (isinstance(e, urllib3.exceptions.TimeoutError)
                and not isinstance(e, urllib3.exceptions.NewConnectionError))
    if timed_out(exc):
        return exc
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and timed_out(reason):
        return reason
    return None


def _count(resources: Mapping[str, Any], name: str) -> int | None:
    """A whole-number resource quantity of a node's ``allocatable`` (None: not listed; 0: not a
    whole number above 0)."""
    if name not in resources:
        return None
    try:
        return max(0, int(str(resources[name])))
    except ValueError:
        return 0


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
    if kubeconfig:
        # the kubeconfig named, never another: the client skips a file that does not exist and
        # ~/.kube/config would then reach whichever cluster it names
        missing = [os.path.abspath(os.path.expanduser(p)) for p in kubeconfig.split(os.pathsep)
                   if p and not os.path.isfile(os.path.expanduser(p))]
        if missing:
            raise ValueError(f"scale.kubeconfig: no file {', '.join(missing)}; set the kubeconfig's path "
                               "(a relative one in the settings file is read from the file's folder)")
        try:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        except k8s_config.ConfigException as exc:
            raise ValueError(f"scale.kubeconfig {kubeconfig}: {exc}") from exc
        except yaml.YAMLError as exc:  # the client reads the file with no ConfigException around it
            raise ValueError(f"scale.kubeconfig: {_kubeconfig_yaml_error(exc, kubeconfig)}") from None
        return k8s.ApiClient(cfg)
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
    except k8s_config.ConfigException as in_cluster:
        try:
            k8s_config.load_kube_config(client_configuration=cfg)
        except (k8s_config.ConfigException, yaml.YAMLError) as exc:
            said = (_kubeconfig_yaml_error(exc, "the kubeconfig") if isinstance(exc, yaml.YAMLError) else exc)
            raise ValueError(
                f"no Kubernetes credentials: not in a cluster ({in_cluster}) and no usable kubeconfig at "
                f"$KUBECONFIG or ~/.kube/config ({said}); set scale.kubeconfig, or scale.kube_auth = 'entra' "
                "(the app's identity: Azure Functions has no kubeconfig)"
            ) from (None if isinstance(exc, yaml.YAMLError) else exc)
    return k8s.ApiClient(cfg)


def _kubeconfig_yaml_error(exc: yaml.YAMLError, named: str) -> str:
    """Which kubeconfig file YAML could not read, and what it found where (never the file's text:
    it holds the user's token or client key)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    name = getattr(mark, "name", None) or getattr(exc, "name", None)
    return f"{name if isinstance(name, str) and not name.startswith('<') else named} is no YAML: {_yaml_problem(exc)}"
