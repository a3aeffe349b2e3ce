"""Azure resource names in the settings: copied with spaces or a line break around them, or with
one inside (review of the settings' identifiers)."""
from __future__ import annotations

import pytest

from hubpilot.settings import load_settings
from tests.test_settings import clean_env  # noqa: F401 (autouse: no HUBPILOT_ variable, no stray ./hubpilot.toml)
from tests.test_settings_limits import refusal

SUBSCRIPTION = "00000000-0000-0000-0000-0000000000ab"


def test_the_pools_names_copied_with_spaces_or_a_line_break_around_them_load_without_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept as given, the ARM calls named a resource group, cluster or pool that does not exist
    (and the pool's nodes were looked for under a label value with the space): every run failed."""
    monkeypatch.setenv("HUBPILOT_SCALE__ENABLED", "true")
    monkeypatch.setenv("HUBPILOT_SCALE__SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("HUBPILOT_SCALE__RESOURCE_GROUP", " rg-hub\n")
    monkeypatch.setenv("HUBPILOT_SCALE__CLUSTER", "aks-hub ")
    monkeypatch.setenv("HUBPILOT_SCALE__POOL", "\tgpu")
    s = load_settings().scale
    assert (s.resource_group, s.cluster, s.pool) == ("rg-hub", "aks-hub", "gpu")


def test_a_blank_resource_group_is_unset_and_scale_enabled_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBPILOT_SCALE__RESOURCE_GROUP", " ")
    assert load_settings().scale.resource_group == ""
    message = refusal(monkeypatch, HUBPILOT_SCALE__ENABLED="true", HUBPILOT_SCALE__SUBSCRIPTION_ID=SUBSCRIPTION,
                      HUBPILOT_SCALE__CLUSTER="aks-hub")
    assert "scale.enabled needs scale.subscription_id, scale.resource_group and scale.cluster" in message, message


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("HUBPILOT_SCALE__RESOURCE_GROUP", "rg hub", "scale.resource_group (the Bicep parameter aksResourceGroup)"),
    ("HUBPILOT_SCALE__CLUSTER", "aks\nhub", "scale.cluster (the Bicep parameter aksClusterName)"),
    ("HUBPILOT_SCALE__POOL", "gpu pool", "scale.pool (the Bicep parameter gpuPool)"),
])
def test_a_pools_name_with_a_space_inside_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                               value: str, said: str) -> None:
    """No Azure resource group, cluster or agent pool has a space or line break in its name."""
    message = refusal(monkeypatch, **{variable: value})
    assert f"{said} holds a space or line break" in message and f"[env {variable}]" in message, message
    assert repr(value) in message, message


def test_a_storage_account_name_copied_with_a_line_break_after_it_loads_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBPILOT_STATE__KIND", "azure")
    monkeypatch.setenv("HUBPILOT_STATE__AZURE_ACCOUNT_NAME", "sthubpilot1\n")
    assert load_settings().state.azure_account_name == "sthubpilot1"
    message = refusal(monkeypatch, HUBPILOT_STATE__AZURE_ACCOUNT_NAME="  ")
    assert "neither state.azure_connection_string nor state.azure_account_name is set" in message, message


def test_the_hubs_namespace_copied_with_a_line_break_after_it_loads_without_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept as given, the user pods were listed in a namespace that cannot exist: none, and each
    GPU node looked empty to the scale plan."""
    monkeypatch.setenv("HUBPILOT_SCALE__NAMESPACE", " jhub\n")
    assert load_settings().scale.namespace == "jhub"


@pytest.mark.parametrize("value", ["j hub", "JHub", "jhub_users", "-jhub", "", "j" * 64])
def test_a_namespace_no_kubernetes_namespace_can_have_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                           value: str) -> None:
    message = refusal(monkeypatch, HUBPILOT_SCALE__NAMESPACE=value)
    assert "scale.namespace (the Bicep parameter hubNamespace) is no Kubernetes namespace name" in message, message
    assert "[env HUBPILOT_SCALE__NAMESPACE]" in message and repr(value) in message, message
    monkeypatch.setenv("HUBPILOT_SCALE__NAMESPACE", "jhub-2")
    assert load_settings().scale.namespace == "jhub-2"
