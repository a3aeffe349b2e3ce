"""Azure writes whose answer is lost after the service applied them: the SDK's retry policy sends
them again, and the second attempt's refusal (409, 412) must not be taken for another writer's."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hubpilot.adapters.store_azure import AzureStore
from tests.azurite import ACCOUNT_KEY, Azurite

pytestmark = pytest.mark.azurite

TTL = timedelta(minutes=5)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class _LosingProxy(http.server.ThreadingHTTPServer):
    """Forwards to Azurite; the first request ``lose`` picks is applied there, but its caller is
    answered 503 ServerBusy, as when the service timed out after doing the work."""

    def __init__(self, target: int, lose: Callable[[str, str], bool]) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target, self.lose, self.lost = target, lose, 0


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _LosingProxy

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection("127.0.0.1", self.server.target, timeout=30)
        try:
            conn.request(self.command, self.path, body=body,
                         headers={k: v for k, v in self.headers.items() if k.lower() not in _HOP})
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        if not self.server.lost and self.server.lose(self.command, self.path):
            self.server.lost += 1
            data = b'{"odata.error":{"code":"ServerBusy","message":{"lang":"en-US","value":"busy"}}}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
        else:
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in _HOP and key.lower() not in ("date", "server"):
                    self.send_header(key, value)
            self.send_header("Date", answer.getheader("Date") or self.date_time_string())
        self.send_header("Content-Length", answer.getheader("Content-Length", "0")
                         if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def lossy(azurite: Azurite) -> Iterator[Callable[..., tuple[AzureStore, _LosingProxy]]]:
    started: list[tuple[_LosingProxy, threading.Thread]] = []

    def make(lose: Callable[[str, str], bool], service: str = "table") -> tuple[AzureStore, _LosingProxy]:
        proxy = _LosingProxy(azurite.table_port if service == "table" else azurite.blob_port, lose)
        thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        started.append((proxy, thread))
        through = f"http://127.0.0.1:{proxy.server_address[1]}/devstoreaccount1"
        conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={through if service == 'blob' else azurite.blob_endpoint};"
                f"TableEndpoint={through if service == 'table' else azurite.table_endpoint};")
        unique = datetime.now(UTC).strftime("%H%M%S%f")
        store = AzureStore.from_settings(connection_string=conn, table_prefix=f"lost{unique}",
                                         container=f"lost{unique}", retry_backoff=0)
        return store, proxy

    yield make
    for proxy, thread in started:
        proxy.shutdown()
        proxy.server_close()
        thread.join()


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
