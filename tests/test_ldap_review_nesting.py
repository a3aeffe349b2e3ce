"""Review: nested groups followed to nested_max_depth whatever the order of the members
(tests/slapd.py's session server)."""

from __future__ import annotations

import pytest

from hubpilot.adapters.ldap import LdapDirectory
from tests.slapd import Slapd

pytestmark = pytest.mark.ldap

COM = "dc=example,dc=com"


def directory(slapd: Slapd, **kw: object) -> LdapDirectory:
    args: dict[str, object] = dict(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                                   base_dn=COM, timeout=5.0, id_attribute=None)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("long_way_first", [True, False])
async def test_a_group_reached_first_the_long_way_is_still_followed_to_the_depth_it_has(
        slapd: Slapd, ldap_names: str, long_way_first: bool) -> None:
    """r -> c -> d -> p is two levels of nesting, within nested_max_depth = 2; c is also reached
    the long way (r -> a -> c), where d would be a third level. Which way the walk takes first
    (the order of r's member values) must not decide whether p is a member of r."""
    t = ldap_names
    ou = f"ou={t},{COM}"
    slapd.add(ou, {"objectClass": ["organizationalUnit"], "ou": t})

    def group(name: str, *members: str) -> str:
        dn = f"cn={t}-{name},{ou}"
        slapd.add(dn, {"objectClass": ["groupOfNames"], "cn": f"{t}-{name}", "member": list(members)})
        return dn

    for uid in ("p", "q"):
        slapd.add(f"uid={t}{uid},{ou}", {"objectClass": ["inetOrgPerson"], "uid": f"{t}{uid}", "cn": uid, "sn": uid})
    e = group("e", f"uid={t}q,{ou}")  # three levels below r whichever way: not followed
    d = group("d", f"uid={t}p,{ou}", e)
    c = group("c", d)
    a = group("a", c)
    group("r", *((a, c) if long_way_first else (c, a)))
    snap = await directory(slapd, base_dn=ou, nested=True, nested_max_depth=2).read([f"{t}-r"])
    assert {m.username for m in snap.groups[f"{t}-r"]} == {f"{t}p"}
    assert [n for n in snap.notes if "deeper" in n] == [
        f"{t}-r: group cn={t}-e,{ou} is nested deeper than nested_max_depth=2; not followed"]
