"""The Azure state store when the network fails a write: the answer never comes (the connection
drops after the service applied it) or the request never gets there (the connection drops first)."""

from __future__ import annotations

import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hubpilot.adapters.store_azure import AzureStore
from hubpilot.ports.store import StoreError
from tests.azurite import Azurite
from tests.azurite_proxy import AzuriteProxy, Pick, connection_string, proxies

pytestmark = pytest.mark.azurite

TTL = timedelta(minutes=5)


@pytest.fixture
def dropping(azurite: Azurite) -> Iterator[Callable[..., tuple[AzureStore, AzuriteProxy]]]:
    """``make(drop, applied=)``: a store whose table service is reached through a proxy that cuts
    the first request ``drop`` picks: after Azurite applied it (``applied``) or before."""
    with proxies(azurite) as start:

        def make(drop: Pick, *, applied: bool) -> tuple[AzureStore, AzuriteProxy]:
            proxy = start("table", drop=drop, drop_applied=applied)
            unique = datetime.now(UTC).strftime("%H%M%S%f")
            store = AzureStore.from_settings(connection_string=connection_string(azurite, "table", proxy),
                                             table_prefix=f"drop{unique}", container=f"drop{unique}",
                                             retry_backoff=0)
            return store, proxy

        yield make


def _lock_insert(method: str, path: str) -> bool:
    return method == "POST" and "locks" in path and "Tables" not in path


def _audit_insert(method: str, path: str) -> bool:
    return method == "POST" and "audit" in path and "Tables" not in path


@pytest.mark.parametrize("applied", [True, False])
async def test_a_lock_taken_while_the_connection_drops_is_ours_or_free(dropping: Any, applied: bool) -> None:
    """A lock's first take (an insert, a POST) whose connection drops, before or after the service
    applied it: the SDK sends it again and the lease is ours, not a lock left held by a run that
    was told it failed (every other run refused until it expires)."""
    store, proxy = dropping(_lock_insert, applied=applied)
    try:
        now = datetime.now(UTC)
        lease = await store.acquire_lock("sync", "timer:run1", TTL, now)
        assert proxy.dropped == 1
        assert lease is not None and lease.holder == "timer:run1"
        await store.release_lock(lease)
        assert await store.read_lock("sync", now) is None
    finally:
        await store.close()


@pytest.mark.parametrize("applied", [True, False])
async def test_an_audit_append_while_the_connection_drops_is_kept_once(dropping: Any, applied: bool) -> None:
    store, proxy = dropping(_audit_insert, applied=applied)
    try:
        entry_id = await store.append_audit({"at": datetime.now(UTC).isoformat(), "operation": "sync"})
        assert proxy.dropped == 1
        page, _ = await store.read_audit()
        assert [e["id"] for e in page] == [entry_id]
    finally:
        await store.close()


class _Garbled:
    """A TCP server that answers every request with a malformed HTTP response (what a broken
    proxy on the way to the storage account may send)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("cause", ["a garbled answer", "a port out of range"])
async def test_a_store_error_never_shows_the_sas_signature(cause: str) -> None:
    """A connection string with a shared access signature puts it in every request's URL; an
    error whose text quotes the URL must not carry the signature into a run's error, the audit
    log or the log's traceback."""
    secret = "sig=Xq3vSECRETSIGNATURE%2Bk%3D"
    garbled = _Garbled()
    try:
        port = garbled.port if cause == "a garbled answer" else 99999
        endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
        conn = (f"BlobEndpoint={endpoint};TableEndpoint={endpoint};"
                f"SharedAccessSignature=sv=2022-11-02&ss=bt&srt=sco&sp=rwdlac&{secret}")
        store = AzureStore.from_settings(connection_string=conn, retry_total=0, timeout=5)
        try:
            for attempt in (store.read_audit(), store.get("sync/managed")):
                with pytest.raises(StoreError, match="Azure Storage: cannot") as caught:
                    await attempt
                shown = "".join(traceback.format_exception(caught.value))
                assert "SECRETSIGNATURE" not in shown, shown
                assert "Service" in str(caught.value)  # still says what failed (ServiceRe...Error)
        finally:
            await store.close()
    finally:
        garbled.close()
