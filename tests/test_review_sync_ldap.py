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
