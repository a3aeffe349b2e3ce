"""Review: LdapDirectory against a private real slapd (a referral would change what the shared
session server answers for every other test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hubpilot.adapters.ldap import LdapDirectory
from hubpilot.ports.directory import DirectoryError
from tests.slapd import SLAPD, Slapd, slapd_server

pytestmark = pytest.mark.ldap

COM = "dc=example,dc=com"
OU = f"ou=t,{COM}"


@pytest.fixture(scope="module")
def private_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if not Path(SLAPD).exists():
        pytest.fail(f"{SLAPD} is missing: apt-get install -y slapd ldap-utils")
    with slapd_server(tmp_path_factory.mktemp("slapd-review")) as server:
        server.add(OU, {"objectClass": ["organizationalUnit"], "ou": "t"})
        for uid in ("bob", "amy"):
            server.add(f"uid={uid},{OU}", {"objectClass": ["inetOrgPerson"], "uid": uid, "cn": uid, "sn": "x"})
        server.add(f"cn=g,{OU}", {"objectClass": ["groupOfNames"], "cn": "g",
                                  "member": [f"uid=bob,{OU}", f"uid=amy,{OU}"]})
        yield server


def directory(slapd: Slapd, **kw: object) -> LdapDirectory:
    args: dict[str, object] = dict(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                                   base_dn=COM, timeout=5.0)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("username_attribute", "id_attribute"),
                         [("UID", "entryUUID"), ("uid", "ENTRYUUID"), ("Uid", None)])
async def test_attribute_names_are_case_insensitive(private_slapd: Slapd, username_attribute: str,
                                                    id_attribute: str | None) -> None:
    # LDAP attribute descriptions are case-insensitive (RFC 4512); the server answers with its
    # own spelling ('uid'), whatever the configuration says.
    d = directory(private_slapd, username_attribute=username_attribute, id_attribute=id_attribute)
    snap = await d.read(["g"])
    assert {m.username for m in snap.groups["g"]} == {"bob", "amy"}
    if id_attribute:
        assert all(len(m.id) == 36 for m in snap.groups["g"])  # the entryUUID, not the DN


async def test_a_member_in_a_subtree_the_server_refers_elsewhere_is_unknown_not_gone(
        private_slapd: Slapd) -> None:
    s = private_slapd
    s.add(f"cn=r,{OU}", {"objectClass": ["groupOfNames"], "cn": "r",
                         "member": [f"uid=bob,{OU}", f"uid=zed,ou=remote,{OU}"]})
    # a subordinate referral (RFC 3296): a subtree search returns a continuation reference for
    # it, with result 'success'; zed's entry is held by another server
    s.add(f"ou=remote,{OU}", {"objectClass": ["referral", "extensibleObject"], "ou": "remote",
                              "ref": f"ldap://ldap2.example.org/ou=remote,{OU}"})
    try:
        with pytest.raises(DirectoryError, match=r"uid=zed,ou=remote.*ldap2\.example\.org"):
            await directory(s).read(["r"])
        # members outside the referred subtree are read as before
        snap = await directory(s).read(["g"])
        assert {m.username for m in snap.groups["g"]} == {"bob", "amy"}
    finally:
        conn = s.connect()
        try:
            conn.delete(f"ou=remote,{OU}", controls=[("2.16.840.1.113730.3.4.2", True, None)])  # ManageDsaIT
        finally:
            conn.unbind()
    # without the referral, zed is a member DN that does not exist: noted and skipped
    snap = await directory(s).read(["r"])
    assert {m.username for m in snap.groups["r"]} == {"bob"}
    assert any("uid=zed" in n and "does not exist" in n for n in snap.notes)
