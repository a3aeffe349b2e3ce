"""The JupyterHub REST API as the core needs it."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class HubServer:
    """One server of a user (``name == ""`` is the default server)."""

    user: str
    name: str
    ready: bool
    pending: str | None  # "spawn", "stop", or None
    started: datetime | None
    last_activity: datetime | None
    url: str | None = None
    user_options: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HubUser:
    name: str
    admin: bool
    groups: frozenset[str]
    kind: str = "user"
    created: datetime | None = None
    last_activity: datetime | None = None
    servers: Mapping[str, HubServer] = field(default_factory=dict)
    #: False when the hub left ``groups`` out of the user model (a token without
    #: ``read:users:groups``): then ``groups`` is empty for want of reading, not of groups
    groups_read: bool = True
    #: False when the hub left ``created`` out of the user model (a token without
    #: ``read:users``): then ``created`` is None for want of reading
    created_read: bool = True


@dataclass(frozen=True)
class HubGroup:
    name: str
    users: frozenset[str]
    properties: Mapping[str, Any] = field(default_factory=dict)


class StopResult(enum.StrEnum):
    STOPPED = "stopped"  # 204: stopped now (JupyterHub 5/6 also answer 204 for a stopped server)
    PENDING = "pending"  # 202: stop requested, still stopping (a slow stop)
    NOT_RUNNING = "not_running"  # 400 "not running" / 404 server: already so


class HubError(Exception):
    """A hub request failed after the client's own retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UsersNotCreated(HubError):
    """``create_users`` created some names and the hub failed to create others (its
    authenticator's ``add_user`` raised: 400 "Failed to create user NAME: ..."): ``created`` are
    the names it made, ``failed`` the others with the hub's reason."""

    def __init__(self, created: Sequence[str], failed: Mapping[str, str]) -> None:
        super().__init__("the hub failed to create " + "; ".join(f"{n}: {why}" for n, why in failed.items()), 400)
        self.created = list(created)
        self.failed = dict(failed)


class HubUnreachable(HubError):
    """The hub did not answer: the connection failed, or no answer came within the timeout, on
    every attempt the client made. ``timed_out``: the last attempt waited out its timeout (a hub
    that accepts connections and never answers), rather than failing at once."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class HubNotAttempted(HubUnreachable):
    """Not sent: an earlier request of the same round got no answer from the hub (see
    :func:`hub_round`), so this one fails at once instead of waiting out its own timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, timed_out=True)


class HubRound:
    """The hub requests of one round (one run of a capability). Once one of them got no answer
    within its timeout, through the client's retries, the hub is taken for silent until the round
    ends: the round's requests not yet sent fail at once with :class:`HubNotAttempted`, and those
    not yet retried are not retried, instead of each waiting out its own timeouts and retries.
    Requests already sent get their own answers or timeouts. The next round tries again."""

    def __init__(self) -> None:
        self.silent: str | None = None  # why the round's hub is silent: its first unanswered request

    def fall_silent(self, reason: str) -> None:
        if self.silent is None:
            self.silent = reason


_ROUND: ContextVar[HubRound | None] = ContextVar("hubpilot_hub_round", default=None)


@contextlib.contextmanager
def hub_round() -> Iterator[HubRound]:
    """A round for the hub requests made within (tasks started within share it)."""
    rnd = HubRound()
    token = _ROUND.set(rnd)
    try:
        yield rnd
    finally:
        _ROUND.reset(token)


def current_round() -> HubRound | None:
    """The round the hub requests made now belong to; None outside one (no fail-fast)."""
    return _ROUND.get()


class HubInvalidResponse(HubError):
    """The hub answered, but not with what its API documents (bad JSON, missing fields)."""


class Hub(Protocol):
    """Async JupyterHub client. Every write is idempotent: repeating it is a no-op."""

    async def list_users(self, *, state: str | None = None) -> list[HubUser]:
        """All users (paged), with their servers; ``state`` is the hub's filter
        (``ready``, ``active``, ``inactive``)."""
        ...

    async def list_groups(self) -> list[HubGroup]: ...

    async def get_user(self, name: str) -> HubUser | None:
        """One user with their servers; None when the hub does not know them."""
        ...

    async def create_users(self, names: Sequence[str]) -> list[str]:
        """Create users in bulk; returns the names created (existing ones are left as they are)."""
        ...

    async def set_admin(self, name: str, admin: bool) -> None: ...

    async def rename_user(self, name: str, new_name: str) -> bool:
        """Rename a user (groups, tokens and server state stay theirs); False when ``name`` is
        gone and ``new_name`` exists: already renamed."""
        ...

    async def create_group(self, name: str) -> bool:
        """Create a group; False when it already existed."""
        ...

    async def add_group_members(self, group: str, names: Sequence[str]) -> dict[str, str]:
        """Put ``names`` in ``group``; returns those the hub does not have (deleted meanwhile: name →
        why), the others are in."""
        ...

    async def remove_group_members(self, group: str, names: Sequence[str]) -> dict[str, str]:
        """Take ``names`` out of ``group``; returns those the hub could not take out (name → why and
        what to do), the others are out."""
        ...

    async def stop_server(self, user: str, server: str = "") -> StopResult: ...

    async def delete_server(self, user: str, server: str) -> StopResult:
        """Stop and remove a named server: the hub deletes its spawner, and the spawner's
        ``delete_forever`` may delete its volume (KubeSpawner's ``delete_pvc``, on by default,
        deletes a per-server PVC)."""
        ...

    async def revoke_tokens(self, user: str) -> int:
        """Revoke every API token of a user; returns how many were revoked (a token listed whose
        deletion was answered "not found" only on a retry counts: an earlier sending revoked it;
        so does one the hub deleted along with another token of its OAuth client)."""
        ...

    async def delete_user(self, name: str) -> bool:
        """Delete a user, stopping their servers first (named ones too); False when it did not
        exist; HubError while a server is still stopping. Only called when deletion is enabled."""
        ...

    async def close(self) -> None: ...


def token_fits_a_header(token: str) -> bool:
    """Whether an HTTP header can carry ``token``: printable ASCII, no space at either end. A token
    read from a file or a secret store keeps its trailing newline; the HTTP library would refuse
    the header and quote it, token and all, in its error (the run's error, its audit entry, /status)."""
    return all(" " <= c <= "~" for c in token) and token == token.strip()

