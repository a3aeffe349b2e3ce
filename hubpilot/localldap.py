"""A real OpenLDAP server for the demo (--ldap), the tests and the bench scripts.

Debian's ``slapd`` binary is started from a generated ``slapd.conf`` in a private directory: its
own back_mdb databases, its own loopback port, its own pid file. It never reads the system
configuration under /etc/ldap/slapd.d and does not care whether the system service (which the
Debian package starts on port 389) runs or not.

    async with start_slapd(tmp_path, ldif=[text_or_path, ...]) as ldap:
        ldap.url, ldap.base_dn, ldap.root_dn, ldap.root_password
        ldap.add(dn, {"objectClass": [...], ...}); ldap.modify(...); ldap.delete(dn)
        ldap.load_ldif(text)          # into the running server (ldapadd)
        ldap.stop(); ldap.start()     # "directory down mid-run"

LDIF given to ``start_slapd`` is bulk-loaded with ``slapadd -q -c`` before the server starts, so
entries may come in any order (OpenLDAP's own test data is not parent-first) and entries the
schema rejects are skipped (OpenLDAP's test-dn.ldif has deliberately invalid ones).

``people_ldif(n, ...)`` makes an n-person directory with one group, fast enough for 10 000.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
from ldap3.utils.dn import to_dn

SLAPD = os.environ.get("HUBPILOT_SLAPD", "/usr/sbin/slapd")
SLAPADD = os.environ.get("HUBPILOT_TEST_SLAPADD", "/usr/sbin/slapadd")
LDAPADD = shutil.which("ldapadd") or "/usr/bin/ldapadd"
MODULE_PATH = os.environ.get("HUBPILOT_SLAPD_MODULES", "/usr/lib/ldap")
SCHEMA_DIR = os.environ.get("HUBPILOT_SLAPD_SCHEMA", "/etc/ldap/schema")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "openldap")

# OpenLDAP's test-dn.ldif uses the test suite's ``testUUID`` attribute type in a member DN;
# without it the server rejects the whole "Must Succeed" group. OID under OpenLDAP's
# experimental arc.
EXTRA_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.4203.666.11.99.1 NAME 'testUUID'
\tEQUALITY UUIDMatch ORDERING UUIDOrderingMatch
\tSYNTAX 1.3.6.1.1.16.1 SINGLE-VALUE )
"""

ROOT_PASSWORD = "hubpilot-root-secret"
LIMITED_PASSWORD = "hubpilot-limited-secret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Linux: slapd gets SIGTERM when the process that started it dies without stopping it (a
    killed demo or test run); it would otherwise run on, orphaned, holding its port."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _suffix_entry(suffix: str) -> str:
    attr, _, value = suffix.split(",", 1)[0].partition("=")
    attr = attr.strip().lower()
    if attr == "dc":
        return f"dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: {value}\no: {value}\n\n"
    if attr == "o":
        return f"dn: {suffix}\nobjectClass: organization\no: {value}\n\n"
    return f"dn: {suffix}\nobjectClass: organizationalUnit\nou: {value}\n\n"


def _unfold(text: str) -> str:
    return re.sub(r"\r?\n ", "", text)


def _defines(text: str, dn: str) -> bool:
    wanted = dn.replace(" ", "").lower()
    for line in _unfold(text).splitlines():
        if line.lower().startswith("dn:") and line[3:].replace(" ", "").lower() == wanted:
            return True
    return False


@dataclass
class Slapd:
    """A running (or stopped) private slapd. Methods are synchronous and quick."""

    workdir: Path
    port: int
    suffixes: tuple[str, ...]
    root_password: str = ROOT_PASSWORD
    tls_port: int | None = None  # ldaps:// listener; StartTLS works on the plain port too
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None
    loaded: list[str] = field(default_factory=list)

    @property
    def base_dn(self) -> str:
        return self.suffixes[0]

    @property
    def root_dn(self) -> str:
        return f"cn=admin,{self.base_dn}"

    @property
    def limited_dn(self) -> str:
        """A DN the server limits to 5 entries per search (for the "size limit hit" case).
        Create it with :meth:`add_limited_reader` first."""
        return f"cn=limited reader,{self.base_dn}"

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this slapd was started without tls=True")
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> str:
        """The test CA that signed the server certificate (subjectAltName IP:127.0.0.1)."""
        return str(self.workdir / "ca.crt")

    def make_certificates(self) -> None:
        """A throw-away CA and a server certificate for 127.0.0.1 (EC P-256, valid 2 days)."""
        w = self.workdir
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        run("req", "-x509", *ec, "-keyout", str(w / "ca.key"), "-out", str(w / "ca.crt"), "-days", "2",
            "-subj", "/CN=hubpilot test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", *ec, "-keyout", str(w / "server.key"), "-out", str(w / "server.csr"),
            "-subj", "/CN=127.0.0.1")
        (w / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        run("x509", "-req", "-in", str(w / "server.csr"), "-CA", str(w / "ca.crt"), "-CAkey", str(w / "ca.key"),
            "-CAcreateserial", "-out", str(w / "server.crt"), "-days", "2", "-extfile", str(w / "server.ext"))

    @property
    def log_path(self) -> Path:
        return self.workdir / "slapd.log"

    # ---- configuration and bulk load ---------------------------------------------------------

    def write_config(self) -> Path:
        (self.workdir / "extra.schema").write_text(EXTRA_SCHEMA)
        lines = [f"include {SCHEMA_DIR}/{name}.schema" for name in SCHEMAS]
        lines += [
            f"include {self.workdir / 'extra.schema'}",
            f"pidfile {self.workdir / 'slapd.pid'}",
            f"argsfile {self.workdir / 'slapd.args'}",
            f"modulepath {MODULE_PATH}",
            "moduleload back_mdb",
            "sizelimit unlimited",
            "",
        ]
        if self.tls_port is not None:
            lines[-1:-1] = [f"TLSCACertificateFile {self.ca_file}",
                            f"TLSCertificateFile {self.workdir / 'server.crt'}",
                            f"TLSCertificateKeyFile {self.workdir / 'server.key'}"]
        for i, suffix in enumerate(self.suffixes):
            db = self.workdir / f"db{i}"
            db.mkdir(exist_ok=True)
            lines += [
                "database mdb",
                "maxsize 1073741824",
                f'suffix "{suffix}"',
                f"directory {db}",
                "index objectClass eq",
                "index uid,mail,cn,memberUid eq",
                f'limits dn.exact="{self.limited_dn}" size.soft=5 size.hard=5 size.prtotal=5',
            ]
            if i == 0:
                lines += [f'rootdn "{self.root_dn}"', f"rootpw {self.root_password}"]
            lines += [
                f'access to * by dn.exact="{self.root_dn}" manage by * read',
                "",
            ]
        conf = self.workdir / "slapd.conf"
        conf.write_text("\n".join(lines))
        return conf

    def bulk_load(self, ldif: Sequence[str | Path]) -> None:
        """Load LDIF with ``slapadd -q -c`` (server must be stopped). Rejected entries are
        skipped; their messages land in ``slapadd.log``."""
        texts = [Path(x).read_text() if isinstance(x, Path) else x for x in ldif]
        for suffix in self.suffixes:
            if not any(_defines(t, suffix) for t in texts):
                texts.insert(0, _suffix_entry(suffix))
        conf = self.workdir / "slapd.conf"
        with open(self.workdir / "slapadd.log", "ab") as log:
            for text in texts:
                for suffix in self.suffixes:
                    src = self.workdir / "load.ldif"
                    src.write_text(text)
                    # Each database takes the entries under its own suffix; others are skipped (-c).
                    subprocess.run([SLAPADD, "-f", str(conf), "-b", suffix, "-q", "-c", "-l", str(src)],
                                   stdout=log, stderr=log, check=False)
        self.loaded.extend(texts)

    # ---- process -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            [SLAPD, "-f", str(self.workdir / "slapd.conf"), "-h", self._listeners(), "-d", "0"],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited with {self.process.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"slapd did not listen on port {self.port}; see {self.log_path}") from None
                time.sleep(0.02)

    def _listeners(self) -> str:
        urls = [self.url + "/"]
        if self.tls_port is not None:
            urls.append(self.ldaps_url + "/")
        return " ".join(urls)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ---- data --------------------------------------------------------------------------------

    def connect(self, user: str | None = None, password: str | None = None) -> ldap3.Connection:
        server = ldap3.Server(self.url, connect_timeout=5, get_info=ldap3.NONE)
        return ldap3.Connection(server, user=user or self.root_dn,
                                password=password if user else self.root_password,
                                auto_bind=True, raise_exceptions=True, receive_timeout=10)

    def add(self, dn: str, attributes: Mapping[str, Any]) -> None:
        conn = self.connect()
        try:
            conn.add(dn, attributes=dict(attributes))
        finally:
            conn.unbind()

    def modify(self, dn: str, changes: Mapping[str, Any]) -> None:
        """``changes`` as ldap3 takes them: {"member": [(ldap3.MODIFY_ADD, [dn])]}."""
        conn = self.connect()
        try:
            conn.modify(dn, dict(changes))
        finally:
            conn.unbind()

    def replace(self, dn: str, attribute: str, values: Sequence[str]) -> None:
        self.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, list(values))]})

    def rename(self, dn: str, new_rdn: str, *, groups: Sequence[str] = ()) -> str:
        """modrdn: the entry keeps its entryUUID, drops the old RDN value (deleteoldrdn) and
        moves to ``new_rdn``; the ``member`` values of ``groups`` follow, as the refint overlay
        (or Active Directory itself) makes them. Returns the new DN."""
        new_dn = ",".join([new_rdn, *to_dn(dn)[1:]])  # to_dn keeps escaped commas inside an RDN
        conn = self.connect()
        try:
            conn.modify_dn(dn, new_rdn, delete_old_dn=True)
        finally:
            conn.unbind()
        for group in groups:
            self.modify(group, {"member": [(ldap3.MODIFY_DELETE, [dn]), (ldap3.MODIFY_ADD, [new_dn])]})
        return new_dn

    def delete(self, dn: str) -> None:
        conn = self.connect()
        try:
            conn.delete(dn)
        finally:
            conn.unbind()

    def load_ldif(self, text: str) -> None:
        """Add LDIF entries to the running server (``ldapadd``; stops at the first error)."""
        with tempfile.NamedTemporaryFile("w", suffix=".ldif", dir=self.workdir, delete=False) as f:
            f.write(text)
        try:
            res = subprocess.run([LDAPADD, "-x", "-H", self.url, "-D", self.root_dn, "-w", self.root_password,
                                  "-f", f.name], capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"ldapadd failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        finally:
            os.unlink(f.name)

    def add_limited_reader(self) -> None:
        """Create :attr:`limited_dn` (password LIMITED_PASSWORD) if it does not exist yet."""
        with contextlib.suppress(ldap3.core.exceptions.LDAPEntryAlreadyExistsResult):
            self.add(self.limited_dn, {"objectClass": ["person"], "cn": "limited reader", "sn": "reader",
                                       "userPassword": LIMITED_PASSWORD})


@contextlib.contextmanager
def slapd_server(workdir: str | Path, *, ldif: Sequence[str | Path] = (),
                 suffixes: Sequence[str] = ("dc=example,dc=com",),
                 port: int | None = None, tls: bool = False) -> Iterator[Slapd]:
    """Start a private slapd in ``workdir`` (created if needed), bulk-loaded with ``ldif``.
    With ``tls``, it also listens on ldaps:// and offers StartTLS, with a certificate from a
    throw-away CA (``server.ca_file``)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    server = Slapd(workdir=workdir, port=port or free_port(), suffixes=tuple(suffixes),
                   tls_port=free_port() if tls else None)
    if tls:
        server.make_certificates()
    server.write_config()
    server.bulk_load(ldif)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def start_slapd(workdir: str | Path, *, ldif: Sequence[str | Path] = (),
                      suffixes: Sequence[str] = ("dc=example,dc=com",),
                      port: int | None = None, tls: bool = False) -> AsyncIterator[Slapd]:
    """``async with`` form of :func:`slapd_server` (start-up takes well under a second)."""
    with slapd_server(workdir, ldif=ldif, suffixes=suffixes, port=port, tls=tls) as server:
        yield server


def people_ldif(n: int, *, base_dn: str = "dc=example,dc=com", ou: str = "bench",
                group: str | None = "bench-users", prefix: str = "user",
                kind: str = "groupOfNames", mail_domain: str = "example.com", start: int = 0) -> str:
    """LDIF for ``ou=<ou>,<base_dn>`` holding n inetOrgPerson entries ``uid=<prefix>NNNNN`` and,
    when ``group`` is set, one group ``cn=<group>`` (``kind``: groupOfNames, groupOfUniqueNames
    or posixGroup) under the same ou holding all of them."""
    container = f"ou={ou},{base_dn}"
    out = [f"dn: {container}\nobjectClass: organizationalUnit\nou: {ou}\n"]
    uids = [f"{prefix}{i:05d}" for i in range(start, start + n)]
    for i, uid in enumerate(uids, start=start):
        out.append(
            f"dn: uid={uid},{container}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
            f"cn: {prefix.capitalize()} {i}\nsn: {i}\nmail: {uid}@{mail_domain}\n"
        )
    if group is not None:
        lines = [f"dn: cn={group},{container}", f"objectClass: {kind}", f"cn: {group}"]
        if kind == "posixGroup":
            lines.append(f"gidNumber: {10000 + len(group)}")
            lines += [f"memberUid: {u}" for u in uids]
        else:
            attr = "uniqueMember" if kind == "groupOfUniqueNames" else "member"
            lines += [f"{attr}: uid={u},{container}" for u in uids]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out) + "\n"
