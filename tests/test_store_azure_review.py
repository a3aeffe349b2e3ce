"""The Azure state store where the conformance tests did not look: a row an older version wrote,
an answer the service refuses or sends without its Date, a damaged audit row, prune's boundary,
and what a lease read later reports. Each test fails against a store that gets that case wrong."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hubpilot.adapters.store_azure import AzureStore, _lock_row
from hubpilot.adapters.store_common import to_micros
from hubpilot.ports.store import StateStore, StoreError
from tests.azurite import Azurite
from tests.azurite_proxy import AzuriteProxy, Pick, connection_string, never, proxies
from tests.test_store import T0, TTL, azure_store, store  # noqa: F401  (the fixture)


@pytest.fixture
async def proxied(azurite: Azurite) -> AsyncIterator[Callable[..., tuple[AzureStore, AzureStore, AzuriteProxy]]]:
    """``make(service, busy=, dateless=, meanwhile=)``: a store whose ``service`` ("table" or "blob") is
    reached through a proxy, and a direct store on the same tables and container."""
    stores: list[AzureStore] = []
    with proxies(azurite) as start:

        def make(service: str, *, busy: Pick = never, dateless: Pick = never,
                 meanwhile: Callable[[str, str], object] = never) -> tuple[AzureStore, AzureStore, AzuriteProxy]:
            proxy = start(service, busy=busy, dateless=dateless, meanwhile=meanwhile)
            direct = azure_store(azurite)
            via = AzureStore.from_settings(
                connection_string=connection_string(azurite, service, proxy),
                table_prefix=direct.locks_table.removesuffix("locks"), container=direct.container_name,
                retry_total=0, retry_backoff=0)
            stores.extend((via, direct))
            return via, direct, proxy

        yield make
        for s in stores:
            await s.close()


# --- locks ---------------------------------------------------------------------------------------

@pytest.mark.azurite
async def test_a_lock_row_an_older_version_wrote_holds_until_its_expiry_and_is_free_at_it(
    azurite: Azurite,
) -> None:
    """A row without ``ttl_us`` (an older version's) is judged by its ``expires_us`` against the
    caller's clock, as that version did and as SQLite does: held before, free at its expiry."""
    from azure.data.tables.aio import TableClient

    s = azure_store(azurite)
    try:
        await s.read_lock("warm-up", T0)  # the tables exist
        async with TableClient.from_connection_string(azurite.connection_string, s.locks_table) as t:
            await t.create_entity({"PartitionKey": "lock", "RowKey": "sync", "name": "sync", "holder": "old",
                                   "expires_us": str(to_micros(T0 + TTL))})
        held = await s.read_lock("sync", T0)
        assert held is not None and held.holder == "old" and held.expires_at == T0 + TTL
        just_before = T0 + TTL - timedelta(microseconds=1)
        assert await s.acquire_lock("sync", "new", TTL, just_before) is None
        assert await s.read_lock("sync", T0 + TTL) is None
        lease = await s.acquire_lock("sync", "new", TTL, T0 + TTL)
        assert lease is not None and lease.holder == "new"
        held = await s.read_lock("sync", T0 + TTL)
        assert held is not None and held.holder == "new"
    finally:
        await s.close()


async def test_renewing_a_released_lease_says_it_is_lost(store: StateStore) -> None:  # noqa: F811
    """Its row is gone (Azure answers the conditional replace 404): the lease is lost (None),
    as when another took it, not a store error."""
    lease = await store.acquire_lock("renew-released", "a", TTL, T0)
    assert lease is not None
    await store.release_lock(lease)
    assert await store.renew_lock(lease, TTL, T0 + timedelta(minutes=1)) is None
    assert await store.read_lock("renew-released", T0 + timedelta(minutes=1)) is None


@pytest.mark.azurite
async def test_an_expired_lock_released_between_the_read_and_the_take_over_is_not_an_error(
        proxied: Any, azurite: Azurite) -> None:
    """A taker reads an expired lock row, and its old holder releases it (deletes the row) before
    the taker's conditional replace, which Azure answers 404: a lost race, as when another taker
    got there first (no lease, no store error), and the lock is free for the next run."""
    from azure.data.tables import TableServiceClient

    released: list[str] = []

    def release_meanwhile(method: str, path: str) -> None:
        if method == "GET" and "locks(" in path and not released:
            with TableServiceClient.from_connection_string(azurite.connection_string) as tables:
                tables.get_table_client(s.locks_table).delete_entity("lock", _lock_row("sync"))
            released.append(path)

    s, direct, _ = proxied("table", meanwhile=release_meanwhile)
    assert await direct.acquire_lock("sync", "old", timedelta(seconds=1), datetime.now(UTC)) is not None
    await asyncio.sleep(2.2)  # expired by the service's clock (its Date has whole seconds)
    assert await s.acquire_lock("sync", "new", TTL, datetime.now(UTC)) is None
    assert released, "the proxy never saw the taker read the lock row"
    assert await direct.read_lock("sync", datetime.now(UTC)) is None
    lease = await s.acquire_lock("sync", "next", TTL, datetime.now(UTC))
    assert lease is not None and lease.holder == "next"


@pytest.mark.azurite
async def test_a_release_the_service_refuses_is_a_store_error_and_the_lock_stays_held(proxied: Any) -> None:
    """A 503 on the release is no release: the caller hears of it (the lock stays held until it
    expires), it is not told the lock is free."""
    s, direct, proxy = proxied("table", busy=lambda method, path: method == "DELETE" and "locks(" in path)
    now = datetime.now(UTC)
    lease = await s.acquire_lock("sync", "a", TTL, now)
    assert lease is not None
    with pytest.raises(StoreError, match=r"release the lock 'sync'.*503"):
        await s.release_lock(lease)
    assert proxy.refused == 1
    held = await direct.read_lock("sync", now)
    assert held is not None and held.holder == "a"


@pytest.mark.azurite
async def test_a_lock_read_without_the_service_date_is_an_error_not_a_free_lock(proxied: Any) -> None:
    """Expiry is judged by the service's clock, from the answer's Date: an answer without one (a
    proxy on the way that drops it) cannot show the lock free, or a held lock would be taken."""
    s, direct, _ = proxied("table", dateless=lambda method, path: method == "GET" and "locks(" in path)
    now = datetime.now(UTC)
    assert await direct.acquire_lock("sync", "holder", TTL, now) is not None
    with pytest.raises(StoreError, match="no Timestamp or Date"):
        await s.acquire_lock("sync", "taker", TTL, now)
    with pytest.raises(StoreError, match="no Timestamp or Date"):
        await s.read_lock("sync", now)
    held = await direct.read_lock("sync", now)
    assert held is not None and held.holder == "holder"


@pytest.mark.azurite
async def test_a_lease_read_later_reports_the_time_left_not_a_fresh_ttl(azurite: Azurite) -> None:
    """``read_lock``'s ``expires_at`` is the reader's now plus what the service's clock says is
    left: read seconds after the take, less than a whole TTL is left."""
    s = azure_store(azurite)
    try:
        assert await s.acquire_lock("cull", "a", TTL, T0) is not None
        await asyncio.sleep(2.2)  # past the next whole second of the Date header, and one more
        held = await s.read_lock("cull", T0)
        assert held is not None
        assert T0 + TTL - timedelta(seconds=30) <= held.expires_at <= T0 + TTL - timedelta(seconds=1)
    finally:
        await s.close()


@pytest.mark.azurite
async def test_a_lock_with_no_time_to_live_is_refused(azurite: Azurite) -> None:
    s = azure_store(azurite)
    try:
        for ttl in (timedelta(0), timedelta(seconds=-1)):
            with pytest.raises(ValueError, match="time to live must be positive"):
                await s.acquire_lock("sync", "a", ttl, T0)
        assert await s.read_lock("sync", T0) is None
    finally:
        await s.close()


# --- audit ---------------------------------------------------------------------------------------

@pytest.mark.azurite
async def test_an_audit_row_whose_blob_is_gone_is_an_error_naming_both(azurite: Azurite) -> None:
    """A big entry lives in a blob the row points to; with the blob gone the log is damaged: the
    read says which entry and which blob, it does not return a hollow entry."""
    from azure.storage.blob.aio import ContainerClient

    s = azure_store(azurite)
    try:
        big_id = await s.append_audit({"at": T0.isoformat(), "operation": "sync", "blob": "x" * 40_000})
        async with ContainerClient.from_connection_string(azurite.connection_string,
                                                          s.container_name) as container:
            await container.delete_blob(f"audit/{big_id}.json")
        with pytest.raises(StoreError, match=rf"audit entry {big_id} points to the missing blob audit/{big_id}\.json"):
            await s.read_audit()
    finally:
        await s.close()


# --- documents -----------------------------------------------------------------------------------

@pytest.mark.azurite
async def test_a_document_read_the_service_refuses_is_an_error_not_a_missing_document(proxied: Any) -> None:
    """A 503 on reading a document is "unknown", never "absent": get and list raise StoreError."""
    s, direct, proxy = proxied("blob", busy=lambda method, path: method == "GET" and "/docs/" in path)
    await direct.put("sync/managed", {"users": {"ann": {}}})
    with pytest.raises(StoreError, match=r"read document 'sync/managed'.*503"):
        await s.get("sync/managed")
    with pytest.raises(StoreError, match=r"read document 'sync/managed'.*503"):
        await s.get_with_etag("sync/managed")
    with pytest.raises(StoreError, match=r"read document 'sync/managed'.*503"):
        await s.list("sync/")
    assert proxy.refused == 3
    assert await direct.get("sync/managed") == {"users": {"ann": {}}}


@pytest.mark.azurite
async def test_prune_keeps_a_document_written_in_the_second_of_before(azurite: Azurite) -> None:
    """prune deletes documents last written *before* ``before``. The service dates a blob in whole
    seconds (rounded down): one dated exactly ``before`` was written at or after it, and stays."""
    from azure.storage.blob.aio import ContainerClient

    s = azure_store(azurite)
    try:
        await s.put("runs/r1", {"outcome": "applied"})
        async with ContainerClient.from_connection_string(azurite.connection_string,
                                                          s.container_name) as container:
            props = await container.get_blob_client("docs/runs/r1").get_blob_properties()
        dated = props.last_modified
        assert dated is not None and dated.microsecond == 0
        assert await s.prune("runs/", dated) == 0
        assert await s.get("runs/r1") == {"outcome": "applied"}
        assert await s.prune("runs/", dated + timedelta(seconds=1)) == 1
        assert await s.get("runs/r1") is None
    finally:
        await s.close()
