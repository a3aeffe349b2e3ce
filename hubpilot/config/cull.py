"""Settings of the cull work: which idle servers are stopped, when, and how many at once.

The options mirror jupyterhub-idle-culler 2.0 (``--timeout``, ``--max-age``, ``--cull-users``,
``--cull-admin-users``, ``--remove-named-servers``, ``--cull-default-servers``,
``--cull-named-servers``, ``--concurrency``); the page size of the listing is ``hub.page_size``.
See docs/cull.md.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator, model_validator

from hubpilot.config.base import NCronTab, Section

TEN_YEARS = 10 * 365 * 24 * 3600  # seconds; a longer limit is no limit (0 says "never"), and overflows a clock
#: jupyterhub-singleuser waits its activity interval times 1 ± 10% between two reports
#: (``keep_activity_updated``): a report can come this many intervals after the previous one
REPORT_STRETCH = 1.1


class CullPolicy(Section):
    """A timeout and max age for the servers it matches. The first matching policy wins."""

    name: str = Field(..., min_length=1, max_length=64, description="Shown in plan reasons.")
    match_profile: str | None = Field(
        None,
        description="Glob on the server's spawn profile (user_options['profile'], the kubespawner "
        "profile slug); '' matches the servers started without one (kubespawner's default "
        "profile); unset matches any profile (and servers without one).",
    )
    match_group: str | None = Field(
        None, description="Glob on the user's hub groups (any group matching is enough); unset matches all."
    )
    inactivity_timeout: int | None = Field(
        None, ge=0, le=TEN_YEARS,
        description="Seconds idle before a stop; 0 never stops for inactivity; unset uses the default.",
    )
    max_age: int | None = Field(
        None, ge=0, le=TEN_YEARS,
        description="Seconds since start before a stop, busy or not; 0 none; unset uses the default.",
    )


class CullSettings(Section):
    """Culling idle servers through the JupyterHub REST API (replaces z2jh's own culler)."""

    schedule: NCronTab = Field(
        "0 */10 * * * *", description="NCRONTAB of the scheduled cull round; also "
        "HUBPILOT_CULL_SCHEDULE, the app setting the Functions timer reads.")
    inactivity_timeout: int = Field(
        3600, ge=0, le=TEN_YEARS,
        description="Seconds without activity before a server is stopped (0: never for inactivity). "
        "Must exceed 1.1 × activity_interval + activity_check_seconds.",
    )
    max_age: int = Field(
        0, ge=0, le=TEN_YEARS,
        description="Seconds since a server started before it is stopped even if active (0: none).",
    )
    activity_interval: int = Field(
        300, ge=1,
        description="The single-user servers' JUPYTERHUB_ACTIVITY_INTERVAL (seconds); "
        "timeouts must exceed 1.1 × it (jupyterhub-singleuser reports up to 10% late) plus activity_check_seconds.",
    )
    activity_check_seconds: float = Field(
        60, ge=0, le=3600,
        description="The user image's HUBPILOT_ACTIVITY_CHECK_SECONDS (hubpilot_activity's busy "
        "check; 0 if the image does not run it): a silent busy server's activity reaches the hub "
        "up to 1.1 × activity_interval + this late, so timeouts must exceed the sum.",
    )
    cull_default_servers: bool = Field(True, description="Cull default (unnamed) servers.")
    cull_named_servers: bool = Field(True, description="Cull named servers.")
    remove_named_servers: bool = Field(
        False, description="Remove culled named servers from the hub (their state; on z2jh also the server's own "
        "volume, unless c.KubeSpawner.delete_pvc = False: KubeSpawner deletes it by default)."
    )
    cull_users: bool = Field(
        False,
        description="Look for long-inactive users (no running server, inactive beyond the timeout). "
        "Only reported unless delete_users is set.",
    )
    cull_admin_users: bool = Field(True, description="With cull_users: include admin users.")
    delete_users: bool = Field(
        False,
        description="With cull_users: DELETE long-inactive users (in z2jh this deletes their volume), "
        "never one sync manages as a member of a synced group. Off by default.",
    )
    policies: list[CullPolicy] = Field(
        default_factory=list, description="Per-profile / per-group policies, first match wins (JSON list)."
    )
    concurrency: int = Field(20, ge=1, le=200, description="Server stops in flight at once.")
    max_stops_per_round: int = Field(
        100, ge=0, description="Refuse a plan that stops more servers than this (an admin can approve it)."
    )
    max_user_deletions_per_round: int = Field(
        10, ge=0, description="With delete_users: refuse a plan that deletes more users than this."
    )

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, v: list[CullPolicy]) -> list[CullPolicy]:
        names = [p.name for p in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"policy names must be unique; repeated: {', '.join(dupes)}")
        return v

    def _limits(self, name: str) -> list[tuple[str, int | None]]:
        """(where, value) of a limit in the section and in each policy (None: the policy inherits)."""
        return [(f"cull.{name}", getattr(self, name)),
                *((f"cull.policies[{p.name}].{name}", getattr(p, name)) for p in self.policies)]

    @model_validator(mode="after")
    def _timeouts_exceed_activity_interval(self) -> CullSettings:
        """A timeout at or below the activity lag would cull servers that are in use: a server
        reports every activity_interval, and a silent busy one is marked by hubpilot_activity
        only every activity_check_seconds before that."""
        lag = self.activity_lag
        bad = [f"{where}={value}" for where, value in self._limits("inactivity_timeout")
               if value is not None and 0 < value <= lag]
        if bad:
            check = (f" + cull.activity_check_seconds={self.activity_check_seconds:g} s, how often "
                     "hubpilot_activity marks a busy server" if self.activity_check_seconds else "")
            raise ValueError(
                f"{', '.join(bad)}: an inactivity timeout must exceed the hub's activity-update "
                f"interval (cull.activity_interval={self.activity_interval} s{check}; {self.lag_note}), "
                "or servers in use look idle between two activity reports; raise the timeout (or lower "
                "the interval)"
            )
        return self

    @property
    def activity_lag(self) -> float:
        """How old a server's hub activity can be while it is in use (seconds): a report comes up
        to 10% later than activity_interval and carries a busy mark up to activity_check_seconds
        old."""
        return REPORT_STRETCH * self.activity_interval + self.activity_check_seconds

    @property
    def lag_note(self) -> str:
        return f"jupyterhub-singleuser reports up to 10% later than its interval: {self.activity_lag:g} s in all"

    @model_validator(mode="after")
    def _rounds_come_often_enough(self) -> CullSettings:
        """A round that fires less often than the shortest timeout (or max age) lets idle servers
        run for up to timeout + period (a 5-minute GPU policy on a 10-minute schedule: 15 minutes)."""
        from hubpilot.schedule import longest_gap

        timeouts = [(where, value) for where, value in [*self._limits("inactivity_timeout"), *self._limits("max_age")]
                    if value]
        if not timeouts:
            return self
        where, shortest = min(timeouts, key=lambda x: x[1])
        gap = longest_gap(self.schedule).total_seconds()
        if gap > shortest:
            half = max(1, int(shortest // 2))
            if half >= 86400:
                example = "0 0 0 * * *"
            elif half >= 3600:
                example = f"0 0 */{half // 3600} * * *"
            elif half >= 120:
                example = f"0 */{min(half // 60, 59)} * * * *"
            else:
                example = f"*/{min(half, 59)} * * * * *"
            raise ValueError(
                f"cull.schedule ({self.schedule!r}) leaves up to {_span(gap)} between rounds, longer than "
                f"{where}={shortest} s: idle servers would run for up to {_span(gap + shortest)}; run the cull "
                f"at least every {half} s (half the shortest timeout, as jupyterhub-idle-culler does), "
                f"e.g. cull.schedule = '{example}'"
            )
        return self


def _span(seconds: float) -> str:
    """Seconds as said in a refusal, with a plan line's short form beside a long span: '15897900 s (184d)'."""
    from hubpilot.cull.policy import human  # policy imports this module

    if seconds >= 3600:
        return f"{seconds:.0f} s ({human(timedelta(seconds=seconds))})"
    return f"{seconds:g} s"
