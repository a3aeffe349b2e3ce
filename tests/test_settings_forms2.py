"""More forms of settings checked at load: AKS's Entra server id and the LDAP server's URL. A
wrong value there otherwise failed every run at its first request, naming no setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubpilot.settings import load_settings
from tests.slapd import Slapd
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


def ldap(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    monkeypatch.setenv(LDAP_URL, url)


LDAP_URL = "HUBPILOT_DIRECTORY__LDAP__URL"


@pytest.mark.parametrize(("value", "loaded"), [
    # a space after the host went to the name lookup: every sync failed "Name or service not known"
    ("ldaps://ldap.example.org ", "ldaps://ldap.example.org"),
    (" ldaps://ldap.example.org\n", "ldaps://ldap.example.org"),
    # after the port: refused as "the port must be a number", which it was
    ("ldaps://ldap.example.org:636 \n", "ldaps://ldap.example.org:636"),
    ("ldaps://ldap.example.org/", "ldaps://ldap.example.org"),
    ("ldap://[::1]:389", "ldap://[::1]:389"),
])
def test_the_ldap_url_loads_as_the_server_alone(monkeypatch: pytest.MonkeyPatch, value: str, loaded: str) -> None:
    ldap(monkeypatch, value)
    assert load_settings().directory.ldap.url == loaded  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [
    # an RFC 4516 URL's DN, attributes, scope or filter: never read (the search base is base_dn)
    "ldaps://ldap.example.org/dc=example,dc=org",
    "ldaps://ldap.example.org:636/ou=people,dc=example,dc=org??sub?(objectClass=person)",
    "ldaps://ldap.example.org/?uid",
    "ldaps://ldap.example.org#people",
])
def test_an_ldap_url_with_more_than_the_server_is_refused_naming_base_dn(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    ldap(monkeypatch, value)
    message = refusal(monkeypatch)
    assert "directory.ldap.url must name the server alone" in message and f"[env {LDAP_URL}]" in message, message
    assert "directory.ldap.base_dn" in message and "ldapBaseDn" in message, message


def test_an_ldap_url_with_a_space_inside_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ldap(monkeypatch, "ldaps://ldap example.org")
    message = refusal(monkeypatch)
    assert "directory.ldap.url must be the server's ldap://host[:port]" in message and "ldapUrl" in message, message


@pytest.mark.ldap
async def test_an_ldap_url_copied_with_a_space_after_it_reads_the_server(
        monkeypatch: pytest.MonkeyPatch, slapd: Slapd, tmp_path: Path) -> None:
    """Against the session slapd: before, the URL was refused saying its port must be a number
    (it was: "389 "); without a port, the host was looked up with the space, and every read
    failed "Name or service not known"."""
    from hubpilot.adapters.store_sqlite import SqliteStore
    from hubpilot.wiring import Context, build_directory

    ldap(monkeypatch, f"{slapd.url} \n")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=com")
    directory = build_directory(Context(settings=load_settings(), store=SqliteStore(tmp_path / "state.db")))
    snapshot = await directory.read(["ITD Staff"])
    assert snapshot.groups["ITD Staff"], snapshot


def test_plain_http_is_taken_for_the_loopback_names_the_graph_client_takes_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Graph client sends its token over plain http to 127.0.0.1, localhost and ::1 only and
    refuses any request to another loopback address ("Only https is supported"): judging loopback
    by ipaddress (all of 127.0.0.0/8), as the ARM adapter's policy does, would load a Graph URL
    that fails every sync."""
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "entra")
    for host in ("127.0.0.1", "localhost", "[::1]"):
        monkeypatch.setenv("HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL", f"http://{host}:8080/v1.0")
        load_settings()
    monkeypatch.setenv("HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL", "http://127.0.0.2:8080/v1.0")
    assert "must use https (plain http is accepted for loopback tests only)" in refusal(monkeypatch)


@pytest.mark.parametrize(("variable", "value", "loaded"), [
    ("HUBPILOT_SCALE__ARM_ENDPOINT", "https://management.usgovcloudapi.net \n", "https://management.usgovcloudapi.net"),
    ("HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL", " https://graph.microsoft.us/v1.0\n", "https://graph.microsoft.us/v1.0"),
    ("HUBPILOT_SCALE__KUBE_API_URL", "https://aks1.hcp.westeurope.azmk8s.io:443 \n",
     "https://aks1.hcp.westeurope.azmk8s.io:443"),
])
def test_an_endpoint_copied_with_spaces_around_it_loads_without_them(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, loaded: str) -> None:
    """Before, kept as given: the host was looked up with the space and every request failed (the
    ARM token scope '<endpoint> /.default' was two scopes)."""
    graph = "GRAPH" in variable
    if graph:
        monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "entra")
    monkeypatch.setenv(variable, value)
    s = load_settings()
    got = s.directory.entra.graph_base_url if graph else (  # type: ignore[union-attr]
        s.scale.arm_endpoint if "ARM" in variable else s.scale.kube_api_url)
    assert got == loaded
    assert s.scale.effective_arm_audience.endswith("/.default") and " " not in s.scale.effective_arm_audience


@pytest.mark.parametrize(("variable", "value", "said"), [
    # the Bicep template joins graphEndpoint and /v1.0: a parameter copied with a space after the host
    ("HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL", "https://graph.microsoft.us /v1.0", "graphEndpoint"),
    ("HUBPILOT_SCALE__ARM_ENDPOINT", "https://management.usgov cloudapi.net", "holds a space"),
    ("HUBPILOT_SCALE__KUBE_API_URL", "https://aks1.hcp.westeurope .azmk8s.io:443", "scale.kube_api_url must be"),
])
def test_an_endpoint_with_a_space_inside_is_refused_naming_it(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str) -> None:
    if "GRAPH" in variable:
        monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "entra")
    message = refusal(monkeypatch, **{variable: value})
    assert said in message and f"[env {variable}]" in message and repr(value) in message, message
