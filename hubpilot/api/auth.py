"""Who is calling: bearer API tokens (everywhere) and App Service authentication (Azure).

Roles: ``admin`` (everything), ``reader`` (GET only), ``hub`` (the hub's own scale-demand hook).
``admin`` satisfies every role. No credentials or unknown credentials → 401; a known caller
without the role → 403. Tokens are configured as SHA-256 hashes and compared in constant time;
neither a token nor its hash is ever logged or returned. A request authenticated by App Service
authentication (the browser's session) that would change something is refused when the browser
says it comes from another site (:func:`cross_site`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hubpilot.api.deps import get_context
from hubpilot.config.api import ApiSettings
from hubpilot.entra.notifications import shown
from hubpilot.wiring import Context

log = logging.getLogger(__name__)

PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_NAME_HEADER = "x-ms-client-principal-name"
ROLE_CLAIM_TYPES = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")
APP_ID_CLAIM_TYPES = ("azp", "appid")
"""The calling application's id: ``azp`` in v2.0 access tokens, ``appid`` in v1.0 ones."""
ROLE_ORDER = ("admin", "reader", "hub")
ORIGINS = {"token": "token", "app_service": "app-service"}
"""How a caller authenticated, as its actor names it."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``role`` is the strongest role held; ``roles`` all of them."""

    name: str
    role: str
    roles: frozenset[str] = field(default_factory=frozenset)
    via: str = "token"

    @property
    def actor(self) -> str:
        """The caller as audit entries and runs name it: how it authenticated, then its name
        (``token:<name in api.tokens>`` or ``app-service:<principal name>``), so that a token
        named like a person is not taken for that person."""
        return f"{ORIGINS.get(self.via, self.via)}:{self.name}"

    def has(self, role: str) -> bool:
        held = self.roles or frozenset({self.role})
        return "admin" in held or role in held


class AuthError(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(detail)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _strongest(roles: Iterable[str]) -> str:
    held = set(roles)
    for r in ROLE_ORDER:
        if r in held:
            return r
    return ""


def authenticate_token(settings: ApiSettings, token: str) -> Principal | None:
    """The principal of a bearer token, or None. Every configured hash is compared (constant time)."""
    digest = hash_token(token)
    found: Principal | None = None
    for t in settings.tokens:
        if hmac.compare_digest(digest, t.sha256):
            found = Principal(t.name, t.role, frozenset({t.role}), "token")
    return found


def authenticate_app_service(settings: ApiSettings, header: str, name_header: str | None) -> Principal:
    """Decode ``X-MS-CLIENT-PRINCIPAL`` (base64 JSON with ``claims``) and map its app roles."""
    try:
        data = json.loads(base64.b64decode(header + "=" * (-len(header) % 4), validate=False))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise AuthError(401, "the X-MS-CLIENT-PRINCIPAL header is not base64-encoded JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("claims", []), list):
        raise AuthError(401, "the X-MS-CLIENT-PRINCIPAL header has no claims list")
    claims: list[Any] = data.get("claims") or []
    role_typ = data.get("role_typ")
    name_typ = data.get("name_typ")
    role_types = {*ROLE_CLAIM_TYPES, *([role_typ] if isinstance(role_typ, str) else [])}
    app_roles: set[str] = set()
    name = name_header or ""
    app_id = ""
    for c in claims:
        if not isinstance(c, dict):
            continue
        typ, val = c.get("typ"), c.get("val")
        if not isinstance(typ, str) or not isinstance(val, str):
            continue
        if typ in role_types:
            app_roles.add(val)
        elif not name and typ in {name_typ, "name", "preferred_username"}:
            name = val
        elif typ in APP_ID_CLAIM_TYPES and not app_id:
            app_id = val
    # a daemon app's token (client credentials) names no one: name the app by its id, so that
    # audit entries tell two apps apart
    name = name or (f"app {app_id}" if app_id else "")
    mapped = {settings.app_roles[r] for r in app_roles if r in settings.app_roles}
    return Principal(name[:128] or "app-service-principal", _strongest(mapped), frozenset(mapped),
                     "app_service")


ONE_AUTHORIZATION = ("send exactly one 'Authorization: Bearer <api token>' header (this request has more than "
                     "one, or one holding several credentials separated by ',')")


def authenticate(settings: ApiSettings, headers: Any, *, platform_auth: bool = False) -> Principal:
    """The caller of a request, from its headers; raises :class:`AuthError` (401) when unknown.

    ``platform_auth``: App Service authentication fronts this app (it injects
    ``WEBSITE_AUTH_ENABLED=True``), so the principal header is the platform's, not the caller's."""
    header = headers.get(PRINCIPAL_HEADER) if settings.app_service_auth else None
    if header and platform_auth:
        return authenticate_app_service(settings, header, headers.get(PRINCIPAL_NAME_HEADER))
    sent = headers.getlist("authorization") if hasattr(headers, "getlist") else [headers.get("authorization")]
    auth = sent[0] if sent else None
    if len(sent) > 1 or (auth and "," in auth):
        # one header on every host: uvicorn hands the app each Authorization header (the first one
        # would be read), the Functions host joins them with ',' (no bearer token holds one)
        raise AuthError(401, ONE_AUTHORIZATION)
    if not auth and header:
        raise AuthError(401, "the X-MS-CLIENT-PRINCIPAL header is not trusted: api.app_service_auth is on, but "
                        "App Service authentication does not front this app (WEBSITE_AUTH_ENABLED is not 'True'), "
                        "so anyone could send the header; turn App Service authentication on for the app, "
                        "or send 'Authorization: Bearer <api token>'")
    if not auth:
        raise AuthError(401, "credentials required: send 'Authorization: Bearer <api token>'")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "the Authorization header must be 'Bearer <api token>'")
    principal = authenticate_token(settings, token.strip())
    if principal is None:
        raise AuthError(401, "the API token is not valid")
    return principal


def shown_path(request: Request, limit: int = 200) -> str:
    """The request's path as a log line may show it: the caller's text, percent-decoded, so
    escaped (no line breaks to forge log lines with) and bounded."""
    return shown(request.url.path, limit)


HEAD_SCOPE_KEY = "hubpilot.head"
"""Set in the ASGI scope of a HEAD request the app answers as its GET (see
:class:`hubpilot.api.app._HeadAsGet`): the request's method as sent, for the log."""


def shown_method(request: Request) -> str:
    """The request's method as the client sent it (HEAD is handled as GET)."""
    return "HEAD" if request.scope.get(HEAD_SCOPE_KEY) else request.method


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site(method: str, headers: Any) -> str | None:
    """Why a request is a browser's cross-site request that would act, or None.

    App Service authentication turns the browser's session cookie into the principal header on
    every request, also on a form another site's page posts (no preflight, the cookie rides
    along), so an unsafe method authenticated that way must come from this site. Browsers say
    where a request comes from: ``Sec-Fetch-Site`` (``same-origin``, or ``none`` for one the user
    typed), else ``Origin``, compared with ``Host``. A request with neither is no browser's
    (a program holding an Entra token) and is let through.
    """
    if method.upper() in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None:
        if site.strip().lower() in ("same-origin", "none"):
            return None
        return f"Sec-Fetch-Site is {site[:32]!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    _, sep, rest = origin.strip().partition("://")
    host = (headers.get("host") or "").strip().lower()
    if sep and rest.lower().rstrip("/") == host and host:
        return None
    return f"Origin {origin[:128]!r} is not this site ({host[:128] or 'no Host'})"


bearer = HTTPBearer(auto_error=False, scheme_name="apiToken",
                    description="A hubpilot API token (configured hashed in api.tokens).")
"""Declares the bearer scheme in the OpenAPI document; authentication itself is :func:`authenticate`."""


def _challenge(exc: AuthError) -> HTTPException:
    headers = {"WWW-Authenticate": 'Bearer realm="hubpilot"'} if exc.status_code == 401 else None
    return HTTPException(exc.status_code, exc.detail, headers=headers)


def require_role(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller, who must hold one of ``roles`` (admin holds them all).

    Raises 401 without valid credentials and 403 without the role.
    """
    wanted = roles or ("admin",)

    async def dependency(
        request: Request,
        ctx: Context = Depends(get_context),
        _credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    ) -> Principal:
        try:
            principal = authenticate(ctx.settings.api, request.headers, platform_auth=ctx.platform_auth)
        except AuthError as exc:
            log.info("refused %s %s: %s", shown_method(request), shown_path(request), exc.detail)
            raise _challenge(exc) from None
        if principal.via == "app_service" and (why := cross_site(request.method, request.headers)):
            log.warning("refused a cross-site %s %s for %s: %s", shown_method(request), shown_path(request),
                        principal.name, why)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"a cross-site request cannot act with the App Service session ({why}): send it from "
                "this site's own pages, or from a program with 'Authorization: Bearer <token>'",
            )
        if not any(principal.has(r) for r in wanted):
            log.info("forbidden %s %s for %s (role %s)", shown_method(request), shown_path(request),
                     principal.name, principal.role or "none")
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this endpoint needs the role {' or '.join(wanted)}; "
                f"{principal.name} has {principal.role or 'no hubpilot role'}",
            )
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_role_{'_'.join(wanted)}"
    return dependency
