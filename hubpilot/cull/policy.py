"""Which timeout and max age apply to a server: the first matching policy, else the defaults."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase

from hubpilot.config.cull import CullPolicy, CullSettings
from hubpilot.ports.hub import HubServer

DEFAULT_POLICY = "default"


@dataclass(frozen=True)
class Limits:
    """The limits in force for one server. ``None`` means no limit of that kind."""

    policy: str
    inactivity_timeout: timedelta | None
    max_age: timedelta | None


def profile_of(server: HubServer) -> str | None:
    """The server's spawn profile: ``user_options["profile"]`` (kubespawner's profile slug)."""
    value = server.user_options.get("profile") if server.user_options else None
    return str(value) if value not in (None, "") else None


def _seconds(value: int) -> timedelta | None:
    return timedelta(seconds=value) if value > 0 else None


def _profile_matches(pattern: str | None, profile: str | None) -> bool:
    """Unset matches every server; ``""`` the servers started without a profile (KubeSpawner
    gives them its default profile); a glob the servers whose profile it matches."""
    if pattern is None:
        return True
    if pattern == "":
        return profile is None
    return profile is not None and fnmatchcase(profile, pattern)


def _matches(policy: CullPolicy, profile: str | None, groups: Iterable[str]) -> bool:
    if not _profile_matches(policy.match_profile, profile):
        return False
    return policy.match_group is None or any(fnmatchcase(g, policy.match_group) for g in groups)


def limits_for(settings: CullSettings, server: HubServer, groups: Iterable[str]) -> Limits:
    """First policy whose profile and group globs both match; unset policy values inherit."""
    groups = sorted(groups)
    profile = profile_of(server)
    for policy in settings.policies:
        if _matches(policy, profile, groups):
            timeout = policy.inactivity_timeout if policy.inactivity_timeout is not None \
                else settings.inactivity_timeout
            max_age = policy.max_age if policy.max_age is not None else settings.max_age
            return Limits(policy.name, _seconds(timeout), _seconds(max_age))
    return Limits(DEFAULT_POLICY, _seconds(settings.inactivity_timeout), _seconds(settings.max_age))


def human(delta: timedelta) -> str:
    """``3d 4h``, ``3d``, ``2h 03m``, ``45m``, ``20s`` — short and exact enough for a plan line."""
    total = max(0, int(delta.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {seconds:02d}s" if seconds and minutes < 10 else f"{minutes}m"
    return f"{seconds}s"
