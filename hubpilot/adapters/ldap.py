"""Directory adapter for LDAP (OpenLDAP, 389-ds, Active Directory over LDAP) with ldap3.

One ``read()`` opens one connection and makes a handful of requests, whatever the group sizes:

1. the configured groups: one search for all those named by ``group_name_attribute`` under
   ``group_base_dn`` plus one base search per group given as a full DN;
2. one paged subtree search (RFC 2696) of ``base_dn`` (of ``group_base_dn`` instead when it
   holds ``base_dn``; of both when they are apart) for people and groups, indexed in memory by
   normalised DN and by username;
3. membership expansion in memory: ``member`` (groupOfNames), ``uniqueMember``
   (groupOfUniqueNames, optional ``#'0101'B`` uid suffix dropped) and ``memberUid`` (posixGroup,
   usernames resolved by ``username_attribute``); nested groups to ``nested_max_depth`` with
   cycle detection.

Findings that do not make the read wrong (a member that is no person, a member DN that does not
exist, a nesting cycle) are returned as notes. Anything else (server down, bind refused,
timeout, a configured group that does not exist, a size limit, a group whose members the bind DN
may not read) raises DirectoryError: a partial snapshot is never returned. ldap3 is synchronous;
the work runs in a thread.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import math
import os
import re
import ssl
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import ldap3
from ldap3.core.exceptions import (
    LDAPException,
    LDAPNoSuchAttributeResult,
    LDAPNoSuchObjectResult,
    LDAPOperationResult,
    LDAPSessionTerminatedByServerError,
)
from ldap3.utils.ciDict import CaseInsensitiveDict
from ldap3.utils.conv import escape_filter_chars

from hubpilot.ports.directory import DirectoryError, DirectorySnapshot, Member, check_ldap_port, check_ldap_userinfo

GROUP_CLASSES = frozenset({"groupofnames", "groupofuniquenames", "posixgroup", "group"})
PERSON_FILTER_CLASSES = ("person", "posixAccount", "account")
MEMBER_ATTRIBUTES = ("member", "uniqueMember", "memberUid")
# each group kind's member attribute, and the value a compare asks about (any its syntax accepts)
_KIND_MEMBER = {"groupofnames": "member", "group": "member", "groupofuniquenames": "uniqueMember",
                "posixgroup": "memberUid"}
_PAGED_OID = "1.2.840.113556.1.4.319"
_UID_SUFFIX = re.compile(r"#'[01]*'B$")
_ATTR_TYPE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)$")
_ATTR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")  # a setting naming an attribute: its descr (RFC 4512)
_HEX = "0123456789abcdefABCDEF"
_SPECIAL = ',+"\\<>;=# '
_NEEDS_FULL_PARSE = re.compile(r'[\\"+;<>#]')
# the spaces slapd collapses (Unicode Zs, as its tables have it: not U+1680 OGHAM SPACE MARK)
_SPACES = re.compile("[ \u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_NEEDS_ESCAPE = re.compile(r'[,+"\\<>;=\x00-\x1f]|^[# ]|[ ]$')


# ---- DN normalisation ----------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def normalize_dn(dn: str, *, nfkc: bool = True, legacy_fold: bool = False) -> str:
    """A canonical form of a DN for comparison (RFC 4514, with RFC 1779's leniencies).

    Attribute types are lower-cased (``OID.`` prefix dropped), values unescaped (``\\2C``,
    ``\\,``, hex-encoded UTF-8), quoted values unquoted, then folded as :func:`fold` does; the
    AVAs of a multi-valued RDN are sorted. ``#hex`` values stay as hex. Raises ValueError for a
    string that is no DN. The forms earlier versions recorded as a person's id in DN mode:
    ``legacy_fold=True`` (values case folded with ``str.casefold``, any whitespace collapsed),
    ``nfkc=False`` (that, and no Unicode normalisation either).
    """
    legacy = legacy_fold or not nfkc
    if not _NEEDS_FULL_PARSE.search(dn):
        return _normalize_simple(dn, nfkc, legacy)
    return _normalize_full(dn, nfkc, legacy)


def _normalize_simple(dn: str, nfkc: bool = True, legacy: bool = False) -> str:
    """The common case: no escapes, quotes, multi-valued RDNs or hex values."""
    if not dn.strip():
        return ""
    out = []
    for rdn in dn.split(","):
        atype, eq, value = rdn.partition("=")
        atype = atype.strip()
        if atype.lower().startswith("oid."):
            atype = atype[4:]
        if not eq or not _ATTR_TYPE.match(atype) or ".." in atype:
            raise ValueError(f"{dn!r}: {rdn.strip()!r} is no attribute=value pair")
        out.append(f"{atype.lower()}={_escape(_fold(value, nfkc, legacy))}")
    return ",".join(out)


def _normalize_full(dn: str, nfkc: bool = True, legacy: bool = False) -> str:
    s = dn.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip()
    if not s:
        return ""
    rdns: list[list[str]] = []
    avas: list[str] = []
    i, n = 0, len(s)
    while True:
        eq = s.find("=", i)
        if eq < 0:
            raise ValueError(f"{dn!r}: missing '=' after {s[i:]!r}")
        atype = s[i:eq].strip()
        if atype.lower().startswith("oid."):
            atype = atype[4:]
        if not _ATTR_TYPE.match(atype) or ".." in atype:
            raise ValueError(f"{dn!r}: {atype!r} is no attribute type")
        i = eq + 1
        while i < n and s[i] == " ":
            i += 1
        if i < n and s[i] == "#":
            j = i + 1
            while j < n and s[j] not in ",+;":
                j += 1
            hexval = s[i + 1:j].strip()
            if not hexval or len(hexval) % 2 or any(c not in _HEX for c in hexval):
                raise ValueError(f"{dn!r}: bad hex value #{hexval}")
            ava = f"{atype.lower()}=#{hexval.lower()}"
            i = j
        else:
            buf = bytearray()
            quoted = i < n and s[i] == '"'
            if quoted:
                i += 1
            trailing = 0  # unescaped spaces at the end, not part of the value
            while i < n:
                c = s[i]
                if quoted and c == '"':
                    i += 1
                    while i < n and s[i] == " ":
                        i += 1
                    quoted = False
                    break
                if not quoted and c in ",+;":
                    break
                if c == "\\":
                    pair = s[i + 1:i + 3]
                    if len(pair) == 2 and all(ch in _HEX for ch in pair):
                        buf.append(int(pair, 16))
                        i += 3
                    elif i + 1 < n and s[i + 1] in _SPECIAL:
                        buf.extend(s[i + 1].encode())
                        i += 2
                    else:
                        raise ValueError(f"{dn!r}: bad escape at {s[i:i + 3]!r}")
                    trailing = 0
                    continue
                buf.extend(c.encode())
                trailing = trailing + 1 if c == " " else 0
                i += 1
            if quoted:
                raise ValueError(f"{dn!r}: unterminated quoted value")
            if trailing:
                del buf[-trailing:]
            try:
                text = buf.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{dn!r}: value is not UTF-8") from exc
            ava = f"{atype.lower()}={_escape(_fold(text, nfkc, legacy))}"
        avas.append(ava)
        if i >= n:
            rdns.append(avas)
            break
        sep = s[i]
        i += 1
        if sep == "+":
            continue
        rdns.append(avas)
        avas = []
        if i >= n:
            raise ValueError(f"{dn!r}: ends with a separator")
    return ",".join("+".join(sorted(rdn)) for rdn in rdns)


def fold(value: str) -> str:
    """A name (a DN's value, a group name, a username) as slapd matches it, for comparisons
    (RFC 4518 string preparation as slapd does it): Unicode normalised (NFKC: a decomposed "é" is
    the precomposed one), runs of spaces collapsed and trimmed, each character lower-cased on its
    own. Not ``str.casefold``: it makes "ß" "ss" and "ς" "σ", and takes tabs and line breaks for
    spaces, where slapd keeps two names apart (two entries ``cn=Strauß`` and ``cn=Strauss``).
    Letters of scripts slapd's Unicode tables predate (Cherokee, Glagolitic, ...) may still fold
    where slapd's do not."""
    return _fold(value)


def _fold(value: str, nfkc: bool = True, legacy: bool = False) -> str:
    if nfkc and not value.isascii():
        value = unicodedata.normalize("NFKC", value)
    if legacy:
        return " ".join(value.split()).casefold()
    value = _SPACES.sub(" ", value).strip(" ")
    if "\u0130" in value:  # İ: its full lower case is "i" and a combining dot; slapd maps it to "i"
        value = value.replace("\u0130", "i")
    return value.lower()


def _legacy_dn(raw: str, dn: str) -> str:
    """A DN-mode person's id as earlier versions recorded it, when it differs: their records stay
    theirs (not a reused name) after the upgrade. The form of the version before (case folded),
    else the one before Unicode normalisation."""
    try:
        olds = (normalize_dn(raw, legacy_fold=True), normalize_dn(raw, nfkc=False))
    except ValueError:
        return ""
    return next((old for old in olds if old != dn), "")


def _escape(value: str) -> str:
    if not _NEEDS_ESCAPE.search(value):
        return value
    out = []
    for k, c in enumerate(value):
        if c in ',+"\\<>;=' or (k == 0 and c in "# ") or (k == len(value) - 1 and c == " "):
            out.append("\\" + c)
        elif ord(c) < 0x20:
            out.append(f"\\{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


_NO_REFERRALS = ("hubpilot does not follow referrals: point directory.ldap.url at the server holding it, or narrow "
                 "base_dn / group_base_dn to what this server holds")
# a TLS handshake a server that speaks no TLS on the port ends (OpenLDAP closes, others reset or
# answer in plain LDAP)
_NO_TLS_PEER = re.compile(r"UNEXPECTED_EOF|EOF occurred|WRONG_VERSION_NUMBER|RECORD_LAYER_FAILURE|Connection reset")
_WRONG_NAME = re.compile(r"certificate (\{.*\}) doesn't match any name in")


def _certificate_names(text: str) -> str:
    """The names a certificate holds (its subjectAltName, else its subject's CN), from the
    ``getpeercert()`` dict ldap3 writes into its error."""
    try:
        cert = ast.literal_eval(text)
        names = [v for _, v in cert.get("subjectAltName", ())] or \
            [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    except (ValueError, SyntaxError, TypeError, AttributeError):
        return "other names"
    return ", ".join(str(n) for n in names) or "no name"


def _is_within(dn: str, base: str) -> bool:
    return base == "" or dn == base or dn.endswith("," + base)


# ---- the adapter ---------------------------------------------------------------------------


@dataclass
class LdapStats:
    """Request counts since the adapter was made (for benchmarks and logs)."""

    reads: int = 0
    searches: int = 0  # search requests sent, each page counted
    entries: int = 0  # entries received


@dataclass
class _Entry:
    dn: str  # normalised
    raw_dn: str  # as the server wrote it
    is_group: bool
    username: str | None  # the first value of username_attribute: the hub name
    display: str
    members: list[str] = field(default_factory=list)  # raw member/uniqueMember values
    member_uids: list[str] = field(default_factory=list)
    loaded: bool = False  # members read (the scan reads no member attributes)
    stable_id: str | None = None  # the id attribute's value: the entry across renames (modrdn)
    usernames: tuple[str, ...] = ()  # every value of username_attribute (memberUid may name any)


def _values(attrs: Mapping[str, Any], name: str) -> list[str]:
    v = attrs.get(name)
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [str(v)]


def _stable_id(value: Any) -> str | None:
    """An id attribute's value as text: entryUUID's bytes are its text; Active Directory's
    objectGUID is 16 bytes, written as its GUID string; other binary values as hex."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        if len(raw) == 16:
            return str(uuid.UUID(bytes_le=raw))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
        return text if text.isprintable() else raw.hex()
    return str(value)


class LdapDirectory:
    """The ``Directory`` port over LDAP. Constructor arguments are the ``[directory.ldap]``
    settings."""

    def __init__(
        self,
        *,
        url: str,
        bind_dn: str | None = None,
        bind_password: str | None = None,
        base_dn: str,
        group_base_dn: str | None = None,
        group_name_attribute: str = "cn",
        username_attribute: str = "uid",
        nested: bool = False,
        nested_max_depth: int = 8,
        page_size: int = 500,
        timeout: float = 10.0,
        start_tls: bool = False,
        ca_file: str | None = None,
        id_attribute: str | None = "entryUUID",
    ) -> None:
        parts = urlsplit(url)
        check_ldap_userinfo(parts)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"directory.ldap.url {url!r}: expected ldap://host[:port] or ldaps://host[:port]")
        port = check_ldap_port(url, parts)
        if bind_password and not (bind_dn or "").strip():
            # an empty name binds anonymously whatever the password (RFC 4513 5.1.1): the read would
            # see what anonymous may see, often fewer members, and look like a successful one
            raise ValueError("directory.ldap: bind_password is set but bind_dn is empty; set bind_dn, or "
                             "remove the password to read anonymously")
        if ca_file and not (parts.scheme == "ldaps" or start_tls):
            raise ValueError(f"directory.ldap.ca_file is set but the connection to {url} is not encrypted (ldap:// "
                             "without start_tls: the bind password would go in the clear); use ldaps:// or set "
                             "start_tls = true, or remove ca_file")
        for setting, value in (("group_name_attribute", group_name_attribute),
                               ("username_attribute", username_attribute), ("id_attribute", id_attribute or "uid")):
            if not _ATTR_NAME.fullmatch(value):
                # used as written in the search filter and to find the value in the server's answer
                raise ValueError(f"directory.ldap.{setting} {value!r} is no LDAP attribute name (letters, digits "
                                 "and '-', starting with a letter), e.g. cn, uid, sAMAccountName")
        self.url = url
        self._host = parts.hostname
        self._port = port or (636 if parts.scheme == "ldaps" else 389)
        self._ssl = parts.scheme == "ldaps"
        self.bind_dn = bind_dn if (bind_dn or "").strip() else None  # a blank name is none: anonymous
        self._password = bind_password
        self.base_dn = base_dn
        group_base_dn = group_base_dn if (group_base_dn or "").strip() else None  # blank: unset
        self.group_base_dn = group_base_dn or base_dn
        self._group_base_setting = "group_base_dn" if group_base_dn else "base_dn"
        self.group_name_attribute = group_name_attribute
        self.username_attribute = username_attribute
        self.nested = nested
        self.nested_max_depth = nested_max_depth
        self.page_size = page_size
        self.timeout = timeout
        self.start_tls = start_tls
        self.ca_file = ca_file
        self.id_attribute = id_attribute or None
        self.stats = LdapStats()
        try:
            self._base_norm = normalize_dn(base_dn)
            self._group_base_norm = normalize_dn(self.group_base_dn)
        except ValueError as exc:
            raise ValueError(f"directory.ldap base_dn/group_base_dn: {exc}") from exc

    # -- port ------------------------------------------------------------------------------------

    async def read(self, groups: Sequence[str]) -> DirectorySnapshot:
        return await asyncio.to_thread(self._read, list(groups))

    async def close(self) -> None:
        return None

    # -- implementation ------------------------------------------------------------------------

    def _read(self, groups: list[str]) -> DirectorySnapshot:
        self.stats.reads += 1
        step = f"connecting to {self.url}"
        conn: ldap3.Connection | None = None
        try:
            conn = self._connect()
            conn.open(read_server_info=False)
            if self.start_tls:
                step = "StartTLS"
                conn.start_tls(read_server_info=False)
            step = f"binding as {self.bind_dn or 'anonymous'}"
            conn.bind(read_server_info=False)
            notes: list[str] = []
            result: dict[str, frozenset[Member]] = {}
            if not groups:
                return DirectorySnapshot(source=f"ldap {self.url}", groups=result)
            step = "reading the configured groups"
            roots = self._find_groups(conn, groups)
            step = f"reading people and groups under {self.base_dn}"
            index, by_username, referred, twins = self._scan(conn)
            step = "expanding the groups"
            for name in groups:
                root = roots[name]
                index[root.dn] = root
                result[name] = frozenset(self._expand(conn, name, root, index, by_username, notes, referred,
                                                      twins))
        except DirectoryError:
            raise
        except (LDAPException, OSError, ValueError) as exc:
            raise DirectoryError(f"LDAP {self.url}: {step} failed: {self._explain(exc, step)}") from exc
        finally:
            if conn is not None:
                try:
                    conn.unbind()
                except (LDAPException, OSError):
                    pass
        return DirectorySnapshot(source=f"ldap {self.url}", groups=result, notes=tuple(notes))

    def _explain(self, exc: BaseException, step: str = "") -> str:
        """An exception as the error says it, with what to fix when it is a certificate refused, a
        server limit on paging, or a url whose scheme does not fit the port (``step``: what failed)."""
        text = f"{type(exc).__name__}: {exc}"
        wrong_name = _WRONG_NAME.search(text)
        if wrong_name:  # ldap3 checks the name itself and writes out the whole certificate
            return (f"the server's certificate does not name {self._host!r} (it names "
                    f"{_certificate_names(wrong_name.group(1))}): use a name it holds in directory.ldap.url")
        if "adminLimitExceeded" in text and "page size" in text:
            return (f"{text}: the server allows the bind DN smaller pages; lower directory.ldap.page_size "
                    "(OpenLDAP: limits size.pr)")
        if "adminLimitExceeded" in text and "pagedResults" in text:
            return (f"{text}: the server refuses the bind DN paged searches, which hubpilot needs to read every "
                    "member; allow them (OpenLDAP: limits size.prtotal)")
        if "CERTIFICATE_VERIFY_FAILED" in text:
            cas = f"directory.ldap.ca_file {self.ca_file!r}" if self.ca_file else \
                "the system's CAs (directory.ldap.ca_file is unset)"
            return f"{text}: the server's certificate is not signed by a CA in {cas}; give the CA that signed it"
        if self._ssl and step.startswith("connecting") and _NO_TLS_PEER.search(text):
            return (f"{text}: no TLS handshake with port {self._port}; if it is a plain LDAP port (389), use "
                    "ldap:// for it with start_tls = true, or the server's ldaps:// port (636)")
        if not self._ssl and isinstance(exc, LDAPSessionTerminatedByServerError) and (
                step == "StartTLS" or (step.startswith("binding") and not self.start_tls)):
            return (f"{text}: the server closed the connection at the first request; if port {self._port} is "
                    "an ldaps:// port (636), use ldaps:// for it, or the server's plain LDAP port (389)")
        return text

    def _connect(self) -> ldap3.Connection:
        tls = None
        if self.ca_file:
            try:  # ldap3 checks only that the file exists, and says "invalid CA public key file"
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                looked = "" if os.path.isabs(self.ca_file) else f" ({os.path.abspath(self.ca_file)})"
                raise DirectoryError(f"LDAP {self.url}: directory.ldap.ca_file {self.ca_file!r}{looked} cannot be "
                                     f"used: {exc}; give the PEM file of the CA that signed the server's certificate") \
                    from exc
        if self._ssl or self.start_tls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.ca_file)
        server = ldap3.Server(self._host, port=self._port, use_ssl=self._ssl, tls=tls,
                              connect_timeout=self.timeout, get_info=ldap3.NONE)
        return ldap3.Connection(
            server, user=self.bind_dn, password=self._password,
            authentication=ldap3.SIMPLE if self.bind_dn else ldap3.ANONYMOUS,
            auto_bind=ldap3.AUTO_BIND_NONE,
            read_only=True, raise_exceptions=True,
            # ldap3 packs this into SO_RCVTIMEO as whole seconds
            receive_timeout=max(1, math.ceil(self.timeout)),
            auto_referrals=False, return_empty_attributes=False,
        )

    def _attributes(self, members: bool) -> list[str]:
        names = ["objectClass", self.username_attribute, "cn", "displayName", self.group_name_attribute]
        if self.id_attribute:
            names.append(self.id_attribute)  # operational (entryUUID): returned only when asked for
        return [*names, *MEMBER_ATTRIBUTES] if members else names

    def _entry(self, dn: str, attrs: Mapping[str, Any], *, loaded: bool = False) -> _Entry:
        for key in attrs:
            if ";range=" in key.lower():
                # Active Directory hands out large member lists in ranges (member;range=0-1499);
                # reading only the first range would be a partial answer.
                raise DirectoryError(
                    f"LDAP group {dn!r}: the server returned {key!r}, a ranged (partial) member list; "
                    "ranged retrieval is not supported: split the group or raise MaxValRange")
        classes = {c.lower() for c in _values(attrs, "objectClass")}
        usernames = _values(attrs, self.username_attribute)
        display = (_values(attrs, "displayName") or _values(attrs, "cn") or [""])[0]
        return _Entry(
            dn=normalize_dn(dn),
            raw_dn=dn,
            is_group=bool(classes & GROUP_CLASSES),
            username=usernames[0] if usernames else None,
            display=display,
            members=_values(attrs, "member")
            + [_UID_SUFFIX.sub("", v) for v in _values(attrs, "uniqueMember")],
            member_uids=_values(attrs, "memberUid"),
            loaded=loaded,
            stable_id=_stable_id(attrs.get(self.id_attribute)) if self.id_attribute else None,
            usernames=tuple(usernames),
        )

    def _search(self, conn: ldap3.Connection, base: str, filt: str, scope: str, *, members: bool = True,
                refs: list[str] | None = None) -> Iterable[tuple[str, Mapping[str, Any]]]:
        """Entries of a search, all pages; ``refs`` collects the URIs of continuation references
        (RFC 4511 4.5.3: parts of the subtree another server holds, which are not followed)."""
        cookie: bytes | None = None
        while True:
            conn.search(base, filt, search_scope=scope, attributes=self._attributes(members),
                        paged_size=self.page_size if scope != ldap3.BASE else None, paged_cookie=cookie)
            self.stats.searches += 1
            result = conn.result or {}
            if result.get("result", 0) != 0:
                # ldap3 does not raise for sizeLimitExceeded / timeLimitExceeded / referral: the
                # entries received would be a partial answer.
                ended = (f"LDAP {self.url}: search under {base!r} ended with {result.get('description')} "
                         f"({result.get('result')})")
                if result.get("result") == 10:  # referral: the server holds the base elsewhere
                    raise DirectoryError(
                        f"{ended} to {'; '.join(result.get('referrals') or ()) or 'an unnamed server'}; nothing is "
                        f"changed; {_NO_REFERRALS}")
                raise DirectoryError(
                    f"{ended}: {result.get('message') or 'no message'}; "
                    "nothing is changed (raise the server's limits for the bind DN or narrow base_dn)")
            for r in conn.response or []:
                if r.get("type") == "searchResEntry":
                    self.stats.entries += 1
                    attrs = r.get("attributes") or {}
                    raw = (r.get("raw_attributes") or {}).get(self.id_attribute) if self.id_attribute else None
                    if raw:  # as the server sent it: read without schema, a binary GUID may pass for text
                        # attribute names stay case-insensitive (the server spells them its own way)
                        attrs = CaseInsensitiveDict(attrs)
                        attrs[self.id_attribute] = raw
                    yield r["dn"], attrs
                elif r.get("type") == "searchResRef" and refs is not None:
                    refs.extend(str(u) for u in r.get("uri") or ())
            controls = (conn.result or {}).get("controls") or {}
            cookie = (controls.get(_PAGED_OID) or {}).get("value", {}).get("cookie")
            if not cookie or scope == ldap3.BASE:
                return

    def _find_groups(self, conn: ldap3.Connection, groups: list[str]) -> dict[str, _Entry]:
        found: dict[str, _Entry] = {}
        by_name: dict[str, list[str]] = {}
        for name in groups:
            if "=" in name:
                try:
                    normalize_dn(name)
                except ValueError as exc:
                    raise DirectoryError(f"LDAP group {name!r} is no valid DN: {exc}") from exc
                try:
                    hits = list(self._search(conn, name, "(objectClass=*)", ldap3.BASE))
                except LDAPNoSuchObjectResult:
                    hits = []
                if not hits:
                    raise DirectoryError(f"LDAP group {name!r} does not exist on {self.url}")
                entry = self._entry(*hits[0], loaded=True)
                if not entry.is_group:
                    raise DirectoryError(f"LDAP entry {name!r} is no group (groupOfNames, "
                                         "groupOfUniqueNames, posixGroup or group)")
                self._check_empty(conn, entry, hits[0][1])
                found[name] = entry
            else:
                by_name.setdefault(fold(name), []).append(name)
        if by_name:
            attr = self.group_name_attribute
            kinds = "".join(f"(objectClass={c})" for c in ("groupOfNames", "groupOfUniqueNames", "posixGroup",
                                                            "group"))
            names = "".join(f"({attr}={escape_filter_chars(given[0].strip())})" for given in by_name.values())
            filt = f"(&(|{kinds})(|{names}))"
            try:
                refs: list[str] = []
                hits = list(self._search(conn, self.group_base_dn, filt, ldap3.SUBTREE, refs=refs))
            except LDAPNoSuchObjectResult as exc:
                raise self._no_base(self._group_base_setting, self.group_base_dn) from exc
            matches: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
            for dn, attrs in hits:
                for v in _values(attrs, attr):
                    key = fold(v)
                    if key in by_name:
                        matches.setdefault(key, []).append((dn, attrs))
            for key, names_given in by_name.items():
                m = matches.get(key, [])
                if not m and refs:
                    raise DirectoryError(
                        f"LDAP group {names_given[0]!r} is not found under {self.group_base_dn}, and the server "
                        f"refers part of the tree elsewhere ({'; '.join(sorted(set(refs)))}); {_NO_REFERRALS}")
                if not m:
                    raise DirectoryError(f"LDAP group {names_given[0]!r} does not exist: no group with "
                                         f"{attr}={names_given[0]} under {self.group_base_dn} on {self.url}")
                if len(m) > 1:
                    dns = "; ".join(dn for dn, _ in m)
                    raise DirectoryError(f"LDAP group {names_given[0]!r} is ambiguous ({dns}): "
                                         "name it by its full DN")
                entry = self._entry(*m[0], loaded=True)
                self._check_empty(conn, entry, m[0][1])
                for n in names_given:
                    found[n] = entry
        return found

    def _scan(self, conn: ldap3.Connection) -> tuple[dict[str, _Entry], dict[str, list[_Entry]], dict[str, str],
                                                     dict[str, set[str]]]:
        """People and groups by normalised DN and by username, the subtrees the server referred
        elsewhere (normalised DN → the reference's URI): their entries are not read, and the
        normalised DNs several entries share (their DNs as the server wrote them): two names
        slapd keeps apart but :func:`fold` does not (letters newer than slapd's Unicode tables)."""
        classes = "".join(f"(objectClass={c})" for c in (*PERSON_FILTER_CLASSES, "groupOfNames",
                                                          "groupOfUniqueNames", "posixGroup", "group"))
        filt = f"(|{classes})"
        if _is_within(self._group_base_norm, self._base_norm):
            bases = [self.base_dn]
        elif _is_within(self._base_norm, self._group_base_norm):
            bases = [self.group_base_dn]  # holds base_dn: read once (each person once)
        else:
            bases = [self.base_dn, self.group_base_dn]
        index: dict[str, _Entry] = {}
        by_username: dict[str, list[_Entry]] = {}
        referred: dict[str, str] = {}
        twins: dict[str, set[str]] = {}
        for base in bases:
            refs: list[str] = []
            try:
                for dn, attrs in self._search(conn, base, filt, ldap3.SUBTREE, members=False, refs=refs):
                    try:
                        entry = self._entry(dn, attrs)
                    except ValueError:
                        continue  # the server hands out DNs it accepted; cannot happen in practice
                    if entry.dn in index and index[entry.dn].raw_dn == dn:
                        continue  # the same entry again
                    if entry.dn in index:
                        twins.setdefault(entry.dn, {index[entry.dn].raw_dn}).add(dn)
                    index[entry.dn] = entry
                    if not entry.is_group:
                        # a server finds a person by any value of a multi-valued uid (RFC 4519 2.39)
                        for key in dict.fromkeys(fold(u) for u in entry.usernames):
                            by_username.setdefault(key, []).append(entry)
            except LDAPNoSuchObjectResult as exc:
                raise self._no_base("base_dn" if base is self.base_dn else self._group_base_setting, base) from exc
            for uri in refs:
                target = unquote(urlsplit(uri).path.lstrip("/"))
                try:
                    referred[normalize_dn(target) if target else normalize_dn(base)] = uri
                except ValueError:
                    referred[normalize_dn(base)] = uri  # an unreadable reference: the whole base
        return index, by_username, referred, twins

    def _no_base(self, setting: str, base: str) -> DirectoryError:
        return DirectoryError(
            f"LDAP directory.ldap.{setting} {base!r} does not exist on {self.url} (noSuchObject), or the bind DN "
            f"may not see it: set directory.ldap.{setting} to an entry the server holds")

    def _load_members(self, conn: ldap3.Connection, group: _Entry) -> _Entry:
        """Read a nested group's members (one base search per group reached, never per member)."""
        if group.loaded:
            return group
        hits = list(self._search(conn, group.raw_dn, "(objectClass=*)", ldap3.BASE))
        if not hits:
            raise DirectoryError(f"LDAP group {group.raw_dn!r} vanished during the read")
        full = self._entry(*hits[0], loaded=True)
        self._check_empty(conn, full, hits[0][1])
        group.members, group.member_uids, group.loaded = full.members, full.member_uids, True
        return group

    def _check_empty(self, conn: ldap3.Connection, group: _Entry, attrs: Mapping[str, Any]) -> None:
        """A group read with no member is empty only if the server says it has no member
        attribute: one whose members the bind DN may not read comes without them too (an access
        rule), and reading it as empty would remove every member. A compare tells them apart
        (RFC 4511 4.10: noSuchAttribute for an attribute the entry lacks; an access rule makes it
        insufficientAccessRights, or compareFalse when the bind DN may compare but not read)."""
        if group.members or group.member_uids:
            return
        classes = {c.lower() for c in _values(attrs, "objectClass")}
        for attr in dict.fromkeys(a for kind, a in _KIND_MEMBER.items() if kind in classes):
            probe = "-" if attr == "memberUid" else group.raw_dn
            try:
                conn.compare(group.raw_dn, attr, probe)
            except LDAPNoSuchAttributeResult:
                continue  # the group has no members
            except LDAPOperationResult as exc:  # the server's answer (a lost connection is raised as it is)
                raise DirectoryError(
                    f"LDAP group {group.raw_dn!r} came without members and the server would not say it has none "
                    f"({type(exc).__name__}: {exc}): the bind DN {self.bind_dn or '(anonymous)'} may not read its "
                    f"{attr}; nothing is changed (allow the bind DN to read {attr})") from exc
            raise DirectoryError(
                f"LDAP group {group.raw_dn!r} came without members but holds {attr} values: the bind DN "
                f"{self.bind_dn or '(anonymous)'} may not read them; nothing is changed (allow the bind DN to "
                f"read {attr})")

    def _expand(self, conn: ldap3.Connection, name: str, root: _Entry, index: Mapping[str, _Entry],
                by_username: Mapping[str, list[_Entry]], notes: list[str],
                referred: Mapping[str, str], twins: Mapping[str, set[str]]) -> set[Member]:
        members: set[Member] = set()

        def unread(what: str, group: _Entry, dn: str | None) -> None:
            """A member that may lie in a subtree the server referred elsewhere is unknown, never
            gone (hubpilot does not chase referrals)."""
            uris = [u for base, u in referred.items() if dn is None or _is_within(dn, base)]
            if uris:
                raise DirectoryError(
                    f"LDAP group {name!r}: {what} of '{group.raw_dn}' is not found, and the server refers "
                    f"part of the tree elsewhere ({'; '.join(sorted(set(uris)))}); {_NO_REFERRALS}")
        # the fewest levels of nesting at which each group was walked: a group reached first the long
        # way is walked again when reached by a shorter one, where its own groups may still be in depth
        expanded: dict[str, int] = {}
        too_deep: dict[str, str] = {}  # noted once the walk is done, for groups no shorter way reached

        def person(e: _Entry) -> Member:
            # the id attribute keeps a person recognisable when the entry is renamed (modrdn); an
            # entry without it is known by its DN, which a rename changes
            return Member(id=e.stable_id or e.dn, username=e.username, display=e.display, where=e.raw_dn,
                          alias=e.dn if e.stable_id else _legacy_dn(e.raw_dn, e.dn))

        def walk(group: _Entry, path: tuple[str, ...]) -> None:
            expanded[group.dn] = len(path)
            group = self._load_members(conn, group)
            for uid in group.member_uids:
                hits = by_username.get(fold(uid), [])
                if not hits:
                    unread(f"memberUid {uid!r}", group, None)
                    notes.append(f"{name}: memberUid {uid!r} of '{group.raw_dn}' matches no person by "
                                 f"{self.username_attribute}; skipped")
                elif len(hits) > 1:
                    raise DirectoryError(
                        f"LDAP group {name!r}: memberUid {uid!r} of '{group.raw_dn}' matches {len(hits)} people "
                        f"({'; '.join(h.dn for h in hits)}): make {self.username_attribute} unique")
                else:
                    members.add(person(hits[0]))
            for raw in group.members:
                try:
                    dn = normalize_dn(raw)
                except ValueError as exc:
                    notes.append(f"{name}: member '{raw}' of '{group.raw_dn}' is no valid DN ({exc}); skipped")
                    continue
                if dn in twins:
                    raise DirectoryError(
                        f"LDAP group {name!r}: member '{raw}' of '{group.raw_dn}' names one of several entries "
                        f"hubpilot cannot tell apart ({'; '.join(sorted(twins[dn]))}): their names differ only "
                        "in letters whose case hubpilot folds and the server does not; rename one of them")
                entry = index.get(dn)
                if entry is None:
                    unread(f"member '{raw}'", group, dn)
                    if not dn:  # groupOfNames must have a member: an empty group holds member: ""
                        why = "is empty (a placeholder for no member)"
                    elif _is_within(dn, self._base_norm):
                        why = "does not exist or is no person or group"
                    else:
                        why = f"lies outside base_dn {self.base_dn!r}"
                    notes.append(f"{name}: member '{raw}' of '{group.raw_dn}' {why}; skipped")
                elif not entry.is_group:
                    members.add(person(entry))
                elif not self.nested:
                    notes.append(f"{name}: member '{raw}' of '{group.raw_dn}' is a group and nested groups are "
                                 "off; skipped")
                elif dn in path:
                    notes.append(f"{name}: nesting cycle {' -> '.join((*path, dn))}; not followed again")
                elif expanded.get(dn, len(path) + 2) <= len(path) + 1:
                    continue
                elif len(path) > self.nested_max_depth:
                    too_deep.setdefault(dn, f"{name}: group {dn} is nested deeper than nested_max_depth="
                                            f"{self.nested_max_depth}; not followed")
                else:
                    walk(entry, (*path, dn))

        walk(root, (root.dn,))
        notes.extend(note for dn, note in too_deep.items() if dn not in expanded)
        return members
