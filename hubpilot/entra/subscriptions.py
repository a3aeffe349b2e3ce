"""The Graph subscription manager, as a capability of the one loop.

One subscription per configured group (``groups/<id>``, ``changeType: updated,deleted``) whose
``notificationUrl`` is ours; renewed when it expires within ``renew_before``; recreated when the
renewal finds it gone (404) or a lifecycle event says it was removed; subscriptions of ours for
groups no longer configured, and duplicates, are deleted; one whose ``lifecycleNotificationUrl``
is not ours is recreated (Graph sets it only at creation). Every action is idempotent.

A subscription keeps the clientState it was created with (a renewal changes only its expiry), so
after ``directory.entra.client_state`` changes, its notifications would be refused. The manager
keeps, in the state store, a fingerprint of the secret each subscription was created with, and
recreates those made with another one. Subscriptions it has no fingerprint for (made before it
kept them) are taken as made with the current secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from hubpilot.loop import Action, ActionResult, Plan, Progress, Status, run_actions
from hubpilot.ports.store import StateStore

OPERATION = "graph-subscriptions"
RECREATED = "was gone (404); recreated as"
"""How a renewal that found its subscription gone reports the new one."""
CHANGE_TYPE = "updated,deleted"
SECRETS_KEY = "entra/subscription-secrets"  # {subscription id: fingerprint of its clientState}


def secret_fingerprint(client_state: str) -> str:
    """Which secret a subscription was made with, without keeping the secret."""
    return hashlib.sha256(b"hubpilot-graph-client-state\0" + client_state.encode()).hexdigest()[:16]


class SubscriptionApi(Protocol):
    async def list_subscriptions(self) -> list[dict[str, Any]]:
        """The app's subscriptions: dicts with id, resource, notificationUrl, expirationDateTime."""
        ...

    async def create_subscription(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def renew_subscription(self, subscription_id: str, expiration: datetime) -> bool:
        """PATCH the expiration; False when the subscription no longer exists (404)."""
        ...

    async def delete_subscription(self, subscription_id: str) -> bool:
        """False when it did not exist."""
        ...


@dataclass(frozen=True)
class SubscriptionPolicy:
    groups: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str = field(repr=False)  # the subscriptions' secret: never in a repr (log line, traceback)
    lifetime: timedelta
    renew_before: timedelta


@dataclass(frozen=True)
class ObservedSubscriptions:
    subscriptions: tuple[Mapping[str, Any], ...]
    force_renew: frozenset[str] = field(default_factory=frozenset)
    secrets: Mapping[str, str] | None = None  # subscription id → secret fingerprint (None: not kept)


def _resource_group(resource: str) -> str | None:
    parts = resource.strip().strip("/").split("/")
    if len(parts) == 2 and parts[0].lower() == "groups":
        return parts[1].lower()
    return None


def _expiry(sub: Mapping[str, Any]) -> datetime | None:
    raw = sub.get("expirationDateTime")
    if isinstance(raw, datetime):
        return raw
    if isinstance(raw, str) and raw:
        text = raw.replace("Z", "+00:00")
        # Graph prints seven fractional digits; fromisoformat takes up to six
        if "." in text:
            head, _, tail = text.partition(".")
            digits = tail[: len(tail) - len(tail.lstrip("0123456789"))]
            rest = tail[len(digits):]
            text = f"{head}.{digits[:6]}{rest}"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None
    return None


def plan_subscriptions(policy: SubscriptionPolicy, observed: ObservedSubscriptions, now: datetime) -> Plan:
    """Pure: which subscriptions to create, renew or delete."""
    wanted = {g.lower() for g in policy.groups}
    target = (now + policy.lifetime - timedelta(minutes=1)).isoformat()
    ours: dict[str, list[Mapping[str, Any]]] = {}
    notes: list[str] = []
    for sub in observed.subscriptions:
        if str(sub.get("notificationUrl") or "") != policy.notification_url:
            continue  # another app's or another deployment's
        gid = _resource_group(str(sub.get("resource") or ""))
        if gid is None:
            continue
        ours.setdefault(gid, []).append(sub)
    actions: list[Action] = []
    for gid in sorted(wanted):
        subs = sorted(ours.get(gid, []), key=lambda s: (_expiry(s) or now, str(s.get("id"))), reverse=True)
        if not subs:
            actions.append(Action("create", f"groups/{gid}", phase=1,
                                  params={"expiration": target}, reason="no subscription for this group"))
            continue
        keep, extra = subs[0], subs[1:]
        sid = str(keep.get("id"))
        exp = _expiry(keep)
        made_with = (observed.secrets or {}).get(sid)
        if made_with is not None and made_with != secret_fingerprint(policy.client_state):
            actions.append(Action("delete", sid, phase=0, params={"group": gid},
                                  reason="made with an earlier clientState (directory.entra.client_state changed): "
                                  "its notifications would be refused"))
            actions.append(Action("create", f"groups/{gid}", phase=1, params={"expiration": target},
                                  reason="replaces the subscription made with the earlier clientState"))
        elif (keep.get("lifecycleNotificationUrl") or None) != (policy.lifecycle_url or None):
            # Graph takes lifecycleNotificationUrl only at creation: a renewal cannot set it
            actions.append(Action("delete", sid, phase=0, params={"group": gid},
                                  reason="its lifecycleNotificationUrl is not "
                                  f"{policy.lifecycle_url or 'unset'}: lifecycle events would not reach hubpilot"))
            actions.append(Action("create", f"groups/{gid}", phase=1, params={"expiration": target},
                                  reason="replaces the subscription with another lifecycleNotificationUrl"))
        elif sid in observed.force_renew:
            actions.append(Action("renew", sid, phase=1, params={"group": gid, "expiration": target},
                                  reason="a lifecycle event asked for it"))
        elif exp is None or exp - now <= policy.renew_before:
            when = exp.isoformat() if exp else "unknown"
            actions.append(Action("renew", sid, phase=1, params={"group": gid, "expiration": target},
                                  reason=f"expires {when}, within {policy.renew_before}"))
        for dup in extra:
            actions.append(Action("delete", str(dup.get("id")), phase=0, params={"group": gid},
                                  reason="a second subscription for the same group"))
    for gid, subs in sorted(ours.items()):
        if gid not in wanted:
            for sub in subs:
                actions.append(Action("delete", str(sub.get("id")), phase=0, params={"group": gid},
                                      reason="the group is no longer configured"))
    for sid in sorted(observed.force_renew - {str(s.get("id")) for s in observed.subscriptions}):
        notes.append(f"subscription {sid} named by a lifecycle event no longer exists; "
                     "groups without one get a new one")
    facts: dict[str, Any] = {"groups": len(wanted), "subscriptions": sum(len(v) for v in ours.values())}
    # subscriptions hubpilot made that Graph no longer lists (dropped without a lifecycle event
    # reaching hubpilot, or expired): changes since were not notified
    listed = {str(sub.get("id")) for sub in observed.subscriptions}
    if vanished := sorted(set(observed.secrets or {}) - listed):
        facts["vanished"] = vanished
        notes.append(f"{len(vanished)} subscription(s) hubpilot made are gone from Graph ({', '.join(vanished)}): "
                     "changes since were not notified; a sync follows the new ones")
    return Plan.build(OPERATION, actions, notes, facts=facts)


def missed_changes(plan: Plan | None, results: Sequence[ActionResult]) -> bool:
    """Whether a round replaced a subscription Graph had dropped without a lifecycle event
    reaching hubpilot (gone from its list: the plan's fact ``vanished``; or found gone by a
    renewal's 404): changes made meanwhile were never notified, and a delta sync should follow."""
    done = [r for r in results if r.status is Status.DONE]
    return (any(r.action.kind == "create" for r in done) and plan is not None and bool(plan.facts.get("vanished"))) \
        or any(r.detail.startswith(RECREATED) for r in done)


class SubscriptionManager:
    """Capability ``graph-subscriptions``: run it through the Runner (lock, audit) on a timer."""

    def __init__(self, api: SubscriptionApi, policy: SubscriptionPolicy, *,
                 force_renew: Sequence[str] = (), store: StateStore | None = None) -> None:
        self.api = api
        self.policy = policy
        self.force_renew = frozenset(force_renew)
        self.store = store  # keeps each subscription's secret fingerprint (None: not tracked)

    @property
    def name(self) -> str:
        return OPERATION

    async def observe(self) -> ObservedSubscriptions:
        subs = tuple(await self.api.list_subscriptions())
        secrets = None
        if self.store is not None:
            doc = await self.store.get(SECRETS_KEY) or {}
            secrets = {str(k): str(v) for k, v in doc.items() if isinstance(v, str)}
        return ObservedSubscriptions(subs, self.force_renew, secrets)

    def plan(self, observed: ObservedSubscriptions, now: datetime) -> Plan:
        return plan_subscriptions(self.policy, observed, now)

    def guard(self, observed: ObservedSubscriptions, plan: Plan) -> Sequence[str]:
        reasons = []
        if not self.policy.client_state:
            reasons.append("no clientState secret is configured (directory.entra.client_state)")
        if not self.policy.notification_url:
            reasons.append("no notification URL is configured (directory.entra.notification_url)")
        return reasons

    async def apply(self, plan: Plan, observed: ObservedSubscriptions, progress: Progress) -> list[ActionResult]:
        current = secret_fingerprint(self.policy.client_state)
        made: dict[str, str] = {}  # subscriptions created in this run
        deleted: set[str] = set()
        creates = sum(1 for a in plan.actions if a.kind == "create")
        created = 0  # of those, the ones that made their subscription

        async def perform(action: Action) -> ActionResult:
            nonlocal created
            if action.kind == "delete":
                gone = await self.api.delete_subscription(action.target)
                deleted.add(action.target)
                return ActionResult(action, Status.DONE if gone else Status.NOOP)
            expiration = datetime.fromisoformat(str(action.params["expiration"]))
            if action.kind == "renew":
                if await self.api.renew_subscription(action.target, expiration):
                    return ActionResult(action, Status.DONE)
                group = str(action.params["group"])
                sub = await self.api.create_subscription(self._body(group, expiration))
                made[str(sub.get("id"))] = current
                # the gone one is forgotten once replaced (this round queues the sync for what it
                # missed); a failed creation keeps it, so the round that replaces it queues one
                deleted.add(action.target)
                return ActionResult(action, Status.DONE, f"{RECREATED} {sub.get('id')}")
            if action.kind == "create":
                group = action.target.split("/", 1)[1]
                sub = await self.api.create_subscription(self._body(group, expiration))
                made[str(sub.get("id"))] = current
                created += 1
                return ActionResult(action, Status.DONE, f"subscription {sub.get('id')}")
            return ActionResult(action, Status.FAILED, f"unknown action kind {action.kind}")

        try:
            return await run_actions(plan.actions, perform, concurrency=4, progress=progress)
        finally:  # what was created or deleted is kept even when a later action failed
            if self.store is not None:
                await self._keep_secrets(observed, made, deleted, current, keep_vanished=created < creates)

    async def _keep_secrets(self, observed: ObservedSubscriptions, made: Mapping[str, str],
                            deleted: set[str], current: str, *, keep_vanished: bool = False) -> None:
        """The fingerprints of the subscriptions that exist now: the known ones, those made in
        this run, and (adopted) those of ours that had none. With ``keep_vanished`` (a creation
        of this round failed), those Graph no longer lists are kept too: the round that does
        replace them still sees them vanished and queues the sync for the changes never notified."""
        assert self.store is not None
        ours = {str(s.get("id")) for s in observed.subscriptions
                if str(s.get("notificationUrl") or "") == self.policy.notification_url}
        known = dict(observed.secrets or {})
        kept = {sid: known.get(sid, current) for sid in ours - deleted}
        if keep_vanished:
            listed = {str(s.get("id")) for s in observed.subscriptions}
            kept.update({sid: fp for sid, fp in known.items() if sid not in listed})
        kept.update(made)
        if kept != known:
            await self.store.put(SECRETS_KEY, dict(sorted(kept.items())))

    def _body(self, group: str, expiration: datetime) -> dict[str, Any]:
        body: dict[str, Any] = {
            "changeType": CHANGE_TYPE,
            "notificationUrl": self.policy.notification_url,
            "resource": f"groups/{group}",
            "expirationDateTime": expiration.isoformat(),
            "clientState": self.policy.client_state,
        }
        if self.policy.lifecycle_url:
            body["lifecycleNotificationUrl"] = self.policy.lifecycle_url
        return body
