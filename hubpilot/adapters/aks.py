"""The AKS GPU agent pool through azure-mgmt-containerservice (async client).

The ARM endpoint and the token scope are configuration (sovereign clouds, tests on loopback).
Retries are azure-core's own ``AsyncRetryPolicy`` (429 honours Retry-After), except a pool's PUT
left without an answer (also a 5xx that carries Retry-After, which azure-core would otherwise
retry): :meth:`AksPool._put` reads the pool again before trying it again (it may have been
accepted); a ``deleteMachines`` answered 5xx may have been accepted too, and is reported pending.
A 409 — another operation on the pool is in progress — is never retried: it
is reported as CONFLICT and the next run re-observes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy, AsyncRetryPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import (
    AgentPool,
    AgentPoolDeleteMachinesParameter,
    AgentPoolManagedClusterAgentPoolProfileProperties,
)

from hubpilot.ports.pool import FAILED_STATES, PoolError, PoolOutcome, PoolResult, PoolState

log = logging.getLogger(__name__)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackBearerPolicy(AsyncBearerTokenCredentialPolicy):  # type: ignore[type-arg]
    """Bearer tokens over TLS only, except to a loopback address (a local ARM emulator)."""

    async def on_request(self, request: PipelineRequest[Any]) -> None:
        if _is_loopback(request.http_request.url):
            request.context.options["enforce_https"] = False
        await super().on_request(request)


class NoConflictRetryPolicy(AsyncRetryPolicy):  # type: ignore[type-arg]
    """azure-core's retry policy, except that a 409 (another operation on the pool) or a 412 (stale
    eTag) is never retried, and a request whose method the call leaves out of its retries (a pool's
    PUT, a POST such as ``deleteMachines``) is sent again only after a 429: azure-core retries any
    error status that carries Retry-After, whatever the method, and a POST after a 500, 503 or 504
    even without one; such an answer (ARM sends Retry-After with its 503s) may come after ARM took
    the request, and the request sent again would meet its own operation (409). A 429 is ARM's
    refusal before it takes a request."""

    def is_retry(self, settings: Any, response: Any) -> bool:
        status = response.http_response.status_code
        if status in (409, 412):
            return False
        if status != 429 and response.http_request.method.upper() not in settings["methods"]:
            return False
        return bool(super().is_retry(settings, response))


class NoResendTransport(AioHttpTransport):  # type: ignore[misc]
    """azure-core's aiohttp transport, except that aiohttp never sends a request again by itself.

    aiohttp sends an idempotent request (GET, PUT, ...) once more, unseen by azure-core, when the
    connection drops after it went out (RFC 9112's retry of a persistent connection). A pool's PUT
    starts an operation: sent again after ARM took it, it meets that operation (409) or its new
    eTag (412), and the scale-up it did would be reported refused. With this transport the lost
    answer reaches :meth:`AksPool._put`, which reads the pool again before any other try; GETs are
    retried by azure-core's retry policy as before."""

    async def open(self) -> None:
        await super().open()
        if self.session is not None and hasattr(self.session, "_retry_connection"):
            self.session._retry_connection = False  # aiohttp has no public switch for it


class AksPool:
    """One agent pool of one managed cluster."""

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        subscription_id: str,
        resource_group: str,
        cluster: str,
        pool: str,
        base_url: str = "https://management.azure.com",
        credential_scopes: Sequence[str] = ("https://management.azure.com/.default",),
        api_version: str | None = None,
        retry_total: int = 3,
        retry_backoff: float = 0.8,
        polling_interval: float = 15.0,
        lro_wait: float = 45.0,
        timeout: float = 60.0,
        transport: Any = None,
    ) -> None:
        self.resource_group = resource_group
        self.cluster = cluster
        self.pool = pool
        self.lro_wait = lro_wait
        self.timeout = timeout
        self.retry_total = retry_total
        self.retry_backoff = retry_backoff
        self._credential = credential
        self._base_url = base_url.rstrip("/")
        self._scopes = tuple(credential_scopes)
        kwargs: dict[str, Any] = {
            "base_url": base_url.rstrip("/"),
            "credential_scopes": list(credential_scopes),
            "authentication_policy": LoopbackBearerPolicy(credential, *credential_scopes),
            "retry_policy": NoConflictRetryPolicy(retry_total=retry_total, retry_backoff_factor=retry_backoff),
            "polling_interval": polling_interval,
            # each try's connect and read timeout (azure-core's default is 300 s each: an ARM that
            # accepts the connection and never answers would hold the run for 300 s a try)
            "connection_timeout": timeout,
            "read_timeout": timeout,
        }
        if api_version:
            kwargs["api_version"] = api_version
        kwargs["transport"] = transport if transport is not None else NoResendTransport(
            connection_timeout=timeout, read_timeout=timeout)
        self._client = ContainerServiceClient(credential, subscription_id, **kwargs)

    @property
    def credential(self) -> AsyncTokenCredential:
        """The credential this pool authenticates with (and closes)."""
        return self._credential

    # --- reads ---------------------------------------------------------------------------
    async def _get_model(self) -> AgentPool:
        try:
            return await self._client.agent_pools.get(self.resource_group, self.cluster, self.pool)
        except HttpResponseError as exc:
            raise self._error(f"cannot read agent pool {self.pool}", exc) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:  # after azure-core's retries
            raise PoolError(f"cannot read agent pool {self.pool}: {self._no_answer(exc)}") from exc

    def _error(self, prefix: str, exc: HttpResponseError) -> PoolError:
        """ARM's error, or the credential's (azure-core's ClientAuthenticationError, which has no
        status when no token was had at all), saying which settings make the token."""
        scope = ", ".join(self._scopes)
        made = ("(scale.arm_audience; unset: '<scale.arm_endpoint>/.default') from the credential's authority "
                f"(scale.authority): both must be of the cloud of {self._base_url} (scale.arm_endpoint)")
        if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
            if _token_timed_out(exc):
                return PoolError(f"{prefix}: no token for {scope}: the token endpoint gave no answer within "
                                 f"{self.timeout:g} s a try (scale.arm_timeout_seconds): {exc.message}")
            return PoolError(f"{prefix}: no token for {scope} {made}: {exc.message}")
        error = _pool_error(prefix, exc)
        if exc.status_code == 401:
            return PoolError(f"{error}; ARM refused the token, which was asked for {scope} {made}",
                             error.status, error.code)
        return error

    def _no_answer(self, exc: Exception) -> str:
        """A failed connection, said plainly (azure-core's timeout texts name no time)."""
        if isinstance(exc, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
            return f"no answer from ARM within {self.timeout:g} s ({type(exc).__name__})"
        return f"no answer ({type(exc).__name__}: {exc})"

    async def get(self) -> PoolState:
        ap = await self._get_model()
        props = ap.properties
        if props is None or props.count is None:
            raise PoolError(f"agent pool {self.pool}: ARM answered without properties.count")
        ps = props.power_state
        power = ps.code if ps is not None and ps.code else "Running"
        return PoolState(
            name=ap.name or self.pool,
            count=int(props.count),
            min_count=props.min_count,
            max_count=props.max_count,
            autoscaling=bool(props.enable_auto_scaling),
            power_state=_text(power),
            provisioning_state=_text(props.provisioning_state or "Succeeded"),
            vm_size=_text(props.vm_size or ""),
            etag=props.e_tag,
            scale_down_mode=_text(props.scale_down_mode) if props.scale_down_mode else None,
            node_taints=tuple(str(t) for t in props.node_taints or ()),
        )

    async def machines(self) -> list[str]:
        try:
            return [m.name async for m in self._client.machines.list(self.resource_group, self.cluster, self.pool)
                    if m.name]
        except HttpResponseError as exc:
            raise self._error(f"cannot list the machines of agent pool {self.pool}", exc) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise PoolError(f"cannot list the machines of agent pool {self.pool}: {self._no_answer(exc)}") from exc

    # --- writes --------------------------------------------------------------------------
    async def set_count(self, count: int, *, etag: str | None = None) -> PoolResult:
        ap = await self._get_model()
        props = ap.properties
        if props is None:
            raise PoolError(f"agent pool {self.pool}: ARM answered without properties")
        if props.enable_auto_scaling:
            if (switched := _switched(props, etag, "on")) is not None:
                return switched
            raise PoolError(f"agent pool {self.pool}: the cluster autoscaler is on; its count is not ours")
        state = _text(props.provisioning_state or "Succeeded")
        if props.count == count and state not in FAILED_STATES:
            return PoolResult(PoolOutcome.NOOP, f"count is already {count}")
        if props.count is not None and props.count > count:
            # the pool grew since it was observed; a lower count would remove nodes AKS picks
            return PoolResult(PoolOutcome.CONFLICT, f"the pool changed since it was read: count is {props.count}, "
                              f"above {count}; a scale-down must name its nodes")
        before = _settable(props)
        props.count = count
        # a failed operation's count stays the pool's without its machines: the same count again
        # is that operation asked for once more
        again = f" (again: the last operation {state})" if state in FAILED_STATES else ""
        return await self._put(ap, etag, before, f"count {count}{again}", lambda p: p.count == count)

    async def set_min_count(self, min_count: int, *, etag: str | None = None) -> PoolResult:
        ap = await self._get_model()
        props = ap.properties
        if props is None:
            raise PoolError(f"agent pool {self.pool}: ARM answered without properties")
        if not props.enable_auto_scaling:
            if (switched := _switched(props, etag, "off")) is not None:
                return switched
            raise PoolError(f"agent pool {self.pool}: the cluster autoscaler is off; min_count has no effect")
        if props.min_count == min_count:
            return PoolResult(PoolOutcome.NOOP, f"min_count is already {min_count}")
        before = _settable(props)
        props.min_count = min_count
        return await self._put(ap, etag, before, f"min_count {min_count}", lambda p: p.min_count == min_count)

    async def _put(self, ap: AgentPool, etag: str | None, before: dict[str, Any], what: str,
                   shows: Callable[[AgentPoolManagedClusterAgentPoolProfileProperties], bool]) -> PoolResult:
        """PUT the pool. A try left without an answer (the connection dropped, a gateway's 5xx) may
        have been accepted: the pool is read again before any other try. A pool that shows the
        change (a new eTag, ``shows`` its properties) is this PUT, accepted; a pool that changed
        otherwise (a new eTag; without eTags, settable properties other than ``before``) was
        changed by someone else meanwhile, and the PUT, a whole pool as read before, is not sent
        again over that change: a conflict, and the next run re-observes. Only a pool as it was
        read gets the PUT again. azure-core never sends the PUT again by itself: its retry would
        meet our own operation (409) or eTag (412)."""
        kwargs: dict[str, Any] = {"retry_on_methods": _RETRY_BUT_PUT}
        read = ap.properties.e_tag if ap.properties is not None else None
        if etag or read:
            kwargs |= {"etag": etag or read, "match_condition": MatchConditions.IfNotModified}
        lost = ""
        for attempt in range(self.retry_total + 1):
            if attempt:
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))
            try:
                poller = await self._client.agent_pools.begin_create_or_update(
                    self.resource_group, self.cluster, self.pool, ap, **kwargs)
            except ResourceExistsError as exc:
                return _conflict(exc)
            except ResourceModifiedError as exc:
                return PoolResult(PoolOutcome.CONFLICT, f"the pool changed since it was read (412: its eTag is no "
                                  f"longer {kwargs['etag']}): {exc.message}")
            except HttpResponseError as exc:
                if exc.status_code == 409:
                    return _conflict(exc)
                if exc.status_code not in _NO_ANSWER_STATUS:
                    raise self._error(f"cannot set {what} on agent pool {self.pool}", exc) from exc
                lost = f"{exc.status_code} {_code(exc) or ''}".strip()
            except (ServiceRequestError, ServiceResponseError) as exc:
                lost = self._no_answer(exc)
            else:
                return await self._wait(poller, what)
            try:
                fresh = await self._get_model()
            except PoolError as exc:
                raise PoolError(f"cannot set {what} on agent pool {self.pool}: {lost}, and the pool could not "
                                f"be read again to see whether it was accepted ({exc})") from exc
            now = fresh.properties
            if now is None:
                raise PoolError(f"cannot set {what} on agent pool {self.pool}: {lost}, and the pool read again "
                                "came without properties")
            changed = now.e_tag != read if read is not None or now.e_tag is not None else _settable(now) != before
            if changed and shows(now):
                return _accepted(now, what, lost)
            if changed:
                seen = (f"its eTag is no longer {read}" if read is not None or now.e_tag is not None
                        else "its settable properties differ from those read")
                return PoolResult(PoolOutcome.CONFLICT, (
                    f"{what} not sent again: its answer was lost ({lost}), and the pool read again shows another "
                    f"change ({seen}), not this one; the next run re-observes"))
        raise PoolError(f"cannot set {what} on agent pool {self.pool}: {lost}; the pool, read again, "
                        "does not show it (not accepted)")

    async def delete_machines(self, machines: Sequence[str]) -> PoolResult:
        if not machines:
            return PoolResult(PoolOutcome.NOOP, "no machines")
        body = AgentPoolDeleteMachinesParameter(machine_names=list(machines))
        try:
            poller = await self._client.agent_pools.begin_delete_machines(
                self.resource_group, self.cluster, self.pool, body)
        except HttpResponseError as exc:
            if exc.status_code == 409:
                return _conflict(exc)
            if exc.status_code in _NO_ANSWER_STATUS:
                # a gateway's 5xx may come after ARM took the deletion (never sent again: it would
                # meet its own operation, 409, and the removal would be reported refused): as with
                # no answer at all, the caller keeps the nodes cordoned and watches them
                return PoolResult(PoolOutcome.PENDING, (
                    f"delete {', '.join(machines)}: answered {exc.status_code} {_code(exc) or ''}".rstrip()
                    + "; it may have been accepted"))
            raise self._error(f"cannot delete machines {', '.join(machines)}", exc) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            # the connection failed with no answer: ARM may have accepted the deletion (azure-core
            # reports a reset after the request was sent as a request error too), so the caller
            # keeps the nodes cordoned; the next run re-observes and uncordons what is still there
            return PoolResult(PoolOutcome.PENDING, (
                f"delete {', '.join(machines)}: {self._no_answer(exc)}; it may have been accepted"))
        return await self._wait(poller, f"delete {', '.join(machines)}")

    async def _wait(self, poller: Any, what: str) -> PoolResult:
        """Wait for the long-running operation up to ``lro_wait``; then report it pending."""
        task = asyncio.ensure_future(poller.result())
        done, _ = await asyncio.wait({task}, timeout=self.lro_wait)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return PoolResult(PoolOutcome.PENDING, f"{what}: still running after {self.lro_wait:g}s")
        try:
            task.result()
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                # ARM accepted the request; only its status URL (subscription level:
                # .../locations/<region>/operations/<id>) is not readable by this identity.
                return PoolResult(PoolOutcome.PENDING, (
                    f"{what}: accepted, but its status cannot be read ({exc.status_code} {_code(exc) or ''}; "
                    "grant Microsoft.ContainerService/locations/operations/read on the subscription)"))
            raise self._error(f"{what}: the operation failed", exc) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            # ARM accepted the request; the network failed while its status was polled: the
            # operation goes on (a removal's nodes stay cordoned), the next run re-observes
            return PoolResult(PoolOutcome.PENDING, f"{what}: accepted, but its status could not be read: {exc}")
        return PoolResult(PoolOutcome.DONE, what)

    # --- the cluster's Kubernetes endpoint --------------------------------------------------
    async def user_kubeconfig(self) -> bytes:
        """The cluster's user kubeconfig (``listClusterUserCredential``, exec format): its API
        server address and CA, for a client that brings its own Entra token. Needs the
        ``listClusterUserCredential`` action (e.g. "Azure Kubernetes Service Cluster User Role")."""
        try:
            res = await self._client.managed_clusters.list_cluster_user_credentials(
                self.resource_group, self.cluster, format="exec", retry_on_methods=_RETRY_READS)
        except HttpResponseError as exc:
            raise self._error(f"cannot read the user kubeconfig of cluster {self.cluster}", exc) from exc
        for kc in res.kubeconfigs or []:
            if kc.value:
                return bytes(kc.value)
        raise PoolError(f"cluster {self.cluster}: ARM answered listClusterUserCredential without a kubeconfig")

    async def close(self) -> None:
        await self._client.close()
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()


# every method azure-core retries by default but PUT (AksPool._put retries it after a re-read)
_RETRY_BUT_PUT = frozenset({"HEAD", "GET", "DELETE", "OPTIONS", "TRACE"})
# a POST that only reads (listClusterUserCredential) is retried as a GET
_RETRY_READS = _RETRY_BUT_PUT | {"POST"}
# answers of a gateway that may come after ARM accepted the request
_NO_ANSWER_STATUS = (500, 502, 503, 504)


def _accepted(props: AgentPoolManagedClusterAgentPoolProfileProperties, what: str, lost: str) -> PoolResult:
    """A PUT whose answer was lost, seen in the pool read again."""
    state = _text(props.provisioning_state or "Succeeded")
    said = f"{what}: accepted (its answer was lost: {lost}; the pool read again shows it)"
    if state in FAILED_STATES:
        raise PoolError(f"{said}, and its operation ended {state}", None, state)
    if state == "Succeeded":
        return PoolResult(PoolOutcome.DONE, said)
    return PoolResult(PoolOutcome.PENDING, f"{said}, still running ({state})")


def _settable(props: AgentPoolManagedClusterAgentPoolProfileProperties) -> dict[str, Any]:
    """What a PUT sets: the properties, without the read-only ones ARM keeps for itself."""
    return {k: v for k, v in props.as_dict().items() if k not in _READ_ONLY}


# read-only (the eTag, the operation's state, versions AKS reports), not what a PUT changes
_READ_ONLY = frozenset({"e_tag", "provisioning_state", "current_orchestrator_version", "node_image_version"})


def _switched(props: AgentPoolManagedClusterAgentPoolProfileProperties, etag: str | None,
              now: str) -> PoolResult | None:
    """The cluster autoscaler switched on or off since the pool was observed (its eTag is no longer
    the one observed: an agent-pool operation changes it): the change planned for the other mode is
    a conflict, as the PUT's 412 would be, and the next run plans in the pool's new mode. None when
    the pool is as observed (a change asked for in the wrong mode: an error)."""
    if etag is None or props.e_tag == etag:
        return None
    return PoolResult(PoolOutcome.CONFLICT, f"the pool changed since it was read (its eTag is no longer {etag}): "
                      f"the cluster autoscaler is now {now}")


def _text(value: Any) -> str:
    """An SDK enum member or a plain string, as the wire text."""
    return str(getattr(value, "value", value))


def _code(exc: HttpResponseError) -> str | None:
    err = getattr(exc, "error", None)
    return getattr(err, "code", None) if err is not None else None


def _conflict(exc: HttpResponseError) -> PoolResult:
    return PoolResult(PoolOutcome.CONFLICT, f"another operation on the pool is in progress (409): {exc.message}")


def _token_timed_out(exc: ClientAuthenticationError) -> bool:
    """The credential got no token because its token endpoint gave no answer in time. A credential
    chain (DefaultAzureCredential) keeps only its credentials' texts, azure-core's timeout errors'
    among them, not the errors themselves."""
    timeouts = (ServiceRequestTimeoutError, ServiceResponseTimeoutError)
    if isinstance(exc.inner_exception or exc.__cause__, timeouts):
        return True
    text = str(exc.message or "")
    # aiohttp's texts (azure-core's async transport), the only ones a chain passes on
    return any(said in text for said in ("Timeout on reading data from socket", "Connection timeout to host"))


def _pool_error(prefix: str, exc: HttpResponseError) -> PoolError:
    code = _code(exc)
    return PoolError(f"{prefix}: {exc.status_code} {code or ''} {exc.message}".strip(), exc.status_code, code)
