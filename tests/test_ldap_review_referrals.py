"""Review: referrals the server answers with, against a private slapd (a referral object would
change what the shared session server answers for other tests). hubpilot does not follow them:
the read is unknown, and the error names the other server and what to change."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubpilot.adapters.ldap import LdapDirectory
from hubpilot.ports.directory import DirectoryError
from tests.slapd import SLAPD, Slapd, slapd_server

pytestmark = pytest.mark.ldap

COM = "dc=example,dc=com"
OU = f"ou=t,{COM}"
REMOTE = f"ou=remote,{OU}"
REF = f"ldap://ldap2.example.org/{REMOTE}"


@pytest.fixture(scope="module")
def referring_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if not Path(SLAPD).exists():
        pytest.fail(f"{SLAPD} is missing: apt-get install -y slapd ldap-utils")
    with slapd_server(tmp_path_factory.mktemp("slapd-referrals")) as s:
        s.add(OU, {"objectClass": ["organizationalUnit"], "ou": "t"})
        s.add(f"uid=bob,{OU}", {"objectClass": ["inetOrgPerson"], "uid": "bob", "cn": "bob", "sn": "x"})
        s.add(f"cn=g,{OU}", {"objectClass": ["groupOfNames"], "cn": "g", "member": [f"uid=bob,{OU}"]})
        # a subordinate referral (RFC 3296): the subtree is held by another server
        s.add(REMOTE, {"objectClass": ["referral", "extensibleObject"], "ou": "remote", "ref": REF})
        yield s


def directory(slapd: Slapd, **kw: object) -> LdapDirectory:
    args: dict[str, object] = dict(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                                   base_dn=COM, timeout=5.0)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


FOLLOW = r"hubpilot does not follow referrals: point directory\.ldap\.url at the server holding it"


@pytest.mark.parametrize(("groups", "kw"), [
    (["g"], {"base_dn": REMOTE}),  # the base itself is referred
    (["g"], {"base_dn": f"ou=x,{REMOTE}"}),  # below the referral
    ([f"cn=h,{REMOTE}"], {}),  # a group given by a DN there
    (["h"], {"group_base_dn": REMOTE}),
])
async def test_a_base_or_group_the_server_refers_elsewhere_names_the_referral(
        referring_slapd: Slapd, groups: list[str], kw: dict[str, str]) -> None:
    """slapd answers 'referral' (10) with the other server's URI; the message said to raise the
    server's size limits, and did not name the other server."""
    with pytest.raises(DirectoryError, match=rf"referral \(10\).*ldap2\.example\.org.*{FOLLOW}") as e:
        await directory(referring_slapd, **kw).read(groups)
    assert "limits" not in str(e.value)


async def test_a_group_by_name_not_found_where_the_server_refers_part_of_the_tree_is_unknown(
        referring_slapd: Slapd) -> None:
    """Searched by name under group_base_dn, a group the referred subtree may hold was reported as
    not existing."""
    with pytest.raises(DirectoryError, match=rf"group 'h' is not found.*refers part of the tree elsewhere "
                                             rf"\({re.escape(REF)}[^)]*\).*{FOLLOW}"):
        await directory(referring_slapd).read(["h"])
    # a group that is found reads as before
    snap = await directory(referring_slapd).read(["g"])
    assert {m.username for m in snap.groups["g"]} == {"bob"}
