"""Settings of the GPU node pool scaling (``[scale]``)."""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator, model_validator

from hubpilot.config.base import (
    FROM_FILE_FOLDER,
    HomePath,
    HomePaths,
    NCronTab,
    PathSetting,
    Section,
    authority_url,
    bare_name,
    bearer_url,
    guid,
    no_userinfo,
    token_scope,
)
from hubpilot.ports.cluster import parse_selector

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A Kubernetes namespace's name (an RFC 1123 label)."""
# the settings that name an Azure resource: an example, and the Bicep parameter that sets it
AZURE_NAMES = {"resource_group": ("'rg-hub'", "aksResourceGroup"), "cluster": ("'aks-hub'", "aksClusterName"),
               "pool": ("'gpu'", "gpuPool")}
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


def parse_days(spec: str) -> frozenset[int]:
    """``"mon-fri"``, ``"sat,sun"``, ``"mon-wed,fri"`` → weekday numbers (Monday = 0)."""
    out: set[int] = set()
    for part in spec.lower().replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in _DAYS or b not in _DAYS:
                raise ValueError(f"{part!r} is no day range; use e.g. 'mon-fri' (days: {', '.join(_DAYS)})")
            i, j = _DAYS.index(a), _DAYS.index(b)
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part in _DAYS:
            out.add(_DAYS.index(part))
        else:
            raise ValueError(f"{part!r} is no day; use one of {', '.join(_DAYS)} or a range like 'mon-fri'")
    if not out:
        raise ValueError("days is empty; use e.g. 'mon-fri'")
    return frozenset(out)


UNLISTED = "--unlisted-choice"


def parse_gpu_profile(entry: str) -> tuple[str, str | None, str | None]:
    """A ``scale.gpu_profiles`` entry as (profile, option, choice), matched against the
    ``user_options`` of a pending server the hub lists: ``"gpu"`` (that profile),
    ``"ml:accelerator=t4"`` (that ``profile_options`` choice of the profile),
    ``"ml:accelerator--unlisted-choice"`` (any free-form value of the option), ``"ml:accelerator"``
    (any value of the option, chosen or free-form); an empty profile
    (``":accelerator=t4"``) is a spawn that names none, KubeSpawner's default profile."""
    if not isinstance(entry, str) or not entry or any(c.isspace() for c in entry):
        raise ValueError(f"{entry!r} is no GPU profile; use a profile slug, e.g. 'gpu', "
                         "'ml:accelerator=t4' or 'ml:accelerator--unlisted-choice'")
    profile, colon, rest = entry.partition(":")
    if not colon:
        return profile, None, None
    option, eq, choice = rest.partition("=")
    if not option or ":" in option or (eq and (not choice or option.endswith(UNLISTED))):
        raise ValueError(f"{entry!r}: write '<profile>:<option>=<choice>' or '<profile>:<option>{UNLISTED}' "
                         "(an option of the profile's profile_options and a choice's key)")
    return profile, option, choice if eq else None


def parse_hhmm(value: str) -> time:
    if not _HHMM.match(value):
        raise ValueError(f"{value!r} is no time of day; use HH:MM, e.g. '08:00' (24:00: midnight)")
    if value == "24:00":
        return time.max
    h, m = value.split(":")
    return time(int(h), int(m))


class WarmWindow(Section):
    """A time window in which capacity is kept warm, e.g. Mon-Fri 08:00-18:00 keep 1 spare node."""

    days: str = Field("mon-fri", description="Weekdays, e.g. 'mon-fri' or 'mon,wed,fri'.")
    start: str = Field("08:00", description="Local start time HH:MM (in scale.timezone); in TOML quoted, "
                       "or a TOML time without seconds (08:00:00).")
    end: str = Field("18:00", description="Local end HH:MM, as start; before start: runs past midnight.")
    spare: int = Field(1, ge=0, le=100, description="Empty ready GPU nodes kept beyond the busy ones.")
    min_nodes: int = Field(0, ge=0, le=1000, description="GPU nodes kept in total, busy or not.")

    @field_validator("days")
    @classmethod
    def _days(cls, v: str) -> str:
        parse_days(v)
        return v

    @field_validator("start", "end", mode="before")
    @classmethod
    def _toml_time(cls, v: object, info: ValidationInfo) -> object:
        # TOML has a time type: ``start = 08:00:00`` unquoted is that time, read as "08:00"
        if isinstance(v, time) and not (v.second or v.microsecond or v.tzinfo):
            return v.strftime("%H:%M")
        if not isinstance(v, str):
            example = cls.model_fields[info.field_name or "start"].default
            raise ValueError("a time of day here has hours and minutes only, written quoted "
                             f'as HH:MM, e.g. {info.field_name} = "{example}" (24:00: midnight)')
        return v

    @field_validator("start", "end")
    @classmethod
    def _times(cls, v: str) -> str:
        parse_hhmm(v)
        return v

    @model_validator(mode="after")
    def _covers_some_time(self) -> WarmWindow:
        if self.start == "24:00" and self.end in ("24:00", "00:00"):
            raise ValueError(f"the window {self.start}-{self.end} never covers a minute (24:00 starts at the end "
                             "of the day); for the whole day write start '00:00' and end '24:00'")
        return self


class ScaleSettings(Section):
    """Scaling the AKS GPU node pool: up on demand, down on idle time and by schedule."""

    enabled: bool = Field(False, description="Scale on its own: the timer and the hub's demand signal start "
                          "runs (the pool must be configured); manual runs work either way.")
    schedule: NCronTab = Field(
        "0 * * * * *", description="NCRONTAB of the scale timer (every minute); also "
        "HUBPILOT_SCALE_SCHEDULE, the app setting the Functions timer reads.")
    # where the pool is
    arm_endpoint: str = Field("https://management.azure.com", description="Azure Resource Manager endpoint.")
    arm_audience: str | None = Field(
        None,
        description="Token scope for ARM, a resource's '/.default' (a resource alone gets it appended; other scopes "
        "are refused); default: '<arm_endpoint>/.default' (e.g. https://management.usgovcloudapi.net/.default with "
        "arm_endpoint https://management.usgovcloudapi.net).",
    )
    authority: str | None = Field(
        None,
        description="Entra authority host of the credential (DefaultAzureCredential), e.g. "
        "https://login.microsoftonline.us; unset: AZURE_AUTHORITY_HOST, else https://login.microsoftonline.com. "
        "Used by a service principal from the environment (AZURE_CLIENT_SECRET / _CERTIFICATE_PATH); the "
        "managed identity has none, and the workload identity reads AZURE_AUTHORITY_HOST alone (AKS's "
        "webhook sets it).",
    )
    subscription_id: str = Field("", description="Subscription ID (a GUID) of the AKS cluster.")
    resource_group: str = Field("", description="Resource group of the AKS cluster.")
    cluster: str = Field("", description="Name of the AKS managed cluster.")
    pool: str = Field("gpu", description="Name of the GPU agent pool.")
    api_version: str | None = Field(None, description="ARM API version (default: the SDK's).")
    # the Kubernetes view
    namespace: str = Field("jhub", description="Namespace of the hub and its user pods.")
    user_namespaces: bool = Field(
        False, description="User pods live in namespaces of their own (KubeSpawner.enable_user_namespaces): "
        "they are listed in every namespace (needs list pods cluster-wide), else a node running one would look "
        "empty.")
    kubeconfig: Annotated[str | None, PathSetting(several=True), HomePaths] = Field(
        None, description="Kubeconfig path; unset: in-cluster, else ~/.kube/config. " + FROM_FILE_FOLDER)
    kube_api_url: str | None = Field(None, description="Kubernetes API server's http(s) URL (overrides kubeconfig; "
                                     "with kube_auth=kubeconfig no credentials are sent: tests).")
    kube_auth: Literal["kubeconfig", "entra"] = Field(
        "kubeconfig",
        description="kubeconfig: kubeconfig / in-cluster credentials; entra: an Entra token of the app's "
        "identity (AKS-managed Entra ID), the API server and its CA taken from the cluster's user "
        "kubeconfig through ARM (listClusterUserCredential) unless kube_api_url is set. Use entra "
        "in Azure Functions, where no kubeconfig or kubelogin exists.",
    )
    kube_server_id: str | None = Field(
        None,
        description="With kube_auth=entra: application id (a GUID) of AKS's Entra server (token scope "
        "'<id>/.default'); unset or blank: the --server-id of the cluster's kubeconfig, else AKS's "
        "6dae42f8-4368-4678-94ff-3960e28e3630.",
    )
    kube_ca_file: Annotated[str | None, PathSetting(), HomePath] = Field(
        None, description="With kube_auth=entra and kube_api_url: PEM file of the API server's CA. " + FROM_FILE_FOLDER
    )
    kube_timeout_seconds: float = Field(
        30.0, gt=0, le=600,
        description="Timeout of one Kubernetes API request (connect, and each read of its answer); "
        "the client sends a GET that timed out up to 3 times more. An API server that never answers "
        "fails the run with 'no answer from the Kubernetes API within ... s'.",
    )
    user_pod_selector: str = Field(
        "component=singleuser-server", description="Label selector of user server pods."
    )
    node_pool_label: str = Field(
        "kubernetes.azure.com/agentpool", description="Node label whose value is the agent pool name."
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource a GPU pod requests.")
    gpu_profiles: list[str] = Field(
        default_factory=list,
        description="Hub profiles that count as GPU (hub pending spawns): a slug ('gpu'), a "
        "profile_options choice ('ml:accelerator=t4'), or any free-form value of an option "
        "('ml:accelerator--unlisted-choice').",
    )
    pods_per_node: int = Field(1, ge=1, le=64, description="GPU user pods one node holds.")
    # policy
    timezone: str = Field("UTC", description="IANA timezone of the warm windows, e.g. Europe/Berlin.")
    warm: list[WarmWindow] = Field(default_factory=list, description="Warm-capacity windows.")
    holidays: list[date] = Field(
        default_factory=list, description="Dates (YYYY-MM-DD, local) whose warm windows are off (a window past "
        "midnight belongs to the day it starts on) and on which the forecast keeps no spare."
    )
    idle_minutes: float = Field(10.0, ge=0, le=1440, description="A node empty this long may be removed.")
    min_nodes: int = Field(0, ge=0, le=1000, description="Never fewer GPU nodes than this.")
    max_nodes: int = Field(10, ge=0, le=1000, description="Never more GPU nodes than this.")
    max_step_up: int = Field(4, ge=1, le=100, description="Most nodes added in one run.")
    max_step_down: int = Field(2, ge=1, le=100, description="Most nodes removed in one run.")
    scale_down_delay_after_up_minutes: float = Field(
        10.0, ge=0, le=1440, description="No scale-down this long after a scale-up (anti-flapping)."
    )
    scale_down_cooldown_minutes: float = Field(
        2.0, ge=0, le=1440, description="No further scale-down this long after a scale-down."
    )
    node_join_grace_minutes: float = Field(
        10.0, ge=0, le=120, description="A NotReady node younger than this counts as booting."
    )
    demand_ttl_minutes: float = Field(
        15.0, ge=1, le=240,
        description="A hub demand signal counts this long (above node boot), or until a run sees its pod."
    )
    forecast: bool = Field(
        False, description="Keep warm spare nodes by a forecast learned from GPU arrivals per weekday and hour "
        "(adds to the warm windows' spare).")
    forecast_quantile: float = Field(
        0.97, gt=0, lt=1, description="Spare covers the arrivals within one node boot with this probability.")
    forecast_boot_minutes: float = Field(
        3.0, gt=0, le=60, description="Time a stopped (Deallocate) or new node needs until a pod runs on it.")
    forecast_max_spare: int = Field(3, ge=0, le=100, description="Most spare nodes the forecast asks for.")
    forecast_min_rate: float = Field(
        1.0, ge=0, le=1000, description="Expected GPU arrivals per hour below which the forecast keeps no spare "
        "(a spare costs a node-hour an hour; fewer arrivals wait one boot).")
    forecast_half_life_weeks: float = Field(
        4.0, gt=0, le=52, description="Weight of older weeks in the forecast halves after this many weeks.")
    reclaim_idle_minutes: float = Field(
        0.0, ge=0, le=1440, description="A GPU server idle this long is stopped when another GPU server waits "
        "and no ready node is free, and counts as warm spare meanwhile (0: never). Must exceed "
        "1.1 × cull.activity_interval + cull.activity_check_seconds.")
    max_reclaim: int = Field(2, ge=1, le=100, description="Most idle GPU servers reclaimed in one run.")
    price_per_node_hour: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Price of one GPU node-hour (cost report; 0: not set, the "
        "report gives node-hours only). The report prices every day at the current value.")
    stopped_vm_price_per_hour: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="What a stopped VM of a Deallocate pool costs an hour: its "
        "managed disks, which Azure bills while the VM is stopped (cost report; 0: not set, the report gives "
        "the stopped VM-hours only).")
    currency: str = Field("USD", description="Currency of price_per_node_hour and stopped_vm_price_per_hour.")
    # ARM client behaviour
    lro_wait_seconds: float = Field(
        45.0, ge=0, le=3600, description="Wait this long for an ARM operation, then report it pending."
    )
    arm_timeout_seconds: float = Field(
        60.0, gt=0, le=600,
        description="Timeout of one try of an ARM request (connect, and each read of its answer; "
        "azure-core's own default is 300 s), and of each try of the credential's token request (for ARM "
        "and, with kube_auth=entra, the Kubernetes API). A read is tried again (retry_total); a deleteMachines "
        "without an answer is reported pending, its nodes kept cordoned.",
    )
    retry_total: int = Field(3, ge=0, le=10, description="azure-core retries (429 honours Retry-After).")
    retry_backoff_seconds: float = Field(0.8, ge=0, le=60, description="azure-core retry backoff factor.")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a folder, e.g. 'Europe'
            raise ValueError(f"{v!r} is no IANA timezone; use e.g. 'Europe/Berlin' or 'UTC'") from exc
        return v

    @field_validator("holidays", mode="before")
    @classmethod
    def _holidays(cls, v: object) -> object:
        if not isinstance(v, list):
            return v
        out: list[object] = []
        for entry in v:
            if isinstance(entry, str):  # TOML dates (unquoted) come as dates
                entry = entry.strip()
                try:
                    if not _DATE.match(entry):
                        raise ValueError(entry)
                    date.fromisoformat(entry)
                except ValueError:
                    raise ValueError(f"{entry!r} is no date; write each day as YYYY-MM-DD, e.g. "
                                     "holidays = [\"2026-12-24\", \"2026-12-25\"] (a range day by day)") from None
            out.append(entry)
        return out

    @field_validator("gpu_profiles")
    @classmethod
    def _gpu_profiles(cls, v: list[str]) -> list[str]:
        for entry in v:
            parse_gpu_profile(entry)
        return v

    @field_validator("user_pod_selector")
    @classmethod
    def _pod_selector(cls, v: str) -> str:
        parse_selector(v)
        return v

    @field_validator("authority")
    @classmethod
    def _authority(cls, v: str | None) -> str | None:
        return authority_url(v, "scale.authority")

    @field_validator("arm_audience")
    @classmethod
    def _audience(cls, v: str | None) -> str | None:
        return token_scope(v, "scale.arm_audience", "https://management.usgovcloudapi.net/.default")

    @field_validator("subscription_id")
    @classmethod
    def _subscription(cls, v: str) -> str:
        if not v.strip():
            return ""  # unset: no pool to scale
        return guid(v, "scale.subscription_id", "the subscription's ID GUID (az account show --query id), "
                    "not its name") or v

    @field_validator("resource_group", "cluster", "pool")
    @classmethod
    def _azure_name(cls, v: str, info: ValidationInfo) -> str:
        example, bicep = AZURE_NAMES[str(info.field_name)]
        name = bare_name(v, f"scale.{info.field_name}", example, bicep=bicep)
        if not name and info.field_name == "pool":
            # ARM was asked for the agent pool '' (no pool has that name) and no node carried that
            # label value: every scale run failed, naming no setting (a blank resource group or
            # cluster is unset: scale.enabled then says what is missing)
            raise ValueError("scale.pool (the Bicep parameter gpuPool) is blank, and no agent pool has an empty "
                             "name: write the GPU agent pool's name, e.g. 'gpu', or unset it for the default "
                             f"{cls.model_fields['pool'].default!r}")
        return name

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        # no namespace has another name: its pods were listed as none, and each GPU node looked empty
        text = v.strip()
        if not _NAMESPACE.fullmatch(text):
            raise ValueError("scale.namespace (the Bicep parameter hubNamespace) is no Kubernetes namespace name: "
                             "write the hub's namespace alone, 1-63 lowercase letters, digits and '-', starting and "
                             f"ending with a letter or digit, e.g. 'jhub' (got {v!r})")
        return text

    @field_validator("node_pool_label", "gpu_resource")
    @classmethod
    def _key(cls, v: str, info: ValidationInfo) -> str:
        # blank or with a space, the GPU nodes were listed under a label no node has (each run failed,
        # or counted the pool's nodes as never joined) and no pending pod asked for the GPU resource
        # (no scale-up ever); spaces or a line break around it, kept when copied, had the same effect
        name = info.field_name or "gpu_resource"
        default = repr(cls.model_fields[name].default)
        text = bare_name(v, f"scale.{name}", default, "Kubernetes label or resource name")
        if not text:
            raise ValueError(f"scale.{name} is blank: write the label or resource name, e.g. {default}, or unset it "
                             "for that default")
        return text

    @field_validator("kube_api_url")
    @classmethod
    def _api_url(cls, v: str | None) -> str | None:
        # spaces or a line break around it, kept when copied: the client looked the host up with them
        return (v.strip() or None) if v is not None else None

    @field_validator("kube_server_id")
    @classmethod
    def _server_id(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None  # blank: unset (the kubeconfig's --server-id, else AKS's)
        # hubpilot asks for '<id>/.default': anything but the application id (a URL, the scope
        # itself) failed each run's first Kubernetes request, naming no setting
        return guid(v, "scale.kube_server_id", "the application id GUID of the cluster's Entra server alone (the "
                    "--server-id of the cluster's kubeconfig; AKS-managed Entra ID: "
                    "6dae42f8-4368-4678-94ff-3960e28e3630), without /.default, not a URL")

    @field_validator("arm_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return bearer_url(v, "scale.arm_endpoint", "https://management.usgovcloudapi.net")

    @model_validator(mode="after")
    def _bounds(self) -> ScaleSettings:
        if self.min_nodes > self.max_nodes:
            raise ValueError(
                f"scale.min_nodes ({self.min_nodes}) is above scale.max_nodes ({self.max_nodes})")
        for i, window in enumerate(self.warm):
            if window.min_nodes > self.max_nodes:
                # the plan never goes above max_nodes: the window would keep fewer nodes than it says
                raise ValueError(
                    f"the min_nodes ({window.min_nodes}) of scale.warm window {i + 1} ({window.days} "
                    f"{window.start}-{window.end}) is above scale.max_nodes ({self.max_nodes}): no more nodes "
                    "than max_nodes are ever kept; lower the window's min_nodes or raise scale.max_nodes")
        if self.enabled and not (self.subscription_id and self.resource_group and self.cluster):
            raise ValueError(
                "scale.enabled needs scale.subscription_id, scale.resource_group and scale.cluster"
            )
        if self.kube_auth == "entra" and self.kubeconfig:
            raise ValueError(
                "scale.kube_auth = 'entra' takes the API server from ARM or scale.kube_api_url; "
                "unset scale.kubeconfig (or use kube_auth = 'kubeconfig')"
            )
        if self.kube_api_url:
            parts = no_userinfo(self.kube_api_url, "scale.kube_api_url")
            if parts.scheme not in ("http", "https") or not parts.hostname \
                    or any(c.isspace() for c in self.kube_api_url):
                # without a scheme the Kubernetes client speaks plain http to it (urllib3 warns that
                # a later release refuses it); another scheme fails every run
                raise ValueError(f"scale.kube_api_url must be the API server's http(s) URL, e.g. "
                                 f"https://<cluster>.hcp.<region>.azmk8s.io:443 (got {self.kube_api_url!r})")
        if self.kube_auth == "entra" and self.kube_api_url:
            try:
                bearer_url(self.kube_api_url, "scale.kube_api_url", "https://<cluster>.hcp.<region>.azmk8s.io:443")
            except ValueError as exc:
                raise ValueError(f"{exc} (with kube_auth = 'entra' a bearer token goes with every request)") from None
        if self.kube_ca_file and not (self.kube_auth == "entra" and self.kube_api_url):
            raise ValueError("scale.kube_ca_file is used only with kube_auth = 'entra' and scale.kube_api_url")
        return self

    @property
    def effective_arm_audience(self) -> str:
        """The token scope for ARM: ``arm_audience``, else the audience of ``arm_endpoint``'s cloud."""
        return self.arm_audience or f"{self.arm_endpoint}/.default"
