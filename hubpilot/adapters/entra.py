"""Microsoft Graph through msgraph-sdk: group delta rounds, user lookups, subscriptions, and the
Azure Storage queue of notification hints.

The client is built the SDK's way with two deliberate settings: the request adapter's
``base_url`` is set from configuration *before* the :class:`GraphServiceClient` is built (the
client copies it into its path parameters), and msgraph's own middleware pipeline carries a
configured :class:`RetryHandlerOption` (429/503/504, honouring ``Retry-After``) — there is no
second retry loop here. The pipeline's RetryHandler is msgraph's own with one addition: within a
:meth:`GraphClient.round` (one directory read) it does not start a wait that would end past the
round's deadline, and fails the request instead (:class:`GraphThrottled`). Everything returned is
plain data (dicts, tuples of str).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from hubpilot.ports.directory import DirectoryError

log = logging.getLogger(__name__)

EXPIRED_CODES = {"syncstatenotfound", "resyncrequired", "syncstateinvalid", "invaliddeltatoken"}
USERS_PER_FILTER = 15
"""Graph's default limit of values in one ``in (...)`` filter clause."""


def _plain(value: Any) -> Any:
    """Untyped SDK data back to JSON-like values (UUIDs become text again)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class GraphUnreachable(Exception):
    """Graph could not be reached, the connection broke, or no answer came within the timeout."""


class GraphThrottled(DirectoryError):
    """Graph throttled a request (429/503/504) and the wait it asked for would end past the
    round's deadline: the round fails (nothing is committed) rather than outlive its host."""


class _ThrottledPastDeadline(Exception):
    """Raised inside the retry handler's loop with the answer it must release."""

    def __init__(self, response: httpx.Response, message: str) -> None:
        super().__init__(message)
        self.response = response


_ROUND: ContextVar[tuple[float, float] | None] = ContextVar("hubpilot_graph_round", default=None)
"""(deadline on :func:`time.monotonic`, the round's length in seconds) of the round in progress."""


@functools.cache
def _round_retry_handler() -> Any:
    """msgraph's RetryHandler class, bounded by the round's deadline (built on first use: the SDK
    is imported lazily)."""
    from kiota_http.middleware.options import RetryHandlerOption
    from kiota_http.middleware.retry_handler import RETRY_ATTEMPT, RetryHandler

    class RoundRetryHandler(RetryHandler):
        """The library's loop, waits and limits as they are; a retry whose wait would end past the
        round's deadline raises :class:`GraphThrottled` instead of sleeping."""

        def should_retry(self, request: httpx.Request, options: Any, response: httpx.Response) -> bool:
            retry: bool = super().should_retry(request, options, response)
            current = _ROUND.get()
            if not retry or current is None:
                return retry
            attempt = int(response.request.headers.get(RETRY_ATTEMPT, "0"))
            if not self.check_retry_valid(attempt, options):
                return retry  # no retries left: the library hands the answer back
            wait = self.get_delay_time(attempt, response, options.max_delay)
            if not response.headers.get("retry-after"):
                wait += 1.0  # the backoff's jitter (up to 1 s) is drawn again for the actual wait
            if wait >= RetryHandlerOption.MAX_DELAY:
                return retry  # the library does not wait that long: it hands the answer back
            deadline, seconds = current
            left = deadline - time.monotonic()
            if wait > left:
                path = urlsplit(str(request.url)).path
                raise _ThrottledPastDeadline(response, (
                    f"Graph throttled; retry after {wait:.0f} s would pass the round's deadline "
                    f"({response.status_code} to {request.method} {path}, {max(left, 0):.0f} s of the round's "
                    f"{seconds:g} s left, directory.entra.round_deadline_seconds); the next run tries again"))
            return retry

        async def send(self, request: httpx.Request, transport: httpx.AsyncBaseTransport) -> httpx.Response:
            try:
                response: httpx.Response = await super().send(request, transport)
            except _ThrottledPastDeadline as exc:
                # the library closes a throttled answer only before it retries: this one, not
                # retried, would hold its pooled connection until the client closes
                await exc.response.aclose()
                raise GraphThrottled(str(exc)) from None
            return response

    return RoundRetryHandler


class StaticTokenCredential:
    """An async azure-core TokenCredential holding one token (tests and short-lived tools)."""

    def __init__(self, token: str, expires_on: int = 4102444800) -> None:
        self._token = token
        self._expires_on = expires_on

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, self._expires_on)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def build_credential(kind: str, *, client_id: str | None, tenant_id: str | None,
                     authority_host: str | None, timeout: float | None = None,
                     client_secret: str | None = None, resource_id: str | None = None) -> Any:
    """An azure-identity async credential: managed identity in Azure, DefaultAzureCredential elsewhere
    (``authority_host`` None: azure-identity's own, i.e. ``AZURE_AUTHORITY_HOST`` or the global one).

    ``timeout``: the connect and read timeout of each try of a token request (azure-core's default
    is 300 s each: a token endpoint that accepts and never answers held the read that long a try).
    ``client_secret`` (with ``tenant_id`` and ``client_id``, kind "default"): that service principal's
    credential. ``resource_id`` (kind "managed_identity", no ``client_id``): a user-assigned identity
    by its resource id, as the Functions (App Service) identity endpoint names it (``mi_res_id``)."""
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential

    tries: dict[str, Any] = {"connection_timeout": timeout, "read_timeout": timeout} if timeout else {}
    if kind == "managed_identity":
        if client_id:
            return ManagedIdentityCredential(client_id=client_id, **tries)
        if resource_id:
            return ManagedIdentityCredential(identity_config={"mi_res_id": resource_id}, **tries)
        return ManagedIdentityCredential(**tries)
    kwargs: dict[str, Any] = {"authority": authority_host, **tries} if authority_host else dict(tries)
    if client_secret and tenant_id and client_id:
        return ClientSecretCredential(tenant_id, client_id, client_secret, **kwargs)
    if client_id:
        kwargs["managed_identity_client_id"] = client_id
        kwargs["workload_identity_client_id"] = client_id
    if tenant_id:
        kwargs["workload_identity_tenant_id"] = tenant_id
    return DefaultAzureCredential(**kwargs)


class GraphClient:
    """The Graph calls hubpilot makes, via msgraph-sdk. Implements the Entra GraphReader and
    SubscriptionApi protocols (structurally)."""

    def __init__(
        self,
        *,
        credential: Any,
        base_url: str,
        scope: str,
        username_attribute: str = "userPrincipalName",
        throttle_priority: str = "low",
        max_retries: int = 5,
        retry_delay: float = 3.0,
        timeout: float = 30.0,
        lookup_concurrency: int = 4,
        round_seconds: float | None = None,
    ) -> None:
        from kiota_authentication_azure.azure_identity_authentication_provider import (
            AzureIdentityAuthenticationProvider,
        )
        from kiota_http.kiota_client_factory import KiotaClientFactory
        from kiota_http.middleware.options import RetryHandlerOption
        from kiota_http.middleware.retry_handler import RetryHandler
        from msgraph.graph_request_adapter import GraphRequestAdapter
        from msgraph.graph_request_adapter import options as graph_options
        from msgraph.graph_service_client import GraphServiceClient
        from msgraph_core import GraphClientFactory
        from msgraph_core.middleware import GraphTelemetryHandler
        from msgraph_core.middleware.options import GraphTelemetryHandlerOption

        self.base_url = base_url.rstrip("/")
        self.username_attribute = username_attribute
        self.throttle_priority = throttle_priority
        self.lookup_concurrency = lookup_concurrency
        self.timeout = timeout
        self.round_seconds = round_seconds
        self._credential = credential
        self.scope = scope
        host = urlsplit(self.base_url).hostname or ""
        auth = AzureIdentityAuthenticationProvider(credential, scopes=[scope], allowed_hosts=[host])
        opts = dict(graph_options)
        retry = RetryHandlerOption(delay=retry_delay, max_retries=max_retries)
        opts[RetryHandlerOption.get_key()] = retry
        # msgraph's default pipeline (GraphClientFactory.create_with_default_middleware), its
        # RetryHandler bounded by the round's deadline
        pipeline = [_round_retry_handler()(retry) if type(m) is RetryHandler else m
                    for m in KiotaClientFactory.get_default_middleware(opts)]
        telemetry = opts.get(GraphTelemetryHandlerOption().get_key())
        pipeline.append(GraphTelemetryHandler(options=telemetry) if telemetry else GraphTelemetryHandler())
        http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False)
        http = GraphClientFactory.create_with_custom_middleware(pipeline, client=http)
        self._http = http
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = self.base_url  # before the client is built: it copies base_url
        self.client = GraphServiceClient(request_adapter=adapter)
        self.requests = 0

    @contextlib.asynccontextmanager
    async def round(self) -> AsyncIterator[None]:
        """The requests of one round (a directory read): a throttled request waits only while the
        wait ends within ``round_seconds`` of the round's start, else fails (GraphThrottled)."""
        if self.round_seconds is None:
            yield
            return
        token = _ROUND.set((time.monotonic() + self.round_seconds, self.round_seconds))
        try:
            yield
        finally:
            _ROUND.reset(token)

    # --- helpers ---------------------------------------------------------------------------
    def _config(self, query: Any = None, *, background: bool = True) -> Any:
        from kiota_abstractions.base_request_configuration import RequestConfiguration

        cfg: Any = RequestConfiguration(query_parameters=query)
        if background:
            cfg.headers.add("x-ms-throttle-priority", self.throttle_priority)
        return cfg

    def _unanswered(self, exc: BaseException) -> str | None:
        """What a request that got no answer from Graph says, in plain words (httpx's and
        azure-core's timeouts name no time); None for an answer Graph gave."""
        from azure.core.exceptions import AzureError, ServiceRequestTimeoutError, ServiceResponseTimeoutError

        if isinstance(exc, httpx.TimeoutException):
            return f"no answer from Graph within {self.timeout:g} s (directory.entra.timeout_seconds)"
        if isinstance(exc, httpx.TransportError):
            return f"the connection to Graph failed ({type(exc).__name__}: {exc or 'no detail'})"
        if isinstance(exc, AzureError):  # from the credential: no token, nothing sent to Graph
            timeouts = (ServiceRequestTimeoutError, ServiceResponseTimeoutError)
            if isinstance(exc, timeouts) or isinstance(exc.inner_exception or exc.__cause__, timeouts):
                return (f"no access token for Graph: the token endpoint gave no answer within {self.timeout:g} s "
                        "a try (directory.entra.timeout_seconds)")
            return f"no access token for Graph, asked for {self._token_made()}: {exc.message or exc}"
        return None

    def _token_made(self) -> str:
        """The scope of Graph's token and the settings that make it, for an error about the token."""
        return (f"the scope {self.scope} (directory.entra.graph_scope; unset: '<graph_base_url's host>/.default') "
                "from the authority directory.entra.authority_host (or the managed identity's own): both must be "
                f"of the cloud of {self.base_url} (directory.entra.graph_base_url)")

    def _error(self, exc: Exception) -> tuple[int | None, str, str]:
        plain = self._unanswered(exc)
        if plain is not None:
            return None, "", plain
        status = getattr(exc, "response_status_code", None)
        err = getattr(exc, "error", None)
        code = str(getattr(err, "code", "") or "")
        message = str(getattr(err, "message", "") or exc)
        if status == 401:
            message += f"; Graph refused the token, asked for {self._token_made()}"
        return status, code, message

    def _check_answered(self, what: str, exc: Exception) -> None:
        """Raise GraphUnreachable, said plainly, when ``exc`` means Graph gave no answer, and
        DirectoryError naming the token's scope and settings when Graph refused the token (401)."""
        plain = self._unanswered(exc)
        if plain is not None:
            raise GraphUnreachable(f"Graph {what}: {plain}") from exc
        status, code, message = self._error(exc)
        if status == 401:
            raise DirectoryError(f"Graph {what} failed (401 {code}): {message}") from exc

    # --- GraphReader -----------------------------------------------------------------------
    async def delta_round(self, group_ids: Sequence[str], delta_link: str | None) -> Mapping[str, Any]:
        from msgraph.generated.groups.delta.delta_request_builder import DeltaRequestBuilder

        builder = self.client.groups.delta
        entries: list[dict[str, Any]] = []
        try:
            if delta_link:
                page = await builder.with_url(delta_link).get(self._config())
            else:
                q = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
                    select=["members"],
                    filter=" or ".join(f"id eq '{g}'" for g in group_ids),
                )
                page = await builder.get(self._config(q))
            self.requests += 1
            while True:
                if page is None:
                    raise DirectoryError("Graph answered a /groups/delta page with no body")
                for group in page.value or []:
                    extra = dict(group.additional_data or {})
                    entries.append({
                        "id": group.id,
                        "removed": "@removed" in extra,
                        "members": [m for m in (extra.get("members@delta") or []) if isinstance(m, dict)],
                    })
                if page.odata_delta_link:
                    return {"entries": entries, "delta_link": page.odata_delta_link}
                if not page.odata_next_link:
                    raise DirectoryError("a /groups/delta page has neither @odata.nextLink nor @odata.deltaLink")
                page = await builder.with_url(page.odata_next_link).get(self._config())
                self.requests += 1
        except DirectoryError:
            raise
        except Exception as exc:
            status, code, message = self._error(exc)
            if status == 410 or code.lower() in EXPIRED_CODES:
                log.info("delta token expired (%s %s): full resync", status, code)
                return {"expired": True}
            what = status or type(exc).__name__
            raise DirectoryError(f"Graph /groups/delta failed ({what} {code}): {message}") from exc

    async def _get_json(self, info: Any) -> dict[str, Any]:
        """Send a request built by an SDK request builder through the SDK's adapter (auth, retry
        handler, error mapping) and return the JSON body undeserialised: building a ``User`` model
        costs milliseconds each, too much for thousands of users."""
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        adapter: Any = self.client.request_adapter
        raw: Any = await adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
        self.requests += 1
        doc: Any = json.loads(raw) if raw else {}
        if not isinstance(doc, dict):
            raise DirectoryError("Graph answered a collection request with something other than a JSON object")
        return doc

    def _users_of(self, doc: Mapping[str, Any], found: dict[str, tuple[str | None, str, bool | None]]) -> None:
        for user in doc.get("value") or []:
            if isinstance(user, dict) and isinstance(user.get("id"), str):
                value = user.get(self.username_attribute)
                enabled = user.get("accountEnabled")  # null or absent: not known, never "disabled"
                found[user["id"].lower()] = (str(value) if value is not None else None,
                                             str(user.get("displayName") or ""),
                                             enabled if isinstance(enabled, bool) else None)

    async def _pages(self, builder: Any, config: Any, found: dict[str, tuple[str | None, str, bool | None]]) -> None:
        doc = await self._get_json(builder.to_get_request_information(config))
        while True:
            self._users_of(doc, found)
            nxt = doc.get("@odata.nextLink")
            if not isinstance(nxt, str) or not nxt:
                return
            doc = await self._get_json(builder.with_url(nxt).to_get_request_information(self._config()))

    async def _all(self, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """Run ``jobs``, at most ``lookup_concurrency`` at once, as one read: the first to fail
        ends them all. No job starts after it, those under way are cancelled (a wait for a retry
        too, so nothing more is sent), and its exception is raised as is once they have ended."""
        sem = asyncio.Semaphore(self.lookup_concurrency)
        failed = False

        async def run(job: Callable[[], Awaitable[None]]) -> None:
            nonlocal failed
            async with sem:
                if failed:  # woken by the failed job's release, before the task group cancels it
                    return
                try:
                    await job()
                except Exception:
                    failed = True  # before the semaphore is released
                    raise

        try:
            async with asyncio.TaskGroup() as tasks:
                for job in jobs:
                    tasks.create_task(run(job))
        except BaseExceptionGroup as group:
            first = group.exceptions[0]
        else:
            return
        raise first  # outside the handler: the exception keeps its own cause and context

    async def lookup_users(self, ids: Sequence[str]) -> Mapping[str, tuple[str | None, str, bool | None]]:
        from msgraph.generated.users.users_request_builder import UsersRequestBuilder

        found: dict[str, tuple[str | None, str, bool | None]] = {}
        select = sorted({"id", "displayName", "accountEnabled", self.username_attribute})

        async def one(batch: Sequence[str]) -> None:
            q = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                filter="id in (" + ",".join(f"'{i}'" for i in batch) + ")", select=select,
            )
            await self._pages(self.client.users, self._config(q), found)

        batches = [list(ids[i:i + USERS_PER_FILTER]) for i in range(0, len(ids), USERS_PER_FILTER)]
        try:
            await self._all([functools.partial(one, b) for b in batches])
        except DirectoryError:
            raise
        except Exception as exc:
            status, code, message = self._error(exc)
            what = status or type(exc).__name__
            raise DirectoryError(f"Graph /users lookup failed ({what} {code}): {message}") from exc
        return found

    async def list_group_users(self, group_id: str) -> Mapping[str, tuple[str | None, str, bool | None]]:
        from msgraph.generated.groups.item.members.graph_user.graph_user_request_builder import (
            GraphUserRequestBuilder,
        )

        found: dict[str, tuple[str | None, str, bool | None]] = {}
        builder = self.client.groups.by_group_id(group_id).members.graph_user
        q = GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(
            select=sorted({"id", "displayName", "accountEnabled", self.username_attribute}), top=999,
        )
        try:
            await self._pages(builder, self._config(q), found)
        except DirectoryError:
            raise
        except Exception as exc:
            status, code, message = self._error(exc)
            raise DirectoryError(f"Graph group members listing failed ({status or type(exc).__name__} {code}): "
                                 f"{message}") from exc
        return found

    async def deleted_users(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that Graph holds as users in deleted items: one
        ``GET /directory/deletedItems/{id}`` each (a few leavers at a time; 404: not there)."""
        found: set[str] = set()

        async def one(uid: str) -> None:
            try:
                item = await self.client.directory.deleted_items.by_directory_object_id(uid).get(self._config())
            except Exception as exc:
                if self._error(exc)[0] == 404:
                    return
                raise
            finally:
                self.requests += 1
            kind = str(getattr(item, "odata_type", "") or "").lower()
            if item is not None and (not kind or kind.endswith(".user")):
                found.add(uid.lower())

        try:
            await self._all([functools.partial(one, u) for u in ids])
        except DirectoryError:
            raise
        except Exception as exc:
            status, code, message = self._error(exc)
            raise DirectoryError(f"Graph deleted items lookup failed ({status or type(exc).__name__} {code}): "
                                 f"{message}") from exc
        return found

    # --- SubscriptionApi -------------------------------------------------------------------
    async def list_subscriptions(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            page = await self.client.subscriptions.get(self._config(background=False))
            self.requests += 1
            while page is not None:
                for s in page.value or []:
                    out.append(self._sub(s))
                if not page.odata_next_link:
                    break
                page = await self.client.subscriptions.with_url(page.odata_next_link).get(
                    self._config(background=False))
                self.requests += 1
        except Exception as exc:
            self._check_answered("GET /subscriptions", exc)
            raise
        return out

    @staticmethod
    def _sub(s: Any) -> dict[str, Any]:
        exp = s.expiration_date_time
        return {
            "id": str(s.id),
            "resource": s.resource or "",
            "changeType": s.change_type or "",
            "notificationUrl": s.notification_url or "",
            "lifecycleNotificationUrl": s.lifecycle_notification_url,
            "expirationDateTime": exp.isoformat() if isinstance(exp, datetime) else exp,
        }

    async def create_subscription(self, body: Mapping[str, Any]) -> dict[str, Any]:
        from msgraph.generated.models.subscription import Subscription

        sub = Subscription(
            change_type=str(body["changeType"]),
            notification_url=str(body["notificationUrl"]),
            lifecycle_notification_url=body.get("lifecycleNotificationUrl"),
            resource=str(body["resource"]),
            expiration_date_time=datetime.fromisoformat(str(body["expirationDateTime"])),
            client_state=str(body["clientState"]),
        )
        try:
            created = await self.client.subscriptions.post(sub, self._config(background=False))
        except Exception as exc:  # no answer: Graph may have made it, and the next round lists it
            self._check_answered("POST /subscriptions", exc)
            raise
        self.requests += 1
        if created is None:
            raise RuntimeError("Graph answered POST /subscriptions without a body")
        return self._sub(created)

    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> bool:
        from msgraph.generated.models.subscription import Subscription

        try:
            await self.client.subscriptions.by_subscription_id(subscription_id).patch(
                Subscription(expiration_date_time=expiration), self._config(background=False))
            self.requests += 1
        except Exception as exc:
            if self._error(exc)[0] == 404:
                return False
            self._check_answered(f"PATCH /subscriptions/{subscription_id}", exc)
            raise
        return True

    async def delete_subscription(self, subscription_id: str) -> bool:
        try:
            await self.client.subscriptions.by_subscription_id(subscription_id).delete(
                self._config(background=False))
            self.requests += 1
        except Exception as exc:
            if self._error(exc)[0] == 404:
                return False
            self._check_answered(f"DELETE /subscriptions/{subscription_id}", exc)
            raise
        return True

    async def close(self) -> None:
        await self._http.aclose()
        close = getattr(self._credential, "close", None)
        if close is not None:
            await close()


class AzureQueueHints:
    """Notification hints on an Azure Storage queue (base64 text, as the Functions queue trigger
    expects by default)."""

    def __init__(self, queue_name: str, *, connection_string: str | None = None,
                 account_url: str | None = None, credential: Any = None) -> None:
        from azure.storage.queue import TextBase64EncodePolicy
        from azure.storage.queue.aio import QueueClient

        # the webhook answers Graph within seconds (slower answers get its notifications dropped),
        # so the storage SDK's own retry waits 0.5 s, then 1.5 s (its backoff is initial_backoff +
        # increment_base ** n), not its default 15 s, 18 s, 24 s
        kwargs: dict[str, Any] = {
            "message_encode_policy": TextBase64EncodePolicy(),
            "initial_backoff": 0.5, "increment_base": 1, "retry_total": 2, "random_jitter_range": 0,
            "connection_timeout": 3, "read_timeout": 3,
        }
        if connection_string:
            self._client = QueueClient.from_connection_string(connection_string, queue_name, **kwargs)
        elif account_url:
            self._client = QueueClient(account_url, queue_name, credential=credential, **kwargs)
        else:
            raise ValueError("an Azure queue needs a connection string or an account URL")
        self._ready = False

    async def push_json(self, message: Mapping[str, Any], *, delay_seconds: float = 0.0) -> None:
        """Send the message; with ``delay_seconds`` it stays invisible (to the queue trigger) that long."""
        from azure.core.exceptions import ResourceExistsError

        if not self._ready:
            try:
                await self._client.create_queue()
            except ResourceExistsError:
                pass
            self._ready = True
        await self._client.send_message(json.dumps(dict(message), separators=(",", ":")),
                                        visibility_timeout=math.ceil(delay_seconds) if delay_seconds > 0 else None)

    async def close(self) -> None:
        await self._client.close()
