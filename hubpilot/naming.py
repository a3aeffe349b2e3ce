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


_GROUP_BAD = re.compile(r"[^a-z0-9._-]+")


def hub_group_name(directory_group: str, prefix: str, overrides: dict[str, str]) -> str:
    """The hub group that mirrors a directory group: prefix + a URL-safe form of its name.

    A group given as a DN is named by its first RDN value (``cn=Data Team,ou=g`` → ``data-team``).
    """
    base = overrides.get(directory_group)
    if base is None:
        base = directory_group
        if "=" in base:
            base = base.split(",", 1)[0].split("=", 1)[1]
        base = _GROUP_BAD.sub("-", base.strip().lower()).strip("-") or "group"
    return prefix + base
