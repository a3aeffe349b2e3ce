"""Review: a connection the server (or something between) closes in the middle of a read, against
the session slapd behind a loopback proxy that forwards the server's answer up to a byte count and
then closes both ends. Wherever it is cut, the read is unknown (DirectoryError), never a group
with the members received so far."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from hubpilot.adapters.ldap import LdapDirectory
from hubpilot.ports.directory import DirectoryError
from tests.slapd import Slapd, people_ldif

pytestmark = pytest.mark.ldap

COM = "dc=example,dc=com"


class CuttingProxy:
    """127.0.0.1:<port> → slapd; the server's bytes after ``limit`` are not forwarded and both
    connections are closed (``limit=None``: everything is forwarded; ``sent`` counts it)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.limit: int | None = None
        self.sent = 0
        self.from_client = bytearray()  # every byte the client sent, on every connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sent = 0
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while data := src.recv(256 if from_server else 65536):
                if not from_server:
                    self.from_client += data
                if from_server and self.limit is not None:
                    data = data[:max(0, self.limit - self.sent)]
                dst.sendall(data)
                if from_server:
                    self.sent += len(data)
                    if self.limit is not None and self.sent >= self.limit:
                        break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(slapd: Slapd) -> Iterator[CuttingProxy]:
    p = CuttingProxy(slapd.port)
    try:
        yield p
    finally:
        p.close()


async def test_a_read_cut_anywhere_is_unknown_never_partial(slapd: Slapd, ldap_names: str,
                                                           proxy: CuttingProxy) -> None:
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.load_ldif(people_ldif(40, ou=t, group=f"{t}-all", prefix=t))

    def directory() -> LdapDirectory:
        return LdapDirectory(url=f"ldap://127.0.0.1:{proxy.port}", bind_dn=slapd.root_dn,
                             bind_password=slapd.root_password, base_dn=ou, page_size=9, timeout=5.0)

    whole = await directory().read([f"{t}-all"])
    assert len(whole.groups[f"{t}-all"]) == 40
    total = proxy.sent  # bind, group search, 5 pages of the scan
    assert total > 2000
    cuts = sorted({0, 5, 14, 20, 60, *(total * k // 16 for k in range(1, 16)), total - 20})
    for cut in cuts:
        proxy.limit = cut
        with pytest.raises(DirectoryError, match=r"failed: LDAP\w+Error: ") as e:
            await directory().read([f"{t}-all"])
        assert "LDAP ldap://127.0.0.1" in str(e.value), cut


async def test_start_tls_encrypts_the_connection_before_the_bind_sends_the_password(slapd: Slapd,
                                                                                   proxy: CuttingProxy) -> None:
    """The bind's password is what start_tls protects: it must never cross the wire in the clear
    (the proxy sees every byte the client sends; without start_tls it does see the password)."""
    def directory(**kw: object) -> LdapDirectory:
        return LdapDirectory(url=f"ldap://127.0.0.1:{proxy.port}", bind_dn=slapd.root_dn,
                             bind_password=slapd.root_password, base_dn=COM, timeout=5.0, **kw)  # type: ignore[arg-type]

    secret = slapd.root_password.encode()
    tls = await directory(start_tls=True, ca_file=slapd.ca_file).read(["ITD Staff"])
    assert tls.groups["ITD Staff"] and proxy.from_client
    assert secret not in proxy.from_client and slapd.root_dn.encode() not in proxy.from_client
    proxy.from_client.clear()
    plain = await directory().read(["ITD Staff"])
    assert plain.groups == tls.groups
    assert secret in proxy.from_client
