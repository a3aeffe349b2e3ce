"""More forms of settings checked at load: AKS's Entra server id and the LDAP server's URL. A
wrong value there otherwise failed every run at its first request, naming no setting."""

from __future__ import annotations

import pytest

from hubpilot.settings import load_settings
from tests.test_settings import clean_env  # noqa: F401 (autouse: no HUBPILOT_ variable, no stray ./hubpilot.toml)
from tests.test_settings_limits import refusal

SERVER_ID = "HUBPILOT_SCALE__KUBE_SERVER_ID"
AKS = "6dae42f8-4368-4678-94ff-3960e28e3630"


@pytest.mark.parametrize(("value", "loaded"), [
    (AKS, AKS),
    (f" {AKS}\n", AKS),  # as copied from a kubeconfig or the portal: the spaces around it dropped
    ("", None),          # blank: unset, the kubeconfig's --server-id, else AKS's
    ("  ", None),
])
def test_the_kube_server_id_loads_as_the_application_id_alone(
        monkeypatch: pytest.MonkeyPatch, value: str, loaded: str | None) -> None:
    monkeypatch.setenv(SERVER_ID, value)
    assert load_settings().scale.kube_server_id == loaded


@pytest.mark.parametrize("value", [
    f"{AKS}/.default",                               # the scope: hubpilot asks for '<id>/.default'
    f"api://{AKS}",                                  # an application id URI, a URL
    "https://myaks-dns.hcp.westeurope.azmk8s.io",    # the API server
    "Azure Kubernetes Service AAD Server",           # the application's name
    f"{AKS} {AKS}",
])
def test_a_kube_server_id_that_is_no_application_id_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    message = refusal(monkeypatch, **{SERVER_ID: value})
    assert "scale.kube_server_id must be the application id GUID" in message, message
    assert f"[env {SERVER_ID}]" in message and AKS in message and "without /.default" in message, message
