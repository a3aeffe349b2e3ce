"""Secrets never leak: a token, password or key hubpilot holds is never written into an error, a log
line, an audit entry or a run document, also when the value is malformed (a trailing newline
copied along from the file or secret store it came from)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import traceback
from pathlib import Path

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.settings import SettingsError, load_settings
from tests.doubles.arm import ArmDouble, StaticToken
from tests.realhub import RealHub
from tests.slapd import Slapd


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("HUBPILOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray ./hubpilot.toml


@pytest.mark.parametrize("bad", ["\n", "\r\n", "\t", "é", " "])
def test_a_hub_token_no_header_can_carry_is_refused_without_showing_it(
        clean_env: None, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    # a token read from a file or a secret store keeps its trailing newline: every request would
    # fail, with the token in the error the run records
    secret = "0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("HUBPILOT_HUB__TOKEN", secret + bad)
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert "hub.token" in text and "HUBPILOT_HUB__TOKEN" in text
    assert secret not in text


@pytest.mark.parametrize(("variable", "url"), [
    # an '@' in the password: the URL's user information ends at its last '@' (as the HTTP clients read it)
    ("HUBPILOT_HUB__API_URL", "https://svc:pa@ss-w0rd@hub.example.org/hub/api"),
    ("HUBPILOT_DIRECTORY__LDAP__URL", "ldaps://admin:pa@ss-w0rd@ldap.example.org"),
    # a '/' in the password ends the host early: the URL is refused for its port, and still holds the password
    ("HUBPILOT_HUB__API_URL", "https://svc:pa/ss-w0rd@hub.example.org/hub/api"),
    ("HUBPILOT_DIRECTORY__LDAP__URL", "ldaps://admin:pa/ss-w0rd@ldap.example.org"),
])
def test_a_password_in_a_refused_url_is_not_shown_whatever_it_holds(
        clean_env: None, monkeypatch: pytest.MonkeyPatch, variable: str, url: str) -> None:
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", "ldaps://ldap.example.org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    monkeypatch.setenv(variable, url)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert variable in message
    assert "w0rd" not in message


@pytest.mark.parametrize("bad", ["\n", " "])
async def test_the_hub_client_never_puts_a_malformed_token_into_its_errors(real_hub: RealHub, bad: str) -> None:
    # the run's error goes to its audit entry (kept for good), its document and /status
    secret = real_hub.hubpilot_token
    client = None
    try:
        client = HubClient(real_hub.api_url, secret + bad, retries=0)
        await client.list_users()
    except Exception as exc:  # refused, at construction or at the request: never with the token
        assert secret not in str(exc)
        assert "hub.token" in str(exc)
    else:
        pytest.fail(f"a token ending in {bad!r} was sent")
    finally:
        if client is not None:
            await client.close()


async def fake_hubpilot(seen: list[bytes]) -> tuple[asyncio.Server, int]:
    """A loopback stand-in for hubpilot's demand route: answers 202 and keeps the Authorization
    lines it was sent in ``seen``."""
    async def hubpilot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            seen.extend(line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:"))
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(hubpilot, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("bad", ["\n", "\r\n"])
async def test_a_demand_token_with_a_line_break_is_refused_without_showing_it(
        bad: str, caplog: pytest.LogCaptureFixture) -> None:
    # HUBPILOT_DEMAND_TOKEN from a Kubernetes Secret made with --from-file keeps the file's newline:
    # the hub's log must not carry it
    from hubpilot_hub.scale_demand import ScaleDemand

    secret = "fedcba9876543210fedcba9876543210"
    caplog.set_level(logging.DEBUG)

    server, port = await fake_hubpilot([])
    try:
        demand = ScaleDemand(f"http://127.0.0.1:{port}/api/v1", secret + bad, gpu_profiles=["gpu"])
        await demand.send({"user": "a", "server": "", "profile": "gpu"})
    except ValueError as exc:
        assert secret not in str(exc)
        assert "token" in str(exc)
    else:
        pytest.fail("a token with a line break was accepted")
    finally:
        server.close()
    assert secret not in caplog.text


@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/scale/demand"])
async def test_a_demand_url_holding_a_password_is_refused_without_showing_it(
        path: str, caplog: pytest.LogCaptureFixture) -> None:
    # tornado sends a URL's user:password as Basic authentication in place of the demand token:
    # hubpilot never saw the token and refused every signal; and the hub's log quoted the URL,
    # password and all, when the url was refused for another reason
    from hubpilot_hub.scale_demand import ScaleDemand

    token = "fedcba9876543210fedcba9876543210"
    caplog.set_level(logging.DEBUG)
    seen: list[bytes] = []
    server, port = await fake_hubpilot(seen)
    try:
        demand = ScaleDemand(f"http://proxy:PROXYPASS@127.0.0.1:{port}{path}", token, gpu_profiles=["gpu"])
        await demand.send({"user": "a", "server": "", "profile": "gpu"})
    except ValueError as exc:
        assert "PROXYPASS" not in str(exc)
        assert "user:password@" in str(exc) and "token" in str(exc)
    else:
        pytest.fail(f"a url with a password was used; hubpilot was sent {seen}")
    finally:
        server.close()
    assert "PROXYPASS" not in caplog.text


def test_a_secret_setting_of_the_wrong_type_is_refused_without_showing_it(clean_env: None, tmp_path: Path) -> None:
    # an unquoted clientState of digits is a TOML number; a connection string written as a list
    # is a list: the refusal says what is wrong, never the value
    (tmp_path / "hubpilot.toml").write_text(
        '[directory]\nkind = "entra"\n'
        "[directory.entra]\nclient_state = 84736251904857362\n"
        '[directory.entra.queue_connection_string]\nvalue = "AccountName=a;AccountKey=Q1VFVUVLRVk="\n'
        '[state]\nkind = "azure"\nazure_connection_string = ["AccountName=a;AccountKey=U1RBVEVLRVk="]\n'
        '[api]\nqueue_connection_string = ["AccountName=a;AccountKey=QVBJS0VZ"]\n')
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path / "hubpilot.toml")
    text = str(err.value)
    for setting in ("directory.entra.client_state", "directory.entra.queue_connection_string",
                    "state.azure_connection_string", "api.queue_connection_string"):
        assert setting in text
    for secret in ("84736251904857362", "Q1VFVUVLRVk=", "U1RBVEVLRVk=", "QVBJS0VZ"):
        assert secret not in text


def test_a_hub_url_holding_a_password_is_refused_without_showing_it(clean_env: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx sends a URL's user:password as Basic authentication in place of hub.token (the hub
    # never sees the token), and every error quoting the URL carried the password into the audit log
    monkeypatch.setenv("HUBPILOT_HUB__API_URL", "https://admin:PROXYPASS@hub.example.org/hub/api")
    monkeypatch.setenv("HUBPILOT_HUB__TOKEN", "0123456789abcdef")
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert "hub.api_url" in text and "HUBPILOT_HUB__API_URL" in text
    assert "PROXYPASS" not in text


def test_an_ldap_url_holding_a_password_is_refused_without_showing_it(clean_env: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the LDAP client binds with bind_dn and bind_password alone (a URL's user:password is never
    # sent), and the URL is every LDAP error's first words and every sync's directory_source fact:
    # the password went into each sync run's audit entry, its document and /plan/sync
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", "ldaps://cn=hubpilot:LDAPURLPASS@ldap.example.org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert "directory.ldap.url" in text and "HUBPILOT_DIRECTORY__LDAP__URL" in text
    assert "bind_dn" in text and "bind_password" in text  # what to use instead
    assert "LDAPURLPASS" not in text


async def test_the_ldap_directory_refuses_a_url_holding_a_password_without_showing_it(slapd: Slapd) -> None:
    # a caller that builds the adapter itself: it read as if the URL were fine, and the password
    # was in the snapshot's source (the sync plan's directory_source) and in every error
    from hubpilot.adapters.ldap import LdapDirectory

    host = slapd.url.split("://", 1)[1]
    try:
        directory = LdapDirectory(url=f"ldap://admin:LDAPURLPASS@{host}", bind_dn=slapd.root_dn,
                                  bind_password=slapd.root_password, base_dn=slapd.base_dn)
        snapshot = await directory.read([])
    except ValueError as exc:
        assert "directory.ldap.url" in str(exc) and "LDAPURLPASS" not in str(exc)
    else:
        pytest.fail(f"a URL with a password was used (source {snapshot.source!r})")


def test_an_ldap_bind_password_sent_in_the_clear_is_refused_without_showing_it(
        clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # ldap:// without start_tls to a host on the network: every sync sent the password as it is
    secret = "s3cr3t-bind-passw0rd"
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", "ldap://ldap.example.org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BIND_DN", "cn=hubpilot,dc=example,dc=org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD", secret)
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert "in the clear" in text and "ldaps://" in text and "HUBPILOT_DIRECTORY__LDAP__START_TLS" in text
    assert secret not in text
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__START_TLS", "true")
    ldap = load_settings().directory.ldap
    assert ldap is not None and ldap.start_tls


@pytest.mark.parametrize("bad", ["\n", "\r\n", "\t", "\x7f"])
def test_an_ldap_bind_password_no_bind_can_carry_is_refused_without_showing_it(
        clean_env: None, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    # a password kept from a file or secret with its trailing newline never binds (the LDAP client
    # refuses it, SASLprep, before sending): every sync failed with "ASCII control character present"
    secret = "s3cr3t-bind-passw0rd"
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", "ldaps://ldap.example.org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BIND_DN", "cn=hubpilot,dc=example,dc=org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD", secret + bad)
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert "directory.ldap.bind_password" in text and "HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD" in text
    assert secret not in text


@pytest.mark.parametrize("password", ["pässwörd", "pass word", "p\u00a0w"])  # what binds is kept
def test_an_ldap_bind_password_that_binds_is_accepted(clean_env: None, monkeypatch: pytest.MonkeyPatch,
                                                      password: str) -> None:
    monkeypatch.setenv("HUBPILOT_DIRECTORY__KIND", "ldap")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__URL", "ldaps://ldap.example.org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BASE_DN", "dc=example,dc=org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BIND_DN", "cn=hubpilot,dc=example,dc=org")
    monkeypatch.setenv("HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD", password)
    ldap = load_settings().directory.ldap
    assert ldap is not None and ldap.bind_password is not None
    assert ldap.bind_password.get_secret_value() == password


@pytest.mark.parametrize("key", ["U0VDUkVUS0VZTk9UQjY", "NOT-BASE64-SECRET!", "=", ""])
def test_a_connection_string_whose_account_key_is_no_key_is_refused_without_showing_it(
        clean_env: None, tmp_path: Path, key: str) -> None:
    # the storage client decodes the key only to sign the first request: every run failed with
    # "HTTP None : Incorrect padding" (an empty key: 403), naming no setting
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    (tmp_path / "hubpilot.toml").write_text(
        '[directory]\nkind = "entra"\n'
        f'[directory.entra]\nqueue = "azure"\nqueue_connection_string = "{conn}"\n'
        f'[state]\nkind = "azure"\nazure_connection_string = "{conn}"\n'
        f'[api]\nrun_mode = "queue"\nqueue_connection_string = "{conn}"\n')
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path / "hubpilot.toml")
    text = str(err.value)
    for setting in ("directory.entra.queue_connection_string", "state.azure_connection_string",
                    "api.queue_connection_string"):
        assert f"{setting}: Value error, its AccountKey" in text
    if key.strip("="):
        assert key not in text


def test_a_connection_string_with_a_usable_key_is_accepted(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.azurite import ACCOUNT_KEY

    for conn in (f"AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};", "UseDevelopmentStorage=true",
                 "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=2024&sig=x%3D"):
        monkeypatch.setenv("HUBPILOT_STATE__KIND", "azure")
        monkeypatch.setenv("HUBPILOT_STATE__AZURE_CONNECTION_STRING", conn)
        got = load_settings().state.azure_connection_string
        assert got is not None and got.get_secret_value() == conn


async def test_the_kubernetes_bearer_token_never_reaches_an_error_or_a_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    # scale.kube_auth = "entra": the Entra token the Kubernetes client sends as its Authorization
    # header; an API server that refuses it, answers garbage or is gone must not have the run's
    # error (audit entry, /status) or any log line carry it
    from aiohttp import web
    from azure.core.credentials import AccessToken

    from hubpilot.adapters.kube import EntraKubeAuth, KubeCluster, KubeEndpoint
    from hubpilot.ports.cluster import ClusterError
    from tests.azurite import free_port

    secret = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.c2VjcmV0LWt1YmUtdG9rZW4.c2lnbmF0dXJl"

    class Credential:
        async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            return AccessToken(secret, 4102444800)

    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.path.endswith("/nodes"):
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 401,
                                      "message": "Unauthorized", "reason": "Unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="kubernetes"'})
        return web.Response(status=500, text="<html>upstream error</html>")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    try:
        for url in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"):  # refusing; gone
            async def endpoint(url: str = url) -> KubeEndpoint:
                return KubeEndpoint(url=url, ca_pem=None, server_id=None)

            cluster = KubeCluster(namespace="jhub", pool="gpu", auth=EntraKubeAuth(Credential(), endpoint),
                                  request_timeout=5)
            try:
                for call in (cluster.read(), cluster.pods_on("gpu-0"), cluster.cordon("gpu-0", "x")):
                    with pytest.raises(ClusterError) as err:
                        await call
                    errors.append(str(err.value))
                    errors.append(repr(err.value.__cause__))
                    errors.append(str(err.value.__cause__))
            finally:
                await cluster.close()
    finally:
        await runner.cleanup()
    assert f"Bearer {secret}" in seen  # the token was sent, so it was there to leak
    assert any("401" in e for e in errors) and any("500" in e for e in errors)
    for text in [*errors, caplog.text]:
        assert secret not in text


@pytest.mark.parametrize(("env", "setting"), [
    ({"HUBPILOT_DIRECTORY__KIND": "entra", "HUBPILOT_DIRECTORY__ENTRA__TENANT_ID": "t",
      "HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL": "https://proxy:URLPASS@graph.example.org/v1.0"},
     "directory.entra.graph_base_url"),
    ({"HUBPILOT_DIRECTORY__KIND": "entra", "HUBPILOT_DIRECTORY__ENTRA__TENANT_ID": "t",
      "HUBPILOT_DIRECTORY__ENTRA__NOTIFICATION_URL": "https://proxy:URLPASS@hubpilot.example.org/api/v1/graph/n"},
     "directory.entra.notification_url"),
    ({"HUBPILOT_SCALE__ARM_ENDPOINT": "https://proxy:URLPASS@management.example.org"}, "scale.arm_endpoint"),
    ({"HUBPILOT_SCALE__KUBE_AUTH": "entra",
      "HUBPILOT_SCALE__KUBE_API_URL": "https://proxy:URLPASS@aks.example.org:443"}, "scale.kube_api_url"),
])
def test_an_endpoint_holding_a_password_is_refused_without_showing_it(
        clean_env: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], setting: str) -> None:
    # these endpoints get a bearer token with every request; httpx and requests send a URL's
    # user:password as Basic authentication in its place (every call refused), and the URL is
    # quoted by their errors, which runs record in the audit log
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert setting in text and "user:password@" in text
    assert "URLPASS" not in text


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1@arm.example.org", "http://localhost.example.org"])
def test_an_arm_endpoint_on_plain_http_must_be_loopback_by_its_host(clean_env: None, monkeypatch: pytest.MonkeyPatch,
                                                                    endpoint: str) -> None:
    # the ARM token goes with every request: plain http is for loopback tests only, judged by the
    # URL's host, not by how the text begins
    monkeypatch.setenv("HUBPILOT_SCALE__ARM_ENDPOINT", endpoint)
    with pytest.raises(SettingsError, match=r"scale\.arm_endpoint (must use https|holds a user name)"):
        load_settings()


@pytest.mark.parametrize("damaged", [
    b"    token: 0123456789abcdefKUBESECRET: x\n",  # a colon pasted into the value
    b"    client-key-data: \"0123456789abcdefKUBESECRET\n",  # a quote never closed
])
async def test_a_damaged_kubeconfig_from_arm_is_refused_without_quoting_its_credentials(
        arm: ArmDouble, damaged: bytes, caplog: pytest.LogCaptureFixture) -> None:
    # scale.kube_auth = "entra" takes the API server from ARM's listClusterUserCredential; a local-
    # accounts cluster's kubeconfig holds a token and a client key, and the YAML error quoted the line
    # it stopped at into the run's error (audit entry, run document, /status)
    from hubpilot.adapters.aks import AksPool
    from hubpilot.config.scale import ScaleSettings
    from hubpilot.ports.cluster import ClusterError
    from hubpilot.wiring.scale import build_cluster

    arm.kubeconfig = (b"apiVersion: v1\nkind: Config\ncurrent-context: aks1\n"
                      b"clusters:\n- name: aks1\n  cluster:\n    server: https://aks1.hcp.example:443\n"
                      b"contexts:\n- name: aks1\n  context: {cluster: aks1, user: clusterUser_rg1_aks1}\n"
                      b"users:\n- name: clusterUser_rg1_aks1\n  user:\n" + damaged)
    caplog.set_level(logging.DEBUG)
    pool = AksPool(StaticToken(), subscription_id=arm.subscription, resource_group=arm.resource_group,
                   cluster=arm.cluster, pool="gpu", base_url=arm.base_url, retry_total=0)
    cluster = build_cluster(ScaleSettings(subscription_id=arm.subscription, resource_group=arm.resource_group,
                                          cluster=arm.cluster, pool="gpu", namespace="jhub", kube_auth="entra",
                                          arm_endpoint=arm.base_url), pool)
    try:
        with pytest.raises(ClusterError) as err:
            await cluster.read()
    finally:
        await cluster.close()
        await pool.close()
    text = str(err.value)
    assert f"cluster {arm.cluster}" in text and "listClusterUserCredential" in text and "no YAML" in text
    assert "line 14" in text or "line 15" in text  # where to look
    for said in (text, "".join(traceback.format_exception(err.value)), caplog.text):  # a traceback too
        assert "KUBESECRET" not in said


async def test_the_values_that_hold_a_secret_never_show_it_in_their_repr(tmp_path: Path) -> None:
    # nothing prints them today, but a log line with %r, a pytest or Application Insights traceback
    # with its locals, or a debugger would: the Graph subscriptions' clientState (who knows it can
    # send hubpilot notifications) and the run queue's connection string (its account key)
    from hubpilot.adapters.store_sqlite import SqliteStore
    from hubpilot.api.runs import queue_target
    from hubpilot.settings import Settings
    from hubpilot.wiring import Context
    from hubpilot.wiring.entra import subscription_policy

    client_state = "CLIENTSTATE-0123456789abcdef"
    key = "QUNDT1VOVEtFWS0wMTIzNDU2Nzg5YWJjZGVm"
    conn = f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={key};EndpointSuffix=core.windows.net"
    ctx = Context(settings=Settings(
        hub={"api_url": "http://127.0.0.1:9/hub/api", "token": "hub-secret-0123456789"},
        api={"run_mode": "queue", "queue_connection_string": conn},
        directory={"kind": "entra", "entra": {
            "tenant_id": "00000000-0000-0000-0000-0000000000a1", "notifications": True,
            "client_state": client_state,
            "notification_url": "https://hubpilot.example.org/api/v1/graph/notifications"}},
        sync={"users_groups": ["g1"]}), store=SqliteStore(tmp_path / "s.sqlite3"))
    try:
        policy = await subscription_policy(ctx)
        target = queue_target(ctx, {})
    finally:
        await ctx.store.close()
    assert policy.client_state == client_state and target.connection_string == conn  # they hold them
    assert "notification_url" in repr(policy) and "QueueTarget" in repr(target)
    assert client_state not in repr(policy)
    assert key not in repr(target)
