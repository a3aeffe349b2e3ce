"""The cull capability at points a mutation review found unheld, on the real hub of
``tests/test_cull_realhub.py`` (real JupyterHub, real single-user servers)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubpilot.adapters.hub import HubClient
from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.cull import CullSettings
from hubpilot.cull import CullCapability
from hubpilot.loop import Plan, Status, no_progress
from hubpilot.sync.capability import MANAGED_KEY
from hubpilot.sync.plan import ManagedUser
from tests.fixtures.hub import unique_name
from tests.realhub import RealHub
from tests.test_cull_realhub import (  # noqa: F401 (fixtures)
    cull_hub,
    hub_client,
    make_user,
)

pytestmark = pytest.mark.hub


async def test_a_user_sync_has_deprovisioned_is_deleted_and_a_member_it_manages_is_kept(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path  # noqa: F811 (the imported fixtures)
) -> None:
    """docs/cull.md: cull keeps every user sync manages as an active member; a user sync has
    deprovisioned (they left the directory's groups) is deleted as before. Both long-inactive."""
    member, leaver = unique_name("member"), unique_name("leaver")
    for name in (member, leaver):
        await make_user(cull_hub, name)
    store = SqliteStore(tmp_path / "state.db")
    since = datetime(2026, 1, 5, tzinfo=UTC)
    await store.put(MANAGED_KEY, {"users": {
        member: ManagedUser(since).to_json(),
        leaver: ManagedUser(since, deprovisioned_at=since + timedelta(days=1)).to_json()}})
    try:
        cap = CullCapability(hub_client, CullSettings(cull_users=True, delete_users=True), store)
        observed = await cap.observe()
        plan = cap.plan(observed, datetime.now(UTC) + timedelta(hours=3))
        mine = Plan.build("cull", [a for a in plan.actions if a.target in (member, leaver)], facts=plan.facts)
        assert [(a.kind, a.target) for a in mine.actions] == [("delete_user", leaver)], plan.render()
        assert any(n.startswith(f"kept long-inactive user {member}:") and "sync manages them" in n
                   for n in plan.notes), plan.notes
        (result,) = await cap.apply(mine, observed, no_progress)
        assert result.status is Status.DONE, result
        async with cull_hub.admin() as admin:
            assert (await admin.get(f"/users/{leaver}")).status_code == 404
            assert (await admin.get(f"/users/{member}")).status_code == 200
    finally:
        await store.close()


@pytest.mark.parametrize("store_state", ["damaged", "no store"])
async def test_when_syncs_users_cannot_be_known_no_user_is_deleted(
    cull_hub: RealHub, hub_client: HubClient, tmp_path: Path, store_state: str  # noqa: F811 (the fixtures)
) -> None:
    """docs/cull.md: when sync's managed users cannot be read (a damaged document) no user is
    deleted that round, and a note says why; without a state store sync's users are unknown too.
    Unknown is not "sync manages nobody": the deletion is held also when the plan is applied."""
    name = unique_name("unknown")
    await make_user(cull_hub, name)
    store = SqliteStore(tmp_path / "state.db") if store_state == "damaged" else None
    if store is not None:
        await store.put(MANAGED_KEY, {"users": {name: "not a record"}})
    try:
        cap = CullCapability(hub_client, CullSettings(cull_users=True, delete_users=True), store)
        observed = await cap.observe()
        plan = cap.plan(observed, datetime.now(UTC) + timedelta(hours=3))
        assert not [a for a in plan.actions if a.target == name], plan.render()
        why = "damaged" if store is not None else "no state store"
        assert any(n.startswith("no user is deleted this round:") and why in n for n in plan.notes), plan.notes
        # a deletion planned from an earlier reading (an approved plan) is held at the deletion too
        earlier = replace(observed, sync_members=frozenset(), sync_unknown="")
        held = Plan.build("cull", [a for a in cap.plan(earlier, datetime.now(UTC) + timedelta(hours=3)).actions
                                   if a.target == name])
        assert [a.kind for a in held.actions] == ["delete_user"]
        (result,) = await cap.apply(held, observed, no_progress)
        assert result.status is Status.SKIPPED and why in result.detail, result
        async with cull_hub.admin() as admin:
            assert (await admin.get(f"/users/{name}")).status_code == 200
    finally:
        if store is not None:
            await store.close()
