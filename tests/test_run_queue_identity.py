"""API-started runs reach the run queue with the Functions app's managed identity and no
connection string, as ``infra/bicep`` deploys it (``AzureWebJobsStorage__accountName`` /
``__queueServiceUri``, ``__credential = managedidentity``, ``__clientId``).

The parts: Azurite over HTTPS with OAuth (it checks the token's audience, issuer and lifetime),
a loopback stand-in for the managed-identity endpoint App Service and Functions offer
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``, api-version 2019-08-01) that azure-identity's real
``ManagedIdentityCredential`` calls, and ``enqueue`` in a fresh interpreter configured only by
app settings, as on a Functions worker."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from hubpilot.api.runs import QUEUE_NAME
from tests.azurite import Azurite
from tests.pki import Pki, make_pki

ROOT = Path(__file__).resolve().parents[1]
TENANT = "72f988bf-0000-0000-0000-000000000001"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
IDENTITY_HEADER = "secret-identity-header"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(resource: str, lifetime: int = 3600) -> str:
    """An access token as Entra issues them for Storage (Azurite reads the claims, not the signature)."""
    now = int(time.time())
    claims = {"aud": resource, "iss": f"https://sts.windows.net/{TENANT}/", "iat": now, "nbf": now - 60,
              "exp": now + lifetime, "oid": "33333333-0000-0000-0000-000000000003", "appid": CLIENT_ID,
              "tid": TENANT}
    head = {"alg": "RS256", "typ": "JWT"}
    return ".".join((_b64url(json.dumps(head).encode()), _b64url(json.dumps(claims).encode()),
                     _b64url(b"not-checked")))


class IdentityEndpoint:
    """App Service's managed-identity endpoint: GET ?resource=&api-version=2019-08-01&client_id=
    with the X-IDENTITY-HEADER secret → {access_token, expires_on, resource, token_type, client_id}."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.token_lifetime = 3600  # of the JWT itself; negative: already expired
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                outer.requests.append({"query": q, "header": self.headers.get("X-IDENTITY-HEADER")})
                if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
                    return self._json(401, {"error": "invalid_request", "error_description": "bad header"})
                if q.get("api-version") != "2019-08-01" or not q.get("resource"):
                    return self._json(400, {"error": "invalid_request", "error_description": "bad query"})
                if q.get("client_id") not in (None, CLIENT_ID):
                    return self._json(400, {"error": "invalid_request", "error_description": "no such identity"})
                expires = int(time.time()) + 3600
                self._json(200, {"access_token": jwt(q["resource"], outer.token_lifetime), "expires_on": str(expires),
                                 "resource": q["resource"], "token_type": "Bearer", "client_id": CLIENT_ID})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/msi/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def oauth_azurite(pki: Pki) -> Iterator[Azurite]:
    with Azurite.start(tls=(pki.cert_file, pki.key_file), oauth=True) as azurite:
        yield azurite


@pytest.fixture
def identity() -> Iterator[IdentityEndpoint]:
    ep = IdentityEndpoint()
    yield ep
    ep.close()


ENQUEUE = """
import asyncio
from hubpilot.api.runs import RunRequest, enqueue
from hubpilot.settings import load_settings
from hubpilot.wiring import build_context

async def main() -> None:
    ctx = build_context(load_settings())
    try:
        for i in (1, 2):  # one client, one token for both
            await enqueue(ctx, RunRequest(f"run-{i}", "sync", "api", "ops"))
    finally:
        await ctx.close()

asyncio.run(main())
"""


def run_worker(tmp_path: Path, pki: Pki, identity: IdentityEndpoint, storage: dict[str, str]) -> \
        subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBPILOT_", "AzureWebJobs", "AZURE_",
                                                                      "IDENTITY_", "MSI_"))}
    env.update({
        "HUBPILOT_API__RUN_MODE": "queue",
        "HUBPILOT_STATE__SQLITE_PATH": str(tmp_path / "state.sqlite3"),
        "IDENTITY_ENDPOINT": identity.url, "IDENTITY_HEADER": IDENTITY_HEADER,
        "SSL_CERT_FILE": str(pki.ca_file),  # the worker trusts Azurite's test CA, as Azure's hosts trust theirs
        **storage,
    })
    return subprocess.run([sys.executable, "-c", ENQUEUE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.azurite
def test_run_requests_reach_the_queue_with_the_managed_identity(
        oauth_azurite: Azurite, pki: Pki, identity: IdentityEndpoint, tmp_path: Path) -> None:
    done = run_worker(tmp_path, pki, identity, {
        "AzureWebJobsStorage__queueServiceUri": oauth_azurite.queue_endpoint,
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": CLIENT_ID,
    })
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(identity.requests) == 1  # one token for both messages
    (req,) = identity.requests
    assert req["query"]["resource"] == "https://storage.azure.com" and req["query"]["client_id"] == CLIENT_ID

    queue = QueueClient.from_connection_string(oauth_azurite.connection_string, QUEUE_NAME,
                                               message_decode_policy=TextBase64DecodePolicy(),
                                               connection_verify=str(pki.ca_file))
    got = [json.loads(m.content) for m in queue.receive_messages(max_messages=32)]
    queue.close()
    assert [(m["run_id"], m["operation"], m["actor"]) for m in got] == [("run-1", "sync", "ops"),
                                                                        ("run-2", "sync", "ops")]


@pytest.mark.azurite
def test_a_token_storage_refuses_fails_the_enqueue_and_says_why(
        oauth_azurite: Azurite, pki: Pki, identity: IdentityEndpoint, tmp_path: Path) -> None:
    identity.token_lifetime = -600  # Entra says it is valid, the token's own claims say expired
    done = run_worker(tmp_path, pki, identity, {
        "AzureWebJobsStorage__queueServiceUri": oauth_azurite.queue_endpoint,
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": CLIENT_ID,
    })
    assert done.returncode != 0
    assert "The token is expired" in done.stderr, done.stderr[-3000:]
