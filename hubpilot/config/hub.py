from __future__ import annotations

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from hubpilot.config.base import Section
from hubpilot.ports.hub import token_fits_a_header


class HubSettings(Section):
    """How hubpilot reaches the JupyterHub REST API."""

    api_url: AnyHttpUrl = Field(
        AnyHttpUrl("http://127.0.0.1:8081/hub/api"),
        description="The hub's REST API base URL, ending in /hub/api; one holding user:password@ is refused "
        "(hub.token authenticates, and such a URL would be sent in its place).",
    )
    token: SecretStr = Field(
        SecretStr(""), description="API token of the hubpilot service in the hub (its role, and how the hub "
        "is given the token: docs/hub-scopes.md). One holding a line break, another control character or a "
        "non-ASCII character (a trailing newline kept from a file or secret), or starting or ending with a "
        "space, is refused, without showing it.",
    )
    timeout_seconds: float = Field(10.0, gt=0, le=300, description=(
        "Timeout of one hub request. The first request of a run left unanswered through it (and "
        "retries) fails the run's hub requests not yet sent at once (not attempted); the next run "
        "tries again."))
    stop_timeout_seconds: float = Field(
        60.0, gt=0, le=600,
        description="Timeout of a server stop (and of a user deletion, which stops a running server): "
        "the hub answers a slow stop only after its slow_stop_timeout (JupyterHub's default 10 s), so "
        "this must exceed it; never shorter than timeout_seconds. Also the timeout of a bulk user "
        "creation (the hub adds the users one after the other).",
    )
    retries: int = Field(3, ge=0, le=10, description="Retries on connection errors and 5xx answers.")
    concurrency: int = Field(20, ge=1, le=100, description="Hub requests in flight at once.")
    page_size: int = Field(
        200, ge=2, le=10000,
        description="Items per page when listing (at least 2: each page after the first starts one item early, "
        "which tells a list that shifted while it was read); the hub caps it at its api_page_max_limit "
        "(default 200).",
    )

    @field_validator("api_url")
    @classmethod
    def _no_password_in_url(cls, v: AnyHttpUrl) -> AnyHttpUrl:
        # the HTTP client sends a URL's user:password as Basic authentication in place of the token,
        # and every error quoting the URL would carry the password into the run's audit entry
        if v.username or v.password:
            raise ValueError("holds a user name or password (user:password@): hubpilot authenticates to the hub "
                             "with hub.token alone, which such a URL would replace; remove it")
        return v

    @field_validator("token")
    @classmethod
    def _token_fits_a_header(cls, v: SecretStr) -> SecretStr:
        # a token read from a file or a secret store keeps its trailing newline: no request could
        # carry it, and the HTTP library's error, which quotes the header, would go into the run's
        # error, its audit entry and /status; so would a space at its end (a header's value ends
        # with no space). The value is never shown.
        if not token_fits_a_header(v.get_secret_value()):
            raise ValueError("holds a line break, another control character or a non-ASCII character, or starts "
                             "or ends with a space, which no HTTP header can carry (often a trailing newline or "
                             "space kept from the file, secret or page it was copied from): set it to the token "
                             "alone (the value is not shown)")
        return v
