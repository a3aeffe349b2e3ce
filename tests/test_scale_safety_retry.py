"""Safety: a 409 is never retried, even when ARM sends Retry-After with it (azure-core's retry
policy retries any error status that carries the header); a 429 still honours it."""

from __future__ import annotations

from hubpilot.ports.pool import PoolOutcome
from tests.doubles.arm import ArmDouble
from tests.test_scale_aks import make_pool


async def test_a_409_with_retry_after_is_a_conflict_and_not_retried(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=2, machines=["m0", "m1"])
    arm.fault("POST", 409, {"Retry-After": "0"})
    arm.fault("PUT", 409, {"Retry-After": "0"})
    pool = make_pool(arm)
    try:
        gone = await pool.delete_machines(["m0"])
        grown = await pool.set_count(3)
    finally:
        await pool.close()
    assert gone.outcome is PoolOutcome.CONFLICT and grown.outcome is PoolOutcome.CONFLICT
    assert [c.status for c in arm.calls if c.method in ("POST", "PUT")] == [409, 409]
    assert arm.machines["gpu"] == ["m0", "m1"] and arm.pools["gpu"]["count"] == 2


async def test_a_429_on_a_write_still_honours_retry_after(arm: ArmDouble) -> None:
    arm.add_pool("gpu", count=2, machines=["m0", "m1"])
    arm.fault("POST", 429, {"Retry-After": "0"})
    pool = make_pool(arm)
    try:
        gone = await pool.delete_machines(["m0"])
    finally:
        await pool.close()
    assert gone.outcome is PoolOutcome.DONE
    assert [c.status for c in arm.calls if c.method == "POST"] == [429, 202]


async def test_set_count_never_lowers_a_pool_that_grew_since_it_was_observed(arm: ArmDouble) -> None:
    """Without an eTag (an API version or answer without one) a stale target must not shrink the
    pool: AKS would remove nodes of its choosing, user pods or not."""
    arm.add_pool("gpu", count=1, machines=["m0"])
    pool = make_pool(arm)
    try:
        observed = await pool.get()
        arm.pools["gpu"]["count"] = 4  # someone scaled the pool up after the observation
        arm.machines["gpu"] += ["m1", "m2", "m3"]
        res = await pool.set_count(observed.count + 1, etag=None)
    finally:
        await pool.close()
    assert res.outcome is PoolOutcome.CONFLICT, res
    assert not [c for c in arm.calls if c.method == "PUT"]
    assert arm.pools["gpu"]["count"] == 4


async def test_a_429_while_polling_an_operation_is_retried_after_retry_after(arm: ArmDouble) -> None:
    """ARM throttles the status reads of a long-running operation too: azure-core's retry policy
    (the client's pipeline, which the pollers use) waits and reads again; the operation ends DONE."""
    arm.add_pool("gpu", count=1, machines=["m0"])
    arm.polls = 1
    arm.fault("GET", 429, {"Retry-After": "0"}, on="operations")
    arm.fault("GET", 429, {"Retry-After": "0"}, on="operationresults")
    pool = make_pool(arm)
    try:
        grown = await pool.set_count(2)
        gone = await pool.delete_machines(["m0"])
    finally:
        await pool.close()
    assert grown.outcome is PoolOutcome.DONE and gone.outcome is PoolOutcome.DONE, (grown, gone)
    polls = [(c.path.split("/")[-2], c.status) for c in arm.calls if "/locations/" in c.path]
    assert polls[0] == ("operations", 429) and ("operations", 200) in polls, polls
    assert ("operationresults", 429) in polls and polls[-1] == ("operationresults", 200), polls
    assert not arm.faults and arm.pools["gpu"]["count"] == 1
