"""The ``[directory.entra]`` section: Microsoft Entra ID through Microsoft Graph."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from hubpilot.config.base import (
    LOOPBACK_HOSTS,
    NCronTab,
    Section,
    authority_url,
    bearer_url,
    check_account_key,
    guid,
    token_scope,
)

GRAPH_MAX_GROUP_SUBSCRIPTION_MINUTES = 41760
"""Graph's longest subscription lifetime for groups (29 days)."""

FUNCTIONS_SUBSCRIPTION_GAP_MINUTES = 60
"""Time between two rounds of the Functions app's subscription manager (``functions/graph.py``'s
``SUBSCRIPTION_SCHEDULE``, hourly whatever ``subscription_schedule`` says)."""


def _http_url(value: str, what: str) -> str:
    return bearer_url(value, what, "https://graph.microsoft.com/v1.0")


_USER_PROPERTIES = {p.lower(): p for p in (
    "userPrincipalName", "mail", "mailNickname", "onPremisesSamAccountName", "onPremisesUserPrincipalName",
    "employeeId", "displayName", "givenName", "surname", "id", "onPremisesImmutableId", "preferredName")}


_GRAPH_VERSIONS = ("v1.0", "beta")


class EntraSettings(Section):
    """Microsoft Entra ID through Microsoft Graph: delta queries, change notifications."""

    tenant_id: str | None = Field(
        None, description="Directory (tenant) id. Notifications from another tenant are refused."
    )
    client_id: str | None = Field(
        None,
        description="Application (client) id, a GUID: of the user-assigned managed identity in Azure, "
        "or of the app registration elsewhere. Unset: system-assigned identity / DefaultAzureCredential.",
    )
    credential: Literal["default", "managed_identity"] = Field(
        "default",
        description="azure-identity credential: managed_identity in Azure, default "
        "(DefaultAzureCredential: environment, workload identity, Azure CLI) elsewhere.",
    )
    authority_host: str | None = Field(
        None,
        description="Entra authority host of credential = default (sovereign clouds: "
        "https://login.microsoftonline.us, https://login.chinacloudapi.cn); unset: AZURE_AUTHORITY_HOST, else "
        "https://login.microsoftonline.com. Used by a service principal from the environment; the managed "
        "identity has none, and the workload identity reads AZURE_AUTHORITY_HOST alone (AKS's webhook sets it).",
    )
    graph_base_url: str = Field(
        "https://graph.microsoft.com/v1.0", description="Graph endpoint (sovereign clouds use other hosts)."
    )
    graph_scope: str | None = Field(
        None, description="Token scope, a resource's '/.default' (e.g. https://graph.microsoft.us/.default; a resource "
        "alone gets it appended, other scopes are refused); default: '<graph host>/.default' derived from "
        "graph_base_url."
    )
    username_attribute: str = Field(
        "userPrincipalName",
        description="User attribute used as hub username (userPrincipalName, mail, "
        "onPremisesSamAccountName, mailNickname, employeeId, ...).",
    )
    nested: bool = Field(False, description="Expand groups that are members of configured groups.")
    nested_max_depth: int = Field(8, ge=1, le=64, description="Deepest nesting followed.")
    username_refresh_hours: float = Field(
        24.0, ge=0, le=24 * 30,
        description="Read the usernames of all synced members afresh this often (a group's delta does not "
        "report a renamed userPrincipalName); 0: never, renames then show only when a person re-enters a group.",
    )
    disabled_accounts: Literal["remove", "keep"] = Field(
        "remove",
        description="A member whose Entra account is disabled (accountEnabled false): remove (no member for the "
        "hub: deprovisioned through the sync guard, back when enabled again) or keep (a hub user while in the "
        "group). A group's delta does not report it: it is read when a member is first seen and at each "
        "username_refresh_hours.",
    )
    throttle_priority: Literal["low", "normal", "high"] = Field(
        "low", description="x-ms-throttle-priority sent on background (delta) requests."
    )
    max_retries: int = Field(
        5, ge=0, le=10, description="Retries of msgraph's RetryHandler on 429/503/504 (honours Retry-After)."
    )
    retry_delay_seconds: float = Field(
        3.0, ge=0, le=180, description="Base delay of the RetryHandler when Retry-After is absent."
    )
    round_deadline_seconds: float = Field(300.0, gt=0, le=3600, description=(
        "Longest a Graph round (a sync's directory read, a subscription manager's round) waits out throttling: "
        "a retry whose wait (Retry-After, or the backoff) would end later than this many seconds after the round "
        "began is not made, the round fails ('Graph throttled; retry after N s would pass the round's deadline'; "
        "a read commits nothing) and the next run does it again. Keep it below the Functions timeout (host.json "
        "functionTimeout, 10 min), with room for the rest of the run."))
    timeout_seconds: float = Field(30.0, gt=0, le=300, description=(
        "Timeout of one Graph request, and of each try of a token request (Graph's, and the hint queue's with "
        "queue = 'azure' and an account URL); no answer within it fails the read, the subscription round or "
        "the hint's push."))
    user_lookup_concurrency: int = Field(4, ge=1, le=20, description="User lookups in flight at once.")

    notifications: bool = Field(
        False,
        description="Subscribe to Graph change notifications (needs a public HTTPS notification_url). "
        "Off: the scheduled sync alone keeps the hub in step.",
    )
    notification_url: str | None = Field(
        None, description="Public HTTPS URL of POST /api/v1/graph/notifications."
    )
    lifecycle_url: str | None = Field(
        None, description="Public HTTPS URL of POST /api/v1/graph/lifecycle (default: derived from notification_url)."
    )
    client_state: SecretStr | None = Field(
        None,
        description="Secret Graph echoes in every notification (clientState, at most 128 characters); "
        "from Key Vault in Azure.",
    )
    subscription_minutes: int = Field(
        GRAPH_MAX_GROUP_SUBSCRIPTION_MINUTES,
        ge=45,
        le=GRAPH_MAX_GROUP_SUBSCRIPTION_MINUTES,
        description="Lifetime requested for each subscription (Graph's maximum for groups: 41760).",
    )
    renew_before_minutes: int = Field(
        2880, ge=15, description="Renew a subscription when it expires within this many minutes."
    )
    subscription_schedule: NCronTab = Field(
        "0 0 */6 * * *", description="NCRONTAB of the subscription manager's rounds in hubpilot serve "
        "(the Functions timer graph_subscriptions runs hourly, whatever this says)."
    )
    recheck_seconds: float = Field(90.0, ge=0, le=900, description=(
        "Graph's delta query can show a change only some time after its change notification arrived (its "
        "replication delay): when the sync a notification started, or the sync that covered it, was shown no "
        "change of the notified group by the delta query, the notification is run once more after this many "
        "seconds (one re-check per notification; 0: none, the scheduled sync follows)."))
    queue: Literal["memory", "azure"] = Field(
        "memory",
        description="Where notifications wait for the sync: memory (hubpilot serve) or azure (Storage queue).",
    )
    queue_name: str = Field("hubpilot-graph", description="Azure Storage queue of notification hints: with "
                            "queue = azure it must stay hubpilot-graph, the queue the Functions app's "
                            "graph_hints trigger reads (and Bicep creates).")
    queue_connection_string: SecretStr | None = Field(
        None, description="Storage connection string for queue=azure (or use queue_account_url). "
        "One whose AccountKey is empty or not base64 is refused, without showing it."
    )
    queue_account_url: str | None = Field(
        None, description="Queue service URL for managed-identity access, e.g. "
        "https://<account>.queue.core.windows.net (https: an Entra token goes with every request)."
    )

    @field_validator("queue_connection_string")
    @classmethod
    def _account_key(cls, v: SecretStr | None) -> SecretStr | None:
        return check_account_key(v)

    @field_validator("graph_base_url")
    @classmethod
    def _graph(cls, v: str) -> str:
        try:
            url = _http_url(v, "directory.entra.graph_base_url")
        except ValueError as exc:
            raise ValueError(f"{exc} (the Bicep parameter graphEndpoint is the host alone, e.g. "
                             "https://graph.microsoft.us, and gets /v1.0 appended)") from None
        # the SDK appends the resource (/groups/delta) to this URL: it must end with the API
        # version, once (infra/bicep's graphEndpoint is the host alone and gets /v1.0 appended)
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        root = f"{parts.scheme}://{parts.netloc}"
        if not segments or segments[-1] not in _GRAPH_VERSIONS:
            raise ValueError(f"directory.entra.graph_base_url must end with the Graph API version, e.g. "
                             f"{root}/v1.0")
        if len(segments) > 1 and segments[-2] in _GRAPH_VERSIONS:
            raise ValueError(f"directory.entra.graph_base_url names the Graph API version twice; use "
                             f"{root}{'/'.join(['', *segments[:-1]])} (the Bicep parameter graphEndpoint "
                             "is the host alone, without /v1.0)")
        return url

    @field_validator("queue_account_url")
    @classmethod
    def _queue_service(cls, v: str | None) -> str | None:
        # the storage client sends the app's Entra token with every request: azure-core refuses plain
        # http at each hint's push, and an account's name alone is no host; either failed every
        # notification's hint, naming no setting. A bare host is read as https, as the client does.
        if v is None:
            return v
        what, example = "directory.entra.queue_account_url", "https://<account>.queue.core.windows.net"
        url = bearer_url(v.strip() if "://" in v else "https://" + v.strip(), what, example)
        host = urlsplit(url).hostname or ""
        if "." not in host and host not in LOOPBACK_HOSTS:
            raise ValueError(f"{what} must be the queue service's URL, e.g. {example} (not the account's "
                             f"name alone; got {v!r})")
        return url

    @field_validator("authority_host")
    @classmethod
    def _authority(cls, v: str | None) -> str | None:
        return authority_url(v, "directory.entra.authority_host")

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        v = guid(v, "directory.entra.tenant_id", "the tenant's GUID, from the Entra admin centre's Overview")
        return v.lower() if v else v

    @field_validator("client_id")
    @classmethod
    def _client(cls, v: str | None) -> str | None:
        return guid(v, "directory.entra.client_id", "the Client ID GUID of the user-assigned managed identity "
                    "(its Overview in the portal; infra/bicep's output identityClientId) or of the app "
                    "registration, not its name or resource id")

    @field_validator("graph_scope")
    @classmethod
    def _scope(cls, v: str | None) -> str | None:
        return token_scope(v, "directory.entra.graph_scope", "https://graph.microsoft.us/.default")

    @field_validator("username_attribute")
    @classmethod
    def _attribute(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", v):
            raise ValueError("username_attribute must be a Graph user property name, e.g. userPrincipalName")
        # Graph answers with its own spelling of a property: a known one is spelled as Graph does,
        # or "userprincipalname" would read every person as nameless
        return _USER_PROPERTIES.get(v.lower(), v)

    @field_validator("notification_url", "lifecycle_url")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return _http_url(v, "directory.entra.notification_url / lifecycle_url")

    @model_validator(mode="after")
    def _notifications_need(self) -> EntraSettings:
        if self.notifications:
            missing = [n for n in ("notification_url", "client_state") if getattr(self, n) is None]
            if missing:
                raise ValueError(
                    "directory.entra.notifications is on but " + " and ".join(missing)
                    + " is unset (Graph needs a public HTTPS URL and a clientState secret; "
                    "without a public endpoint turn notifications off: the schedule keeps the hub in step)"
                )
        if self.notifications and self.queue == "azure" and not (self.queue_connection_string
                                                                 or self.queue_account_url):
            raise ValueError(
                "directory.entra.queue is 'azure' but neither queue_connection_string nor queue_account_url "
                "is set: set queue_connection_string or queue_account_url (the storage account whose queue "
                f"{self.queue_name!r} the graph_hints function reads), or queue = 'memory' with hubpilot serve"
            )
        default_queue = type(self).model_fields["queue_name"].default
        if self.queue == "azure" and self.queue_name != default_queue:
            raise ValueError(
                f"directory.entra.queue_name is {self.queue_name!r}, but the Functions app's graph_hints trigger "
                f"reads the queue {default_queue!r} (which infra/bicep creates): hints put elsewhere are never "
                f"read; leave queue_name unset"
            )
        if self.client_state is not None and not 1 <= len(self.client_state.get_secret_value()) <= 128:
            raise ValueError("directory.entra.client_state must be 1 to 128 characters (Graph's limit)")
        if self.renew_before_minutes >= self.subscription_minutes:
            raise ValueError("directory.entra.renew_before_minutes must be less than subscription_minutes")
        if self.notifications:
            # only a round that finds a subscription expiring within renew_before renews it: rounds
            # further apart let it expire in between, and Graph drops it with its notifications
            from hubpilot.schedule import longest_gap

            serve_gap = longest_gap(self.subscription_schedule).total_seconds() / 60
            gap = max(serve_gap, FUNCTIONS_SUBSCRIPTION_GAP_MINUTES)
            if self.renew_before_minutes <= gap:
                raise ValueError(
                    f"directory.entra.renew_before_minutes={self.renew_before_minutes} is not longer than the time "
                    f"between two rounds of the subscription manager, which renews a subscription only when it "
                    f"expires within renew_before_minutes: {gap:g} min (the Functions timer graph_subscriptions "
                    f"runs every {FUNCTIONS_SUBSCRIPTION_GAP_MINUTES} min; subscription_schedule "
                    f"{self.subscription_schedule!r} leaves up to {serve_gap:g} min with hubpilot serve), so "
                    f"subscriptions would expire between rounds and Graph would drop them with their "
                    f"notifications; raise renew_before_minutes (default 2880) or run subscription_schedule "
                    f"more often"
                )
        return self

    @property
    def effective_lifecycle_url(self) -> str | None:
        if self.lifecycle_url:
            return self.lifecycle_url
        if self.notification_url and self.notification_url.endswith("/notifications"):
            return self.notification_url[: -len("/notifications")] + "/lifecycle"
        return self.notification_url

    @property
    def effective_scope(self) -> str:
        if self.graph_scope:
            return self.graph_scope
        parts = urlsplit(self.graph_base_url)
        return f"{parts.scheme}://{parts.netloc}/.default"
