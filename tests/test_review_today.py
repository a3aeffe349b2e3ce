"""A second look at the features of this stop: audit by user, stopped VMs in the cost report,
the status's fired_here and sync's holds just after an LDAP id upgrade."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hubpilot.audit import about, read_audit_about
from hubpilot.loop import Action, Outcome
from hubpilot.ports.store import StateStore
from hubpilot.scale import cost_report
from tests.doubles.arm import ArmDouble
from tests.fixtures.kmock import Emulator
from tests.test_audit_user import T0, entry
from tests.test_scale_kube import capability, world  # noqa: F401 - the fixture
from tests.test_store import store  # noqa: F401 - the fixture (SQLite and Azurite)


async def _stop(store: StateStore, who: str, i: int) -> None:  # noqa: F811
    await store.append_audit(entry("cull", [Action("stop_server", f"{who}/", 0, {"user": who, "server": ""},
                                                   f"idle #{i}")], at=T0 + timedelta(minutes=i)))


def _reasons(page: list[dict[str, Any]]) -> list[str]:
    return [e["plan"]["actions"][0]["reason"] for e in page]


async def test_audit_by_user_entries_appended_between_two_pages_neither_repeat_nor_hide_one(
        store: StateStore) -> None:  # noqa: F811
    """The log grows while an admin pages (a scale run a minute): the next page of "what happened
    to bob" goes on from the entry after the last one the previous page read, whatever came in
    on top of the log meanwhile."""
    for i in range(10):
        await _stop(store, "bob" if i in (2, 5, 8) else "ann", i)
    first, cursor, _ = await read_audit_about(store, "bob", limit=1)
    assert _reasons(first) == ["idle #8"] and cursor is not None
    for i in range(10, 14):  # four newer runs, one of them about bob
        await _stop(store, "bob" if i == 12 else "ann", i)
    got = []
    while cursor is not None:
        page, cursor, _ = await read_audit_about(store, "bob", limit=1, cursor=cursor)
        got += _reasons(page)
    assert got == ["idle #5", "idle #2"]


async def test_stopped_vms_stop_counting_once_the_pool_deletes_them(world: dict[str, Any]) -> None:  # noqa: F811
    """A Deallocate pool with two stopped VMs for an hour, then switched to scale-down mode Delete
    (AKS deletes the stopped VMs, their nodes go) for an hour: the report counts the first hour's
    two VM-hours, not the count last recorded in Deallocate mode held on for ever."""
    arm: ArmDouble = world["arm"]
    kube: Emulator = world["kube"]
    arm.add_pool("gpu", count=1, machines=["gpu-0"])
    arm.pools["gpu"]["scaleDownMode"] = "Deallocate"
    kube.node("gpu-0")
    kube.pod("alice", "gpu-0")
    for stopped in ("gpu-1", "gpu-2"):
        kube.node(stopped, ready=False)
    cap, runner = capability(world)
    start = world["clock"]["now"]
    for minutes in range(0, 121, 10):
        world["clock"]["now"] = start + timedelta(minutes=minutes)
        if minutes == 60:
            arm.pools["gpu"]["scaleDownMode"] = "Delete"
            for gone in ("gpu-1", "gpu-2"):
                del kube.k.objects["v1/nodes", None, gone]
        rec = await runner.run(cap, trigger="timer", actor="test")
        assert rec.outcome is Outcome.APPLIED and rec.plan is not None and rec.plan.empty, rec.render()
    for hours in (2, 30):
        rep = await cost_report(world["store"], now=start + timedelta(hours=hours), days=2, price=None,
                                currency="EUR", stopped_price=0.05)
        assert sum(d.stopped_vm_hours for d in rep.days) == pytest.approx(2.0), hours


@pytest.mark.parametrize("outcome, says", [
    (Outcome.FAILED, "not recorded (the run failed before recording what it did)"),
    (Outcome.PAUSED, "not applied (the operation was paused)"),
    (Outcome.PLANNED, "planned"),
])
def test_an_action_without_a_result_is_planned_only_in_a_plan_that_was_not_applied(outcome: Outcome,
                                                                                  says: str) -> None:
    """A run cancelled while it applied (its host stopping) is recorded as failed without its
    results ("what it applied before is not listed here"): bob's deprovisioning may be done. What
    happened to bob must not read as only planned then; nor as planned in a paused operation's
    run, which applies nothing."""
    e = entry("sync", [Action("deprovision", "bob", 5, {}, "no longer in any synced directory group")],
              outcome=outcome)
    assert about(e, "bob") == [f"deprovision bob: {says} (no longer in any synced directory group)"]
