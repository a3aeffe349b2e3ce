"""A pool's PUT whose answer was lost, and someone else's change of the pool meanwhile.

The adapter reads the pool again before it sends a lost PUT once more. The PUT is the whole pool
as it was read: sent again over another writer's change, it would undo that change (a count an
admin set, taints, a VM size). With eTags, If-Match would refuse it (412); an API version whose
pools carry no eTag has no such guard, so the adapter compares what it reads itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hubpilot.ports.pool import PoolOutcome, PoolResult
from tests.doubles.arm import ArmDouble
from tests.test_scale_aks import make_pool


def puts(arm: ArmDouble) -> list[Any]:
    return [c for c in arm.calls if c.method == "PUT"]


async def set_count_after(arm: ArmDouble, count: int, meanwhile: Callable[[], None]) -> PoolResult:
    """``set_count(count)`` with the observed eTag, ``meanwhile`` run after the observation."""
    pool = make_pool(arm)
    try:
        state = await pool.get()
        assert (state.etag is not None) is arm.etags
        meanwhile()
        return await pool.set_count(count, etag=state.etag)
    finally:
        await pool.close()


@pytest.mark.parametrize("etags", [True, False])
async def test_a_lost_put_is_not_sent_again_over_another_writers_change(arm: ArmDouble, etags: bool) -> None:
    """The PUT went unanswered (a gateway's 503, not carried out) and an admin set the count to 3
    meanwhile: the pool read again shows a change that is not ours. It is a conflict, the PUT is not
    sent again, and the admin's count stays."""
    arm.etags = etags
    arm.add_pool("gpu", count=1)
    res = await set_count_after(arm, 2, lambda: arm.fault("PUT", 503, then=lambda: arm.change("gpu", count=3)))
    assert res.outcome is PoolOutcome.CONFLICT, res
    assert "not sent again" in res.detail and "another change" in res.detail, res.detail
    assert arm.pools["gpu"]["count"] == 3
    assert len(puts(arm)) == 1


async def test_without_etags_a_change_to_a_property_we_do_not_set_is_seen_too(arm: ArmDouble) -> None:
    """No eTag: the comparison is of every property a PUT sets, not only the count (an admin's new
    taint would be undone by our whole-pool PUT)."""
    arm.etags = False
    arm.add_pool("gpu", count=1, autoscaling=True, min_count=0, max_count=4)
    arm.enforce_min_count = False
    pool = make_pool(arm)
    try:
        await pool.get()
        arm.fault("PUT", 502, then=lambda: arm.change("gpu", nodeTaints=["sku=gpu:NoSchedule"]))
        res = await pool.set_min_count(1)
    finally:
        await pool.close()
    assert res.outcome is PoolOutcome.CONFLICT, res
    assert "settable properties differ" in res.detail, res.detail
    assert arm.pools["gpu"]["nodeTaints"] == ["sku=gpu:NoSchedule"]
    assert arm.pools["gpu"]["minCount"] == 0
    assert len(puts(arm)) == 1


@pytest.mark.parametrize("etags", [True, False])
async def test_a_lost_put_on_a_pool_as_read_is_sent_again(arm: ArmDouble, etags: bool) -> None:
    """Nothing changed meanwhile: the PUT goes out again and does what it was for."""
    arm.etags = etags
    arm.add_pool("gpu", count=1)
    res = await set_count_after(arm, 2, lambda: arm.fault("PUT", 503))
    assert res.outcome is PoolOutcome.DONE, res
    assert arm.pools["gpu"]["count"] == 2
    assert [c.status for c in puts(arm)] == [503, 201]


@pytest.mark.parametrize("etags", [True, False])
async def test_a_put_carried_out_whose_answer_failed_is_accepted_once(arm: ArmDouble, etags: bool) -> None:
    """ARM took the PUT and the answer was lost: the pool read again shows the count asked for
    (with eTags, also a new eTag), so it is this PUT, accepted, and not sent again."""
    arm.etags = etags
    arm.add_pool("gpu", count=1)
    arm.hold_operations = True
    res = await set_count_after(arm, 2, lambda: arm.answer_failed("PUT", 504))
    assert res.outcome is PoolOutcome.PENDING, res
    assert "accepted (its answer was lost: 504" in res.detail, res.detail
    assert len(puts(arm)) == 1


async def test_an_accepted_lost_put_whose_operation_then_fails_is_asked_for_again_next_run(arm: ArmDouble) -> None:
    """The lost PUT was accepted (pending); its operation then failed, leaving the count without its
    machines (as AKS does). The next run's same count is that operation asked for once more, with
    the pool's new eTag; it is not a no-op because the count already reads 2."""
    arm.add_pool("gpu", count=1)
    pool = make_pool(arm)
    try:
        state = await pool.get()
        arm.hold_operations = True
        arm.fail_next_operation = "ScaleFailed"
        arm.answer_failed("PUT", 504)
        first = await pool.set_count(2, etag=state.etag)
        assert first.outcome is PoolOutcome.PENDING, first
        arm.hold_operations = False
        for op in list(arm.operations.values()):
            while op.status == "InProgress":
                arm._advance(op)
        failed = await pool.get()
        assert (failed.count, failed.provisioning_state) == (2, "Failed")
        assert len(arm.machines["gpu"]) == 1
        again = await pool.set_count(2, etag=failed.etag)
    finally:
        await pool.close()
    assert again.outcome is PoolOutcome.DONE, again
    assert "again: the last operation Failed" in again.detail, again.detail
    assert len(arm.machines["gpu"]) == 2
    assert len(puts(arm)) == 2
