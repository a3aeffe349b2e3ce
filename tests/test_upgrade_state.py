"""Upgrading a running deployment: state documents exactly as the previous release (6224066) wrote
them (captured in tests/fixtures/upgrade_6224066/, through that release's own code against the real
parts), read and carried on by today's code."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hubpilot.adapters.store_sqlite import SqliteStore
from hubpilot.config.sync import SyncSettings
from hubpilot.loop import Outcome
from hubpilot.ports.cluster import CORDON_ANNOTATION
from hubpilot.ports.store import StateStore
from hubpilot.scale import cost_report
from hubpilot.scale.capability import MEMORY_KEY
from hubpilot.sync import MANAGED_KEY
from hubpilot.sync.capability import audited_approval
from tests.doubles.arm import ArmDouble
from tests.fixtures.hub import unique_name
from tests.fixtures.kmock import Emulator
from tests.fixtures.syncworld import World
from tests.realhub import RealHub
from tests.test_scale_api import READER, setup  # noqa: F401  (fixture: the API with the real scale wiring)
from tests.test_scale_kube import capability, world  # noqa: F401  (fixture)
from tests.test_store import store  # noqa: F401  (fixture: SQLite and Azurite)

FIXTURES = Path(__file__).parent / "fixtures" / "upgrade_6224066"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


def captured(name: str, *, tag: str, age: timedelta) -> dict[str, Any]:
    """A captured fixture, its hub names given this test's tag, its times moved so that the
    capture happened ``age`` ago (the documents keep their shape and every other value)."""
    doc = json.loads((FIXTURES / name).read_text().replace("TAG", tag))
    shift = datetime.now(UTC) - age - datetime.fromisoformat(doc["captured_at"])

    def move(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, str) and ISO.match(v):
            return (datetime.fromisoformat(v) + shift).isoformat()
        return v

    return move(doc)  # type: ignore[no-any-return]


async def load(into: SqliteStore, doc: dict[str, Any]) -> None:
    for key, value in doc["documents"].items():
        await into.put(key, value)
    for entry in doc["audit"]:
        await into.append_audit(entry)


@pytest.mark.hub
async def test_removals_the_previous_release_applied_with_an_approval_do_not_count_again(
    real_hub: RealHub, tmp_path: Path
) -> None:
    """6224066 approved a plan removing 4 of 10 (refused at 20 %) an hour before the upgrade; it
    recorded no removals_approved_at. Today's window counted those 4 again with the next routine
    removal (5 of 10, 50 %) and refused it; the approval in the audit log restarts the count."""
    w = World(real_hub, tmp_path)  # 100 %: the hub gets the state the old release left
    names = [f"p{i}" for i in range(10)]
    w.set("analysts", *names)
    assert (await w.run()).outcome is Outcome.APPLIED
    w.set("analysts", *names[:6])
    assert (await w.run()).outcome is Outcome.APPLIED
    # the deployment's store: what the old release wrote
    await w.store.close()
    w.store = SqliteStore(str(tmp_path / "upgraded.sqlite3"))
    await load(w.store, captured("sync_approved_removals.json", tag=w.tag, age=timedelta(hours=1)))
    w.policy = SyncSettings(**(w.policy.model_dump() | {"max_removal_percent": 20.0}))

    w.set("analysts", *names[:5])  # one more leaves: 1 of 6, the approval accepted the 4
    record = await w.run()
    assert record.outcome is Outcome.APPLIED, record.render()
    assert record.plan is not None and record.plan.counts()["deprovision"] == 1
    assert record.plan.facts["recent_removals"] == 0
    managed = await w.store.get(MANAGED_KEY)
    assert managed is not None  # nothing the old release recorded is lost
    assert sorted(n for n, r in managed["users"].items() if r["deprovisioned_at"]) == \
        [w.user(n) for n in ("p5", "p6", "p7", "p8", "p9")]
    assert all(managed["users"][w.user(n)]["directory_id"] == n for n in names)

    # the window still counts what follows the approval: two more leave (3 of 6 since, 50 %)
    w.set("analysts", *names[:3])
    refused = await w.run()
    assert refused.outcome is Outcome.REFUSED
    assert any("sync removed 1 in the last 24 h" in r for r in refused.refusal), refused.refusal
    await w.close()


async def test_a_removal_the_previous_release_made_is_still_watched_and_its_days_are_reported(
    world: dict[str, Any],  # noqa: F811
) -> None:
    """6224066's scale memory (gpu-1 removed at 09:11, its node still registered and cordoned) and
    size history (points only: no start, no observation spans): today's scale leaves the node
    alone (no uncordon, no replacement, no second removal) and the cost report reads the day,
    saying that the hours hubpilot did not observe are not known for it."""
    doc = json.loads((FIXTURES / "scale_pending_removal.json").read_text())
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    arm.pools["gpu"]["scaleDownMode"] = "Delete"
    kube.node("gpu-0")
    kube.node("gpu-1", unschedulable=True, annotations={CORDON_ANNOTATION: "hubpilot"})
    kube.pod("alice", "gpu-0")
    for key, value in doc["documents"].items():
        await world["store"].put(key, value)
    world["clock"]["now"] = datetime.fromisoformat(doc["captured_at"]) + timedelta(minutes=1)
    cap, runner = capability(world)
    rec = await runner.run(cap, trigger="timer", actor="test")
    assert rec.outcome is Outcome.APPLIED and rec.plan is not None and rec.plan.empty, rec.render()
    assert rec.plan.facts["leaving"] == ["gpu-1"]
    assert kube.node_obj("gpu-1")["spec"]["unschedulable"] is True
    assert not any(c.method in ("PUT", "POST") for c in arm.calls)
    memory = await world["store"].get(MEMORY_KEY)
    assert memory is not None and "gpu-1" in memory["removed"]  # still watched

    report = await cost_report(world["store"], now=world["clock"]["now"], days=2, price=None, currency="EUR")
    today = report.to_json()["days"][-1]
    # 09:00-09:11 two nodes, then one (the old release's points), and today's observation
    assert today["node_hours"] == pytest.approx(11 / 60 * 2 + 1 / 60, abs=1e-3)
    assert report.untracked and report.observed_from == world["clock"]["now"]
    assert any("of a version that did not record them" in n for n in report.notes())


async def test_the_previous_release_s_approval_is_found_in_either_store(store: StateStore) -> None:  # noqa: F811
    """The audit entries 6224066 wrote, in SQLite and in Azure Tables (Azurite): its approval of a
    plan refused for its removals is found after the window's start, and none after it."""
    doc = captured("sync_approved_removals.json", tag=unique_name("t"), age=timedelta(hours=1))
    for entry in doc["audit"]:
        await store.append_audit(entry)
    approval = next(e for e in doc["audit"] if e["trigger"] == "approval")
    at = datetime.fromisoformat(approval["at"])
    assert await audited_approval(store, datetime.now(UTC) - timedelta(hours=24)) == at
    assert await audited_approval(store, at) is None  # only one later than ``since``


async def test_the_cost_report_over_days_the_previous_release_recorded(setup: dict[str, Any]) -> None:  # noqa: F811
    """GET /api/v1/cost over 6224066's size history (points only, from 2026-02-26 02:00): the
    node-hours it recorded, the day before it says nothing was recorded, and the notes say the
    hours hubpilot did not observe the pool are not known there."""
    doc = json.loads((FIXTURES / "scale_sizes.json").read_text())
    for key, value in doc["documents"].items():
        await setup["ctx"].store.put(key, value)
    r = await setup["client"].get("/api/v1/cost?days=6", headers=READER)  # 2026-03-02 09:00 UTC
    assert r.status_code == 200, r.text
    rep = r.json()
    days = {d["date"]: d for d in rep["days"]}
    assert days["2026-02-25"]["node_hours"] == 0 and days["2026-02-25"]["always_on_node_hours"] == 0
    assert days["2026-02-26"]["node_hours"] == pytest.approx(6 * 1 + 10 * 3 + 6 * 1)
    assert days["2026-02-27"]["node_hours"] == pytest.approx(44.0)
    assert days["2026-03-02"]["node_hours"] == pytest.approx(9.0) and days["2026-03-02"]["partial"]
    assert rep["recorded_from"] == "2026-02-26T02:00:00+00:00" and rep["observed_from"] is None
    assert all(d["unobserved_hours"] == 0 for d in rep["days"])
    notes = " | ".join(rep["notes"])
    assert "nothing is recorded before 2026-02-26T02:00:00+00:00" in notes
    assert "no observation times are recorded in the period" in notes
