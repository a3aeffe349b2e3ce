"""A forwarding proxy in front of one Azurite service, for the Azure store's fault tests: the
network and the service failing in the ways the store must tell apart (an answer lost after the
service applied the request, a connection cut before it got there, a busy service, an answer
without its Date, another writer acting between two of the store's requests)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tests.azurite import ACCOUNT_KEY, Azurite

Pick = Callable[[str, str], bool]
"""Picks requests by method and path (with its query)."""

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
BUSY = b'{"odata.error":{"code":"ServerBusy","message":{"lang":"en-US","value":"busy"}}}'


def never(method: str, path: str) -> bool:
    return False


class AzuriteProxy(http.server.ThreadingHTTPServer):
    """Forwards to Azurite's service on ``target``, with the faults a test picks:

    - ``meanwhile``: called for each request Azurite answered, before the answer is sent back
      (another writer acting between this request and the store's next one); what it returns is
      ignored;
    - ``busy``: every request it picks is answered 503 ServerBusy and never sent on (``refused``
      counts them);
    - ``drop``: the first request it picks is cut: with ``drop_applied`` it reaches Azurite and the
      connection closes without its answer, else the connection closes before it is sent on
      (``dropped``);
    - ``lose``: the first request it picks is applied, but its caller is answered 503 ServerBusy,
      as when the service timed out after doing the work (``lost``);
    - ``dateless``: the answer to each request it picks is sent without its Date header."""

    def __init__(self, target: int, *, meanwhile: Callable[[str, str], object] = never, busy: Pick = never,
                 drop: Pick = never, drop_applied: bool = False, lose: Pick = never,
                 dateless: Pick = never) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target, self.meanwhile, self.busy, self.dateless = target, meanwhile, busy, dateless
        self.drop, self.drop_applied, self.lose = drop, drop_applied, lose
        self.refused = self.dropped = self.lost = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/devstoreaccount1"


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AzuriteProxy

    def _answer_busy(self, dateless: bool) -> None:
        self.send_response_only(503)
        self.send_header("Content-Type", "application/json")
        if not dateless:
            self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", str(len(BUSY)))
        self.end_headers()
        self.wfile.write(BUSY)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        proxy, method, path = self.server, self.command, self.path
        dateless = proxy.dateless(method, path)
        if proxy.busy(method, path):
            proxy.refused += 1
            self._answer_busy(dateless)
            return
        cut = not proxy.dropped and proxy.drop(method, path)
        if cut:
            proxy.dropped += 1
            self.close_connection = True
            if not proxy.drop_applied:
                return
        conn = http.client.HTTPConnection("127.0.0.1", proxy.target, timeout=30)
        try:
            conn.request(method, path, body=body,
                         headers={k: v for k, v in self.headers.items() if k.lower() not in _HOP})
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        proxy.meanwhile(method, path)
        if cut:
            return  # applied, and no answer: the connection closes
        if not proxy.lost and proxy.lose(method, path):
            proxy.lost += 1
            self._answer_busy(dateless)
            return
        self.send_response_only(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP and not (dateless and key.lower() == "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", answer.getheader("Content-Length", "0")
                         if method == "HEAD" else str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def proxies(azurite: Azurite) -> Iterator[Callable[..., AzuriteProxy]]:
    """``start(service, **faults)``: a running proxy in front of Azurite's ``service`` ("table" or
    "blob"); every proxy started is stopped on leaving."""
    started: list[tuple[AzuriteProxy, threading.Thread]] = []

    def start(service: str, **faults: Any) -> AzuriteProxy:
        proxy = AzuriteProxy(azurite.table_port if service == "table" else azurite.blob_port, **faults)
        thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        started.append((proxy, thread))
        return proxy

    try:
        yield start
    finally:
        for proxy, thread in started:
            proxy.shutdown()
            proxy.server_close()
            thread.join()


def connection_string(azurite: Azurite, service: str, proxy: AzuriteProxy) -> str:
    """A connection string that reaches ``service`` through ``proxy`` and the other one directly."""
    blob = proxy.endpoint if service == "blob" else azurite.blob_endpoint
    table = proxy.endpoint if service == "table" else azurite.table_endpoint
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={blob};TableEndpoint={table};")
