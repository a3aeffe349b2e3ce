"""Graph change and lifecycle notifications: validation (pure) and the queue they feed.

A notification is a hint, never the truth: a valid one only asks for a delta sync (or, for a
lifecycle event, for the subscription manager). It is valid when its ``clientState`` equals the
configured secret (compared in constant time) and, when a tenant is configured, its ``tenantId``
is that tenant. Nothing in a notification's body is acted on beyond that.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from hubpilot.loop import Plan, stored_time

LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


class NotificationError(ValueError):
    """The body is no Graph notification collection (answered 400)."""


@dataclass(frozen=True)
class Notification:
    subscription_id: str
    change_type: str
    resource: str
    group_id: str | None
    tenant_id: str | None
    lifecycle_event: str | None = None


@dataclass(frozen=True)
class Verdict:
    accepted: tuple[Notification, ...] = ()
    rejected: tuple[str, ...] = ()

    @property
    def status(self) -> int:
        """202 when anything is accepted; 403 when everything was refused."""
        return 202 if self.accepted or not self.rejected else 403


def parse_body(raw: bytes) -> list[Mapping[str, Any]]:
    """The ``value`` array of a notification POST, or NotificationError saying what is wrong."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotificationError(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("value"), list):
        raise NotificationError('expected a JSON object {"value": [notification, ...]}')
    items: list[Mapping[str, Any]] = doc["value"]
    if not items:
        raise NotificationError('"value" holds no notification')
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise NotificationError(f"value[{i}] is not an object")
    return items


def _group_of(item: Mapping[str, Any]) -> str | None:
    data = item.get("resourceData")
    if isinstance(data, dict) and isinstance(data.get("id"), str) and "group" in str(
        data.get("@odata.type", "")
    ).lower():
        return str(data["id"]).lower()
    resource = str(item.get("resource") or "")
    parts = resource.strip("/").split("/")
    if len(parts) >= 2 and parts[0].lower() == "groups":
        return parts[1].lower()
    return None


def shown(value: Any, limit: int = 64) -> str:
    """A caller-supplied value as it may appear in a refusal (audit, log, answer): printable, short."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def check(
    items: Sequence[Mapping[str, Any]],
    *,
    client_state: str,
    tenant_id: str | None = None,
    lifecycle: bool = False,
) -> Verdict:
    """Split notifications into accepted and rejected (with the reason of each rejection)."""
    accepted: list[Notification] = []
    rejected: list[str] = []
    for i, item in enumerate(items):
        sid = shown(item.get("subscriptionId") or "")
        given = item.get("clientState")
        if not isinstance(given, str) or not client_state or not hmac.compare_digest(
            given.encode(), client_state.encode()
        ):
            rejected.append(f"value[{i}] (subscription {sid or '?'}): wrong or missing clientState")
            continue
        tenant = item.get("tenantId")
        if tenant_id and str(tenant or "").lower() != tenant_id.lower():
            rejected.append(f"value[{i}] (subscription {sid or '?'}): "
                            f"tenant {shown(repr(tenant))} is not the configured tenant")
            continue
        event = item.get("lifecycleEvent")
        if lifecycle and (not isinstance(event, str) or not event):
            rejected.append(f"value[{i}]: no lifecycleEvent")
            continue
        # a lifecycle event at the notification URL is one too: Graph allows the two URLs to be
        # the same. An event Graph added after this was written: verified, so acknowledged (a
        # refusal would be retried for hours); it asks the subscription manager to look (hints_for)
        accepted.append(Notification(
            subscription_id=str(item.get("subscriptionId") or ""),
            change_type=str(item.get("changeType") or ""),
            resource=str(item.get("resource") or ""),
            group_id=_group_of(item),
            tenant_id=str(tenant) if tenant else None,
            lifecycle_event=str(event) if event else None,
        ))
    return Verdict(tuple(accepted), tuple(rejected))


@dataclass(frozen=True)
class Hint:
    """What a notification asks for: a delta sync, or the subscription manager (with renewals)."""

    kind: str  # "sync" or "subscriptions"
    groups: tuple[str, ...] = ()
    renew: tuple[str, ...] = ()
    received: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # the one re-check of a sync hint whose sync was shown no change of its groups (Graph's delta
    # lagged the notification): a re-check queues none
    recheck: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "groups": list(self.groups), "renew": list(self.renew),
                                "received": self.received}
        if self.recheck:
            out["recheck"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hint:
        kind = data.get("kind")
        if kind not in ("sync", "subscriptions"):
            raise NotificationError(f"a queued hint has kind {kind!r}; expected sync or subscriptions")
        return cls(str(kind), tuple(str(g) for g in data.get("groups") or ()),
                   tuple(str(r) for r in data.get("renew") or ()), str(data.get("received") or ""),
                   recheck=data.get("recheck") is True)


# ``received`` is the clock of the instance the notification reached, a run's start that of the
# instance running it: a sync host whose clock runs ahead would count a sync that started (and
# read the delta) just before the notification as covering it. A borderline hint costs one more
# sync instead of a change left to the scheduled sync.
COVER_MARGIN = timedelta(seconds=5)


def covered_by(hint: Hint, last_sync_outcome: str | None, last_sync_started: datetime | None) -> bool:
    """True when the last sync run already covers the hint: it finished (applied, refused or
    paused) and it started at least :data:`COVER_MARGIN` after the notification was received (a
    margin for the clocks of two instances), so its delta read saw the change. Duplicate and late
    notifications then cost no run."""
    if not hint.received or last_sync_started is None:
        return False
    if last_sync_outcome not in ("applied", "refused", "paused"):
        return False
    try:  # naive means UTC, as in every document hubpilot reads
        received = stored_time(hint.received, "the hint's received")
    except ValueError:
        return False
    return received is not None and last_sync_started >= received + COVER_MARGIN


def unseen_groups(hint: Hint, plan: Plan) -> tuple[str, ...]:
    """The groups a sync hint names whose change the sync that planned ``plan`` (the one it
    started, or the one that covered it) may not have seen, for the hint's one re-check: those
    its directory read was shown no change of (the plan's fact ``changed_groups``: the groups
    Graph's delta query listed); for a plan without that fact (a run of an earlier release), all
    of them when the plan has no action. None for a re-check (which queues no other), a
    subscriptions hint, or a sync hint that names no group."""
    if hint.kind != "sync" or hint.recheck or not hint.groups:
        return ()
    changed = plan.facts.get("changed_groups")
    if isinstance(changed, list):
        seen = {str(g).lower() for g in changed}
        return tuple(g for g in hint.groups if g.lower() not in seen)
    return () if plan.actions else hint.groups


def hints_for(verdict: Verdict, now: datetime) -> list[Hint]:
    """The hints accepted notifications ask for: one sync for all changes; lifecycle events
    ``reauthorizationRequired``/``subscriptionRemoved`` ask the manager to renew/recreate (whose
    round then queues a sync: :func:`hubpilot.wiring.entra.process_hint`), ``missed`` asks for a
    sync, an event unknown here for a manager round."""
    at = now.isoformat()
    changes = [n for n in verdict.accepted if n.lifecycle_event is None or n.lifecycle_event == "missed"]
    renew = [n.subscription_id for n in verdict.accepted
             if n.lifecycle_event in ("reauthorizationRequired", "subscriptionRemoved")]
    unknown = [n for n in verdict.accepted if n.lifecycle_event and n.lifecycle_event not in LIFECYCLE_EVENTS]
    out: list[Hint] = []
    if changes:
        out.append(Hint("sync", tuple(sorted({n.group_id for n in changes if n.group_id})), received=at))
    if renew or unknown:  # an unknown event: the manager checks every subscription, nothing more
        out.append(Hint("subscriptions", renew=tuple(sorted(set(renew))), received=at))
    return out


def coalesce(hints: Sequence[Hint]) -> list[Hint]:
    """A burst of hints becomes at most one sync and one subscriptions hint. The coalesced hint
    keeps the latest receipt time: only a run that started after all of them covers it; it is a
    re-check (which queues no other) only when all of them are."""
    syncs = [h for h in hints if h.kind == "sync"]
    subs = [h for h in hints if h.kind == "subscriptions"]
    out: list[Hint] = []
    if subs:
        out.append(Hint("subscriptions", renew=tuple(sorted({r for h in subs for r in h.renew})),
                        received=max(h.received for h in subs)))
    if syncs:
        out.append(Hint("sync", tuple(sorted({g for h in syncs for g in h.groups})),
                        received=max(h.received for h in syncs), recheck=all(h.recheck for h in syncs)))
    return out


class NotificationQueue(Protocol):
    """Where the webhook leaves hints for the worker: in-process, or an Azure Storage queue."""

    async def push(self, hint: Hint, *, delay_seconds: float = 0.0) -> None:
        """Queue the hint; with ``delay_seconds`` it is taken no earlier than that."""
        ...

    async def close(self) -> None: ...
