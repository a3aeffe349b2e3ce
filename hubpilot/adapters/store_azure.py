"""The state store in Azure Storage: Tables for locks and the audit log, Blobs for documents.

- Locks: one entity per lock in ``<prefix>locks``. Acquire inserts the entity, or replaces an
  expired one conditionally on its etag, so exactly one of many concurrent acquirers wins. Renew
  and release are conditional on the etag we got (the lease's ``token``). Expiry is judged by the
  service's clock, never by the caller's: a lease ends ``ttl_us`` after the entity's server-set
  ``Timestamp`` (its last write), compared with the ``Date`` of the response that read it, so a
  host whose clock runs ahead cannot take a lock that is still held. (``expires_us``, the
  holder's own view, is still written for older versions; a row without ``ttl_us``, written by
  one of them, is judged by ``expires_us`` against the caller's clock as they do.) Each write
  carries a fresh ``claim``: when a retried write is refused because its first attempt landed
  (the answer was lost), the claim read back shows the lease is ours.
- Audit: one partition ``audit`` in ``<prefix>audit``; the RowKey is the inverted ``at`` time,
  then an inverted append sequence, then a random suffix, so the table's natural order is newest
  first. An entry too big for a table property is written to the blob ``audit/<RowKey>.json``
  first and the row points to it; reading returns the whole entry either way.
- Documents: the blob ``docs/<key>`` in the container, conditional writes on the blob etag. Each
  write carries a fresh id in the blob's metadata, so a retried conditional write refused by its
  own first attempt is recognised as done.

Retries are azure-core's (Tables) and the storage SDK's (Blobs) own policies, configured here;
there is no retry loop of our own. A retried write can be refused by its own first attempt, which
the service applied before its answer was lost: lock writes, audit appends and conditional
document writes recognise that. Lock and audit inserts (POSTs) are retried after a dropped
connection or a timeout too, which azure-core does not do for a POST by default.
Tables and the container are created on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineResponse
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, ExponentialRetry

from hubpilot.adapters.store_common import audit_time as _audit_time
from hubpilot.adapters.store_common import check_key, check_limit, check_prune
from hubpilot.adapters.store_common import dump_json as _dump
from hubpilot.adapters.store_common import from_micros as _from_micros
from hubpilot.adapters.store_common import load_json as _load
from hubpilot.adapters.store_common import to_micros as _micros
from hubpilot.ports.store import (
    AZURE_ACCOUNT,
    AZURE_CONTAINER,
    AZURE_TABLE_PREFIX,
    BadCursor,
    ConflictError,
    Lease,
    StoreError,
)

T = TypeVar("T")

_AT_SPAN = 10**18  # microseconds: past year 9999
_SEQ_SPAN = 10**20  # nanoseconds
_ROW_KEY = re.compile(r"^\d{18}-\d{20}-[0-9a-f]{8}$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.:@=+-]{1,512}$")
_TABLE_PREFIX = AZURE_TABLE_PREFIX
_CONTAINER = AZURE_CONTAINER
_INLINE_LIMIT = 60_000  # bytes of UTF-16 per string property (the service allows 64 KiB)
_LOCK_PK = "lock"
_IF_SAME = MatchConditions.IfNotModified
_AUDIT_PK = "audit"
_DOC_PREFIX = "docs/"
_AUDIT_BLOBS = "audit/"
_WRITE_ID = "hubpilotwrite"  # blob metadata: the id of the write that stored this version
# An insert is a POST, which azure-core's RetryPolicy sends again after a 500/503 but not after a
# dropped connection or a timeout (only HEAD, GET, PUT, DELETE, OPTIONS, TRACE by default). Lock
# and audit inserts recognise their own first attempt (claim, RowKey), so they are retried too.
_RETRY_INSERT = frozenset({"POST"})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None) or ""
        first = (exc.message or str(exc)).strip().splitlines()[0] if (exc.message or str(exc)) else ""
        return f"HTTP {exc.status_code} {code}: {first}".replace("  ", " ")
    return f"{type(exc).__name__}: {exc}"


# a shared access signature's secret part (every request's URL carries it) and an account key
_SECRET = re.compile(r"(?i)\b(sig|accountkey)=[^&;\s'\"]+")


def redacted(text: str) -> str:
    """``text`` with shared access signatures and account keys shown as (hidden)."""
    return _SECRET.sub(lambda m: f"{m.group(1)}=(hidden)", text)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn an SDK error into a StoreError that says what we were doing. A text that quotes a
    request's URL (a garbled answer, an invalid URL) is shown without its signature, and the SDK's
    error, which holds it, is not chained (a logged traceback would show it)."""
    try:
        yield
    except (StoreError, ValueError):
        raise
    except (AzureError, OSError) as exc:  # OSError: transport errors below azure-core
        text = _describe(exc) if isinstance(exc, AzureError) else str(exc)
        shown = redacted(text)
        raise StoreError(f"Azure Storage: cannot {what}: {shown}") from (exc if shown == text else None)


def _is_conflict(exc: HttpResponseError) -> bool:
    return isinstance(exc, (ResourceModifiedError, ResourceExistsError)) or exc.status_code in (409, 412)


def _service_time(response: PipelineResponse[Any, Any]) -> datetime | None:
    """The service's time when it answered: the response's ``Date`` (whole seconds, rounded down,
    so a lease never looks expired early)."""
    value = response.http_response.headers.get("Date")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _lock_row(name: str) -> str:
    """A RowKey for a lock name: the name itself when safe, else a reversible hex form."""
    if not name:
        raise ValueError("a lock name must not be empty")
    return name if _SAFE_KEY.match(name) else "~" + name.encode().hex()


def _doc_blob(key: str) -> str:
    return _DOC_PREFIX + check_key(key)


def _check_names(table_prefix: str, container: str) -> None:
    if not _TABLE_PREFIX.match(table_prefix):
        raise ValueError(f"table prefix {table_prefix!r}: use 1-57 letters and digits, starting with a "
                         "letter (Azure table names are alphanumeric)")
    if not _CONTAINER.match(container):
        raise ValueError(f"container {container!r}: use 3-63 lowercase letters, digits and single "
                         "hyphens, starting and ending with a letter or digit")


class _Sequence:
    """Strictly increasing nanosecond stamps within this process.

    Entries with the same ``at`` are ordered by this stamp: exactly by append order within a
    process, by wall-clock append time across processes.
    """

    def __init__(self) -> None:
        self._last = 0
        self._mutex = threading.Lock()

    def next(self) -> int:
        with self._mutex:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_SEQUENCE = _Sequence()

_LockRow = tuple[dict[str, Any], str, datetime | None, datetime | None]


class AzureStore:
    """:class:`hubpilot.ports.store.StateStore` on an Azure Storage account (or Azurite)."""

    def __init__(
        self,
        tables: TableServiceClient,
        blobs: BlobServiceClient,
        *,
        table_prefix: str = "hubpilot",
        container: str = "hubpilot-state",
        credential: Any = None,
        concurrency: int = 16,
    ) -> None:
        _check_names(table_prefix, container)
        self._tables = tables
        self._blobs = blobs
        self._credential = credential
        self.locks_table = f"{table_prefix}locks"
        self.audit_table = f"{table_prefix}audit"
        self.container_name = container
        self._locks: TableClient = tables.get_table_client(self.locks_table)
        self._audit: TableClient = tables.get_table_client(self.audit_table)
        self._container: ContainerClient = blobs.get_container_client(container)
        self._ready = False
        self._ready_lock: asyncio.Lock | None = None
        self._sem_size = max(1, concurrency)

    @classmethod
    def from_settings(
        cls,
        *,
        connection_string: str | None = None,
        account_name: str | None = None,
        endpoint_suffix: str = "core.windows.net",
        table_prefix: str = "hubpilot",
        container: str = "hubpilot-state",
        credential: Any = None,
        retry_total: int = 5,
        retry_backoff: float = 0.8,
        retry_backoff_max: float = 30.0,
        timeout: float = 30.0,
    ) -> AzureStore:
        """Build from a connection string, or an account name with a token credential.

        Without a connection string the account is reached at ``https://<account>.table.<suffix>``
        and ``https://<account>.blob.<suffix>`` with ``credential`` (default: the async
        ``DefaultAzureCredential``, i.e. the managed identity in Azure).
        """
        _check_names(table_prefix, container)
        table_kwargs: dict[str, Any] = {
            "retry_total": retry_total, "retry_backoff_factor": retry_backoff,
            "retry_backoff_max": retry_backoff_max, "connection_timeout": timeout, "read_timeout": timeout,
        }
        blob_kwargs: dict[str, Any] = {
            "retry_policy": ExponentialRetry(initial_backoff=round(retry_backoff), increment_base=2,
                                             retry_total=retry_total, random_jitter_range=1),
            "connection_timeout": timeout, "read_timeout": timeout,
        }
        if connection_string:
            try:
                tables = TableServiceClient.from_connection_string(connection_string, **table_kwargs)
                blobs = BlobServiceClient.from_connection_string(connection_string, **blob_kwargs)
            except (ValueError, AzureError) as exc:
                raise ValueError(f"the Azure Storage connection string is not usable: {redacted(str(exc))}") \
                    from None
            return cls(tables, blobs, table_prefix=table_prefix, container=container)
        if not account_name:
            raise ValueError("Azure state store: set a connection string or an account name")
        if not AZURE_ACCOUNT.fullmatch(account_name):
            raise ValueError(f"storage account name {account_name!r}: 3-24 lowercase letters and digits")
        suffix = endpoint_suffix.strip().strip(".")
        if not suffix or "/" in suffix:
            raise ValueError(f"endpoint suffix {endpoint_suffix!r}: a DNS suffix such as core.windows.net")
        own_credential = credential is None
        if own_credential:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
        tables = TableServiceClient(f"https://{account_name}.table.{suffix}", credential=credential,
                                    **table_kwargs)
        blobs = BlobServiceClient(f"https://{account_name}.blob.{suffix}", credential=credential,
                                  **blob_kwargs)
        return cls(tables, blobs, table_prefix=table_prefix, container=container,
                   credential=credential if own_credential else None)

    # --- plumbing --------------------------------------------------------------------------
    async def _ensure(self) -> None:
        if self._ready:
            return
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if self._ready:
                return
            with _errors(f"create the tables {self.locks_table}, {self.audit_table}"):
                for name in (self.locks_table, self.audit_table):
                    with contextlib.suppress(ResourceExistsError):
                        await self._tables.create_table(name)
            with _errors(f"create the container {self.container_name}"):
                with contextlib.suppress(ResourceExistsError):
                    await self._container.create_container()
            self._ready = True

    async def _bounded(self, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
        sem = asyncio.Semaphore(self._sem_size)

        async def one(job: Callable[[], Awaitable[T]]) -> T:
            async with sem:
                return await job()

        return list(await asyncio.gather(*(one(j) for j in jobs)))

    async def _read_blob(self, name: str, what: str) -> tuple[bytes, str] | None:
        with _errors(f"read {what}"):
            try:
                downloader = await self._container.download_blob(name)
                data = await downloader.readall()
            except ResourceNotFoundError:
                return None
            return bytes(data), str(downloader.properties.etag)

    # --- locks -----------------------------------------------------------------------------
    def _lock_entity(self, name: str, holder: str, ttl: timedelta, now: datetime) -> dict[str, Any]:
        ttl_us = ttl // timedelta(microseconds=1)
        if ttl_us <= 0:
            raise ValueError(f"a lock's time to live must be positive, got {ttl}")
        return {"PartitionKey": _LOCK_PK, "RowKey": _lock_row(name), "name": name, "holder": holder,
                "expires_us": str(_micros(now + ttl, "now")), "ttl_us": str(ttl_us),
                "claim": uuid.uuid4().hex}

    async def _landed(self, entity: Mapping[str, Any], ttl: timedelta, now: datetime) -> Lease | None:
        """After a lock write was refused: the lease, if the stored claim is this write's own (a
        retry refused because the first attempt landed and its answer was lost), else None."""
        name = str(entity["name"])
        current = await self._get_lock(name)
        if current is None or current[0].get("claim") != entity["claim"]:
            return None
        return Lease(name, str(entity["holder"]), now + ttl, current[1])

    def _unexpired(self, name: str, found: _LockRow, now: datetime) -> Lease | None:
        """The lease ``found`` describes, unless the service's clock says it has expired; its
        ``expires_at`` is in the caller's clock (``now`` plus the time the service says is left)."""
        entity, etag, written, served = found
        try:
            holder = str(entity["holder"])
            if "ttl_us" not in entity:  # written by an older version: its own clock's expiry
                expires = _from_micros(int(entity["expires_us"]))
                return Lease(name, holder, expires, etag) if expires > now else None
            ttl = timedelta(microseconds=int(entity["ttl_us"]))
        except (KeyError, ValueError, TypeError, OverflowError):
            raise StoreError(
                f"lock {name!r} in table {self.locks_table} is malformed; delete its row"
            ) from None
        if written is None or served is None:
            raise StoreError(f"lock {name!r}: the service's answer has no Timestamp or Date to judge "
                             "its expiry by")
        left = written + ttl - served
        return Lease(name, holder, now + left, etag) if left > timedelta(0) else None

    async def _get_lock(self, name: str) -> _LockRow | None:
        """The lock's entity, etag, server-set Timestamp, and the service's time of the answer."""
        served: list[datetime | None] = [None]

        def hook(response: PipelineResponse[Any, Any]) -> None:
            served[0] = _service_time(response)

        with _errors(f"read the lock {name!r}"):
            try:
                entity = await self._locks.get_entity(_LOCK_PK, _lock_row(name), raw_response_hook=hook)
            except ResourceNotFoundError:
                return None
            written = entity.metadata.get("timestamp")
            return (dict(entity), str(entity.metadata["etag"]),
                    written if isinstance(written, datetime) else None, served[0])

    async def acquire_lock(self, name: str, holder: str, ttl: timedelta, now: datetime) -> Lease | None:
        _micros(now, "now")
        entity = self._lock_entity(name, holder, ttl, now)
        await self._ensure()
        current = await self._get_lock(name)
        with _errors(f"take the lock {name!r}"):
            try:
                if current is None:
                    meta = await self._locks.create_entity(entity, retry_on_methods=_RETRY_INSERT)
                else:
                    etag = current[1]
                    if self._unexpired(name, current, now) is not None:
                        return None
                    meta = await self._locks.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=_IF_SAME
                    )
            except HttpResponseError as exc:
                if not (_is_conflict(exc) or isinstance(exc, ResourceNotFoundError)):
                    raise
                # another acquirer got there first (or released it meanwhile), or we did
                return await self._landed(entity, ttl, now)
        return Lease(name, holder, now + ttl, str(meta["etag"]))

    async def renew_lock(self, lease: Lease, ttl: timedelta, now: datetime) -> Lease | None:
        _micros(now, "now")
        entity = self._lock_entity(lease.name, lease.holder, ttl, now)
        await self._ensure()
        with _errors(f"renew the lock {lease.name!r}"):
            try:
                meta = await self._locks.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=lease.token, match_condition=_IF_SAME
                )
            except HttpResponseError as exc:
                if not (_is_conflict(exc) or exc.status_code == 404):
                    raise
                return await self._landed(entity, ttl, now)  # lost, unless the refusal was our own
        return Lease(lease.name, lease.holder, now + ttl, str(meta["etag"]))

    async def release_lock(self, lease: Lease) -> None:
        await self._ensure()
        with _errors(f"release the lock {lease.name!r}"):
            try:
                await self._locks.delete_entity(
                    _LOCK_PK, _lock_row(lease.name), etag=lease.token, match_condition=_IF_SAME
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                return  # taken over by another: leave it alone
            except HttpResponseError as exc:
                if not (_is_conflict(exc) or exc.status_code == 404):
                    raise

    async def read_lock(self, name: str, now: datetime) -> Lease | None:
        _micros(now, "now")
        await self._ensure()
        current = await self._get_lock(name)
        return None if current is None else self._unexpired(name, current, now)

    # --- audit -----------------------------------------------------------------------------
    def _row_key(self, at_us: int) -> str:
        return (f"{_AT_SPAN - 1 - at_us:018d}-{_SEQ_SPAN - 1 - _SEQUENCE.next():020d}-"
                f"{uuid.uuid4().hex[:8]}")

    async def append_audit(self, entry: Mapping[str, Any]) -> str:
        at = _audit_time(entry)
        at_us = _micros(at, "at")
        if not 0 <= at_us < _AT_SPAN:
            raise ValueError(f"audit entry 'at' out of range: {at.isoformat()}")
        operation = str(entry["operation"])
        text = _dump({k: v for k, v in entry.items() if k != "id"}, "the audit entry")
        await self._ensure()
        row_key = self._row_key(at_us)
        row: dict[str, Any] = {"PartitionKey": _AUDIT_PK, "RowKey": row_key, "operation": operation,
                               "at": at.isoformat()}
        # a code point is 2 or 4 bytes of UTF-16 (beyond the BMP: an emoji): 4 per one is sure
        if len(text) * 4 <= _INLINE_LIMIT or len(text.encode("utf-16-le")) <= _INLINE_LIMIT:
            row["entry"] = text
        else:
            blob = f"{_AUDIT_BLOBS}{row_key}.json"
            with _errors(f"write the audit entry blob {blob}"):
                try:
                    await self._container.get_blob_client(blob).upload_blob(text.encode(), overwrite=False)
                except ResourceExistsError:
                    pass  # the name is this append's own: a retry refused by its first attempt
            row["entry_blob"] = blob
        with _errors("append an audit entry"):
            try:
                await self._audit.create_entity(row, retry_on_methods=_RETRY_INSERT)
            except ResourceExistsError:
                # the RowKey is this append's own: a retry refused by its first attempt, which the
                # service applied before its answer was lost; anything else is an error
                try:
                    await self._audit.get_entity(_AUDIT_PK, row_key, select=["RowKey"])
                except ResourceNotFoundError:
                    raise StoreError(f"Azure Storage: cannot append the audit entry {row_key}: "
                                     "refused as existing, yet not found") from None
        return row_key

    async def read_audit(
        self,
        *,
        since: datetime | None = None,
        operation: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        check_limit(limit)
        clauses: list[str] = ["PartitionKey eq @pk"]
        params: dict[str, Any] = {"pk": _AUDIT_PK}
        if cursor is not None:
            if not _ROW_KEY.match(cursor):
                raise BadCursor(f"not an audit cursor of this store: {cursor!r}")
            clauses.append("RowKey gt @after")
            params["after"] = cursor
        if since is not None:
            aware = since if since.tzinfo else since.replace(tzinfo=UTC)  # naive: UTC, as for 'at'
            since_us = min(max(0, _micros(aware, "since")), _AT_SPAN - 1)
            clauses.append("RowKey lt @upto")
            params["upto"] = f"{_AT_SPAN - 1 - since_us:018d}-~"
        if operation is not None:
            clauses.append("operation eq @op")
            params["op"] = operation
        await self._ensure()
        rows: list[dict[str, Any]] = []
        with _errors("read the audit log"):
            pages = self._audit.query_entities(" and ".join(clauses), parameters=params,
                                               results_per_page=min(limit + 1, 1000))
            async for entity in pages:
                rows.append(dict(entity))
                if len(rows) > limit:
                    break
        more = len(rows) > limit
        rows = rows[:limit]
        entries = await self._bounded([functools.partial(self._audit_entry, r) for r in rows])
        return entries, (str(rows[-1]["RowKey"]) if more else None)

    async def _audit_entry(self, row: Mapping[str, Any]) -> dict[str, Any]:
        row_key = str(row.get("RowKey"))
        what = f"audit entry {row_key}"
        if "entry_blob" in row:
            found = await self._read_blob(str(row["entry_blob"]), what)
            if found is None:
                raise StoreError(f"{what} points to the missing blob {row['entry_blob']}")
            entry = _load(found[0], what)
        elif isinstance(row.get("entry"), str):
            entry = _load(row["entry"], what)
        else:
            raise StoreError(f"{what} in table {self.audit_table} has no entry")
        entry["id"] = row_key
        return entry

    # --- documents -------------------------------------------------------------------------
    async def get(self, key: str) -> dict[str, Any] | None:
        found = await self.get_with_etag(key)
        return found[0] if found else None

    async def get_with_etag(self, key: str) -> tuple[dict[str, Any], str] | None:
        blob = _doc_blob(key)
        await self._ensure()
        found = await self._read_blob(blob, f"document {key!r}")
        if found is None:
            return None
        return _load(found[0], f"document {key!r}"), found[1]

    async def put(self, key: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> str:
        blob = _doc_blob(key)
        data = _dump(doc, f"document {key!r}").encode()
        write_id = uuid.uuid4().hex
        kwargs: dict[str, Any] = {"overwrite": True, "metadata": {_WRITE_ID: write_id}}
        if if_match == "":
            kwargs["match_condition"] = MatchConditions.IfMissing
        elif if_match is not None:
            kwargs.update(etag=if_match, match_condition=MatchConditions.IfNotModified)
        await self._ensure()
        client = self._container.get_blob_client(blob)
        with _errors(f"write document {key!r}"):
            try:
                result = await client.upload_blob(data, **kwargs)
            except HttpResponseError as exc:
                if if_match is not None and (_is_conflict(exc) or exc.status_code == 404):
                    try:  # refused by our own first attempt, applied before its answer was lost?
                        props = await client.get_blob_properties()
                    except ResourceNotFoundError:
                        props = None
                    if props is not None and (props.metadata or {}).get(_WRITE_ID) == write_id:
                        return str(props.etag)
                    if if_match == "":
                        raise ConflictError(f"document {key!r} already exists") from None
                    raise ConflictError(
                        f"document {key!r} was changed or removed by another writer "
                        f"(expected etag {if_match})"
                    ) from None
                raise
        return str(result["etag"])

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        blob = _doc_blob(key)
        kwargs: dict[str, Any] = {}
        if if_match is not None:
            kwargs.update(etag=if_match, match_condition=MatchConditions.IfNotModified)
        await self._ensure()
        with _errors(f"delete document {key!r}"), contextlib.suppress(ResourceNotFoundError):
            try:
                await self._container.delete_blob(blob, **kwargs)
            except HttpResponseError as exc:
                if if_match is None or not _is_conflict(exc):
                    raise
                # If-Match on a blob that is gone fails too (412): gone is what was asked for
                if await self._container.get_blob_client(blob).exists():
                    raise ConflictError(f"document {key!r} changed (expected etag {if_match}): not deleted") from None

    async def prune(self, prefix: str, before: datetime, *, limit: int = 5000) -> int:
        check_prune(prefix, before, limit)
        await self._ensure()
        old: list[tuple[str, str]] = []
        with _errors(f"list documents under {prefix!r}"):
            async for item in self._container.list_blobs(name_starts_with=_DOC_PREFIX + prefix):
                if item.last_modified is not None and item.last_modified < before:
                    old.append((str(item.name), str(item.etag)))
                    if len(old) >= limit:
                        break

        async def delete(name: str, etag: str) -> int:
            with _errors(f"delete document {name[len(_DOC_PREFIX):]!r}"):
                try:  # only the version listed as old: one written since is young
                    await self._container.delete_blob(name, etag=etag, match_condition=_IF_SAME)
                except ResourceNotFoundError:
                    return 0  # deleted meanwhile
                except HttpResponseError as exc:
                    if not _is_conflict(exc):
                        raise
                    return 0  # written again (or deleted) since it was listed: kept
            return 1

        return sum(await self._bounded([functools.partial(delete, n, e) for n, e in old]))

    async def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        await self._ensure()
        names: list[str] = []
        with _errors(f"list documents under {prefix!r}"):
            async for item in self._container.list_blobs(name_starts_with=_DOC_PREFIX + prefix):
                names.append(str(item.name))

        async def read(name: str) -> tuple[str, dict[str, Any]] | None:
            key = name[len(_DOC_PREFIX):]
            found = await self._read_blob(name, f"document {key!r}")
            return None if found is None else (key, _load(found[0], f"document {key!r}"))

        results = await self._bounded([functools.partial(read, n) for n in names])
        return {r[0]: r[1] for r in results if r is not None}  # deleted meanwhile: not listed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._tables.close()
        with contextlib.suppress(Exception):
            await self._blobs.close()
        if self._credential is not None:
            with contextlib.suppress(Exception):
                await self._credential.close()

