"""The safety limits and the refusals of the settings, each value refused at load naming its
setting: a limit set to a value that switches it off, or that no run can work with, would
otherwise pass silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubpilot.settings import SettingsError, load_settings
from tests.test_settings import clean_env  # noqa: F401 (autouse: no HUBPILOT_ variable, no stray ./hubpilot.toml)


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    return str(err.value)


@pytest.mark.parametrize(("variable", "value", "said"), [
    # a negative count refuses every plan that removes anyone, whatever an admin meant
    ("HUBPILOT_SYNC__MAX_REMOVALS", "-1", "sync.max_removals: Input should be greater than or equal to 0"),
    # a share above 100 % never refuses anything: the limit would be off without a word
    ("HUBPILOT_SYNC__MAX_REMOVAL_PERCENT", "101",
     "sync.max_removal_percent: Input should be less than or equal to 100"),
    # a negative grace would be taken as none: users deleted (in z2jh with their volume) at once
    ("HUBPILOT_SYNC__DELETE_GRACE_HOURS", "-1", "sync.delete_grace_hours: Input should be greater than or equal to 0"),
    # a negative limit refuses every plan that deletes a user, whatever an admin meant
    ("HUBPILOT_CULL__MAX_USER_DELETIONS_PER_ROUND", "-1",
     "cull.max_user_deletions_per_round: Input should be greater than or equal to 0"),
    # a step of 0 nodes never scales up (or down), whatever the demand
    ("HUBPILOT_SCALE__MAX_STEP_UP", "0", "scale.max_step_up: Input should be greater than or equal to 1"),
])
def test_a_safety_limit_out_of_its_range_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                              value: str, said: str) -> None:
    message = refusal(monkeypatch, **{variable: value})
    assert said in message
    assert f"[env {variable}]" in message


@pytest.mark.parametrize(("variable", "value"), [
    ("HUBPILOT_SYNC__MAX_REMOVALS", "0"),
    ("HUBPILOT_SYNC__MAX_REMOVAL_PERCENT", "100"),
    ("HUBPILOT_SCALE__MAX_STEP_UP", "1"),
    ("HUBPILOT_SYNC__DELETE_GRACE_HOURS", "0"),
])
def test_a_safety_limit_at_the_edge_of_its_range_loads(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                       value: str) -> None:
    monkeypatch.setenv(variable, value)
    load_settings()



def test_scale_enabled_without_the_clusters_resource_group_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # every run would fail at ARM naming no setting
    message = refusal(monkeypatch, HUBPILOT_SCALE__ENABLED="true", HUBPILOT_SCALE__CLUSTER="aks",
                      HUBPILOT_SCALE__SUBSCRIPTION_ID="00000000-0000-0000-0000-000000000000")
    assert "scale.enabled needs scale.subscription_id, scale.resource_group and scale.cluster" in message
    monkeypatch.setenv("HUBPILOT_SCALE__RESOURCE_GROUP", "rg")
    assert load_settings().scale.enabled


def test_an_inactivity_timeout_equal_to_the_activity_lag_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # a busy server's activity reaches the hub up to 1.1 × 300 + 60 = 390 s late: a 390 s timeout
    # stops a server in use that reported exactly that late
    monkeypatch.setenv("HUBPILOT_CULL__SCHEDULE", "0 */3 * * * *")
    message = refusal(monkeypatch, HUBPILOT_CULL__INACTIVITY_TIMEOUT="390")
    assert "cull.inactivity_timeout=390: an inactivity timeout must exceed" in message
    monkeypatch.setenv("HUBPILOT_CULL__INACTIVITY_TIMEOUT", "391")
    assert load_settings().cull.inactivity_timeout == 391


@pytest.mark.parametrize(("variable", "url", "scope"), [
    ("HUBPILOT_SCALE__ARM_ENDPOINT", "https://management.usgovcloudapi.net/",
     "https://management.usgovcloudapi.net/.default"),
])
def test_an_endpoint_with_a_trailing_slash_gives_the_token_scope_of_its_cloud(
        monkeypatch: pytest.MonkeyPatch, variable: str, url: str, scope: str) -> None:
    # "<endpoint>//.default" is no audience Entra issues a token for: every run would fail at the token
    monkeypatch.setenv(variable, url)
    s = load_settings()
    assert s.scale.arm_endpoint == url.rstrip("/")
    assert s.scale.effective_arm_audience == scope



def test_a_hub_url_with_a_user_name_alone_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # the HTTP client sends a URL's user name as Basic authentication in place of hub.token, with
    # or without a password
    message = refusal(monkeypatch, HUBPILOT_HUB__API_URL="https://svc@hub.example.org/hub/api")
    assert "hub.api_url: Value error, holds a user name or password" in message


def test_a_variable_for_a_missing_section_is_refused_in_lower_case_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # the settings read their variables whatever the case: hubpilot_sync__max_removals sets the limit,
    # so a misspelt section in lower case must not pass silently either
    monkeypatch.setenv("hubpilot_sync__max_removals", "7")
    assert load_settings().sync.max_removals == 7
    message = refusal(monkeypatch, hubpilot_syn__max_removals="7")
    assert "hubpilot_syn__max_removals: there is no settings section 'syn'" in message


def test_a_settings_file_named_by_a_folder_is_refused_as_such(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^config file .* is a directory$"):
        load_settings(tmp_path)
    monkeypatch.setenv("HUBPILOT_CONFIG", str(tmp_path))
    with pytest.raises(SettingsError, match=r"^config file .* \(\$HUBPILOT_CONFIG\) is a directory$"):
        load_settings()


def test_a_renewal_margin_within_the_functions_timers_hour_is_refused_whatever_the_serve_schedule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the Functions app renews on its hourly timer, whatever subscription_schedule says: a 45-minute
    # margin lets subscriptions expire between two of its rounds, and Graph drops them
    entra = {"notifications": True, "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications",
             "client_state": "s3cret", "subscription_schedule": "0 */10 * * * *"}
    with pytest.raises(SettingsError) as err:
        load_settings(None, directory={"kind": "entra", "entra": {**entra, "renew_before_minutes": 45}})
    assert "directory.entra.renew_before_minutes=45 is not longer than the time between two rounds" in str(err.value)
    assert "60 min" in str(err.value)
    load_settings(None, directory={"kind": "entra", "entra": {**entra, "renew_before_minutes": 61}})


def test_an_azure_state_store_given_only_blanks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # a secret that arrived empty but for a space: every command would fail building the store
    message = refusal(monkeypatch, HUBPILOT_STATE__KIND="azure", HUBPILOT_STATE__AZURE_CONNECTION_STRING="  ")
    assert "state.kind is 'azure' but neither state.azure_connection_string nor state.azure_account_name" in message


def test_a_refused_value_given_by_no_variable_or_file_names_the_variable_that_sets_it() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(None, scale={"max_step_up": 0})
    assert "scale.max_step_up: Input should be greater than or equal to 1" in str(err.value)
    assert "[env HUBPILOT_SCALE__MAX_STEP_UP]" in str(err.value)
