"""LdapDirectory against a real slapd (tests/slapd.py) loaded with OpenLDAP's own test data."""

from __future__ import annotations

import math
import os
import re
import signal
from pathlib import Path

import ldap3
import pytest

from hubpilot.adapters.ldap import LdapDirectory, _stable_id, normalize_dn
from hubpilot.config.directory import LdapSettings
from hubpilot.ports.directory import DirectoryError, DirectorySnapshot
from tests.slapd import LIMITED_PASSWORD, Slapd, people_ldif

pytestmark = pytest.mark.ldap

OPENLDAP = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "openldap"
COM = "dc=example,dc=com"
PEOPLE = "ou=People,dc=example,dc=com"
ITD = "ou=Information Technology Division," + PEOPLE
ALUMNI = "ou=Alumni Association," + PEOPLE


def directory(slapd: Slapd, **kw: object) -> LdapDirectory:
    """The tests that check how member DNs resolve identify people by their DN (``id_attribute``
    off); the entryUUID tests at the end pass the default."""
    args: dict[str, object] = dict(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                                   base_dn=COM, timeout=5.0, id_attribute=None)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


def usernames(snap: DirectorySnapshot, group: str) -> set[str | None]:
    return {m.username for m in snap.groups[group]}


def by_username(snap: DirectorySnapshot, group: str) -> dict[str | None, tuple[str, str]]:
    return {m.username: (m.id, m.display) for m in snap.groups[group]}


# ---- OpenLDAP's test.ldif, loaded as it is -------------------------------------------------


async def test_group_of_names_from_openldap_test_data(slapd: Slapd) -> None:
    snap = await directory(slapd).read(["All Staff"])
    # cn=Manager is objectClass person without uid: a member whose username is unknown
    assert usernames(snap, "All Staff") == {
        None, "bjensen", "jdoe", "johnd", "melliot", "jaj", "jjones", "jen", "dots", "uham", "bjorn"}
    members = by_username(snap, "All Staff")
    # folded member lines are joined; ids are normalised DNs; display is the first cn
    assert members["bjensen"] == (f"cn=barbara jensen,{ITD}".lower(), "Barbara Jensen")
    assert members["jjones"] == (f"cn=james a jones 2,{ITD}".lower(), "James A Jones 2")
    assert members[None] == ("cn=manager,dc=example,dc=com", "Manager")
    assert snap.notes == ()
    assert snap.source == f"ldap {slapd.url}"


async def test_group_of_unique_names_and_several_groups_in_one_read(slapd: Slapd) -> None:
    d = directory(slapd)
    snap = await d.read(["ITD Staff", "Alumni Assoc Staff", f"cn=ITD Staff,ou=Groups,{COM}"])
    assert usernames(snap, "ITD Staff") == {None, "bjorn", "jjones", "johnd"}
    assert snap.groups[f"cn=ITD Staff,ou=Groups,{COM}"] == snap.groups["ITD Staff"]
    assert usernames(snap, "Alumni Assoc Staff") == {None, "dots", "jaj", "jdoe", "jen", "melliot", "uham"}
    # one search for the named groups, one base search for the DN, one (single-page) scan
    assert d.stats.searches == 3
    assert d.stats.reads == 1


async def test_username_attribute_is_configurable(slapd: Slapd) -> None:
    snap = await directory(slapd, username_attribute="mail").read(["ITD Staff"])
    assert usernames(snap, "ITD Staff") == {
        None, "bjorn@mailgw.example.com", "jjones@mailgw.example.com", "johnd@mailgw.example.com"}


async def test_uid_suffix_self_membership_and_members_that_are_no_person(slapd: Slapd) -> None:
    # test-dn.ldif: uniqueMember values with the optional #'...'B uid; the group lists itself
    snap = await directory(slapd).read(["Name and Optional UID"])
    assert snap.groups["Name and Optional UID"] == frozenset()
    notes = "\n".join(snap.notes)
    assert "is a group and nested groups are off" in notes
    assert "member 'dc=example,dc=com' of 'cn=Name and Optional UID" in notes  # suffix #'1000'B dropped
    assert "does not exist or is no person or group" in notes
    assert len(snap.notes) == 5

    nested = await directory(slapd, nested=True).read(["Name and Optional UID"])
    assert any("nesting cycle" in n for n in nested.notes)


# ---- DN normalisation: test-dn.ldif ----------------------------------------------------------


def _ldif_entries(path: Path) -> list[dict[str, list[str]]]:
    text = re.sub(r"\n ", "", path.read_text())
    entries = []
    for block in text.split("\n\n"):
        entry: dict[str, list[str]] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            entry.setdefault(key.lower(), []).append(value[1:] if value.startswith(" ") else value)
        if "dn" in entry:
            entries.append(entry)
    return entries


def test_dn_forms_that_test_dn_ldif_declares_equal_normalise_equal() -> None:
    must = next(e for e in _ldif_entries(OPENLDAP / "test-dn.ldif") if e["dn"][0].startswith("cn=Must Succeed"))
    # "seeAlso values contain DN forms already defined as member, in a different representation"
    for other in must["seealso"]:
        assert normalize_dn(other) in {normalize_dn(m) for m in must["member"]}, other
    assert normalize_dn(r"CN=Lu\C4\8Di\C4\87") == "cn=lučić"
    assert normalize_dn("OU=Sales+CN=J. Smith,DC=example,DC=net") == normalize_dn(
        "cn=J. Smith + ou=sales, dc=EXAMPLE, dc=net")
    # RFC 1779 forms (the LDAPv2 groups) mean the same DN
    v2 = {normalize_dn(x) for x in ("UID=jsmith, O=example, C=US", "UID=jsmith;O=example;C=US",
                                    "<UID=jsmith,O=example,C=US>", "uid=jsmith,o=example,c=us")}
    assert v2 == {"uid=jsmith,o=example,c=us"}
    assert normalize_dn("OID.0.9.2342.19200300.100.1.1=jsmith") == "0.9.2342.19200300.100.1.1=jsmith"
    assert normalize_dn('CN="John Smith",O=example,C=US') == "cn=john smith,o=example,c=us"
    assert normalize_dn("cn=A*x=b is a linear algebra problem,ou=LDAPv3") == normalize_dn(
        r"cn=A*x\3Db is a linear algebra problem,ou=LDAPv3")


def test_the_quick_path_agrees_with_the_full_parser() -> None:
    from hubpilot.adapters.ldap import _normalize_full, _normalize_simple

    dns = [v for e in _ldif_entries(OPENLDAP / "test.ldif") for k in ("dn", "member", "uniquemember", "owner")
           for v in e.get(k, [])]
    assert len(dns) > 40
    for dn in [*dns, "UID=jsmith, O=example, C=US", "cn=A*x=b is a linear algebra problem,ou=LDAPv3", "1.1.1="]:
        assert _normalize_simple(dn) == _normalize_full(dn), dn


def test_dns_that_test_dn_ldif_says_must_fail_are_refused() -> None:
    bad = [m for e in _ldif_entries(OPENLDAP / "test-dn.ldif") if e["dn"][0].startswith("cn=Must Fail")
           for m in e.get("member", [])]
    assert len(bad) == 17
    # 01.1=jsmith (a leading zero in a numeric OID) is accepted: slapd accepts it too
    for dn in bad:
        if dn == "01.1=jsmith":
            continue
        with pytest.raises(ValueError):
            normalize_dn(dn)


async def test_escaped_multi_valued_and_utf8_member_dns_resolve_to_people(slapd: Slapd) -> None:
    """The "Must Succeed" group of test-dn.ldif names people in dc=example,dc=net; create them
    under another string form of the same DN and check each member is found."""
    net = "dc=example,dc=net"
    people = {
        "uid=jsmith,dc=example,dc=net": {"uid": "jsmith", "cn": "J Smith"},
        r"CN=John Smith\2C III,DC=example,DC=net": {"uid": "john3", "cn": "John Smith, III"},
        "cn=J. Smith+ou=Sales,dc=example,dc=net": {"uid": "jsales", "cn": "J. Smith", "ou": "Sales"},
        r"CN=\#John Smith\ ,DC=example,DC=net": {"uid": "hashjohn", "cn": "#John Smith "},
        r"CN=Before\0DAfter,DC=example,DC=net": {"uid": "crlf", "cn": "Before\rAfter"},
    }
    for dn, attrs in people.items():
        try:
            slapd.add(dn, {"objectClass": ["inetOrgPerson"], "sn": "x", **attrs})
        except ldap3.core.exceptions.LDAPEntryAlreadyExistsResult:
            pass
    try:
        slapd.add(r"OU=Sales\3B Data\2BAlgorithms,DC=example,DC=net",
                  {"objectClass": ["organizationalUnit"], "ou": "Sales; Data+Algorithms"})
    except ldap3.core.exceptions.LDAPEntryAlreadyExistsResult:
        pass
    group = f"cn=Must Succeed,ou=LDAPv3,{COM}"
    snap = await directory(slapd, base_dn=net, group_base_dn=COM, nested=True).read([group])
    found = by_username(snap, group)
    assert set(found) == {"jsmith", "john3", "jsales", "hashjohn", "crlf"}
    assert found["john3"][0] == r"cn=john smith\, iii,dc=example,dc=net"
    assert found["jsales"][0] == "cn=j. smith+ou=sales,dc=example,dc=net"
    notes = "\n".join(snap.notes)
    assert "nesting cycle" in notes  # the group is its own member
    assert r"'OU=Sales\; Data\+Algorithms,DC=example,DC=net' of" in notes  # an ou: no person
    assert r"member 'CN=Lu\C4\8Di\C4\87' of 'cn=Must Succeed,ou=LDAPv3,dc=example,dc=com' lies outside" in notes
    assert "testUUID=597ae2f6" in notes
    assert "member '' of" in notes
    assert len(snap.notes) == 5


async def test_a_member_dn_in_another_unicode_normal_form_is_the_same_person(slapd: Slapd, ldap_names: str) -> None:
    """slapd matches DN values after Unicode normalisation (RFC 4518 2.3: NFKC) but keeps a member
    value as it was written: a member DN typed in decomposed form (NFD, as macOS tools write it)
    names the same person as the entry's precomposed DN."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    nfc, nfd = "Ren\u00e9 Mu\u00f1oz", "Rene\u0301 Mun\u0303oz"
    slapd.add(f"cn={nfc},{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}rene", "cn": nfc, "sn": "x"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g", "member": [f"cn={nfd},{ou}"]})
    conn = slapd.connect()
    try:  # the server agrees the two are one DN, and returns the member as written
        assert conn.compare(f"cn={t}-g,{ou}", "member", f"cn={nfc},{ou}")
        conn.search(f"cn={t}-g,{ou}", "(objectClass=*)", ldap3.BASE, attributes=["member"])
        assert conn.response[0]["attributes"]["member"] == [f"cn={nfd},{ou}"]
    finally:
        conn.unbind()
    snap = await directory(slapd, base_dn=ou).read([f"{t}-g"])
    assert usernames(snap, f"{t}-g") == {f"{t}rene"}
    assert snap.notes == ()
    assert normalize_dn(f"cn={nfd},{ou}") == normalize_dn(f"CN={nfc.upper()},{ou}")


# ---- group kinds and nesting ---------------------------------------------------------------


async def test_posix_group_member_uids_resolve_by_username(slapd: Slapd, ldap_names: str) -> None:
    ou = f"ou={ldap_names},{COM}"
    slapd.load_ldif(people_ldif(4, ou=ldap_names, group=f"{ldap_names}-posix", kind="posixGroup",
                                prefix=ldap_names))
    slapd.modify(f"cn={ldap_names}-posix,{ou}", {"memberUid": [(ldap3.MODIFY_ADD, ["ghost"])]})
    snap = await directory(slapd, base_dn=ou).read([f"{ldap_names}-posix"])
    assert usernames(snap, f"{ldap_names}-posix") == {f"{ldap_names}{i:05d}" for i in range(4)}
    assert {m.id for m in snap.groups[f"{ldap_names}-posix"]} == {
        f"uid={ldap_names}{i:05d},{ou}".lower() for i in range(4)}
    assert len(snap.notes) == 1 and "memberUid 'ghost'" in snap.notes[0]



async def test_a_member_uid_matches_any_uid_value_of_a_person(slapd: Slapd, ldap_names: str) -> None:
    """uid is multi-valued (RFC 4519 2.39): the server finds a person by any of its values, so a
    memberUid naming the second one names that person; the hub username stays the first value."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"cn=Jo Two,{ou}", {"objectClass": ["inetOrgPerson"], "uid": [f"{t}jo", f"{t}jo.two"],
                                  "cn": "Jo Two", "sn": "x"})
    slapd.add(f"cn={t}-p,{ou}", {"objectClass": ["posixGroup"], "cn": f"{t}-p", "gidNumber": 4343,
                                 "memberUid": [f"{t}jo.two"]})
    conn = slapd.connect()
    try:
        conn.search(ou, f"(uid={t}jo.two)", attributes=["uid"])
        assert [r["dn"] for r in conn.response] == [f"cn=Jo Two,{ou}"]
        assert conn.response[0]["attributes"]["uid"] == [f"{t}jo", f"{t}jo.two"]
    finally:
        conn.unbind()
    snap = await directory(slapd, base_dn=ou).read([f"{t}-p"])
    assert usernames(snap, f"{t}-p") == {f"{t}jo"}
    assert snap.notes == ()

def _nested_tree(slapd: Slapd, t: str) -> str:
    """a ∋ {pa, b}; b ∋ {pb, c}; c ∋ {pc, a} (a cycle); also a posix group under c."""
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    for p in ("pa", "pb", "pc", "pd"):
        slapd.add(f"uid={t}{p},{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}{p}", "cn": p, "sn": p})
    slapd.add(f"cn={t}-d,{ou}", {"objectClass": ["posixGroup"], "cn": f"{t}-d", "gidNumber": 4242,
                                 "memberUid": [f"{t}pd"]})
    slapd.add(f"cn={t}-a,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-a",
                                 "member": [f"uid={t}pa,{ou}"]})
    slapd.add(f"cn={t}-b,{ou}", {"objectClass": ["groupOfUniqueNames"], "cn": f"{t}-b",
                                 "uniqueMember": [f"uid={t}pb,{ou}", f"cn={t}-a,{ou}#'01'B"]})
    slapd.add(f"cn={t}-c,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-c",
                                 "member": [f"uid={t}pc,{ou}", f"CN={t}-B, {ou}", f"cn={t}-d,{ou}"]})
    slapd.modify(f"cn={t}-a,{ou}", {"member": [(ldap3.MODIFY_ADD, [f"cn={t}-c,{ou}"])]})
    return ou


async def test_nested_groups_with_a_cycle(slapd: Slapd, ldap_names: str) -> None:
    t = ldap_names
    ou = _nested_tree(slapd, t)
    a = f"{t}-a"
    d = directory(slapd, base_dn=ou, nested=True)
    snap = await d.read([a])
    assert usernames(snap, a) == {f"{t}pa", f"{t}pb", f"{t}pc", f"{t}pd"}
    # find a, scan the ou, then one base search per nested group reached (c, b, d): not per member
    assert d.stats.searches == 2 + 3
    assert len(snap.notes) == 1 and "nesting cycle" in snap.notes[0]  # b -> a

    flat = await directory(slapd, base_dn=ou, nested=False).read([a])
    assert usernames(flat, a) == {f"{t}pa"}
    assert len(flat.notes) == 1 and "nested groups are off" in flat.notes[0]

    shallow = await directory(slapd, base_dn=ou, nested=True, nested_max_depth=1).read([a])
    assert usernames(shallow, a) == {f"{t}pa", f"{t}pc"}  # a -> c only
    assert any("deeper than nested_max_depth=1" in n for n in shallow.notes)

    # reading c: c -> b -> a -> c is the cycle now
    c = await directory(slapd, base_dn=ou, nested=True).read([f"{t}-c"])
    assert usernames(c, f"{t}-c") == usernames(snap, a)


async def test_an_organizational_role_member_is_noted_and_skipped(slapd: Slapd, ldap_names: str) -> None:
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"cn=boss,{ou}", {"objectClass": ["organizationalRole"], "cn": "boss"})
    slapd.add(f"uid={t}x,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}x", "cn": "X", "sn": "x"})
    slapd.add(f"uid={t}nouid,{ou}".replace("uid=", "cn=", 1),
              {"objectClass": ["inetOrgPerson"], "cn": f"{t}nouid", "sn": "n", "displayName": "No Uid"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g",
                                 "member": [f"cn=boss,{ou}", f"uid={t}x,{ou}", f"cn={t}nouid,{ou}",
                                            f"uid={t}gone,{ou}"]})
    snap = await directory(slapd, base_dn=ou).read([f"{t}-g"])
    assert by_username(snap, f"{t}-g") == {
        f"{t}x": (f"uid={t}x,{ou}", "X"),
        None: (f"cn={t}nouid,{ou}", "No Uid"),  # displayName wins over cn
    }
    assert len(snap.notes) == 2
    assert all("does not exist or is no person or group; skipped" in n for n in snap.notes)


async def test_paged_search_over_more_entries_than_the_page_size(slapd: Slapd, ldap_names: str) -> None:
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.load_ldif(people_ldif(120, ou=t, group=f"{t}-all", prefix=t))
    d = directory(slapd, base_dn=ou, page_size=25)
    snap = await d.read([f"{t}-all"])
    assert len(snap.groups[f"{t}-all"]) == 120
    assert d.stats.searches == 1 + math.ceil(121 / 25)  # the group, then 5 pages of 120 people + 1 group
    assert d.stats.entries == 1 + 121


# ---- failures: never a partial snapshot ------------------------------------------------------


async def test_a_group_that_does_not_exist_fails_the_read(slapd: Slapd) -> None:
    with pytest.raises(DirectoryError, match=r"group 'No Such Group' does not exist"):
        await directory(slapd).read(["All Staff", "No Such Group"])
    with pytest.raises(DirectoryError, match="does not exist"):
        await directory(slapd).read([f"cn=Nope,ou=Groups,{COM}"])
    with pytest.raises(DirectoryError, match="is no group"):
        await directory(slapd).read([f"cn=Manager,{COM}"])


async def test_no_groups_asked_reads_nothing_but_still_binds(slapd: Slapd) -> None:
    d = directory(slapd)
    assert (await d.read([])).groups == {}
    assert d.stats.searches == 0
    with pytest.raises(DirectoryError, match="invalidCredentials"):
        await directory(slapd, bind_password="wrong").read([])


async def test_anonymous_bind_reads(slapd: Slapd) -> None:
    snap = await directory(slapd, bind_dn=None, bind_password=None).read(["ITD Staff"])
    assert usernames(snap, "ITD Staff") == {None, "bjorn", "jjones", "johnd"}


async def test_a_blank_bind_dn_without_a_password_reads_anonymously_as_an_empty_one(slapd: Slapd) -> None:
    """bind_dn = "   " passed the settings and every sync then failed 'binding as     failed:
    password is mandatory in simple bind', naming no setting; "" read anonymously."""
    for blank in ("", "   ", "\t"):
        d = directory(slapd, bind_dn=blank, bind_password=None)
        assert d.bind_dn is None
        snap = await d.read(["ITD Staff"])
        assert usernames(snap, "ITD Staff") == {None, "bjorn", "jjones", "johnd"}
        assert LdapSettings(url=slapd.url, base_dn=COM, bind_dn=blank).bind_dn is None  # the same at start


async def test_a_bind_password_without_a_bind_dn_is_refused_not_read_anonymously(slapd: Slapd) -> None:
    """An empty bind_dn (an unset template variable) beside a password would bind anonymously:
    the password ignored, the read made with what anonymous may see (often fewer members)."""
    for empty in ("", None, " "):
        with pytest.raises(ValueError, match="bind_password is set but bind_dn is empty"):
            await directory(slapd, bind_dn=empty, bind_password=slapd.root_password).read(["ITD Staff"])
        with pytest.raises(ValueError, match="bind_password is set but bind_dn is empty"):  # and at start
            LdapSettings(url=slapd.url, base_dn=COM, bind_dn=empty, bind_password=slapd.root_password)
    # a bind DN given with an empty password is no anonymous bind either (RFC 4513 5.1.2)
    for no_password in ("", None):
        with pytest.raises(DirectoryError, match=r"binding as cn=admin,dc=example,dc=com failed: .*password"):
            await directory(slapd, bind_password=no_password).read(["ITD Staff"])
        # and it is refused at start, naming the setting to give (a secret that did not arrive)
        with pytest.raises(ValueError, match=r"bind_dn is set but bind_password is empty.*"
                                             r"HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD"):
            LdapSettings(url=slapd.url, base_dn=COM, bind_dn=slapd.root_dn, bind_password=no_password)

async def test_wrong_bind_password_fails(slapd: Slapd) -> None:
    with pytest.raises(DirectoryError, match=r"binding as cn=admin,dc=example,dc=com failed: .*invalidCredentials"):
        await directory(slapd, bind_password="wrong").read(["All Staff"])


async def test_a_size_limit_fails_the_read(slapd: Slapd) -> None:
    slapd.add_limited_reader()
    d = directory(slapd, bind_dn=slapd.limited_dn, bind_password=LIMITED_PASSWORD, page_size=3)
    with pytest.raises(DirectoryError, match=r"sizeLimitExceeded \(4\)"):
        await d.read(["All Staff"])


async def test_directory_down_fails_and_a_later_read_works(slapd: Slapd) -> None:
    d = directory(slapd)
    slapd.stop()
    try:
        with pytest.raises(DirectoryError, match=r"connecting to ldap://127\.0\.0\.1:\d+ failed: .*refused"):
            await d.read(["ITD Staff"])
    finally:
        slapd.start()
    snap = await d.read(["ITD Staff"])
    assert usernames(snap, "ITD Staff") == {None, "bjorn", "jjones", "johnd"}


async def test_a_server_that_stops_answering_times_out(slapd: Slapd) -> None:
    assert slapd.process is not None
    pid = slapd.process.pid
    os.kill(pid, signal.SIGSTOP)  # the kernel still accepts the connection; no answer comes
    try:
        # Which timer fires is not promised: the connect one when the handshake is slow or the
        # stopped server's accept queue is full (other clients waiting), the receive one at the bind
        # otherwise; either way the read fails naming the step and a timeout.
        with pytest.raises(DirectoryError, match=r"^LDAP ldap://127\.0\.0\.1:\d+: (connecting to ldap://127\.0\.0\.1:"
                                                 r"\d+|binding as cn=admin,dc=example,dc=com) failed: .*timed out"):
            await directory(slapd, timeout=0.5).read(["ITD Staff"])
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_ldaps_and_start_tls_verify_the_server_certificate(slapd: Slapd) -> None:
    ldaps = await directory(slapd, url=slapd.ldaps_url, ca_file=slapd.ca_file).read(["ITD Staff"])
    assert usernames(ldaps, "ITD Staff") == {None, "bjorn", "jjones", "johnd"}
    assert ldaps.source == f"ldap {slapd.ldaps_url}"
    start_tls = await directory(slapd, start_tls=True, ca_file=slapd.ca_file).read(["ITD Staff"])
    assert start_tls.groups == ldaps.groups
    # without the test CA the certificate is not trusted: no read, not even for StartTLS
    with pytest.raises(DirectoryError, match=r"connecting to ldaps://127\.0\.0\.1:\d+ failed: .*CERTIFICATE_VERIFY"):
        await directory(slapd, url=slapd.ldaps_url).read(["ITD Staff"])
    with pytest.raises(DirectoryError, match=r"StartTLS failed: .*CERTIFICATE_VERIFY"):
        await directory(slapd, start_tls=True).read(["ITD Staff"])


def test_bad_url_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="ldap://host"):
        LdapDirectory(url="http://example.org", base_dn=COM)


# ---- a person's id across renames ------------------------------------------------------------

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def entry_uuid(slapd: Slapd, dn: str) -> str:
    conn = slapd.connect()
    try:
        conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["entryUUID"])
        value = conn.response[0]["attributes"]["entryUUID"]
        return str(value[0] if isinstance(value, list) else value)
    finally:
        conn.unbind()


def bob_and_amy(slapd: Slapd, t: str) -> tuple[str, str]:
    """ou=<t> with people <t>-bob and <t>-amy, both in the groupOfNames <t>-g: (ou, group DN)."""
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    for short in ("bob", "amy"):
        slapd.add(f"uid={t}-{short},{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}-{short}",
                                             "cn": short.title(), "sn": "x"})
    group = f"cn={t}-g,{ou}"
    slapd.add(group, {"objectClass": ["groupOfNames"], "cn": f"{t}-g",
                      "member": [f"uid={t}-bob,{ou}", f"uid={t}-amy,{ou}"]})
    return ou, group


async def test_people_keep_their_entry_uuid_id_across_a_rename(slapd: Slapd, ldap_names: str) -> None:
    t = ldap_names
    ou, group = bob_and_amy(slapd, t)
    bob_uuid = entry_uuid(slapd, f"uid={t}-bob,{ou}")
    assert UUID_RE.fullmatch(bob_uuid)
    default = LdapDirectory(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password, base_dn=ou)
    before = by_username(await default.read([f"{t}-g"]), f"{t}-g")
    assert before[f"{t}-bob"][0] == bob_uuid
    assert before[f"{t}-amy"][0] == entry_uuid(slapd, f"uid={t}-amy,{ou}")

    # modrdn: the entry moves to another DN and its uid changes; the group follows
    assert slapd.rename(f"uid={t}-bob,{ou}", f"uid={t}-robert", groups=[group]) == f"uid={t}-robert,{ou}"
    after = by_username(await default.read([f"{t}-g"]), f"{t}-g")
    assert set(after) == {f"{t}-robert", f"{t}-amy"}
    assert after[f"{t}-robert"] == (bob_uuid, "Bob")  # the same person, now named robert
    # identified by DN, the renamed person is someone else
    by_dn = by_username(await directory(slapd, base_dn=ou).read([f"{t}-g"]), f"{t}-g")
    assert by_dn[f"{t}-robert"][0] == f"uid={t}-robert,{ou}".lower()


async def test_an_entry_without_the_id_attribute_is_known_by_its_dn(slapd: Slapd, ldap_names: str) -> None:
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"uid={t}-a,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}-a", "cn": "A", "sn": "x",
                                  "employeeNumber": "E-17"})
    slapd.add(f"uid={t}-b,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}-b", "cn": "B", "sn": "x"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g",
                                 "member": [f"uid={t}-a,{ou}", f"uid={t}-b,{ou}"]})
    d = directory(slapd, base_dn=ou, id_attribute="employeeNumber")
    found = by_username(await d.read([f"{t}-g"]), f"{t}-g")
    assert found[f"{t}-a"][0] == "E-17"
    assert found[f"{t}-b"][0] == f"uid={t}-b,{ou}".lower()


async def test_openldap_test_data_loaded_with_slapadd_has_distinct_entry_uuids(slapd: Slapd) -> None:
    d = LdapDirectory(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password, base_dn=COM)
    members = (await d.read(["All Staff"])).groups["All Staff"]
    ids = [m.id for m in members]
    assert len(ids) == 11 and len(set(ids)) == 11
    assert all(UUID_RE.fullmatch(i) for i in ids), ids


def test_active_directory_object_guid_bytes_read_as_the_guid_string() -> None:
    # objectGUID {01020304-0506-0708-090a-0b0c0d0e0f10} is stored little-endian in its first three parts
    raw = bytes([4, 3, 2, 1, 6, 5, 8, 7, 9, 10, 11, 12, 13, 14, 15, 16])
    assert _stable_id([raw]) == "01020304-0506-0708-090a-0b0c0d0e0f10"
    assert _stable_id(b"\x01\x02") == "0102"  # binary, not a GUID: its hex
    assert _stable_id([b"dd33a70a-7d97-1041-9917-ab21ecbd2d74"]) == "dd33a70a-7d97-1041-9917-ab21ecbd2d74"
    assert _stable_id([b"0123456789abcdef"]) == "33323130-3534-3736-3839-616263646566"  # 16 bytes: a GUID
    assert _stable_id(["5f1e-x"]) == "5f1e-x"
    assert _stable_id([]) is None and _stable_id("") is None and _stable_id(None) is None


async def test_a_rename_the_group_does_not_follow_leaves_the_person_out(slapd: Slapd, ldap_names: str) -> None:
    """Without refint the group still names the old DN: noted and skipped, not an error."""
    t = ldap_names
    ou, _ = bob_and_amy(slapd, t)
    slapd.rename(f"uid={t}-bob,{ou}", f"uid={t}-robert")
    snap = await LdapDirectory(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                               base_dn=ou).read([f"{t}-g"])
    assert usernames(snap, f"{t}-g") == {f"{t}-amy"}
    assert len(snap.notes) == 1 and f"member 'uid={t}-bob,{ou}'" in snap.notes[0]
    assert "does not exist" in snap.notes[0]
