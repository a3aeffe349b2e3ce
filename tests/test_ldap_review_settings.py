"""Review: invalid [directory.ldap] settings give a clear error that names the setting, against
the session slapd (tests/slapd.py) where the server's answer matters."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from hubpilot.adapters.ldap import LdapDirectory
from hubpilot.config.directory import LdapSettings
from hubpilot.ports.directory import DirectoryError
from tests.slapd import Slapd

pytestmark = pytest.mark.ldap

COM = "dc=example,dc=com"


def directory(slapd: Slapd, **kw: object) -> LdapDirectory:
    args: dict[str, object] = dict(url=slapd.url, bind_dn=slapd.root_dn, bind_password=slapd.root_password,
                                   base_dn=COM, timeout=5.0)
    args.update(kw)
    return LdapDirectory(**args)  # type: ignore[arg-type]


async def test_a_base_dn_the_server_does_not_hold_is_named_as_the_setting_given(slapd: Slapd) -> None:
    # only base_dn is set: the error names base_dn, not a group_base_dn nobody set
    with pytest.raises(DirectoryError, match=r"directory\.ldap\.base_dn 'ou=Nope,dc=example,dc=com' does not "
                                             r"exist on ldap://127\.0\.0\.1:\d+ \(noSuchObject\)") as e:
        await directory(slapd, base_dn=f"ou=Nope,{COM}").read(["ITD Staff"])
    assert "group_base_dn" not in str(e.value)
    with pytest.raises(DirectoryError, match=r"directory\.ldap\.group_base_dn 'ou=Nope,dc=example,dc=com' does not"):
        await directory(slapd, group_base_dn=f"ou=Nope,{COM}").read(["ITD Staff"])
    # groups given by DN: the scan of base_dn is what fails
    with pytest.raises(DirectoryError, match=r"directory\.ldap\.base_dn 'ou=Nope,dc=example,dc=com' does not"):
        await directory(slapd, base_dn=f"ou=Nope,{COM}").read([f"cn=ITD Staff,ou=Groups,{COM}"])
    with pytest.raises(DirectoryError, match=r"directory\.ldap\.group_base_dn 'dc=example,dc=org' does not"):
        await directory(slapd, group_base_dn="dc=example,dc=org").read([f"cn=ITD Staff,ou=Groups,{COM}"])


@pytest.mark.parametrize("setting", ["group_name_attribute", "username_attribute"])
@pytest.mark.parametrize("value", ["c n", "cn)(objectClass=*", "", "cn=x", "2cn", "2.5.4.3"])
async def test_an_attribute_setting_that_is_no_attribute_name_is_refused(slapd: Slapd, setting: str,
                                                                         value: str) -> None:
    """Before, 'c n' as group_name_attribute read as "group 'ITD Staff' does not exist", and as
    username_attribute gave every member no name; 'cn)(x' failed as an invalid filter. A numeric OID
    finds the group on the server, which names the attribute 'cn' in its answer: refused too."""
    quoted = re.escape(repr(value))
    with pytest.raises(ValueError, match=rf"directory\.ldap\.{setting} {quoted} is no LDAP attribute name"):
        await directory(slapd, **{setting: value}).read(["ITD Staff"])
    with pytest.raises(ValidationError, match=rf"{setting}[\s\S]*{quoted} is no LDAP attribute name"):
        LdapSettings(url=slapd.url, base_dn=COM, **{setting: value})


async def test_attribute_names_in_any_case_are_accepted(slapd: Slapd) -> None:
    snap = await directory(slapd, group_name_attribute="CN", username_attribute="UID").read(["ITD Staff"])
    assert {m.username for m in snap.groups["ITD Staff"]} == {None, "bjorn", "jjones", "johnd"}
    LdapSettings(url=slapd.url, base_dn=COM, group_name_attribute="cn", username_attribute="sAMAccountName")
