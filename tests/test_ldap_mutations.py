"""Mutation review of the LDAP adapter: behaviours no other test held, against real slapd servers
(the session one from tests/fixtures/slapd.py, and a private one whose access rules would change
what the shared server answers for every other test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from hubpilot.adapters.ldap import LdapDirectory, normalize_dn
from hubpilot.ports.directory import DirectoryError
from tests.slapd import SLAPD, Slapd, slapd_server
from tests.test_ldap_directory import COM, directory, usernames

pytestmark = pytest.mark.ldap

OU = f"ou=t,{COM}"
# bind DNs that may read the groups but not their member lists (slapd.conf access rules): one with
# no access to them at all, one that may compare them (ask whether a value is there) but not read them
BLIND = f"uid=blind,{COM}"
PEEKER = f"uid=peeker,{COM}"
PASSWORD = "reader-secret"


@pytest.fixture(scope="module")
def acl_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if not Path(SLAPD).exists():
        pytest.fail(f"{SLAPD} is missing: apt-get install -y slapd ldap-utils")
    with slapd_server(tmp_path_factory.mktemp("slapd-acl")) as s:
        s.add(OU, {"objectClass": ["organizationalUnit"], "ou": "t"})
        for reader in (BLIND, PEEKER):
            s.add(reader, {"objectClass": ["account", "simpleSecurityObject"], "uid": reader[4:reader.index(",")],
                           "userPassword": PASSWORD})
        for uid in ("bob", "amy"):
            s.add(f"uid={uid},{OU}", {"objectClass": ["inetOrgPerson"], "uid": uid, "cn": uid, "sn": "x"})
        s.add(f"cn=names,{OU}", {"objectClass": ["groupOfNames"], "cn": "names",
                                 "member": [f"uid=bob,{OU}", f"uid=amy,{OU}"]})
        s.add(f"cn=unique,{OU}", {"objectClass": ["groupOfUniqueNames"], "cn": "unique",
                                  "uniqueMember": [f"uid=bob,{OU}"]})
        s.add(f"cn=open,{OU}", {"objectClass": ["groupOfNames"], "cn": "open", "member": [f"uid=amy,{OU}"]})
        s.add(f"cn=host,{OU}", {"objectClass": ["groupOfNames"], "cn": "host", "member": [f"cn=names,{OU}"]})
        s.add(f"cn=posix,{OU}", {"objectClass": ["posixGroup"], "cn": "posix", "gidNumber": 7, "memberUid": ["bob"]})
        s.add(f"cn=nobody,{OU}", {"objectClass": ["posixGroup"], "cn": "nobody", "gidNumber": 8})
        s.stop()
        conf = s.workdir / "slapd.conf"
        hide = (f'access to dn.regex="^cn=(open|host|nobody),{OU}$" by * read\n'
                f'access to attrs=member,uniqueMember,memberUid by dn.exact="{s.root_dn}" manage '
                f'by dn.exact="{BLIND}" none by dn.exact="{PEEKER}" compare by * read\n')
        conf.write_text(conf.read_text().replace("access to * by", hide + "access to * by", 1))
        s.start()
        yield s


def blind(slapd: Slapd, who: str = BLIND, **kw: object) -> LdapDirectory:
    args: dict[str, object] = dict(url=slapd.url, bind_dn=who, bind_password=PASSWORD, base_dn=COM, timeout=5.0)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


# ---- a group whose member list the bind DN may not read ----------------------------------------


@pytest.mark.parametrize("who", [BLIND, PEEKER])
@pytest.mark.parametrize("group", ["names", "unique", "posix", f"cn=names,{OU}"])
async def test_a_group_whose_members_the_bind_dn_may_not_read_is_unknown_not_empty(acl_slapd: Slapd, who: str,
                                                                                   group: str) -> None:
    # the server hands out the group without its member attribute, as it would an empty group:
    # read as empty, every member would be removed
    snap = await blind(acl_slapd, who).read(["open", "nobody"])
    assert usernames(snap, "open") == {"amy"}  # the bind DN reads a group it may read
    assert snap.groups["nobody"] == frozenset()  # and an empty group it may read is empty
    with pytest.raises(DirectoryError, match=r"came without members.*may not read (its|them).*"
                                             r"allow the bind DN to read (member|uniqueMember|memberUid)\)"):
        await blind(acl_slapd, who).read([group, "open"])


async def test_a_nested_group_whose_members_the_bind_dn_may_not_read_is_unknown(acl_slapd: Slapd) -> None:
    # the root group is readable, the group it holds is not: its people are unknown, not gone
    assert usernames(await blind(acl_slapd, nested=False).read(["host"]), "host") == set()  # nesting off
    with pytest.raises(DirectoryError, match=r"'cn=names,ou=t,dc=example,dc=com' came without members"):
        await blind(acl_slapd, nested=True).read(["host"])
    full = await LdapDirectory(url=acl_slapd.url, bind_dn=acl_slapd.root_dn, bind_password=acl_slapd.root_password,
                               base_dn=COM, nested=True).read(["host"])
    assert usernames(full, "host") == {"bob", "amy"}



# ---- names: the configured attributes, filter values, usernames -------------------------------


async def test_groups_are_found_by_a_group_name_attribute_other_than_cn(slapd: Slapd, ldap_names: str) -> None:
    # the attribute must be asked for: the server returns only those named
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"uid={t}p,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}p", "cn": "p", "sn": "p"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g", "description": f"Team {t}",
                                 "member": [f"uid={t}p,{ou}"]})
    snap = await directory(slapd, base_dn=ou, group_name_attribute="description").read([f"Team {t}"])
    assert usernames(snap, f"Team {t}") == {f"{t}p"}


async def test_a_group_name_with_filter_characters_is_found_as_written(slapd: Slapd, ldap_names: str) -> None:
    # parentheses, '*', '\\' in a name are escaped in the search filter (RFC 4515): unescaped, the
    # filter is refused, or '*' would match other groups
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"uid={t}p,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}p", "cn": "p", "sn": "p"})
    name = f"R&D (EU) {t}*\\x"
    slapd.add(f"cn=R&D (EU) {t}*\\5Cx,{ou}", {"objectClass": ["groupOfNames"], "cn": name,
                                              "member": [f"uid={t}p,{ou}"]})
    snap = await directory(slapd, base_dn=ou).read([name])
    assert usernames(snap, name) == {f"{t}p"}


# ---- nesting ------------------------------------------------------------------------------------


async def test_a_group_reached_two_ways_of_one_length_is_walked_once(slapd: Slapd, ldap_names: str) -> None:
    # r ∋ {a, b}; a ∋ c; b ∋ c; c ∋ {p, r}: c is walked once, so its cycle back to r is noted once
    # (walking every way again would grow with each diamond of groups)
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"uid={t}p,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}p", "cn": "p", "sn": "p"})
    dn = {g: f"cn={t}-{g},{ou}" for g in "rabc"}
    slapd.add(dn["c"], {"objectClass": ["groupOfNames"], "cn": f"{t}-c", "member": [f"uid={t}p,{ou}"]})
    for g in "ab":
        slapd.add(dn[g], {"objectClass": ["groupOfNames"], "cn": f"{t}-{g}", "member": [dn["c"]]})
    slapd.add(dn["r"], {"objectClass": ["groupOfNames"], "cn": f"{t}-r", "member": [dn["a"], dn["b"]]})
    slapd.modify(dn["c"], {"member": [(ldap3.MODIFY_ADD, [dn["r"]])]})
    d = directory(slapd, base_dn=ou, nested=True)
    snap = await d.read([f"{t}-r"])
    assert usernames(snap, f"{t}-r") == {f"{t}p"}
    assert [n for n in snap.notes if "nesting cycle" in n] == [
        f"{t}-r: nesting cycle {normalize_dn(dn['r'])} -> {normalize_dn(dn['a'])} -> {normalize_dn(dn['c'])} -> "
        f"{normalize_dn(dn['r'])}; not followed again"]
    assert len(snap.notes) == 1


# ---- referrals: which members they make unknown ------------------------------------------------


@pytest.fixture
def referral(acl_slapd: Slapd) -> Iterator[str]:
    """A subordinate referral (RFC 3296) for ou=remote under the test OU: another server holds it."""
    dn = f"ou=remote,{OU}"
    acl_slapd.add(dn, {"objectClass": ["referral", "extensibleObject"], "ou": "remote",
                       "ref": f"ldap://ldap2.example.org/{dn}"})
    try:
        yield dn
    finally:
        conn = acl_slapd.connect()
        try:
            conn.delete(dn, controls=[("2.16.840.1.113730.3.4.2", True, None)])  # ManageDsaIT
        finally:
            conn.unbind()


async def test_a_member_uid_no_person_holds_while_the_server_refers_part_of_the_tree_is_unknown(
        acl_slapd: Slapd, referral: str) -> None:
    # a memberUid names no subtree: the person may be one the other server holds
    acl_slapd.add(f"cn=refposix,{OU}", {"objectClass": ["posixGroup"], "cn": "refposix", "gidNumber": 9,
                                        "memberUid": ["bob", "zed"]})
    try:
        with pytest.raises(DirectoryError, match=r"memberUid 'zed'.*is not found.*ldap2\.example\.org"):
            await directory(acl_slapd).read(["refposix"])
    finally:
        acl_slapd.delete(f"cn=refposix,{OU}")


async def test_a_member_dn_outside_the_referred_subtree_that_does_not_exist_is_noted_not_unknown(
        acl_slapd: Slapd, referral: str) -> None:
    # the reference names the subtree it covers: a member DN elsewhere that no entry has is one
    # that does not exist (a person deleted), skipped as without the referral
    acl_slapd.add(f"cn=refnames,{OU}", {"objectClass": ["groupOfNames"], "cn": "refnames",
                                        "member": [f"uid=bob,{OU}", f"uid=gone,{OU}"]})
    try:
        snap = await directory(acl_slapd).read(["refnames"])
    finally:
        acl_slapd.delete(f"cn=refnames,{OU}")
    assert usernames(snap, "refnames") == {"bob"}
    assert len(snap.notes) == 1 and f"'uid=gone,{OU}'" in snap.notes[0] and "does not exist" in snap.notes[0]


# ---- what is read: people, the scanned subtrees, DN spelling ----------------------------------


async def test_an_account_entry_is_a_person(slapd: Slapd, ldap_names: str) -> None:
    # objectClass account (RFC 4524) alone, as service and POSIX-only people often are
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"uid={t}svc,{ou}", {"objectClass": ["account"], "uid": f"{t}svc"})
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g", "member": [f"uid={t}svc,{ou}"]})
    snap = await directory(slapd, base_dn=ou).read([f"{t}-g"])
    assert usernames(snap, f"{t}-g") == {f"{t}svc"}
    assert snap.notes == ()


async def test_a_nested_group_under_a_group_base_above_base_dn_is_followed(slapd: Slapd, ldap_names: str) -> None:
    # people under base_dn, groups beside them under group_base_dn (which holds base_dn): the
    # scan covers group_base_dn, so the nested group is found, not "outside base_dn"
    t = ldap_names
    top = f"ou={t},{COM}"
    people, groups = f"ou=people,{top}", f"ou=groups,{top}"
    for dn in (top, people, groups):
        slapd.add(dn, {"objectClass": ["organizationalUnit"], "ou": dn.split(",")[0][3:]})
    slapd.add(f"uid={t}p,{people}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}p", "cn": "p", "sn": "p"})
    slapd.add(f"cn={t}-inner,{groups}", {"objectClass": ["groupOfNames"], "cn": f"{t}-inner",
                                         "member": [f"uid={t}p,{people}"]})
    slapd.add(f"cn={t}-outer,{groups}", {"objectClass": ["groupOfNames"], "cn": f"{t}-outer",
                                         "member": [f"cn={t}-inner,{groups}"]})
    d = directory(slapd, base_dn=people, group_base_dn=top, nested=True)
    snap = await d.read([f"{t}-outer"])
    assert usernames(snap, f"{t}-outer") == {f"{t}p"}
    assert snap.notes == ()
    # the usual layout, groups under base_dn: one scan of base_dn (find, scan, the nested group)
    inside = directory(slapd, base_dn=top, group_base_dn=groups, nested=True)
    assert usernames(await inside.read([f"{t}-outer"]), f"{t}-outer") == {f"{t}p"}
    assert inside.stats.searches == 3


async def test_member_dns_spaced_otherwise_than_the_entry_name_it(slapd: Slapd, ldap_names: str) -> None:
    """The server matches DN values with insignificant spaces removed (RFC 4518 2.6.1: runs of
    spaces are one, leading and trailing ones none) and keeps member values as written."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})
    slapd.add(f"cn=Jo Two,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}jo", "cn": "Jo Two", "sn": "x"})
    slapd.add(f"cn=Al Three,{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}al", "cn": "Al Three", "sn": "x"})
    spaced = [f"cn=Jo  Two,{ou}", f"cn=\\ Al Three\\ ,{ou}"]
    slapd.add(f"cn={t}-g,{ou}", {"objectClass": ["groupOfNames"], "cn": f"{t}-g", "member": spaced})
    conn = slapd.connect()
    try:  # the server keeps the spelling, and takes either for the entry's name
        conn.search(f"cn={t}-g,{ou}", "(objectClass=*)", ldap3.BASE, attributes=["member"])
        assert sorted(conn.response[0]["attributes"]["member"]) == [f"cn=Jo  Two,{ou}", f"cn=\\20Al Three\\20,{ou}"]
        assert all(conn.compare(f"cn={t}-g,{ou}", "member", dn) for dn in (f"cn=Jo Two,{ou}", f"cn=Al Three,{ou}"))
    finally:
        conn.unbind()
    snap = await directory(slapd, base_dn=ou).read([f"{t}-g"])
    assert usernames(snap, f"{t}-g") == {f"{t}jo", f"{t}al"}
    assert snap.notes == ()


# ---- the settings reach the adapter ------------------------------------------------------------


async def test_every_directory_ldap_setting_reaches_the_read(slapd: Slapd, ldap_names: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """[directory.ldap] as the hosts load it (environment → settings → wiring), each setting away
    from its default and each one deciding part of what the read returns."""
    from hubpilot.adapters.store_sqlite import SqliteStore
    from hubpilot.settings import load_settings
    from hubpilot.wiring import Context, build_directory

    t = ldap_names
    top = f"ou={t},{COM}"
    people, groups = f"ou=people,{top}", f"ou=groups,{top}"
    for dn in (top, people, groups):
        slapd.add(dn, {"objectClass": ["organizationalUnit"], "ou": dn.split(",")[0][3:]})
    for p in ("a", "b", "c"):
        slapd.add(f"uid={t}{p},{people}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}{p}", "cn": p, "sn": p,
                                           "mail": f"{p}@{t}.example"})

    def group(name: str, *members: str) -> str:
        dn = f"cn={t}-{name},{groups}"
        slapd.add(dn, {"objectClass": ["groupOfNames"], "cn": f"{t}-{name}", "description": f"Team {name} {t}",
                       "member": list(members)})
        return dn

    deep = group("deep", f"uid={t}c,{people}")  # two levels below the root: beyond nested_max_depth = 1
    inner = group("inner", f"uid={t}b,{people}", deep)
    group("root", f"uid={t}a,{people}", inner)
    env = {"KIND": "ldap", "LDAP__URL": slapd.url, "LDAP__BIND_DN": slapd.root_dn,
           "LDAP__BIND_PASSWORD": slapd.root_password, "LDAP__BASE_DN": people, "LDAP__GROUP_BASE_DN": groups,
           "LDAP__GROUP_NAME_ATTRIBUTE": "description", "LDAP__USERNAME_ATTRIBUTE": "mail",
           "LDAP__NESTED": "true", "LDAP__NESTED_MAX_DEPTH": "1", "LDAP__PAGE_SIZE": "2",
           "LDAP__TIMEOUT_SECONDS": "7.5", "LDAP__START_TLS": "true", "LDAP__CA_FILE": slapd.ca_file,
           "LDAP__ID_ATTRIBUTE": ""}
    for k, v in env.items():
        monkeypatch.setenv(f"HUBPILOT_DIRECTORY__{k}", v)
    d = build_directory(Context(settings=load_settings(), store=SqliteStore(tmp_path / "state.db")))
    assert isinstance(d, LdapDirectory)
    name = f"Team root {t}"
    snap = await d.read([name])
    # found by description under group_base_dn (outside base_dn); named by mail; inner followed,
    # deep not (nested_max_depth); people known by their DN (id_attribute empty)
    assert {m.username for m in snap.groups[name]} == {f"a@{t}.example", f"b@{t}.example"}
    assert {m.id for m in snap.groups[name]} == {f"uid={t}a,{people}", f"uid={t}b,{people}"}
    assert any("deeper than nested_max_depth=1" in n for n in snap.notes)
    # the find, the scans of base_dn (3 people: 2 pages) and of group_base_dn (3 groups: 2 pages),
    # the nested group's base search
    assert d.stats.searches == 1 + 2 + 2 + 1
    assert d.timeout == 7.5


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("base_dn", "example.org", r"base_dn must be the DN of an entry"),  # a domain name, not its DN
    ("group_base_dn", "groups", r"group_base_dn must be the DN of an entry"),
    ("nested_max_depth", 0, r"nested_max_depth\s+Input should be greater than or equal to 1"),
    ("page_size", 0, r"page_size\s+Input should be greater than or equal to 1"),
])
def test_ldap_settings_no_read_could_use_are_refused_at_start(setting: str, value: object, says: str) -> None:
    from pydantic import ValidationError

    from hubpilot.config.directory import LdapSettings

    args: dict[str, object] = {"url": "ldaps://ldap.example.org", "base_dn": "dc=example,dc=org", setting: value}
    with pytest.raises(ValidationError, match=says):
        LdapSettings(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "port"), [("ldaps://ldap.example.org", 636), ("ldap://ldap.example.org", 389),
                                           ("ldaps://ldap.example.org:3269", 3269)])
def test_a_url_without_a_port_connects_to_the_schemes_port(url: str, port: int) -> None:
    d = LdapDirectory(url=url, base_dn="dc=example,dc=org")
    assert d._connect().server.port == port


async def test_one_group_named_twice_in_other_cases_is_read_for_both_names(slapd: Slapd) -> None:
    snap = await directory(slapd).read(["ITD Staff", "itd staff"])
    assert usernames(snap, "itd staff") == usernames(snap, "ITD Staff") == {None, "bjorn", "jjones", "johnd"}
