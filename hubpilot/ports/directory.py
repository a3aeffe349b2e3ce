"""A directory of people and groups: LDAP, a file, or Entra ID."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import SplitResult


@dataclass(frozen=True)
class Member:
    """A person in a group.

    ``id`` is the directory's own stable identifier, kept across renames where the directory has
    one (an LDAP entryUUID, an Entra object id, a file key; else an LDAP DN);
    ``username`` is the value of the configured username attribute as the directory holds it
    (not yet normalised; None when the person has no such attribute);
    ``where`` tells an admin where to find the entry when the id does not (an LDAP DN);
    ``alias`` is the id the same entry had in an id form used before, if any (an LDAP entry known
    by its entryUUID: its normalised DN, the id of DN mode), so records keyed by it stay its own.
    """

    id: str
    username: str | None
    display: str = ""
    where: str = ""
    alias: str = ""

    @property
    def label(self) -> str:
        """The entry as messages name it."""
        return f"{self.where} ({self.id})" if self.where and self.where != self.id else self.id


@dataclass(frozen=True)
class DirectorySnapshot:
    """The membership of the configured groups, nested groups already expanded.

    ``groups`` has an entry for every group asked for. ``notes`` are findings worth reporting
    (a member that is no person, a nesting cycle) that do not make the read fail. ``changed``: the
    groups (nested ones too) whose changes since the last read this read was shown, for a directory
    that reads changes (Entra's delta query); None when the directory cannot tell.
    """

    source: str
    groups: Mapping[str, frozenset[Member]]
    notes: tuple[str, ...] = field(default_factory=tuple)
    changed: frozenset[str] | None = None


class DirectoryError(Exception):
    """The directory could not be read completely. Membership is then unknown, never empty."""


class Directory(Protocol):
    async def read(self, groups: Sequence[str]) -> DirectorySnapshot:
        """Read the members of ``groups``. Raises DirectoryError on any failure, including a
        group that does not exist: a partial answer is never returned."""
        ...

    async def close(self) -> None: ...


def without_password(value: str) -> str:
    """A URL's ``user:password@`` shown as ``***@``; any other text as it is. Everything up to the
    URL's last '@' is hidden: a password may hold an '@' (the user information ends at the last
    one) or a '/' (which ends the host early, and the URL is refused for it)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://).*@", r"\1***@", value)


def check_ldap_userinfo(parts: SplitResult) -> None:
    """ValueError, never showing the URL, when an LDAP URL holds ``user[:password]@``: the LDAP
    client binds with bind_dn and bind_password alone, and the URL is shown in every LDAP error
    and in each sync's ``directory_source`` (its audit entry, its run document)."""
    if "@" in parts.netloc:
        raise ValueError("directory.ldap.url holds a user name or password (user:password@), which the LDAP "
                         "client never sends and every error and run record would show: remove it, and bind "
                         "with directory.ldap.bind_dn and directory.ldap.bind_password (the user name and "
                         "password are not shown)")


def check_ldap_port(url: str, parts: SplitResult) -> int | None:
    """The port of the LDAP ``url`` (split as ``parts``; None: the scheme's), or ValueError unless it
    is 1 to 65535: the one rule of the settings (at start) and the adapter (for any caller)."""
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = -1
    if port is not None and not 1 <= port <= 65535:
        # a password holding a '/' ends the host early (user:pa/ss@host: host "user", port "pa")
        raise ValueError(f"directory.ldap.url {without_password(url)!r}: the port must be a number from 1 to "
                         "65535 (389 for ldap://, 636 for ldaps://; the scheme's when left out)")
    return port
