"""The form of the Azure identifiers and token scopes, and the warm windows' bounds, checked at
load: a wrong value there otherwise failed only at the first token request or ARM call (or kept
fewer nodes than the window said), naming no setting."""

from __future__ import annotations

import pytest

from hubpilot.settings import load_settings
from tests.test_settings import clean_env  # noqa: F401 (autouse: no HUBPILOT_ variable, no stray ./hubpilot.toml)
from tests.test_settings_limits import refusal

GRAPH_SCOPE = "HUBPILOT_DIRECTORY__ENTRA__GRAPH_SCOPE"
ARM_AUDIENCE = "HUBPILOT_SCALE__ARM_AUDIENCE"
ID = "0b9a3c4e-2f6d-4d7a-9c1e-5a8b7f6e4d3c"


def entra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "entra")


def graph_scope() -> str:
    return load_settings().directory.entra.effective_scope  # type: ignore[union-attr]


@pytest.mark.parametrize("variable", [GRAPH_SCOPE, ARM_AUDIENCE])
@pytest.mark.parametrize("value", [
    # a delegated permission: the client credentials flow takes a resource's /.default alone
    # (AADSTS1002012), the managed identity would ask for a resource named ".../User.Read.All"
    "https://graph.microsoft.com/User.Read.All",
    "User.Read.All",
    # two scopes: an app-only token is for one resource
    "https://graph.microsoft.us/.default https://management.usgovcloudapi.net/.default",
    "https://graph.microsoft.us/.default,https://graph.microsoft.com/.default",
    # the resource without its scheme, or none at all
    "graph.microsoft.us/.default",
    "/.default",
    "https://graph.microsoft.us/.default/.default",
])
def test_a_token_scope_no_credential_can_get_a_token_for_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    entra(monkeypatch)
    message = refusal(monkeypatch, **{variable: value})
    setting = "directory.entra.graph_scope" if variable == GRAPH_SCOPE else "scale.arm_audience"
    assert f"{setting} must be" in message and f"[env {variable}]" in message, message
    assert "/.default" in message, message  # the form asked for, with an example


@pytest.mark.parametrize("value", [
    "https://graph.microsoft.us/.default",               # US Government
    "https://dod-graph.microsoft.us/.default",           # US Government DoD
    "https://microsoftgraph.chinacloudapi.cn/.default",  # operated by 21Vianet
    "https://graph.microsoft.com/.default",
    "00000003-0000-0000-c000-000000000000/.default",     # Graph by its application id
])
def test_the_graph_scopes_of_every_cloud_load_as_they_are(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    entra(monkeypatch)
    monkeypatch.setenv(GRAPH_SCOPE, f" {value}\n")  # as copied: the spaces around it dropped
    assert graph_scope() == value


@pytest.mark.parametrize("value", [
    "https://management.usgovcloudapi.net/.default",
    "https://management.chinacloudapi.cn/.default",
    "https://management.core.windows.net//.default",  # ARM's older audience: its resource ends with "/"
    f"api://{ID}/.default",
])
def test_the_arm_audiences_of_every_cloud_load_as_they_are(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ARM_AUDIENCE, value)
    assert load_settings().scale.effective_arm_audience == value


@pytest.mark.parametrize(("value", "scope"), [
    ("https://management.usgovcloudapi.net", "https://management.usgovcloudapi.net/.default"),
    ("https://management.core.windows.net/", "https://management.core.windows.net//.default"),
])
def test_a_resource_alone_is_asked_for_by_its_default_scope(monkeypatch: pytest.MonkeyPatch, value: str,
                                                            scope: str) -> None:
    """A managed identity asks for the scope without "/.default" (the resource given), a service
    principal or the workload identity can ask for a resource only by its "/.default" scope."""
    monkeypatch.setenv(ARM_AUDIENCE, value)
    assert load_settings().scale.effective_arm_audience == scope
    entra(monkeypatch)
    monkeypatch.setenv(GRAPH_SCOPE, "https://graph.microsoft.us")
    assert graph_scope() == "https://graph.microsoft.us/.default"


def test_a_blank_token_scope_is_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    entra(monkeypatch)
    monkeypatch.setenv(ARM_AUDIENCE, " ")
    monkeypatch.setenv(GRAPH_SCOPE, "")
    s = load_settings()
    assert s.scale.effective_arm_audience == "https://management.azure.com/.default"
    assert s.directory.entra.effective_scope == "https://graph.microsoft.com/.default"  # type: ignore[union-attr]


@pytest.mark.parametrize(("variable", "value", "said"), [
    # the identity's name or resource id where its Client ID belongs: no token, at the first request
    ("HUBPILOT_DIRECTORY__ENTRA__CLIENT_ID", "id-hubpilot", "directory.entra.client_id must be the Client ID GUID"),
    ("HUBPILOT_DIRECTORY__ENTRA__CLIENT_ID", "/subscriptions/" + ID + "/resourceGroups/rg/providers/"
     "Microsoft.ManagedIdentity/userAssignedIdentities/id-hubpilot", "directory.entra.client_id must be"),
    ("HUBPILOT_DIRECTORY__ENTRA__TENANT_ID", "contoso.onmicrosoft.com", "directory.entra.tenant_id must be"),
    # the subscription's name: ARM answers "InvalidSubscriptionId" at the first run
    ("HUBPILOT_SCALE__SUBSCRIPTION_ID", "Pay-As-You-Go", "scale.subscription_id must be the subscription's ID"),
])
def test_an_azure_id_that_is_no_guid_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                         value: str, said: str) -> None:
    entra(monkeypatch)
    message = refusal(monkeypatch, **{variable: value})
    assert said in message and f"[env {variable}]" in message, message
    assert "00000000-0000-0000-0000-000000000000" in message, message  # what a GUID looks like


def test_an_azure_id_copied_with_spaces_or_a_line_break_around_it_is_read_without_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent as it was, the client id failed every token request, the subscription every ARM call;
    a tenant id with a line break (a file, a secret) passed the check and refused every
    notification as one of another tenant."""
    entra(monkeypatch)
    monkeypatch.setenv("HUBPILOT_DIRECTORY__ENTRA__CLIENT_ID", f" {ID} ")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__ENTRA__TENANT_ID", f"{ID.upper()}\n")
    monkeypatch.setenv("HUBPILOT_SCALE__SUBSCRIPTION_ID", f"\t{ID}")
    s = load_settings()
    assert s.directory.entra.client_id == ID  # type: ignore[union-attr]
    assert s.directory.entra.tenant_id == ID  # type: ignore[union-attr]
    assert s.scale.subscription_id == ID


def test_an_unset_subscription_stays_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBPILOT_SCALE__SUBSCRIPTION_ID", " ")
    assert load_settings().scale.subscription_id == ""
    # and scale.enabled still says what is missing
    message = refusal(monkeypatch, HUBPILOT_SCALE__ENABLED="true", HUBPILOT_SCALE__RESOURCE_GROUP="rg",
                      HUBPILOT_SCALE__CLUSTER="aks")
    assert "scale.enabled needs scale.subscription_id" in message, message


def test_a_warm_window_whose_floor_is_above_max_nodes_is_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan never goes above scale.max_nodes: the window kept fewer nodes than it said, silently,
    as scale.min_nodes above max_nodes would (refused)."""
    monkeypatch.setenv("HUBPILOT_SCALE__MAX_NODES", "4")
    windows = '[{"days": "sat,sun", "min_nodes": 1}, {"days": "mon-fri", "start": "09:00", "min_nodes": 5}]'
    message = refusal(monkeypatch, HUBPILOT_SCALE__WARM=windows)
    assert "the min_nodes (5) of scale.warm window 2 (mon-fri 09:00-18:00) is above scale.max_nodes (4)" in message
    monkeypatch.setenv("HUBPILOT_SCALE__MAX_NODES", "5")
    assert [w.min_nodes for w in load_settings().scale.warm] == [1, 5]
