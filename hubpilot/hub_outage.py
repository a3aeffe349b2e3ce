"""The hub's outages, as the servers' activity reports see them: while the hub does not answer,
their reports do not reach it, and once it answers again its ``last_activity`` stays old for
servers in use until each server's next report, up to ``cull.activity_lag`` later. A run that
finds the hub unreachable or failing records it here; until the reports have caught up, cull
stops nothing for inactivity and scale reclaims no idle GPU server (docs/cull.md, docs/scale.md).
One record in the state store, shared by both operations."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from hubpilot.loop import stored_time
from hubpilot.ports.hub import HubError, HubUnreachable
from hubpilot.ports.store import ConflictError, StateStore, StoreError

log = logging.getLogger(__name__)

OUTAGE_KEY = "hub/outage"
"""The last time a run found the hub unreachable (``last_failure``), and when a later run found it
answering again (``back_at``): removed once the servers' activity reports have caught up."""


def is_outage(exc: HubError) -> bool:
    """The hub did not answer, or answered 5xx (the proxy's 503 while the hub pod is down)."""
    return isinstance(exc, HubUnreachable) or (exc.status or 0) >= 500


async def note_outage(store: StateStore, now: datetime) -> None:
    """Record that a run found the hub unreachable now (a later answer starts the catch-up anew);
    a store error only goes to the log."""
    try:
        await store.put(OUTAGE_KEY, {"last_failure": now.isoformat()})
    except StoreError as exc:
        log.warning("could not record that the hub was unreachable: %s", exc)


async def catch_up(store: StateStore, now: datetime, lag: timedelta) -> tuple[datetime, datetime] | None:
    """For a run that found the hub answering: (when a run first found it answering again after an
    outage, when the activity reports will have caught up), or None: no outage recorded, or its
    reports have caught up (the record is then removed). A store error or a damaged record counts
    as an outage now: activity is not judged rather than risk servers in use."""
    try:
        got = await store.get_with_etag(OUTAGE_KEY)
        if got is None:
            return None
        doc, etag = got
        back = stored_time(doc.get("back_at"), f"{OUTAGE_KEY} back_at")
        if back is not None and now >= back + lag:
            await store.delete(OUTAGE_KEY, if_match=etag)
            return None
        if back is None:
            back = now
            await store.put(OUTAGE_KEY, {**doc, "back_at": back.isoformat()}, if_match=etag)
    except ConflictError:  # another run changed it meanwhile (a failure noted): judged again next run
        return now, now + lag
    except (StoreError, ValueError) as exc:
        log.warning("could not read or update the hub outage record (%s); activity is not judged this run", exc)
        return now, now + lag
    return back, back + lag


def describe(back: datetime, until: datetime) -> str:
    """A plan note's words for a catch-up window (:func:`catch_up`)."""
    return (f"the hub was unreachable until about {back:%Y-%m-%d %H:%M} UTC: servers' activity reports reach it "
            f"again by {until:%H:%M} UTC (1.1 x cull.activity_interval + cull.activity_check_seconds later), "
            "until then a server in use can look idle")
