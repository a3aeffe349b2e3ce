from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated, Literal
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPSASLPrepError
from ldap3.protocol.sasl.sasl import sasl_prep
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from hubpilot.config.base import FROM_FILE_FOLDER, LOOPBACK_HOSTS, HomePath, PathSetting, Section
from hubpilot.config.entra import EntraSettings
from hubpilot.ports.directory import check_ldap_port, check_ldap_userinfo


class FileDirectorySettings(Section):
    """A directory kept in a YAML or TOML file (the demo uses one)."""

    path: Annotated[str, PathSetting(), HomePath] = Field(
        description="Path of the directory file (.yaml, .yml or .toml). " + FROM_FILE_FOLDER)

    @field_validator("path")
    @classmethod
    def _a_file(cls, v: str) -> str:
        # an empty path is the working directory: every sync would fail with "directory file .
        # cannot be read: Is a directory", naming no setting
        if not PurePath(v).name.strip():  # "", a blank name (read from the file's folder), "."
            raise ValueError("is empty or names no file: set the path of the directory file (.yaml, .yml or "
                             ".toml), e.g. path = \"people.yaml\" (a relative path in the settings file is read "
                             "from its folder)")
        return v


class LdapSettings(Section):
    """An LDAP directory (OpenLDAP, 389-ds, Active Directory over LDAP)."""

    url: str = Field(description="ldap:// or ldaps:// URL of the server, e.g. ldaps://ldap.example.org; one "
                     "with a DN, attributes or a filter after the host (the search base is base_dn), or "
                     "holding user:password@, is refused (bind_dn and bind_password bind, and the URL is shown in "
                     "errors and run records).")
    bind_dn: str | None = Field(
        None, description="DN to bind as; anonymous when unset or blank (a bind_password without it is refused).")
    bind_password: SecretStr | None = Field(
        None, description="Password of bind_dn. One no simple bind can carry (a line break or another control "
        "character, often kept from the file or secret it was read from) is refused, without showing it.")
    base_dn: str = Field(description="Search base for people and groups, e.g. dc=example,dc=org.")
    group_base_dn: str | None = Field(None, description="Search base for groups (default: base_dn).")
    group_name_attribute: str = Field("cn", description="Attribute that names a group in sync.users_groups.")
    username_attribute: str = Field("uid", description="Person attribute the hub's authenticator uses as username.")
    nested: bool = Field(False, description="Expand groups that are members of groups.")
    nested_max_depth: int = Field(8, ge=1, le=64, description="Deepest nesting followed.")
    page_size: int = Field(500, ge=1, le=10000, description="Paged search size (RFC 2696).")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Connect and receive timeout.")
    start_tls: bool = Field(False, description="Upgrade an ldap:// connection with StartTLS.")
    allow_cleartext_bind: bool = Field(
        False, description="Send bind_password over ldap:// without start_tls to a host other than loopback, in "
        "the clear (a lab on a network you trust); off: that is refused at start.")
    ca_file: Annotated[str | None, PathSetting(), HomePath] = Field(
        None, description="CA bundle (PEM) to verify the server's certificate; needs ldaps:// or start_tls. "
        + FROM_FILE_FOLDER)
    id_attribute: str | None = Field(
        "entryUUID",
        description="Attribute that identifies a person across renames (modrdn), so a renamed person keeps "
        "their hub user: entryUUID (OpenLDAP, 389-ds), objectGUID (Active Directory); empty: the DN "
        "(a rename then deprovisions the old name and creates the new one).",
    )

    @field_validator("url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        # spaces or a line break around it, kept when copied: a space after the host was looked up
        # as part of its name, and every sync failed "Name or service not known"
        value = value.strip()
        try:  # the rule the LDAP adapter connects by, said at start rather than at each sync
            parts = urlsplit(value)
            ok = parts.scheme in ("ldap", "ldaps") and bool(parts.hostname) and not any(c.isspace() for c in value)
        except ValueError:  # e.g. an unclosed [IPv6 address
            ok = False
        if not ok:
            raise ValueError("directory.ldap.url must be the server's ldap://host[:port] or ldaps://host[:port] "
                             "URL, e.g. ldaps://ldap.example.org (the Bicep parameter ldapUrl with "
                             "directoryKind = ldap)")
        check_ldap_userinfo(parts)
        check_ldap_port(value, parts)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            # an RFC 4516 URL's DN, attributes, scope and filter: the LDAP client connects to the
            # host and port alone, and the searches take directory.ldap.base_dn
            raise ValueError(f"directory.ldap.url must name the server alone, ldap://host[:port] or "
                             f"ldaps://host[:port] (got {value!r}): hubpilot reads no search base, attributes or "
                             "filter from it; put the search base in directory.ldap.base_dn "
                             "(HUBPILOT_DIRECTORY__LDAP__BASE_DN, the Bicep parameter ldapBaseDn)")
        return value.removesuffix("/")

    @field_validator("base_dn", "group_base_dn")
    @classmethod
    def _search_base(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.field_name == "group_base_dn" and not (value or "").strip():
            return None  # blank: base_dn, as unset
        if "=" not in (value or ""):
            # "" (the Bicep parameter left out: every sync failed with noSuchObject) or a domain name:
            # every sync failed "... is no attribute=value pair"
            example = "dc=example,dc=org for example.org (the Bicep parameter ldapBaseDn with directoryKind = ldap)" \
                if info.field_name == "base_dn" else "ou=groups,dc=example,dc=org, or leave it unset for base_dn"
            raise ValueError(f"directory.ldap.{info.field_name} must be the DN of an entry, e.g. {example} "
                             f"(got {value!r})")
        return value

    @field_validator("group_name_attribute", "username_attribute")
    @classmethod
    def _required_attribute_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", value):
            # used as written in the search filter and to find the value in the server's answer
            raise ValueError(f"{value!r} is no LDAP attribute name (letters, digits and '-', starting with a "
                             "letter), e.g. cn, uid, sAMAccountName")
        return value

    @field_validator("id_attribute")
    @classmethod
    def _attribute_name(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", value):
            raise ValueError(f"{value!r} is no LDAP attribute name (letters, digits, '-'), e.g. entryUUID")
        return value or None

    @field_validator("bind_dn")
    @classmethod
    def _blank_dn_is_unset(cls, v: str | None) -> str | None:
        # a blank name is no name: anonymous, as unset (the adapter sent it in a simple bind with no
        # password, and every sync failed "password is mandatory"); beside a password it is refused below
        return v if (v or "").strip() else None

    @field_validator("bind_password")
    @classmethod
    def _password_can_bind(cls, v: SecretStr | None) -> SecretStr | None:
        # the LDAP client prepares a simple bind's password with SASLprep (RFC 4013) and refuses,
        # before sending, one it cannot prepare: every sync would fail saying only "SASLprep error".
        # The value is never shown.
        if v is not None and v.get_secret_value():
            try:
                sasl_prep(v.get_secret_value())
            except LDAPSASLPrepError as exc:
                reason = str(exc).removeprefix("SASLprep error: ")
                raise ValueError(f"cannot be sent in an LDAP bind ({reason}; often a trailing newline kept from the "
                                 "file or secret it was read from): set it to the password alone (the value is "
                                 "not shown)") from None
        return v

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> LdapSettings:
        if self.ca_file and not (urlsplit(self.url).scheme == "ldaps" or self.start_tls):
            raise ValueError(f"directory.ldap.ca_file is set but the connection to {self.url} is not encrypted "
                             "(ldap:// without start_tls: the bind password would go in the clear); use ldaps:// or "
                             "set start_tls = true, or remove ca_file")
        return self

    @model_validator(mode="after")
    def _password_needs_a_dn(self) -> LdapSettings:
        password = self.bind_password.get_secret_value() if self.bind_password is not None else ""
        if password and not (self.bind_dn or "").strip():
            # an empty name binds anonymously whatever the password (RFC 4513 5.1.1)
            raise ValueError("directory.ldap: bind_password is set but bind_dn is empty; set bind_dn, or remove "
                             "the password to read anonymously")
        if not password and (self.bind_dn or "").strip():
            # a name without a password is no bind at all (RFC 4513 5.1.2): every sync would fail
            raise ValueError("directory.ldap: bind_dn is set but bind_password is empty (a secret that did not "
                             "arrive?); give it (HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD, the Bicep parameter "
                             "ldapBindPassword), or remove bind_dn to read anonymously")
        return self

    @model_validator(mode="after")
    def _password_needs_tls(self) -> LdapSettings:
        parts = urlsplit(self.url)
        password = self.bind_password.get_secret_value() if self.bind_password is not None else ""
        if (password and parts.scheme == "ldap" and not self.start_tls and parts.hostname not in LOOPBACK_HOSTS
                and not self.allow_cleartext_bind):
            # a simple bind carries the password as it is: on ldap:// without StartTLS, anyone on the path reads it
            raise ValueError(f"directory.ldap: the bind password would go to {self.url} in the clear (ldap:// without "
                             "start_tls); use ldaps:// (the Bicep parameter ldapUrl) or set start_tls = true "
                             "(HUBPILOT_DIRECTORY__LDAP__START_TLS, the Bicep parameter ldapStartTls); on a network "
                             "you trust, allow_cleartext_bind = true sends it anyway")
        return self


class DirectorySettings(Section):
    kind: Literal["file", "ldap", "entra"] = Field("file", description="Which directory to read.")
    file: FileDirectorySettings | None = None
    ldap: LdapSettings | None = None
    entra: EntraSettings | None = None

    @model_validator(mode="after")
    def _section_for_kind(self) -> DirectorySettings:
        if getattr(self, self.kind) is None:
            raise ValueError(
                f"directory.kind is {self.kind!r} but the [directory.{self.kind}] section is missing "
                f"(environment: HUBPILOT_DIRECTORY__{self.kind.upper()}__...)"
            )
        return self
