"""The Functions host's settings as the host reads them (review of the Functions host settings)."""
from __future__ import annotations

import pytest

import functions


@pytest.mark.parametrize(("name", "value"), [
    ("AzureWebJobs.cull_timer.Disabled", "true"),
    ("AzureWebJobs.cull_timer.Disabled", "TRUE"),
    ("AzureWebJobs.cull_timer.Disabled", "1"),
    ("azurewebjobs.CULL_TIMER.disabled", "True"),  # .NET configuration: names in any case
    ("AzureWebJobs_cull_timer_Disabled", "true"),  # Linux: a dot of an app setting's name as '_'
    ("AZUREWEBJOBS_cull_timer_DISABLED", "1"),
])
def test_a_timer_is_off_where_the_host_reads_its_disabled_setting_as_true(name: str, value: str) -> None:
    """The host looks ``AzureWebJobs.<function>.Disabled`` (and ``AzureWebJobs_<function>_Disabled``)
    up in its configuration, whose names are case-insensitive, and takes "true" or "1" in any case:
    GET /status says the timer is not fired, naming the setting as it is set."""
    off = functions.disabled_timers({name: value, "AzureWebJobs.sync_timer.Disabled": "false"})
    assert set(off) == {"cull"}
    assert f"the app setting {name} is {value!r}" in off["cull"]


@pytest.mark.parametrize(("name", "value"), [
    ("AzureWebJobs__cull_timer__Disabled", "true"),  # '__' is ':' to the host: AzureWebJobs:cull_timer:Disabled
    ("AzureWebJobs.cull_timer.Disabled", " true"),  # compared as given
    ("AzureWebJobs.cull_timer.Disabled", "true\n"),
    ("AzureWebJobs.cull_timer.Disabled", "yes"),
    ("AzureWebJobs.cull_timer.Disabled", "0"),
    ("AzureWebJobs.cull-timer.Disabled", "true"),
])
def test_a_timer_fires_where_the_host_does_not_read_its_setting_as_disabled(name: str, value: str) -> None:
    """What the host does not read as switching the timer off leaves it firing in GET /status too."""
    assert functions.disabled_timers({name: value}) == {}
