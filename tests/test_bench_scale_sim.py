"""The scale benchmark's model of the world (bench/scale_sim.py): waits and node-hours it records.

Small hand-built weeks run through the benchmark's own loop and policies (the real plan_scale and
plan_cull inside), so an error in the model's bookkeeping shows as a wrong wait or node-hour figure.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import scale_sim as sim
from bench.scale_sim import HubpilotParams, Session

NIGHT = 2 * 3600.0  # Monday 02:00
NO_SPARE = HubpilotParams(node_idle_minutes=0, spare_shoulder=0, spare_peak=0)  # no warm capacity


def test_a_server_waiting_for_a_node_freed_by_a_stop_starts_at_the_stop() -> None:
    # one node; the second server arrives while the first one runs and gets the node when the
    # first user stops theirs (at the end of its active time): it waited until then
    a = Session(0, 0.0, 600.0, explicit_stop=True)
    b = Session(1, 300.0, 600.0, explicit_stop=True)
    world = sim.run_always_on([a, b], 1)
    assert a.end == 600.0
    assert b.start == 600.0
    assert sim.measure("one node", world).max_wait == 300.0


def test_a_node_freed_by_the_culler_ends_the_wait_of_the_server_that_takes_it() -> None:
    # the first user leaves the server to the z2jh culler (60 min); the second arrives when no
    # node is free and starts when the culled server's node is free
    a = Session(0, 0.0, 300.0, explicit_stop=False)
    b = Session(1, 3900.0, 1800.0, explicit_stop=True)
    world = sim.World([a, b], sim.random.Random(7))
    world.add_nodes(1, -600, deallocate_mode=False)
    settings, every, interval = sim.z2jh_cull()
    sim._loop(world, settings, every, interval, None)
    assert a.end is not None and b.start is not None
    assert b.start == max(b.arrive, a.end)
    assert b.start - b.arrive == pytest.approx(a.end - b.arrive)


def test_a_removed_node_counts_until_its_deletemachines_has_stopped_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # a lone server at night: hubpilot restarts a stopped VM, the user stops the server, the empty
    # node is removed. The VM runs until the deleteMachines operation that stops it ends
    monkeypatch.setattr(sim, "ARM_OPS", True)
    s = Session(0, NIGHT, 1800.0, explicit_stop=True)
    world = sim.run_hubpilot([s], 1, NO_SPARE, stopped=2)
    ups = [op for op in world.ops if op[0] == "scale-up"]
    downs = [op for op in world.ops if op[0] == "delete"]
    assert len(ups) == 1 and len(downs) == 1
    (_, up, _), (_, down, stopped) = ups[0], downs[0]
    assert stopped - down >= sim.DELETE_OP[0]
    # the node is billed from its scale-up until its VM is stopped (to the model's 10 s tick)
    assert world.node_seconds == pytest.approx(stopped - up, abs=sim.TICK)
    assert world.deallocated == 2


def test_without_operation_times_a_removed_node_stops_counting_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim, "ARM_OPS", False)
    s = Session(0, NIGHT, 1800.0, explicit_stop=True)
    world = sim.run_hubpilot([s], 1, NO_SPARE, stopped=2)
    (_, up, _), (_, down, _) = world.ops
    assert world.node_seconds == pytest.approx(down - up, abs=sim.TICK)


def test_the_scale_timer_runs_at_whole_minutes_whatever_the_demand_runs() -> None:
    # the timer is "0 * * * * *": a demand run (the pre-spawn hook) does not move it. The second
    # server's demand run finds the first one's restart holding the pool; its node is asked for at
    # the first whole minute after that operation ended
    a = Session(0, NIGHT + 5, 1800.0, explicit_stop=True)
    b = Session(1, NIGHT + 30, 1800.0, explicit_stop=True)
    world = sim.run_hubpilot([a, b], 1, NO_SPARE, stopped=2)
    first, second = (op for op in world.ops if op[0] == "scale-up")
    assert first[1] == NIGHT + 5  # at the demand signal
    assert second[1] >= first[2]
    assert second[1] % 60 == 0 and second[1] - first[2] < 60


def test_a_reclaimed_node_goes_to_the_waiting_server_and_is_never_removed_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the scheduler binds the waiting pod to the freed node within seconds of the reclaim (the
    # 40 s are mostly its container start): the plan sees the node busy all along, never an empty
    # node it may remove. A week of the model with reclaim on, every removal checked
    monkeypatch.setattr(sim, "ARM_OPS", True)
    removed_in_handoff: list[int] = []
    remove = sim.World.remove_nodes

    def checked(self: sim.World, ids: list[int], **kw: Any) -> None:
        removed_in_handoff.extend(i for i in ids if self.nodes[i].handoff)
        remove(self, ids, **kw)

    monkeypatch.setattr(sim.World, "remove_nodes", checked)
    p = HubpilotParams(cull_minutes=5, node_idle_minutes=0, spare_shoulder=1, spare_peak=1, reclaim_minutes=3)
    world = sim.run_hubpilot(sim.trace(101), 101, p, stopped=13)
    assert world.reclaims > 10
    assert removed_in_handoff == []
    # each reclaim handed its node to a waiting server, which started there 40 s later
    took = [s for s in world.sessions if s.id in world.handoffs]
    assert len(took) == world.reclaims
    assert all(s.start == world.handoffs[s.id] + sim.RECLAIM_HANDOFF for s in took)


def test_the_demand_signal_runs_the_plan_when_the_server_arrives_not_at_the_next_tick() -> None:
    # the pre-spawn hook reaches the plan within a second (the benchmark measures it): a server
    # that finds no node has its machine asked for at its arrival, and waits for it from then
    s = Session(0, NIGHT + 7.5, 1800.0, explicit_stop=True)
    world = sim.run_hubpilot([s], 1, NO_SPARE, stopped=2)
    (_, up, ready), *_ = world.ops
    assert up == s.arrive
    assert s.start == ready


def test_every_vm_of_a_deallocate_pool_is_billed_running_or_as_a_stopped_vms_disk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Azure bills a stopped (deallocated) VM's managed OS disk, not its compute. A pool of two VMs,
    # both stopped, one restarted for a lone night server and stopped again: at every moment of
    # the week each VM is either a running node (node-hours) or a stopped VM whose disk is billed
    monkeypatch.setattr(sim, "ARM_OPS", True)
    s = Session(0, NIGHT, 1800.0, explicit_stop=True)
    world = sim.run_hubpilot([s], 1, NO_SPARE, stopped=2)
    result = sim.measure("hubpilot", world)
    assert world.node_seconds > 0
    assert world.stopped_seconds + world.node_seconds == pytest.approx(2 * sim.WEEK, abs=sim.TICK)
    assert result.stopped_hours == pytest.approx(world.stopped_seconds / 3600)
    # a pool that deletes its VMs (the autoscaler anchor) keeps no stopped VM
    assert sim.measure("anchor", sim.run_autoscaler([Session(0, NIGHT, 1800.0, True)], 1)).stopped_hours == 0
