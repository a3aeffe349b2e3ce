"""Settings of the admin HTTP API and its hosts (``[api]``, env ``HUBPILOT_API__...``)."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from hubpilot.config.base import Section, check_account_key

Role = Literal["admin", "reader", "hub"]
ROLES: tuple[str, ...] = ("admin", "reader", "hub")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class ApiToken(Section):
    """One bearer token. Only its SHA-256 is configured, never the token itself.

    Make a token and its hash with::

        python -c "import secrets,hashlib; t=secrets.token_urlsafe(32); \\
print(t); print(hashlib.sha256(t.encode()).hexdigest())"

    Give the first line to the caller and put the second into ``sha256``.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$",
                      description="Who holds the token (the audit log names the actor token:<name>).")
    role: Role = Field(description="admin (everything), reader (GET only) or hub (scale demand only).")
    sha256: str = Field(description="Lowercase hex SHA-256 of the token (64 characters).")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip().lower()
        if not _SHA256.match(v):
            raise ValueError(
                "sha256 must be the 64-character hex SHA-256 of the token "
                "(python -c \"import hashlib; print(hashlib.sha256(b'TOKEN').hexdigest())\")"
            )
        if v == _EMPTY_SHA256:
            raise ValueError(
                "sha256 is the SHA-256 of an empty token (made from an empty variable?): no caller can use it; "
                "hash the token itself")
        return v


def _default_app_roles() -> dict[str, Role]:
    return {"hubpilot.admin": "admin", "hubpilot.reader": "reader", "hubpilot.hub": "hub"}


class ApiSettings(Section):
    """The admin API: who may call it, and how runs started over HTTP are executed."""

    tokens: list[ApiToken] = Field(
        default_factory=list,
        description="Bearer API tokens, each {name, role, sha256} (JSON list in the environment).",
    )
    app_service_auth: bool = Field(
        False,
        description="Trust the X-MS-CLIENT-PRINCIPAL header of App Service authentication, where the "
        "platform says that its authentication fronts the app (WEBSITE_AUTH_ENABLED=True); elsewhere "
        "the header is refused (anyone could send it).",
    )
    app_roles: dict[str, Role] = Field(
        default_factory=_default_app_roles,
        description="Entra ID app role value → hubpilot role (admin, reader, hub).",
    )
    run_mode: Literal["inprocess", "queue"] = Field(
        "inprocess",
        description="inprocess: a run started over HTTP runs as a task of the server process; "
        "queue: it is put on a Storage queue and a queue-triggered function runs it (Azure).",
    )
    queue_connection_string: SecretStr | None = Field(
        None,
        description="Storage connection string for putting run requests on the queue "
        "'hubpilot-runs' (run_mode=queue); defaults to the AzureWebJobsStorage app setting "
        "(which the queue trigger reads), or its identity-based form (AzureWebJobsStorage__accountName "
        "or __queueServiceUri, with __credential=managedidentity and __clientId or __managedIdentityResourceId, "
        "or a service principal's "
        "__tenantId, __clientId and __clientSecret: an Entra token of the identity the host uses), "
        "then to state.azure_connection_string. One whose AccountKey is empty or not base64 is refused, without "
        "showing it.",
    )
    wait_max_seconds: float = Field(
        120.0, ge=0, le=200,
        description="Upper bound of ?wait= on POST (Azure cuts HTTP responses at 230 s).",
    )
    readiness_timeout_seconds: float = Field(
        3.0, gt=0, le=30, description="Timeout of each /readyz check (state store, hub)."
    )
    docs: bool = Field(True, description="Serve the interactive docs page at /api/v1/docs (role reader, like "
                       "/api/v1/openapi.json it loads: a browser gets both behind App Service authentication; "
                       "with API tokens, fetch the OpenAPI document with the token).")
    serve_schedules: bool = Field(
        True, description="hubpilot serve runs the schedules in-process (off: HTTP only)."
    )

    @field_validator("queue_connection_string")
    @classmethod
    def _account_key(cls, v: SecretStr | None) -> SecretStr | None:
        return check_account_key(v)

    @model_validator(mode="after")
    def _unique_names(self) -> ApiSettings:
        names = [t.name for t in self.tokens]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"api.tokens: names must be unique; repeated: {', '.join(dupes)}")
        hashes = [t.sha256 for t in self.tokens]
        if len(set(hashes)) != len(hashes):
            raise ValueError("api.tokens: two entries carry the same sha256; give each holder its own token")
        return self
