"""Review: invalid [directory.ldap] settings give a clear error that names the setting, against
the session slapd (tests/slapd.py) where the server's answer matters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from hubpilot.adapters.ldap import LdapDirectory
from hubpilot.config.directory import LdapSettings
from hubpilot.ports.directory import DirectoryError
from tests.pki import make_pki
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


async def test_a_blank_group_base_dn_is_the_base_dn(slapd: Slapd) -> None:
    """"" read under base_dn, but "  " was searched as a DN and each read failed with
    'LDAPInvalidDnError: attribute type not present', naming no setting."""
    snap = await directory(slapd, group_base_dn="  ").read(["ITD Staff"])
    assert {m.username for m in snap.groups["ITD Staff"]} == {None, "bjorn", "jjones", "johnd"}
    assert LdapSettings(url=slapd.url, base_dn=COM, group_base_dn="  ").group_base_dn is None


@pytest.mark.parametrize("port", ["99999", "65536", "abc", "0", "-1"])
def test_a_url_with_a_port_that_is_no_port_is_refused_at_start_naming_the_setting(port: str) -> None:
    """The settings took ldap://host:99999 and each sync then failed with 'Port out of range
    0-65535', naming no setting; ldap://host:0 was read as the scheme's default port."""
    url = f"ldap://ldap.example.org:{port}"
    with pytest.raises(ValidationError, match=r"directory\.ldap\.url .*port.* 1 to 65535"):
        LdapSettings(url=url, base_dn=COM)
    with pytest.raises(ValueError, match=r"directory\.ldap\.url .*port.* 1 to 65535"):
        LdapDirectory(url=url, base_dn=COM)
    for good in ("ldap://ldap.example.org:1", "ldaps://ldap.example.org:65535", "ldap://[::1]:389"):
        LdapSettings(url=good, base_dn=COM)
        LdapDirectory(url=good, base_dn=COM)


# ---- TLS -------------------------------------------------------------------------------------


async def test_a_ca_file_without_tls_is_refused_not_ignored(slapd: Slapd) -> None:
    """ca_file says the operator wants the server verified; on ldap:// without start_tls it was
    ignored and the bind password went over the wire in the clear."""
    with pytest.raises(ValueError, match=r"directory\.ldap\.ca_file is set but .* not encrypted.*ldaps://.*start_tls"):
        await directory(slapd, ca_file=slapd.ca_file).read(["ITD Staff"])
    with pytest.raises(ValidationError, match=r"ca_file is set but .* not encrypted"):
        LdapSettings(url=slapd.url, base_dn=COM, ca_file=slapd.ca_file)
    # with TLS it is used
    snap = await directory(slapd, ca_file=slapd.ca_file, start_tls=True).read(["ITD Staff"])
    assert {m.username for m in snap.groups["ITD Staff"]} == {None, "bjorn", "jjones", "johnd"}
    LdapSettings(url=slapd.ldaps_url, base_dn=COM, ca_file=slapd.ca_file)
    LdapSettings(url=slapd.url, base_dn=COM, ca_file=slapd.ca_file, start_tls=True)


@pytest.mark.parametrize("host", ["ldap.example.org", "10.0.0.5", "[fd00::5]"])
def test_a_bind_password_over_plain_ldap_to_another_host_is_refused_at_start(host: str) -> None:
    """ldap:// without start_tls sends the simple bind's password in the clear: it was accepted for
    any host (only a ca_file made it refused), and every sync sent the password over the network."""
    url = f"ldap://{host}:389"
    bind = {"bind_dn": "cn=hubpilot,dc=example,dc=com", "bind_password": "s3cret-pw"}
    with pytest.raises(ValidationError, match=r"bind password would go to ldap://.* in the clear .*use ldaps://.*"
                                              r"start_tls = true.*HUBPILOT_DIRECTORY__LDAP__START_TLS"):
        LdapSettings(url=url, base_dn=COM, **bind)
    # encrypted, anonymous, or explicitly allowed: accepted
    LdapSettings(url=url, base_dn=COM, start_tls=True, **bind)
    LdapSettings(url=f"ldaps://{host}", base_dn=COM, **bind)
    LdapSettings(url=url, base_dn=COM)
    assert LdapSettings(url=url, base_dn=COM, allow_cleartext_bind=True, **bind).allow_cleartext_bind


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LocalHost", "[::1]"])
def test_a_bind_password_over_plain_ldap_on_loopback_is_accepted(host: str) -> None:
    """The demo's and the tests' slapd listen on 127.0.0.1 over ldap://: nothing leaves the machine."""
    settings = LdapSettings(url=f"ldap://{host}:3890", base_dn=COM, bind_dn="cn=admin,dc=example,dc=com",
                            bind_password="pw")
    assert not settings.start_tls and not settings.allow_cleartext_bind


async def test_a_ca_file_that_cannot_be_read_names_the_setting(slapd: Slapd, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(DirectoryError, match=rf"directory\.ldap\.ca_file '{missing}' cannot be used: .*No such file"):
        await directory(slapd, url=slapd.ldaps_url, ca_file=str(missing)).read(["ITD Staff"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(DirectoryError, match=rf"directory\.ldap\.ca_file '{garbage}' cannot be used"):
        await directory(slapd, start_tls=True, ca_file=str(garbage)).read(["ITD Staff"])


async def test_a_certificate_from_another_ca_fails_closed_saying_what_to_fix(slapd: Slapd, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_pki(tmp_path / "pki").ca_pem)  # a CA that did not sign the server's certificate
    for kw in ({"url": slapd.ldaps_url}, {"start_tls": True}):
        with pytest.raises(DirectoryError, match=r"CERTIFICATE_VERIFY_FAILED.*not signed by a CA in "
                                                 r"directory\.ldap\.ca_file"):
            await directory(slapd, ca_file=str(other), **kw).read(["ITD Staff"])


async def test_a_certificate_for_another_host_fails_closed_saying_what_to_fix(slapd: Slapd) -> None:
    """The server's certificate names 127.0.0.1; reached as localhost it is refused (ldap3 checks the
    name itself); the message said only that a dump of the certificate "doesn't match"."""
    for url, kw in ((slapd.ldaps_url, {}), (slapd.url, {"start_tls": True})):
        with pytest.raises(DirectoryError, match=r"certificate does not name 'localhost' \(it names 127\.0\.0\.1\): "
                                                 r"use a name it holds in directory\.ldap\.url") as e:
            await directory(slapd, url=url.replace("127.0.0.1", "localhost"), ca_file=slapd.ca_file,
                            **kw).read(["ITD Staff"])
        assert "serialNumber" not in str(e.value)


async def test_a_url_whose_scheme_does_not_fit_the_port_says_so(slapd: Slapd) -> None:
    """ldaps:// on the plain port failed with 'socket ssl wrapping error: ... EOF occurred in violation
    of protocol', ldap:// on the ldaps port with 'session terminated by server' when binding or at
    StartTLS: neither said that the url's scheme and port do not go together."""
    plain, tls = slapd.url.rsplit(":", 1)[1], slapd.ldaps_url.rsplit(":", 1)[1]
    with pytest.raises(DirectoryError, match=rf"connecting to ldaps://127\.0\.0\.1:{plain} failed: .*no TLS handshake.*"
                                             r"plain LDAP port.*ldap://.*start_tls = true"):
        await directory(slapd, url=f"ldaps://127.0.0.1:{plain}", ca_file=slapd.ca_file).read(["ITD Staff"])
    for step, kw in (("binding as", {}), ("StartTLS", {"start_tls": True, "ca_file": slapd.ca_file})):
        with pytest.raises(DirectoryError, match=rf"{step}.* failed: .*session terminated by server.*closed the "
                                                 rf"connection at the first request.*port {tls} is an ldaps://"):
            await directory(slapd, url=f"ldap://127.0.0.1:{tls}", **kw).read(["ITD Staff"])
