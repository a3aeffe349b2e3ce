"""Azure writes whose answer is lost after the service applied them: the SDK's retry policy sends
them again, and the second attempt's refusal (409, 412) must not be taken for another writer's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hubpilot.adapters.store_azure import AzureStore
from tests.azurite import Azurite
from tests.azurite_proxy import AzuriteProxy, Pick, connection_string, proxies

pytestmark = pytest.mark.azurite

TTL = timedelta(minutes=5)


@pytest.fixture
def lossy(azurite: Azurite) -> Iterator[Callable[..., tuple[AzureStore, AzuriteProxy]]]:
    """``make(lose, service)``: a store whose ``service`` is reached through a proxy that answers
    the first request ``lose`` picks 503 ServerBusy after Azurite applied it."""
    with proxies(azurite) as start:

        def make(lose: Pick, service: str = "table") -> tuple[AzureStore, AzuriteProxy]:
            proxy = start(service, lose=lose)
            unique = datetime.now(UTC).strftime("%H%M%S%f")
            store = AzureStore.from_settings(connection_string=connection_string(azurite, service, proxy),
                                             table_prefix=f"lost{unique}", container=f"lost{unique}",
                                             retry_backoff=0)
            return store, proxy

        yield make


async def test_a_lock_taken_whose_answer_was_lost_is_held_by_us(lossy: Any) -> None:
    store, proxy = lossy(lambda method, path: method == "POST" and "locks" in path and "Tables" not in path)
    try:
        now = datetime.now(UTC)
        lease = await store.acquire_lock("sync", "timer:run1", TTL, now)
        assert proxy.lost == 1
        assert lease is not None and lease.holder == "timer:run1"
        renewed = await store.renew_lock(lease, TTL, now)
        assert renewed is not None
        await store.release_lock(renewed)
        assert await store.read_lock("sync", now) is None
    finally:
        await store.close()


async def test_a_renewal_whose_answer_was_lost_keeps_the_lease(lossy: Any) -> None:
    store, proxy = lossy(lambda method, path: method == "PUT" and "locks(" in path)
    try:
        now = datetime.now(UTC)
        lease = await store.acquire_lock("scale", "timer:run2", TTL, now)
        assert lease is not None
        renewed = await store.renew_lock(lease, TTL, now + timedelta(minutes=3))
        assert proxy.lost == 1
        assert renewed is not None and renewed.holder == "timer:run2"
        assert renewed.expires_at == now + timedelta(minutes=3) + TTL
        await store.release_lock(renewed)
        assert await store.read_lock("scale", now) is None
    finally:
        await store.close()


async def test_an_audit_append_whose_answer_was_lost_is_kept_once(lossy: Any) -> None:
    store, proxy = lossy(lambda method, path: method == "POST" and "audit" in path and "Tables" not in path)
    try:
        entry_id = await store.append_audit({"at": datetime.now(UTC).isoformat(), "operation": "sync"})
        assert proxy.lost == 1
        page, _ = await store.read_audit()
        assert [e["id"] for e in page] == [entry_id]
    finally:
        await store.close()


@pytest.mark.parametrize("first", [True, False])
async def test_a_conditional_put_whose_answer_was_lost_is_not_a_conflict(lossy: Any, first: bool) -> None:
    store, proxy = lossy(lambda method, path: method == "PUT" and "/docs/pending/" in path, "blob")
    try:
        if_match = ""
        if not first:
            proxy.lost = 1  # not this one
            if_match = await store.put("pending/sync", {"run_id": "r0"}, if_match="")
            proxy.lost = 0
        etag = await store.put("pending/sync", {"run_id": "r1"}, if_match=if_match)
        assert proxy.lost == 1
        assert await store.get_with_etag("pending/sync") == ({"run_id": "r1"}, etag)
    finally:
        await store.close()


async def test_prune_keeps_a_document_written_again_after_it_was_listed(azurite: Azurite, lossy: Any) -> None:
    """prune deletes documents last written before ``before``: one written again between the
    listing and its delete (another instance's write landing meanwhile) is young, and stays."""
    from azure.storage.blob import BlobServiceClient

    rewritten: list[str] = []

    def meanwhile(method: str, path: str) -> bool:  # never loses an answer: writes, then forwards it
        if method == "GET" and "comp=list" in path and not rewritten:
            with BlobServiceClient.from_connection_string(azurite.connection_string) as blobs:
                blobs.get_blob_client(store.container_name, "docs/runs/b").upload_blob(
                    b'{"n": "new"}', overwrite=True)
            rewritten.append(path)
        return False

    store, proxy = lossy(meanwhile, "blob")
    try:
        await store.put("runs/a", {"n": "old"})
        await store.put("runs/b", {"n": "old"})
        await asyncio.sleep(2.2)  # Last-Modified has whole seconds: the rewrite is dated after `before`
        before = datetime.now(UTC).replace(microsecond=0)
        deleted = await store.prune("runs/", before)
        assert rewritten and proxy.lost == 0
        assert await store.get("runs/b") == {"n": "new"}, "a document written after the listing was pruned"
        assert await store.get("runs/a") is None
        assert deleted == 1
    finally:
        await store.close()
