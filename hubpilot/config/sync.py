from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hubpilot.config.base import NCronTab, Section


class NamingSettings(Section):
    """How a directory username becomes a hub name — the same way the hub's authenticator does."""

    lowercase: bool = Field(True, description="Lowercase names (JupyterHub's default normalize_username).")
    strip_domain: bool = Field(False, description="Drop '@domain' (e.g. from a userPrincipalName).")
    unicode_form: str = Field("NFKC", pattern="^(NFC|NFKC|NFD|NFKD|none)$", description="Unicode normalisation.")
    pattern: str = Field(
        r"^[a-z0-9][a-z0-9._@+-]{0,63}$",
        description="Regular expression a valid hub name matches (after normalisation).",
    )
    username_map: dict[str, str] = Field(
        default_factory=dict, description="Explicit renames, as the authenticator's username_map."
    )

    @field_validator("pattern")
    @classmethod
    def _regular_expression(cls, v: str) -> str:
        # compiled only when a sync names the first person: every sync would fail with re's
        # message, naming no setting
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"is no regular expression ({exc}); write a Python regular expression, e.g. "
                             r"'^[a-z0-9][a-z0-9._@+-]{0,63}$' (the default)") from None
        return v


class SyncSettings(Section):
    users_groups: list[str] = Field(
        default_factory=list, description="Directory groups whose members become hub users."
    )
    admin_groups: list[str] = Field(
        default_factory=list, description="Directory groups whose members get admin rights (see admin_mode)."
    )
    admin_mode: Literal["role", "flag"] = Field(
        "role",
        description="How admin groups confer admin rights. role: the hub grants its admin role to the "
        "mirrored admin groups (hubpilot_hub.configure(admin_groups=...)), so hubpilot only manages "
        "membership and needs no admin rights itself; flag: hubpilot sets the users' admin flag, "
        "which JupyterHub only lets admins do (the service then needs the hub's admin role).",
    )
    group_prefix: str = Field("dir-", description="Prefix of the hub groups that mirror directory groups.")
    group_names: dict[str, str] = Field(
        default_factory=dict,
        description="Hub group name (without prefix) per directory group, where the directory's "
        "name is no good hub name (e.g. an Entra object id), or where two directory groups would get "
        "the same hub group (cn=staff in two OUs; refused at start).",
    )
    naming: NamingSettings = Field(default_factory=NamingSettings)
    max_removals: int = Field(
        50, ge=0, description="Refuse a plan that removes, renames or deletes more users than this."
    )
    max_removal_percent: float = Field(
        20.0, ge=0, le=100, description="Refuse a plan that removes or renames more than this share of the "
        "active managed users, or deletes more than this share of all managed users (active or deprovisioned)."
    )
    removal_window_hours: float = Field(
        24.0, ge=0, le=87600, description="Count the people sync removed in this many hours before a run with the "
        "plan's removals against max_removals and max_removal_percent (a directory that loses people over "
        "several runs), and the people it took out of a mirrored group with the group's losses; approving a "
        "plan refused for its removals restarts their count, one refused for a group's losses that count; "
        "0: each plan alone."
    )
    group_removal_floor: int = Field(
        5, ge=0, description="Refuse a plan that takes more than max_removal_percent of a mirrored hub "
        "group's members out of it (counting those taken out within removal_window_hours) only when that is more "
        "than this many people (small groups' churn passes)."
    )
    stop_servers: bool = Field(True, description="Stop the servers of people who leave.")
    revoke_tokens: bool = Field(True, description="Revoke the API tokens of people who leave.")
    delete_users: bool = Field(
        False, description="Delete hub users who left (in z2jh this deletes their volume). Off by default."
    )
    delete_grace_hours: float = Field(
        720.0, ge=0, le=87600, description="With delete_users: hours after deprovisioning before deletion."
    )
    concurrency: int = Field(8, ge=1, le=64, description="Hub writes in flight at once.")
    schedule: NCronTab = Field(
        "0 */15 * * * *", description="NCRONTAB of the scheduled (safety-net) sync; also "
        "HUBPILOT_SYNC_SCHEDULE, the app setting the Functions timer reads.")

    @field_validator("users_groups", "admin_groups")
    @classmethod
    def _group_names(cls, v: list[str]) -> list[str]:
        # a directory has no group without a name: every sync would fail reading it
        blank = [i for i, group in enumerate(v) if not group.strip()]
        if blank:
            raise ValueError(f"holds an empty group name (item {', '.join(str(i + 1) for i in blank)} of {len(v)}): "
                             "remove it, or write the directory group's name, e.g. [\"jupyter-users\"]")
        return v

    @field_validator("group_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if "/" in v:
            raise ValueError("group_prefix must not contain '/' (hub group names go into URLs)")
        return v

    @field_validator("group_names")
    @classmethod
    def _overrides(cls, v: dict[str, str]) -> dict[str, str]:
        # an override is the hub group's name as it is (after the prefix): an empty one named the
        # hub group by the prefix alone (or nothing), a '/' broke every request about the group
        for group, name in v.items():
            if not group.strip():
                raise ValueError("names an empty directory group: each key is a directory group of "
                                 "sync.users_groups or sync.admin_groups, e.g. {\"jupyter-users\": \"users\"}")
            if not name.strip() or name != name.strip() or "/" in name:
                raise ValueError(f"gives directory group {group!r} the hub group name {name!r}: write a name without "
                                 "'/' and without leading or trailing spaces, e.g. \"users\" (the hub group is "
                                 "sync.group_prefix + that name)")
        return v

    @model_validator(mode="after")
    def _one_hub_group_each(self) -> SyncSettings:
        """Two directory groups mirrored into one hub group would each strip the other's members
        from it at every run (e.g. cn=staff in two OUs, names that differ only in case or
        punctuation, names in a script the hub group name cannot carry)."""
        from hubpilot.naming import hub_group_name  # hubpilot.naming imports this module

        seen: dict[str, str] = {}
        for group in dict.fromkeys([*self.users_groups, *self.admin_groups]):
            hub_group = hub_group_name(group, self.group_prefix, self.group_names)
            if hub_group in seen:
                raise ValueError(
                    f"directory groups {seen[hub_group]!r} and {group!r} would both be mirrored by the hub "
                    f"group {hub_group!r}; give one of them another name in sync.group_names"
                )
            seen[hub_group] = group
        return self
