"""Directory identities → hub names, the way the hub's authenticator names people.

JupyterHub's ``Authenticator.normalize_username`` lowercases and then applies ``username_map``;
hubpilot does the same (plus optional Unicode normalisation and domain stripping, which must
match the authenticator's own configuration). A name that cannot be a valid hub name is
reported, never dropped silently or mangled into another person's name.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal, cast

from hubpilot.config.sync import NamingSettings

_UnicodeForm = Literal["NFC", "NFD", "NFKC", "NFKD"]


def hub_name(raw: str | None, naming: NamingSettings) -> tuple[str | None, str | None]:
    """Return ``(name, None)`` for a valid hub name, or ``(None, problem)``."""
    if raw is None or not raw.strip():
        return None, "has no value for the username attribute"
    name = raw.strip()
    if naming.unicode_form != "none":
        name = unicodedata.normalize(cast(_UnicodeForm, naming.unicode_form), name)
    if naming.strip_domain and "@" in name:
        name = name.split("@", 1)[0]
    if naming.lowercase:
        name = name.lower()
    name = naming.username_map.get(name, name)
    if not re.fullmatch(naming.pattern, name):
        return None, f"{name!r} is not a valid hub name (must match {naming.pattern})"
    return name, None


def hub_lookup_name(name: str, naming: NamingSettings) -> str:
    """The name the hub looks a request's username up by: its authenticator's normalize_username
    (lowercased, then ``username_map``), as ``naming`` mirrors it. A hub user whose name differs
    (created through POST /users/{name}, or named by another authenticator or username_map before)
    is not found under their own name by the requests that normalize (group membership)."""
    if naming.lowercase:
        name = name.lower()
    return naming.username_map.get(name, name)


_GROUP_BAD = re.compile(r"[^a-z0-9._-]+")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


def hub_group_name(directory_group: str, prefix: str, overrides: dict[str, str]) -> str:
    """The hub group that mirrors a directory group: prefix + a URL-safe form of its name.

    A group given as a DN is named by its first RDN value (``cn=Data Team,ou=g`` → ``data-team``).
    """
    base = overrides.get(directory_group)
    if base is None:
        base = directory_group
        if "=" in base:
            base = first_rdn_value(base)
        base = _GROUP_BAD.sub("-", base.strip().lower()).strip("-") or "group"
    return prefix + base


def first_rdn_value(dn: str) -> str:
    """The value of a DN's first attribute (RFC 4514): up to the first comma or plus that is not
    escaped, with its escapes undone (``cn=Smith\\, John,ou=g`` → ``Smith, John``; ``\\2C`` → ``,``)."""
    raw: list[str] = []
    i = dn.find("=") + 1
    while i < len(dn) and dn[i] not in ",+;":
        if dn[i] == "\\" and i + 1 < len(dn):
            raw.append(dn[i:i + 3] if _HEX2.fullmatch(dn[i + 1:i + 3]) else dn[i:i + 2])
            i += len(raw[-1])
        else:
            raw.append(dn[i])
            i += 1
    out = bytearray()
    for part in raw:
        if part.startswith("\\") and len(part) == 3:
            out.append(int(part[1:], 16))
        else:
            out += (part[1:] if part.startswith("\\") else part).encode()
    return out.decode("utf-8", errors="replace").strip()
