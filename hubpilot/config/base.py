"""Shared pieces of the settings sections."""

from __future__ import annotations

import base64
import binascii
import os
import re
import string
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr

from hubpilot.schedule import validate_ncrontab


class Section(BaseModel):
    """A settings section: unknown keys are errors (a misspelt setting must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


NCronTab = Annotated[str, AfterValidator(validate_ncrontab)]
"""A six-field NCRONTAB expression, validated."""


class PathSetting:
    """Marks a setting that names a file or directory: a relative path given in the settings file
    is read from that file's folder (``hubpilot.settings``); one from the environment stays
    relative to the working directory. ``several``: a list joined by ``os.pathsep`` (KUBECONFIG
    style); ``sqlite``: ``:memory:`` and ``file:`` URIs are left as they are."""

    def __init__(self, *, several: bool = False, sqlite: bool = False) -> None:
        self.several = several
        self.sqlite = sqlite


def expand_home(value: str | None, *, several: bool = False) -> str | None:
    """A path setting's leading ``~`` (with ``several``, each of a list's, joined by ``os.pathsep``)
    as the user's home folder: the files are opened as given, and SQLite would keep a state file
    named ``~/...`` under the working directory, a new store wherever hubpilot runs (forgetting the
    managed users, the removal window and the approvals)."""
    if not value or "~" not in value:
        return value
    parts = value.split(os.pathsep) if several else [value]
    return os.pathsep.join(os.path.expanduser(p) if p.startswith("~") else p for p in parts)


HomePath = AfterValidator(expand_home)
"""Goes with ``PathSetting`` in a path setting's ``Annotated``: a leading ``~`` is the home folder."""
HomePaths = AfterValidator(lambda value: expand_home(value, several=True))
"""``HomePath`` of a ``PathSetting(several=True)``."""


FROM_FILE_FOLDER = ("A relative path in the settings file is read from the file's folder; one in the "
                    "environment, from the working directory; a leading ~ is the home folder.")
"""The sentence each path setting's description ends with."""


def check_account_key(value: SecretStr | None) -> SecretStr | None:
    """Refuse an Azure Storage connection string whose AccountKey can sign no request: the storage
    clients decode the key (base64) only to sign the first request, and every run would fail with
    "Incorrect padding" (an empty key: 403), naming no setting. Read as the clients read it; the
    value is never shown."""
    if value is None:
        return value
    fields = dict(part.split("=", 1) for part in value.get_secret_value().rstrip(";").split(";") if "=" in part)
    fields = {name.strip().upper(): v for name, v in fields.items()}
    if "ACCOUNTKEY" not in fields or fields.get("USEDEVELOPMENTSTORAGE") == "true":
        return value
    try:
        key = base64.b64decode(fields["ACCOUNTKEY"])
    except (binascii.Error, ValueError):
        raise ValueError("its AccountKey is not valid base64 (cut short when copied?): copy the storage account's "
                         "key (or its whole connection string) again (the value is not shown)") from None
    if not key:
        raise ValueError("its AccountKey is empty: copy the storage account's key (or its whole connection "
                         "string) again (the value is not shown)")
    return value


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""The hosts plain http is accepted for (loopback tests), by name: the Graph client (kiota's
AzureIdentityAccessTokenProvider) sends its token over http to these alone, and refuses every
request to another loopback address (127.0.0.2) with "Only https is supported"; the ARM
adapter's policy takes all of 127.0.0.0/8, a wider set, so any host allowed here works there."""


def no_userinfo(value: str, what: str) -> SplitResult:
    """The URL split, or ValueError (never showing it) when it holds ``user:password@``: the HTTP
    clients send that as Basic authentication in the token's place, and errors quote the URL."""
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} holds a user name or password (user:password@): the HTTP client would send it "
                         "in place of hubpilot's token, and errors quote the URL; remove it (the value is not shown)")
    return parts


def bearer_url(value: str, what: str, example: str) -> str:
    """An endpoint hubpilot sends a bearer token to with every request: http(s) with a host, plain
    http only on loopback (judged by the URL's host), and no ``user:password@``, which the HTTP
    clients would send as Basic authentication in the token's place, and which every error quoting
    the URL would carry into the audit log (refused without showing it). Spaces or a line break
    around it, kept when copied, are dropped; one inside (a Bicep parameter copied with a space,
    then joined to a path) is refused: the host was looked up with it, and every request failed."""
    text = value.strip()
    parts = no_userinfo(text, what)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL, e.g. {example} (got {value!r})")
    if any(c.isspace() for c in text):
        raise ValueError(f"{what} holds a space or line break (kept when copied?): write the URL alone, e.g. "
                         f"{example} (got {value!r})")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"{what} must use https (plain http is accepted for loopback tests only)")
    return text.rstrip("/")


def authority_url(value: str | None, what: str) -> str | None:
    """An Entra authority host as azure-identity takes it: ``https://host``, or a bare host (read
    as https, as azure-identity does); refused at load, naming the setting, where azure-identity
    would refuse it only when the first token is asked for."""
    if value is None:
        return None
    text = value.strip().rstrip("/")
    parts = urlsplit(text if "://" in text else "https://" + text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{what} must be the https URL of an Entra authority host, e.g. "
                         f"https://login.microsoftonline.us (azure-identity takes no other; got {value!r})")
    return f"https://{text}" if "://" not in text else text


def bare_name(value: str, what: str, example: str, kind: str = "Azure resource name", bicep: str | None = None) -> str:
    """A name that holds no space or line break (an Azure resource's, a Kubernetes label key or
    resource name): spaces or a line break around it, kept when copied, are dropped (the calls named
    something that does not exist, and every run failed); one inside is refused, naming the setting
    (and ``bicep``, the Bicep parameter that sets it)."""
    text = value.strip()
    if any(c.isspace() for c in text):
        where = f" (the Bicep parameter {bicep})" if bicep else ""
        raise ValueError(f"{what}{where} holds a space or line break, which no {kind} has: write the "
                         f"name alone, e.g. {example} (got {value!r})")
    return text


GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def guid(value: str | None, what: str, which: str) -> str | None:
    """An Azure id (a tenant's, a client's, a subscription's): a GUID. Spaces or a line break
    around it, kept when copied from the portal, a file or a secret, are dropped: sent as they
    are, every token request or ARM call would fail, naming no setting."""
    if value is None:
        return None
    text = value.strip()
    if not GUID.fullmatch(text):
        raise ValueError(f"{what} must be {which} (e.g. 00000000-0000-0000-0000-000000000000; got {value!r})")
    return text


_SCOPE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_-.:/")
"""The characters of a token scope (azure-identity's own check of a scope, in its CLI credentials)."""


def token_scope(value: str | None, what: str, example: str) -> str | None:
    """The scope of an app-only token: one resource's ``/.default``. The client credentials flow (a
    service principal, the workload identity) takes no other scope (Entra: AADSTS1002012), and the
    managed identity asks for one resource, the scope without ``/.default``: a permission
    (``.../User.Read.All``), several scopes, or a resource that is neither a URI nor an application
    id would fail every token request, naming no setting. A resource alone (``https://host``, with
    or without its trailing slash) gets its ``/.default``: the managed identity asks for the same
    resource, and the client credentials flow can ask for it only so. Blank: unset."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if any(c not in _SCOPE_CHARACTERS for c in text):
        raise ValueError(f"{what} must be one resource's token scope, e.g. {example}: one scope, of letters, "
                         f"digits and _-.:/ alone (got {value!r})")
    resource = text.removesuffix("/.default")
    if resource == text:
        parts = urlsplit(text)
        if parts.scheme and parts.netloc and parts.path in ("", "/"):
            return f"{text}/.default"
        raise ValueError(f"{what} must be a resource's /.default scope, e.g. {example}: an app-only token (managed "
                         "identity, service principal, workload identity) is given for a whole resource, with the "
                         f"permissions granted to the app, never for a permission named in the scope (got {value!r})")
    if not resource.strip("/") or "/.default" in resource or not (":" in resource or GUID.fullmatch(resource)):
        raise ValueError(f"{what} must be a resource's /.default scope, the resource a URI with its scheme or an "
                         f"application id, e.g. {example} (got {value!r})")
    return text
