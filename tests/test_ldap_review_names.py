"""Review: names and DNs as slapd matches them (tests/slapd.py's session server).

slapd prepares values for matching (RFC 4518) with simple lower-casing: "Straße" and "STRASSE"
are two names to it, as are "σ" and "ς"; and it collapses spaces, not tabs or line breaks.
hubpilot must not take two entries the server keeps apart for one."""

from __future__ import annotations

import pytest
from ldap3.utils.dn import escape_rdn

from hubpilot.adapters.ldap import LdapDirectory, normalize_dn
from hubpilot.ports.directory import DirectoryError
from tests.slapd import Slapd, people_ldif

pytestmark = pytest.mark.ldap

COM = "dc=example,dc=com"


def directory(slapd: Slapd, **kw: object) -> LdapDirectory:
    args: dict[str, object] = dict(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                                   base_dn=COM, timeout=5.0, id_attribute=None)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


# (the name the group names, a sibling's name the server holds apart from it)
APART = [("Strauß", "Strauss"), ("Παππάς", "Παππάσ"), ("İnci", "i\u0307nci"), ("Before\tAfter", "Before After")]


@pytest.mark.parametrize(("named", "other"), APART)
async def test_a_member_dn_names_the_entry_the_server_means_not_a_look_alike(
        slapd: Slapd, ldap_names: str, named: str, other: str) -> None:
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    named_dn, other_dn = f"cn={escape_rdn(named)},{ou}", f"cn={escape_rdn(other)},{ou}"
    slapd.add(named_dn, {"objectClass": ["inetOrgPerson"], "uid": f"{t}-named", "cn": named, "sn": "x"})
    # the server holds the look-alike as another entry (added after: read later in the scan)
    slapd.add(other_dn, {"objectClass": ["inetOrgPerson"], "uid": f"{t}-other", "cn": other, "sn": "x"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g", "member": [named_dn]})
    conn = slapd.connect()
    try:
        assert conn.compare(f"cn={t}-g,{ou}", "member", named_dn)
        assert not conn.compare(f"cn={t}-g,{ou}", "member", other_dn)
    finally:
        conn.unbind()
    snap = await directory(slapd, base_dn=ou).read([f"{t}-g"])
    assert {m.username for m in snap.groups[f"{t}-g"]} == {f"{t}-named"}
    assert normalize_dn(named_dn) != normalize_dn(other_dn)


async def test_a_group_named_with_letters_casefold_would_change_is_found(slapd: Slapd, ldap_names: str) -> None:
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"uid={t}-a,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}-a", "cn": "A", "sn": "x"})
    name = f"Straße {t}"
    slapd.add(f"cn={name},{ou}", {"objectClass": ["groupOfNames"], "cn": name, "member": [f"uid={t}-a,{ou}"]})
    snap = await directory(slapd, base_dn=ou).read([name])
    assert {m.username for m in snap.groups[name]} == {f"{t}-a"}
    # the server holds "STRASSE" for another name: not this group
    with pytest.raises(DirectoryError, match="does not exist"):
        await directory(slapd, base_dn=ou).read([f"STRASSE {t}"])


async def test_a_member_uid_names_the_person_the_server_would_find(slapd: Slapd, ldap_names: str) -> None:
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"cn=Sz,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}straße", "cn": "Sz", "sn": "x"})
    slapd.add(f"cn={t}-p,{ou}", {"objectClass": ["posixGroup"], "cn": f"{t}-p", "gidNumber": 4545,
                                 "memberUid": [f"{t}strasse"]})
    conn = slapd.connect()
    try:
        conn.search(ou, f"(uid={t}strasse)", attributes=["uid"])
        assert conn.response == []  # the server finds no one by that name
    finally:
        conn.unbind()
    snap = await directory(slapd, base_dn=ou).read([f"{t}-p"])
    assert snap.groups[f"{t}-p"] == frozenset()
    assert len(snap.notes) == 1 and f"memberUid '{t}strasse'" in snap.notes[0]


async def test_a_dn_mode_id_recorded_with_the_earlier_fold_stays_the_persons(slapd: Slapd, ldap_names: str) -> None:
    """Known by DN, cn=Strauß was recorded as 'cn=strauss,...' by the version before: that id is
    the member's alias, so the sync keeps the record as the same person's (see
    tests/test_sync_real.py for how aliases are used)."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    dn = f"cn=Strauß,{ou}"
    slapd.add(dn, {"objectClass": ["inetOrgPerson"], "uid": f"{t}-sz", "cn": "Strauß", "sn": "x"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g", "member": [dn]})
    (member,) = (await directory(slapd, base_dn=ou).read([f"{t}-g"])).groups[f"{t}-g"]
    assert member.id == f"cn=strauß,{ou}"
    assert member.alias == f"cn=strauss,{ou}" == normalize_dn(dn, legacy_fold=True)


async def test_entries_hubpilot_cannot_tell_apart_make_their_member_unknown(slapd: Slapd, ldap_names: str) -> None:
    """slapd's Unicode tables predate Cherokee lower case (Unicode 8): to slapd 'ꮩ' and 'Ꮩ' are two
    names, to Python's lower() one. A member naming either is unknown, not the other person."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    small, capital = f"cn={t}\uaba9,{ou}", f"cn={t}\u13d9,{ou}"
    slapd.add(small, {"objectClass": ["inetOrgPerson"], "uid": f"{t}-small", "cn": f"{t}\uaba9", "sn": "x"})
    slapd.add(capital, {"objectClass": ["inetOrgPerson"], "uid": f"{t}-capital", "cn": f"{t}\u13d9", "sn": "x"})
    slapd.add(f"uid={t}-c,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}-c", "cn": "C", "sn": "x"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g", "member": [small]})
    slapd.add(f"cn={t}-h,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-h", "member": [f"uid={t}-c,{ou}"]})
    with pytest.raises(DirectoryError, match=rf"member 'cn={t}\uaba9,{ou}'.*cannot tell apart.*{t}\u13d9"):
        await directory(slapd, base_dn=ou).read([f"{t}-g"])
    # a group without such a member reads as before
    snap = await directory(slapd, base_dn=ou).read([f"{t}-h"])
    assert {m.username for m in snap.groups[f"{t}-h"]} == {f"{t}-c"}


async def test_a_group_whose_only_member_is_an_empty_placeholder_is_empty(slapd: Slapd, ldap_names: str) -> None:
    """groupOfNames must have a member; schemas' workaround for an empty group is member: "" (or
    the group's own DN). The group is empty, and the note says why, not "outside base_dn"."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"cn={t}-empty,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-empty", "member": [""]})
    slapd.add(f"cn={t}-self,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-self",
                                    "member": [f"cn={t}-self,{ou}"]})
    snap = await directory(slapd, base_dn=ou).read([f"{t}-empty", f"{t}-self"])
    assert snap.groups == {f"{t}-empty": frozenset(), f"{t}-self": frozenset()}
    assert len(snap.notes) == 2
    assert f"{t}-empty: member '' of 'cn={t}-empty,{ou}' is empty (a placeholder for no member); skipped" in snap.notes
    assert "outside" not in " ".join(snap.notes)
    nested = await directory(slapd, base_dn=ou, nested=True).read([f"{t}-self"])
    assert nested.groups[f"{t}-self"] == frozenset()


async def test_a_group_base_above_base_dn_reads_each_person_once(slapd: Slapd, ldap_names: str) -> None:
    """group_base_dn the suffix, base_dn the people's OU (a common layout): both are scanned, and
    people were indexed twice, so every memberUid "matched 2 people" (the same DN twice)."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.load_ldif(people_ldif(3, ou=t, group=f"{t}-posix", kind="posixGroup", prefix=t))
    snap = await directory(slapd, base_dn=ou, group_base_dn=COM).read([f"{t}-posix"])
    assert {m.username for m in snap.groups[f"{t}-posix"]} == {f"{t}{i:05d}" for i in range(3)}
    assert snap.notes == ()


async def test_a_member_uid_in_another_case_names_the_person_the_server_finds(slapd: Slapd, ldap_names: str) -> None:
    """uid matches case-insensitively (caseIgnoreMatch): a memberUid written in capitals names the
    person the server finds by it; read case-sensitively, that person would be dropped from the group."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"cn=Ann,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}ann", "cn": "Ann", "sn": "x"})
    slapd.add(f"cn={t}-p,{ou}", {"objectClass": ["posixGroup"], "cn": f"{t}-p", "gidNumber": 4646,
                                 "memberUid": [f"{t.upper()}ANN"]})
    conn = slapd.connect()
    try:
        conn.search(ou, f"(uid={t.upper()}ANN)", attributes=["uid"])
        assert [r["dn"] for r in conn.response] == [f"cn=Ann,{ou}"]  # the server finds her by it
    finally:
        conn.unbind()
    snap = await directory(slapd, base_dn=ou).read([f"{t}-p"])
    assert {m.username for m in snap.groups[f"{t}-p"]} == {f"{t}ann"}
    assert snap.notes == ()


async def test_a_member_uid_two_people_hold_is_unknown_not_the_first_of_them(slapd: Slapd, ldap_names: str) -> None:
    """docs/ldap.md: a memberUid that matches several people is fatal (which one is meant is
    unknown); taking either would give the group someone the directory may not mean."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    for cn in ("One", "Two"):
        slapd.add(f"cn={cn},{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}same", "cn": cn, "sn": "x"})
    slapd.add(f"cn={t}-p,{ou}", {"objectClass": ["posixGroup"], "cn": f"{t}-p", "gidNumber": 4747,
                                 "memberUid": [f"{t}same"]})
    with pytest.raises(DirectoryError, match=f"memberUid '{t}same' .* matches 2 people") as caught:
        await directory(slapd, base_dn=ou).read([f"{t}-p"])
    assert f"cn=one,{ou}".lower() in str(caught.value).lower()
    assert f"cn=two,{ou}".lower() in str(caught.value).lower()


async def test_a_group_name_two_groups_hold_is_refused_not_the_first_of_them(slapd: Slapd, ldap_names: str) -> None:
    """Two groups with one cn under group_base_dn: which the setting means is unknown, so the read
    fails and asks for the full DN (either group's members would replace the other's); by DN it reads."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    for sub, person in (("a", "pa"), ("b", "pb")):
        slapd.add(f"ou={sub},{ou}", {"objectClass": ["organizationalUnit"], "ou": sub})
        slapd.add(f"uid={t}{person},{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}{person}", "cn": person,
                                           "sn": "x"})
        slapd.add(f"cn={t}-g,ou={sub},{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g",
                                              "member": [f"uid={t}{person},{ou}"]})
    with pytest.raises(DirectoryError, match=f"LDAP group '{t}-g' is ambiguous .*name it by its full DN"):
        await directory(slapd, base_dn=ou).read([f"{t}-g"])
    by_dn = f"cn={t}-g,ou=b,{ou}"
    snap = await directory(slapd, base_dn=ou).read([by_dn])
    assert {m.username for m in snap.groups[by_dn]} == {f"{t}pb"}
