"""An HTTP-level double of an Entra authority host (``login.microsoftonline.us`` and the like) for
azure-identity's real client-secret credential: ``POST /<tenant>/oauth2/v2.0/token`` with
``grant_type=client_credentials`` answers a token. azure-identity takes only https authorities,
so the double speaks TLS with a throw-away CA (``tests/pki.py``); :meth:`LoginDouble.trusted` makes
the process's aiohttp clients (azure-core's async transport) trust it, as a host trusts its
cloud's CA.

The token names the scope it was asked for (``aud=<scope without /.default>``, what the ARM
double's audience check reads) unless ``tokens`` maps that scope to another token."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.pki import Pki

TENANT = "72f988bf-0000-0000-0000-0000000000aa"
CLIENT_ID = "11111111-2222-3333-4444-0000000000aa"
SECRET = "the-client-secret"


@dataclass
class LoginDouble:
    pki: Pki
    requests: list[dict[str, str]] = field(default_factory=list)  # path and form of each token request
    tokens: dict[str, str] = field(default_factory=dict)  # scope → token issued for it
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tenant}/oauth2/v2.0/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.pki.cert_file, self.pki.key_file)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def trusted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """aiohttp's verifying TLS context (made once, at its import) trusts the double's CA too."""
        import aiohttp.connector

        ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))
        monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", ctx)

    def service_principal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """EnvironmentCredential's variables: a service principal with a client secret."""
        monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
        monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
        monkeypatch.setenv("AZURE_CLIENT_SECRET", SECRET)

    async def _token(self, request: web.Request) -> web.Response:
        form: dict[str, Any] = dict(await request.post())
        self.requests.append({"path": request.path, **{k: str(v) for k, v in form.items()}})
        if request.match_info["tenant"] != TENANT:
            return web.json_response({"error": "invalid_tenant",
                                      "error_description": f"AADSTS90002: Tenant '{request.match_info['tenant']}' "
                                      "not found."}, status=400)
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != \
                ("client_credentials", CLIENT_ID, SECRET):
            return web.json_response({"error": "invalid_client", "error_description": "AADSTS7000215"}, status=401)
        scope = str(form.get("scope", ""))
        token = self.tokens.get(scope) or f"aud={scope.removesuffix('/.default')}"
        return web.json_response({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600,
                                  "access_token": token})
