"""The benchmarks' settings load as hubpilot's settings do: a validation rule added to the settings
must not leave a benchmark that fails at its first configuration (the benchmarks are not run
here), and the settings the scale simulation prints are ones a real deployment can run."""

from __future__ import annotations

import tomllib

from pydantic import ValidationError

from bench.scale_sim import candidates, curve_points
from hubpilot.settings import Settings


def test_every_configuration_the_scale_simulation_sweeps_is_valid_as_printed() -> None:
    """Each point the simulation tunes or sweeps loads through the settings, and so does the
    hubpilot.toml it would print for it: a reclaim after 2 minutes with a 60 s activity interval
    (one of its points) names the 30 s hubpilot_activity check it needs; the others leave the
    check at the shipped 60 s, which the real lag is then checked against."""
    points = [*candidates(quick=False), *curve_points()]
    assert any(p.reclaim_minutes == 2 and p.activity_interval == 60 for p in points)
    # one point for each combination of what the activity rules read (each load takes a while)
    distinct = {(p.cull_minutes, p.reclaim_minutes, p.activity_interval, p.cull_every): p for p in points}
    refused = []
    for p in distinct.values():
        try:
            p.configured()
            printed = Settings.model_validate(tomllib.loads(p.toml()))
        except ValidationError as exc:
            refused.append(f"{p}: {exc.errors()[0]['msg']}")
            continue
        soon = p.reclaim_minutes is not None and p.reclaim_minutes * 60 <= p.activity_interval + 60
        assert printed.cull.activity_check_seconds == (30 if soon else 60), p
    assert not refused, refused[:3]
