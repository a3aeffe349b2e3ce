"""An HTTP-level double of Azure Resource Manager for AKS agent pools.

Speaks the wire format of the published examples (``../shared/fixtures/aks/<api-version>/``):
``GET``/``PUT`` an agent pool (PUT answers 201 ``Updating`` with an ``Azure-AsyncOperation``
header, polled to ``Succeeded`` or ``Failed``; the PUT's count is the pool's from acceptance on
and stays after a failure, with fewer machines than it says), ``POST .../deleteMachines`` (202 with a
``location`` header, polled until 200; ``fail_after_deleting``: it fails part-way),
``GET .../agentPools/{pool}/machines`` (``Machines_List``: the machines that exist, in pages
joined by ``nextLink``),
``409 OperationNotAllowed`` while another operation on the pool is in progress, and injected
faults such as ``429`` with ``Retry-After``. On the cluster: ``POST .../listClusterUserCredential``
answers ``{"kubeconfigs": [{"name", "value"}]}`` with the base64 of ``kubeconfig`` (404 while it is
unset). ``GET /msi/token`` is App Service's managed-identity endpoint (``IDENTITY_ENDPOINT``) for
azure-identity's own credential; with ``audience`` set, only its tokens for that audience are
taken (else 401 ``InvalidAuthenticationTokenAudience``, as ARM answers a token for another cloud's
ARM). Driven by the real ``ContainerServiceClient``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_VERSIONS = {"2026-08-01", "2026-07-01", "2026-04-01"}
# properties of an agent pool that ARM sets and a PUT cannot (the API's readOnly ones)
READ_ONLY = frozenset({"provisioningState", "eTag", "currentOrchestratorVersion", "nodeImageVersion"})
# provisioning states of an operation in progress: ARM answers 409 OperationNotAllowed to a change
IN_PROGRESS = frozenset({"Creating", "Updating", "Scaling", "Upgrading", "Deleting", "Starting", "Stopping",
                         "Canceling", "Migrating"})
MSI_SECRET = "arm-double-identity-header"
POOL_PATH = ("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/"
             "managedClusters/{cluster}/agentPools/{pool}")


@dataclass
class Operation:
    id: str
    pool: str
    kind: str  # "put" or "deleteMachines"
    polls_left: int
    apply: Any  # callable run when the operation succeeds
    fail: str | None = None  # an error code: the operation ends Failed
    status: str = "InProgress"
    partial: Any = None  # callable run when the operation fails: the part it did before (or None)


@dataclass
class Call:
    method: str
    path: str
    at: float
    status: int
    body: Any = None


@dataclass
class ArmDouble:
    subscription: str = "00000000-0000-0000-0000-000000000000"
    resource_group: str = "rg1"
    cluster: str = "clustername1"
    polls: int = 1  # polls an operation stays InProgress
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    machines: dict[str, list[str]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    faults: list[tuple[str, int, dict[str, str], dict[str, Any] | None, str, Callable[[], None] | None]] = \
        field(default_factory=list)
    lost_answers: list[str] = field(default_factory=list)  # methods whose next answer is lost (see lose_answer)
    failed_answers: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)  # see answer_failed
    fail_next_operation: str | None = None
    # with fail_next_operation, a deleteMachines deletes this many of its machines before it fails
    fail_after_deleting: int = 0
    kubeconfig: bytes | None = None  # the cluster's user kubeconfig (listClusterUserCredential)
    location: str = "eastus"
    # False: as an API version whose agent pools carry no eTag: none in answers, and
    # If-Match is not checked
    etags: bool = True
    status_readable: bool = True  # False: polling the operation answers 403 (no locations/operations/read)
    hold_operations: bool = False  # operations stay InProgress until released
    enforce_min_count: bool = True  # the autoscaler scales a pool up to a raised minCount
    machines_page_size: int = 2  # Machines_List pages (nextLink) after this many machines
    base_url: str = ""
    # set: a bearer token must be one the double's managed-identity endpoint issued for this
    # audience (ARM's own, e.g. its endpoint), else 401 InvalidAuthenticationTokenAudience
    audience: str | None = None
    token_requests: list[dict[str, str]] = field(default_factory=list)  # what /msi/token was asked
    _runner: web.AppRunner | None = None
    _etag_n: int = 0
    write_event: asyncio.Event = field(default_factory=asyncio.Event)

    # --- set-up --------------------------------------------------------------------------
    def add_pool(self, name: str, *, count: int, autoscaling: bool = False, min_count: int | None = None,
                 max_count: int | None = None, vm_size: str = "Standard_NC4as_T4_v3",
                 machines: list[str] | None = None, power: str = "Running") -> None:
        props: dict[str, Any] = {
            "count": count, "vmSize": vm_size, "osType": "Linux", "mode": "User", "maxPods": 110,
            "orchestratorVersion": "1.33.2", "currentOrchestratorVersion": "1.33.2",
            "provisioningState": "Succeeded", "powerState": {"code": power},
            "enableAutoScaling": autoscaling, "scaleDownMode": "Deallocate",
            "nodeTaints": ["nvidia.com/gpu=present:NoSchedule"], "upgradeSettings": {"maxSurge": "33%"},
        }
        if autoscaling:
            props["minCount"], props["maxCount"] = min_count or 0, max_count or count
        self.pools[name] = props
        self._bump(name)
        self.machines[name] = list(machines or [f"aks-{name}-12345678-vmss{i:06x}" for i in range(count)])

    def fault(self, method: str, status: int, headers: dict[str, str] | None = None,
              error: dict[str, Any] | None = None, *, on: str = "", then: Callable[[], None] | None = None) -> None:
        """The next request with ``method`` (and, with ``on``, a path segment ``on``: e.g.
        ``operations`` for an Azure-AsyncOperation poll, ``operationresults`` for a location poll)
        gets this answer instead (FIFO), not carried out; ``then`` runs after it (someone else's
        change made meanwhile)."""
        self.faults.append((method, status, headers or {}, error, on, then))

    def lose_answer(self, method: str) -> None:
        """The next request with ``method`` is carried out, but the connection closes before its
        answer is sent (a reset after ARM accepted it)."""
        self.lost_answers.append(method)

    def answer_failed(self, method: str, status: int, headers: dict[str, str] | None = None) -> None:
        """The next request with ``method`` is carried out, but answered with ``status`` (a gateway
        that times out, 504, or fails, 500/503, after ARM accepted the request), with ``headers``
        (e.g. a ``Retry-After``)."""
        self.failed_answers.append((method, status, headers or {}))

    def release(self) -> None:
        self.hold_operations = False

    def change(self, name: str, **props: Any) -> None:
        """Someone else's change of the pool (an admin, the portal): its properties and a new eTag."""
        self.pools[name].update(props)
        self._bump(name)

    def _bump(self, name: str) -> None:
        self._etag_n += 1
        self.pools[name]["eTag"] = f"etag-{self._etag_n}"

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method in ("PUT", "POST") and c.status < 300]

    # --- server --------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("GET", "/msi/token", self._msi_token)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _pool_url(self, pool: str) -> str:
        return POOL_PATH.format(sub=self.subscription, rg=self.resource_group, cluster=self.cluster,
                                pool=pool)

    def _body(self, name: str) -> dict[str, Any]:
        return {"name": name, "type": "Microsoft.ContainerService/managedClusters/agentPools",
                "id": self._pool_url(name), "properties": {
                    k: copy.deepcopy(v) for k, v in self.pools[name].items() if self.etags or k != "eTag"}}

    @staticmethod
    def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status,
                                 headers=headers or {})

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()  # cached: the routes read it again
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        resp = await self._route(request)
        failed = next((f for f in self.failed_answers if f[0] == request.method), None)
        if failed is not None and resp.status < 300:
            self.failed_answers.remove(failed)
            resp = self._error(failed[1], "GatewayTimeout" if failed[1] == 504 else "InternalServerError",
                               "the request was carried out; its answer failed on the way", failed[2])
        self.calls.append(Call(request.method, request.path, time.monotonic(), resp.status, body))
        if request.method in ("PUT", "POST") and resp.status < 300:
            self.write_event.set()
        if request.method in self.lost_answers and request.transport is not None:
            self.lost_answers.remove(request.method)
            request.transport.close()
        return resp

    async def _msi_token(self, request: web.Request) -> web.Response:
        """The App Service managed-identity endpoint (``IDENTITY_ENDPOINT``) azure-identity's
        ManagedIdentityCredential asks: its token names the audience (``resource``) it was asked for."""
        self.token_requests.append(dict(request.query))
        if request.headers.get("x-identity-header") != MSI_SECRET:
            return web.json_response({"error": "invalid_request"}, status=400)
        resource = request.query.get("resource", "")
        return web.json_response({"access_token": f"aud={resource}", "expires_on": str(int(time.time()) + 3600),
                                  "token_type": "Bearer", "resource": resource})

    async def _route(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return self._error(401, "AuthenticationFailed", "no bearer token")
        if self.audience is not None:
            token = request.headers["Authorization"].removeprefix("Bearer ")
            got = token.removeprefix("aud=").rstrip("/") if token.startswith("aud=") else "(unknown)"
            if got != self.audience.rstrip("/"):
                return self._error(401, "InvalidAuthenticationTokenAudience", (
                    f"The access token has been obtained for wrong audience or resource '{got}'. It should "
                    f"exactly match with one of the allowed audiences '{self.audience.rstrip('/')}/'."))
        version = request.query.get("api-version")
        if version not in API_VERSIONS:
            return self._error(400, "InvalidApiVersionParameter", f"api-version {version!r} is not supported")
        for i, (method, status, headers, error, on, then) in enumerate(self.faults):
            if method == request.method and (not on or on in request.path.strip("/").split("/")):
                del self.faults[i]
                if then is not None:
                    then()
                code = {429: "TooManyRequests", 409: "OperationNotAllowed"}.get(status, "Fault")
                err = error or {"code": code, "message": f"injected {status}"}
                return web.json_response({"error": err}, status=status, headers=headers)
        parts = request.path.strip("/").split("/")
        ops = ["subscriptions", self.subscription, "providers", "Microsoft.ContainerService", "locations",
               self.location]
        if parts[:6] == ops and len(parts) == 8 and parts[6] in ("operations", "operationresults"):
            if not self.status_readable:
                if (op := self.operations.get(parts[7])) is not None:
                    self._advance(op)
                return self._error(403, "AuthorizationFailed", (
                    "The client does not have authorization to perform action "
                    f"'Microsoft.ContainerService/locations/{parts[6]}/read' over scope "
                    f"'/subscriptions/{self.subscription}' or the scope is invalid."))
            return self._poll(parts[7], parts[6], request)
        cluster = self._pool_url("").strip("/").split("/")[:-1]  # .../managedClusters/{cluster}
        if parts == [*cluster, "listClusterUserCredential"] and request.method == "POST":
            return self._user_credential(request)
        prefix = self._pool_url("").strip("/").split("/")
        if parts[: len(prefix)] != prefix or len(parts) < len(prefix) + 1:
            return self._error(404, "ResourceNotFound", f"no such resource {request.path}")
        name = parts[len(prefix)]
        rest = parts[len(prefix) + 1:]
        if name not in self.pools:
            return self._error(404, "ResourceNotFound", f"agent pool {name} not found")
        if request.method == "GET" and not rest:
            return web.json_response(self._body(name))
        if request.method == "GET" and rest == ["machines"]:
            return self._machines_page(name, request)
        if request.method == "PUT" and not rest:
            return await self._put(name, request)
        if request.method == "POST" and rest == ["deleteMachines"]:
            return await self._delete_machines(name, request)
        return self._error(405, "MethodNotAllowed", f"{request.method} {request.path}")

    def _machines_page(self, pool: str, request: web.Request) -> web.Response:
        """``Machines_List``, ``machines_page_size`` machines a page: as in the published example, a
        page with more to come carries a ``nextLink`` whose ``encodedToken`` is the base64 of
        ``skipToken=<n>``."""
        skip = 0
        token = request.query.get("encodedToken")
        if token is not None:
            try:
                skip = int(base64.b64decode(token).decode().removeprefix("skipToken="))
            except ValueError:
                return self._error(400, "InvalidParameter", f"encodedToken {token!r}")
        have = self.machines[pool]
        page: dict[str, Any] = {"value": [self._machine(pool, m, i) for i, m in enumerate(have)
                                          if skip <= i < skip + self.machines_page_size]}
        if skip + self.machines_page_size < len(have):
            token = base64.b64encode(f"skipToken={skip + self.machines_page_size}".encode()).decode()
            page["nextLink"] = f"{self.base_url}{self._pool_url(pool)}/machines?encodedToken={token}"
        return web.json_response(page)

    def _machine(self, pool: str, machine: str, index: int) -> dict[str, Any]:
        """One machine as ``Machines_List`` answers (``../shared/fixtures/aks/2026-04-01/MachineList.json``):
        named like its node, its ``resourceId`` the scale set's VM instance."""
        return {"name": machine, "type": "Microsoft.ContainerService/managedClusters/agentPools/machines",
                "id": f"{self._pool_url(pool)}/machines/{machine}",
                "properties": {"resourceId": (
                    f"/subscriptions/{self.subscription}/resourceGroups/MC_{self.resource_group}"
                    f"_{self.cluster}_{self.location}/providers/Microsoft.Compute/virtualMachineScaleSets/"
                    f"aks-{pool}-12345678-vmss/virtualMachines/{index}")}}

    def _user_credential(self, request: web.Request) -> web.Response:
        if self.kubeconfig is None:
            return self._error(404, "ResourceNotFound", f"managed cluster {self.cluster} not found")
        if request.query.get("format") not in (None, "azure", "exec"):
            return self._error(400, "InvalidParameter", f"format {request.query.get('format')!r}")
        value = base64.b64encode(self.kubeconfig).decode()
        return web.json_response({"kubeconfigs": [{"name": "clusterUser", "value": value}]})

    def _busy(self, name: str) -> web.Response | None:
        if any(op.pool == name and op.status == "InProgress" for op in self.operations.values()) \
                or self.pools[name].get("provisioningState") in IN_PROGRESS:
            return self._error(409, "OperationNotAllowed",
                               "Operation is not allowed because there's an in progress update "
                               "operation on the agent pool.")
        return None

    def _start(self, name: str, kind: str, apply: Any, partial: Any = None) -> Operation:
        op = Operation(uuid.uuid4().hex, name, kind, self.polls, apply, self.fail_next_operation,
                       partial=partial if self.fail_next_operation else None)
        self.fail_next_operation = None
        self.operations[op.id] = op
        return op

    def _op_url(self, op: Operation, kind: str) -> str:
        """As AKS answers: subscription-level URLs, outside the cluster's resource group."""
        segment = "operations" if kind == "status" else "operationresults"
        return (f"{self.base_url}/subscriptions/{self.subscription}/providers/Microsoft.ContainerService/"
                f"locations/{self.location}/{segment}/{op.id}?api-version=2026-08-01")

    async def _put(self, name: str, request: web.Request) -> web.Response:
        if (busy := self._busy(name)) is not None:
            return busy
        props = self.pools[name]
        if_match = request.headers.get("If-Match")
        if if_match and self.etags and if_match.strip('"') != props["eTag"]:
            return self._error(412, "PreconditionFailed", "the agent pool's eTag does not match")
        body = await request.json()
        new = body.get("properties") or {}
        if "count" not in new or "vmSize" not in new:
            return self._error(400, "InvalidParameter", "properties.count and properties.vmSize are required")
        if new.get("enableAutoScaling"):
            if new["count"] != props["count"]:
                return self._error(400, "InvalidParameter",
                                   "count cannot be changed while enableAutoScaling is true")
            lo, hi = new.get("minCount"), new.get("maxCount")
            if lo is None or hi is None or lo > hi:
                return self._error(400, "InvalidParameter", "minCount and maxCount must be set, min <= max")

        def apply() -> None:
            # a minCount raised above the count is enforced: AKS's cluster autoscaler scales the
            # pool up to it (AKS release 2021-07-22, "Cluster autoscaler will now enforce the
            # minimum count ... changing the minimum count value from the AKS API"; before it, it
            # waited for a scale event: Azure/AKS#1481, kubernetes/autoscaler#4401). Modelled as
            # done when the operation ends; on AKS the autoscaler does it shortly after.
            pool = self.pools[name]
            if self.enforce_min_count and pool.get("enableAutoScaling") and (pool.get("minCount") or 0) > pool["count"]:
                pool["count"] = pool["minCount"]
            have = self.machines[name]
            while len(have) < self.pools[name]["count"]:
                have.append(f"aks-{name}-12345678-vmss{len(have) + 1000:06x}")
            self._bump(name)

        # As ARM: the PUT is the pool's goal from the moment it is accepted. A GET while the
        # operation runs shows the new count (learn.microsoft.com, "Scale node pools": the pool
        # "is in the Scaling state with a new count"), and a failed operation leaves it there:
        # the count is then above the machines that exist (Azure/AKS#671: count 6, 5 nodes).
        # A PUT is the whole pool: a property the body leaves out is not kept (modelled as reset:
        # whether AKS keeps or resets each omitted property is not documented per property), so
        # a client must send the pool back as it read it. Read-only properties stay the pool's.
        kept = {k: v for k, v in props.items() if k in READ_ONLY}
        props.clear()
        props.update({k: copy.deepcopy(v) for k, v in new.items() if k not in READ_ONLY})
        props.update(kept)
        self._bump(name)
        op = self._start(name, "put", apply)
        props["provisioningState"] = "Updating"
        return web.json_response(self._body(name), status=201, headers={
            "Azure-AsyncOperation": self._op_url(op, "status"), "Retry-After": "0"})

    async def _delete_machines(self, name: str, request: web.Request) -> web.Response:
        if (busy := self._busy(name)) is not None:
            return busy
        body = await request.json()
        wanted = body.get("machineNames")
        if not isinstance(wanted, list) or not wanted:
            return self._error(400, "InvalidParameter", "machineNames must be a non-empty list")
        unknown = [m for m in wanted if m not in self.machines[name]]
        if unknown:
            return self._error(400, "InvalidParameter", f"machines not in the pool: {unknown}")

        def apply() -> None:
            for m in wanted:
                if m in self.machines[name]:
                    self.machines[name].remove(m)
            self.pools[name]["count"] = len(self.machines[name])
            self._bump(name)

        went = wanted[: self.fail_after_deleting]

        def partial() -> None:  # it failed part-way: the first machines went
            for m in went:
                if m in self.machines[name]:
                    self.machines[name].remove(m)
            self.pools[name]["count"] = len(self.machines[name])
            self._bump(name)

        op = self._start(name, "deleteMachines", apply, partial if self.fail_after_deleting else None)
        self.pools[name]["provisioningState"] = "Scaling"
        return web.Response(status=202, headers={"location": self._op_url(op, "result"), "Retry-After": "0"})

    def _advance(self, op: Operation) -> None:
        """One step of an operation: it runs whether or not its caller may read its status."""
        if op.status == "InProgress" and not self.hold_operations:
            if op.polls_left > 0:
                op.polls_left -= 1
            else:
                pool = self.pools[op.pool]
                if op.fail:
                    if op.partial is not None:
                        op.partial()
                    op.status = "Failed"
                    pool["provisioningState"] = "Failed"
                else:
                    op.apply()
                    op.status = "Succeeded"
                    pool["provisioningState"] = "Succeeded"

    def _poll(self, op_id: str, segment: str, request: web.Request) -> web.Response:
        op = self.operations.get(op_id)
        if op is None:
            return self._error(404, "NotFound", "no such operation")
        self._advance(op)
        if segment == "operationresults":  # the location header of deleteMachines
            if op.status == "InProgress":
                return web.Response(status=202, headers={"location": str(request.url), "Retry-After": "0"})
            if op.status == "Failed":
                return self._error(500, op.fail or "Failed", "the operation failed")
            return web.Response(status=200)
        doc: dict[str, Any] = {"id": op.id, "name": op.id, "status": op.status}
        if op.status == "Failed":
            doc["error"] = {"code": op.fail, "message": "the operation failed"}
        return web.json_response(doc, headers={"Retry-After": "0"})


class StaticToken:
    """An async token credential that issues a fixed token (the double checks only its presence)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken("test-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticToken:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None
