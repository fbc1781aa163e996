"""Spillover across several Fabrics (tests/harness/world.py): a full peer refuses and
the task goes elsewhere or waits; lost messages, refusals, a peer that has not
heard of us, a suspected peer, a cancelled spilled task.
"""
from __future__ import annotations

import pytest

from zfabric import ids, protocol as p
from zfabric.core import effects as fx
from zfabric.core.tasks import TaskState
from zfabric.core.workers import TINY_RUN_SILENCE

from tests.harness.world import (DRIVER, ERROR, FN, FN_BLOB, MB, Plan, World, rid, tid)


# -- spillback ------------------------------------------------------------------------------

def test_a_full_peer_refuses_and_the_task_goes_elsewhere_or_waits_never_lost():
    """Node 1 is kept busy by its own driver with tasks only it can run (y), so its
    queue is long; node 0's driver submits six tasks. Node 1 refuses what node 0
    forwards to it (Refuse), node 0 leaves it alone for refuse_backoff each time,
    and every task ends exactly once, on node 0 or node 2."""
    world = World([{"CPU": 1}, {"CPU": 1, "y": 1}, {"CPU": 1}], seed=8)
    world.converge()
    sim = world.sim
    delivered = []

    def spy(src, dst, msg):
        delivered.append((sim.now, src, dst, msg))
        return False
    sim.drop = spy
    busy = [world.submit(100 + k, node=1, client=b"driver-y", resources={"y": 1}, duration=2.0)
            for k in range(3)]
    plans = [world.submit(n, duration=0.3) for n in range(1, 7)]
    assert world.run_until_finished(plans, 10)
    refusals = [(t, m) for t, s, d, m in delivered if type(m) is p.Refuse and (s, d) == (1, 0)]
    spills = [(t, d, m) for t, s, d, m in delivered if type(m) is p.Spill and s == 0]
    assert len(refusals) >= 2
    backoff = sim.config.refuse_backoff
    for t_refused, _ in refusals:   # sent by node 0 after the refusal arrived, within backoff
        assert not [t for t, d, m in spills if d == 1 and t_refused < t < t_refused + backoff]
    for pl in plans:
        world.check_result(pl)
        assert [r.node for r in world.runs_of(pl)] in ([0], [2])
    refused = {m.task_id for _, m in refusals}
    assert refused <= {pl.task_id for pl in plans}
    assert world.nodes[1].scheduler.stats["refused"] == len(refusals)
    assert world.nodes[0].scheduler.stats["spilled"] == len(spills)
    assert world.run_until_finished(busy, 10)
    assert sim.violations == []


# -- bugs the harness found (each test failed before its fix; lineage is still missing) -----

def test_a_task_spilled_to_a_peer_that_has_not_heard_of_us_yet_still_runs():
    """Node 1 joins a running cluster {0, 2} through node 0, and its driver submits a task
    only node 2 can run (gpu) just after the join reply. Node 1 learned node 2 (and its
    gpu) from that reply and forwards the task at once; node 2 hears of node 1 only at
    node 0's next gossip round, after the Spill arrived."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1, "gpu": 1}], seed=9, late=(1,))
    world.converge()
    sim = world.sim
    sim.start_node(1)
    plans = []

    def on_delivery(src, dst, msg):
        if (src, dst) == (0, 1) and type(msg) is p.Gossip and not plans:   # the join reply
            plans.append(None)
            sim.call_at(sim.now + 0.001, lambda: plans.append(world.submit(
                1, node=1, client=b"driver-b", resources={"gpu": 1}, duration=0.1)))
        return False
    sim.drop = on_delivery
    assert sim.run_until(lambda: len(plans) == 2, 1.0)
    gpu_task = plans[1]
    finished = world.run_until_finished([gpu_task], 10.0)
    refused = world.nodes[2].scheduler.stats["refused"]
    refuses = len(world.nodes[2].peer_sends(p.Refuse))
    state = TaskState(world.nodes[1].scheduler.tasks[tid(1)].state).name if not finished else ""
    assert finished, (f"node 2 counted {refused} refusal(s) but sent {refuses} Refuse; "
                      f"node 1 still has the task {state}")


@pytest.mark.parametrize("lost", [p.Spill, p.TaskResult, p.Refuse])
def test_one_lost_message_between_owner_and_peer_does_not_hang_a_task(lost):
    world = World([{"CPU": 1}, {"CPU": 1, "y": 1}], seed=10)
    world.converge()
    sim = world.sim
    if lost is p.Refuse:   # node 1 is kept full by its own driver, so it refuses
        world.submit(100, node=1, client=b"driver-y", resources={"y": 1}, duration=20.0)
        world.submit(101, node=1, client=b"driver-y", resources={"y": 1}, duration=20.0)
        sim.run(0.2)
    gone = []

    def lose_first(src, dst, msg):
        if type(msg) is lost and not gone:
            gone.append(msg)
            return True
        return False
    sim.drop = lose_first
    plans = [world.submit(n, duration=0.2) for n in range(1, 4)]
    finished = world.run_until_finished(plans, 10.0)
    assert gone, "no such message was sent"
    assert finished, [pl.n for pl in plans if not world.finished(pl)]


def test_a_cancelled_spilled_task_leaves_no_copy_on_the_peer():
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}], seed=12)
    world.converge()
    sim = world.sim
    world.submit(1, resources={"x": 1}, returns=[5 * MB], duration=0.5)
    sim.run(0.2)                                          # it runs on node 1
    sim.send(0, DRIVER, p.Cancel(rid(1), False, True))    # not forced: it may finish
    sim.run(1.0)
    (ready,) = world.readies()[rid(1)]
    assert ready.state == ERROR                           # the owner says: cancelled
    sim.send(0, DRIVER, p.Refs([], [rid(1)]))
    sim.run(0.5)
    assert world.nodes[0].scheduler.objects.entries == {}
    peer = world.nodes[1]
    assert peer.store == {} and peer.scheduler.objects.entries == {}, "5 MB kept for nobody"
    assert all(n.fabric.gcs.items("loc") == [] for n in world.nodes)


def test_a_refused_first_spill_does_not_lose_the_functions_code():
    """Node 1 is busy with its own driver's work (another function) when node 0
    spills its first tasks of F there: refused, code and all. Later spills of F
    must still carry or find the code, and every task must finish."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=1)
    world.converge()
    sim = world.sim
    g = ids.function_id(b"code of g")
    world.driver(1, b"drv-b")
    for n in (100, 101, 102):
        pl = Plan(n, {"CPU": 1}, 1.0, ["i"], [], 1, b"drv-b")
        world.plans[pl.task_id] = pl
        sim.send(1, b"drv-b", p.Submit(pl.task_id, "g", g, 1, {"CPU": 1}, 3, False, 0, b"",
                                       [], [], b"code of g" if n == 100 else b"", b"a", b""))
    sim.run(0.05)
    plans = [world.submit(n, duration=0.5) for n in range(1, 9)]
    assert world.run_until_finished(plans, 20)
    peer = world.nodes[1].scheduler
    assert peer.stats["refused"] > 0 and peer.functions.code.get(FN) == FN_BLOB
    for pl in plans:
        world.check_result(pl)
    assert sim.violations == []


def test_a_suspected_peer_is_sent_no_new_task_until_it_is_heard_again():
    """Node 0 stops hearing node 1 for longer than half the failure timeout (but
    less than all of it): while node 1 is suspected, node 0 keeps its queue to
    itself; once node 1 is heard again it gets work, and nobody was declared dead."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=9)
    world.converge()
    sim = world.sim
    ft = sim.config.failure_timeout
    cut = {"on": True}
    sim.drop = lambda src, dst, msg: cut["on"] and (src, dst) == (1, 0)
    assert sim.run_until(lambda: world.nodes[0].scheduler.spill.peers[world.nodes[1].node_id].suspect,
                         ft)
    suspected_at = sim.now
    plans = [world.submit(n, duration=0.1) for n in range(1, 5)]
    sim.run(0.15)
    spilled = [t for t, e in world.nodes[0].trace
               if type(e) is fx.PeerSend and type(e.msg) is p.Spill]
    assert spilled == []                        # queued at home while the peer is suspected
    cut["on"] = False
    assert world.run_until_finished(plans, 5)
    assert sim.now - suspected_at < ft          # (so nobody was declared dead meanwhile)
    assert {r.node for pl in plans for r in world.runs_of(pl)} == {0, 1}
    assert world.nodes[0].scheduler.stats["retried"] == 0
    for pl in plans:
        world.check_result(pl)


# -- tiny tasks stay where a worker runs them ------------------------------------------------

TINY = 50e-6   # a task's run, well under spill_min_task_seconds


def _warm(world: World, count: int = 3) -> None:
    """Node 0 runs `count` tiny tasks one after the other: their function is now
    known there to take TINY on average."""
    for n in range(900, 900 + count):
        assert world.run_until_finished([world.submit(n, duration=TINY)], 5)


def _spills(world: World) -> list:
    return [e for _, e in world.nodes[0].trace if type(e) is fx.PeerSend and type(e.msg) is p.Spill]


def test_a_burst_of_tiny_tasks_runs_where_a_worker_runs_them():
    """Forwarding a task that runs in microseconds costs the owner more than running
    it: a burst of them waits for node 0's busy worker, and no Spill leaves; each
    ends once, with its value."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], seed=11)
    world.converge()
    assert world.sim.config.spill_min_task_seconds > TINY
    _warm(world)
    plans = [world.submit(n, duration=TINY) for n in range(1, 41)]
    assert world.run_until_finished(plans, 5)
    assert {r.node for pl in plans for r in world.runs_of(pl)} == {0}
    assert _spills(world) == []
    for pl in plans:
        world.check_result(pl)
    assert world.sim.violations == []


def test_tiny_tasks_spread_once_their_function_stops_being_tiny_here():
    """The same burst spreads when the function's runs are longer than
    spill_min_task_seconds (it ran 0.1 s three times): every node takes a share."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], seed=11)
    world.converge()
    for n in range(900, 903):
        assert world.run_until_finished([world.submit(n, duration=0.1)], 5)
    plans = [world.submit(n, duration=TINY) for n in range(1, 41)]
    assert world.run_until_finished(plans, 5)
    assert {r.node for pl in plans for r in world.runs_of(pl)} == {0, 1, 2}
    assert _spills(world)
    for pl in plans:
        world.check_result(pl)


def test_tiny_tasks_behind_a_long_run_of_their_function_spill_after_its_silence():
    """Node 0's worker starts a run of the tiny function that takes 2 s. Tiny tasks
    queued behind it stay for a moment (it might be about to end), and are forwarded
    once it has run TINY_RUN_SILENCE: none waits for the long run to end."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], seed=12)
    world.converge()
    _warm(world)
    sim = world.sim
    long = world.submit(1, duration=2.0)
    assert sim.run_until(lambda: world.runs_of(long), 1)
    started = sim.now
    plans = [world.submit(n, duration=TINY) for n in range(2, 8)]
    assert world.run_until_finished(plans, 1.5)   # before the long run ends
    assert {r.node for pl in plans for r in world.runs_of(pl)} <= {1, 2}
    first_spill = min(t for t, e in world.nodes[0].trace
                      if type(e) is fx.PeerSend and type(e.msg) is p.Spill)
    assert first_spill - started >= TINY_RUN_SILENCE
    assert world.run_until_finished([long], 3)
    for pl in plans + [long]:
        world.check_result(pl)
    assert sim.violations == []


def test_spilling_tiny_tasks_is_back_with_spill_min_task_seconds_zero():
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], seed=11, spill_min_task_seconds=0.0)
    world.converge()
    _warm(world)
    plans = [world.submit(n, duration=TINY) for n in range(1, 41)]
    assert world.run_until_finished(plans, 5)
    assert {r.node for pl in plans for r in world.runs_of(pl)} == {0, 1, 2}
