"""A loopback TCP proxy that breaks HTTP/1.1 exchanges on purpose, for fault tests.

It sits between a client under test (hubpilot's hub client, the kubernetes client, the Azure SDK)
and a real server or a wire-level double, reads each request (head and ``Content-Length`` body)
to count it, and forwards it unchanged on one upstream connection per client connection. Requests
are numbered from 1 in the order they arrive, across connections. A fault is set for the n-th
request, or for every request a rule matches:

- ``before``: the connection closes before the request reaches the server (nothing happened);
- ``after``: the request reaches the server, which acts; the connection closes when the first
  byte of its answer comes back, so the client never sees the answer;
- ``hang``: the connection is accepted and the request read, but nothing is forwarded and no
  answer ever comes (a hub whose event loop is stuck);
- ``hold``: the request is read and kept until :meth:`FaultProxy.release` (a slow hub), then
  forwarded and answered as usual.

A ``sticky`` cut of the n-th request also breaks every later request with the same method and
path (the client's retries of it, and any later sending of it): that route stays broken.

``seen`` lists every request as ``(n, method, path, fault)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

Match = Callable[[str, str], bool]


@dataclass
class Seen:
    n: int
    method: str
    path: str
    fault: str | None


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    seen: list[Seen] = field(default_factory=list)
    cuts: dict[int, str] = field(default_factory=dict)
    rules: list[tuple[Match, str]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _conns: set[asyncio.Task[None]] = field(default_factory=set)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _held: asyncio.Event = field(default_factory=asyncio.Event)
    _sticky: set[int] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self.seen)

    def cut(self, n: int, mode: str, *, sticky: bool = False) -> None:
        """Break the n-th request (counted from 1 since the proxy started or was reset); ``sticky``:
        and every later one with its method and path."""
        assert mode in ("before", "after", "hang", "hold"), mode
        self.cuts[n] = mode
        if sticky:
            self._sticky.add(n)

    def rule(self, match: Match, mode: str) -> None:
        """Break every request ``match(method, path)`` accepts."""
        assert mode in ("before", "after", "hang", "hold"), mode
        self.rules.append((match, mode))

    def release(self) -> None:
        """Forward the requests held (and those held from now on)."""
        self._held.set()

    def reset(self) -> None:
        """Forget the faults and the requests seen; numbering starts again at 1."""
        self.seen.clear()
        self.cuts.clear()
        self.rules.clear()
        self._sticky.clear()

    def faulted(self) -> list[Seen]:
        return [s for s in self.seen if s.fault]

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def _fault_for(self, n: int, method: str, path: str) -> str | None:
        if n in self.cuts:
            if n in self._sticky:
                mode = self.cuts[n]
                self.rules.append((lambda m, p: (m, p) == (method, path), mode))
            return self.cuts[n]
        for match, mode in self.rules:
            if match(method, path):
                return mode
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        up_w: asyncio.StreamWriter | None = None
        back: asyncio.Task[None] | None = None
        drop = asyncio.Event()  # the answer now on its way back is to be lost
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    raise AssertionError(f"{method} {path}: chunked request bodies are not supported")
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                n = len(self.seen) + 1
                fault = self._fault_for(n, method, path)
                self.seen.append(Seen(n, method, path, fault))
                if fault == "before":
                    return
                if fault == "hang":
                    await self._release.wait()
                    return
                if fault == "hold":
                    await self._held.wait()
                if up_w is None:
                    up_r, up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
                    back = asyncio.create_task(self._back(up_r, writer, drop))
                if fault == "after":
                    drop.set()
                up_w.write(head + body)
                await up_w.drain()
                if fault == "after":
                    await back  # type: ignore[misc]  # returns once the answer began, and was dropped
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self._conns.discard(task)
            if back is not None and not back.done():
                back.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await back
            for w in (writer, up_w):
                if w is not None:
                    w.transport.abort()

    @staticmethod
    async def _back(up_r: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: asyncio.Event) -> None:
        while True:
            data = await up_r.read(65536)
            if not data:
                writer.transport.abort()
                return
            if drop.is_set():
                return
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
