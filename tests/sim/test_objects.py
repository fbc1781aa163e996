"""Objects across several Fabrics (tests/harness/world.py): a task runs where its big
argument is when it can (locality), else the argument is pulled; a client's
subscribe pulls a remote result; dropped refs delete every copy.
"""
from __future__ import annotations

import pytest

from zfabric import protocol as p
from zfabric.core import effects as fx
from zfabric.core import resources as rs

from tests.harness.world import DRIVER, MB, PENDING, STORE, World, rid, tag, tid


# -- locality ---------------------------------------------------------------------------------

def test_a_task_runs_where_its_big_argument_is_when_that_node_has_a_free_cpu():
    """A (pinned to X by the custom resource x) makes a 50 MB STORE object there;
    B needs it and could run anywhere: X has a CPU free when B becomes ready,
    so B goes to X and X pulls nothing."""
    world = World([{"CPU": 1}, {"CPU": 2, "x": 1}, {"CPU": 1}], seed=3)
    world.converge()
    a = world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    b = world.submit(2, deps=[rid(1)], duration=0.2)
    assert world.run_until_finished([a, b], 10)
    assert [r.node for r in world.runs_of(a)] == [1]
    assert [r.node for r in world.runs_of(b)] == [1]
    # nobody pulls A for B (nor does the owner: nobody asked it for A's value)
    assert [i for i, _ in world.chunk_requests(rid(1)) if i != 0] == []
    assert world.nodes[1].effects(fx.SealPull) == []
    world.check_result(a)
    world.check_result(b)
    assert world.sim.violations == []


def test_a_task_whose_big_argument_is_on_a_busy_node_pulls_it_and_runs_elsewhere():
    """X has one CPU; a driver on X keeps it busy with M (which only X can run) from
    the moment A ends, so B, ready then, pulls A's 50 MB from X and runs elsewhere."""
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}, {"CPU": 1}], seed=4)
    world.converge()
    a = world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    b = world.submit(2, deps=[rid(1)], duration=0.2)
    assert world.sim.run_until(lambda: world.runs_of(a), 1.0)
    m = world.submit(3, node=1, client=b"driver-x", resources={"x": 1}, duration=3.0)
    assert world.run_until_finished([a, b], 10)
    assert [r.node for r in world.runs_of(m)] == [1]
    assert world.runs_of(m)[0].start < world.runs_of(b)[0].start   # X was busy by then
    (runner,) = [r.node for r in world.runs_of(b)]
    assert runner != 1
    pulls = [e for i, e in world.chunk_requests(rid(1)) if i == runner]
    assert pulls and {e.object_address for e in pulls} == {world.nodes[1].object_address}
    assert sum(e.length for e in pulls) == 50 * MB     # each byte asked once
    assert world.nodes[runner].store[rid(1)] == (50 * MB, tag(rid(1)))
    assert world.nodes[runner].scheduler.stats["fetches"] >= 1
    world.check_result(b)
    assert world.sim.violations == []


@pytest.mark.parametrize("when", ["before", "after"])
def test_subscribing_to_a_remote_store_result_pulls_it_then_says_ready(when):
    """A 50 MB result lives on X; a second driver on the owner borrows the ref and
    subscribes (while the task runs, or once it is done, as `get` does): the owner
    pulls it once (one pull however many want it), seals it in its own store, and
    only then sends ObjectReady (the driver maps it from there)."""
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}], seed=5)
    world.converge()
    other = b"driver-2"
    world.driver(0, other)
    a = world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    oid = rid(1)
    world.sim.send(0, other, p.Refs([oid], []))
    if when == "after":
        assert world.run_until_finished([a], 5)
        assert world.chunk_requests(oid) == []   # nobody asked for its value yet
    world.sim.send(0, other, p.Subscribe([oid]))
    assert world.run_until_finished([a], 5)
    assert world.sim.run_until(lambda: world.nodes[0].received(other, p.ObjectReady), 1.0)
    owner = world.nodes[0]
    (ready,) = owner.received(other, p.ObjectReady)
    assert (ready.oid, ready.state, ready.size) == (oid, STORE, 50 * MB)
    requests = [e for i, e in world.chunk_requests(oid) if i == 0]
    chunk = world.sim.config.chunk_size
    assert sorted(e.offset for e in requests) == list(range(0, 50 * MB, chunk))  # each once
    assert {e.holder for e in requests} == {world.nodes[1].node_id}
    sealed = [t for t, e in owner.trace if type(e) is fx.SealPull and e.oid == oid]
    told = [t for t, e in owner.trace if type(e) is fx.Send and e.to == other
            and type(e.msg) is p.ObjectReady]
    assert len(sealed) == 1 and sealed[0] <= told[0]
    assert owner.store[oid] == (50 * MB, tag(oid))
    world.check_result(a)


def test_the_submitter_of_a_result_kept_on_a_peer_is_told_once_and_gets_it_by_asking():
    """The owner pushes a return to its submitter only if the value is here; one
    kept in a peer's store is announced instead (ObjectReady PENDING, with its
    size): no pull starts until the driver subscribes, which brings the value."""
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}], seed=5)
    world.converge()
    a = world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    oid = rid(1)
    assert world.run_until_finished([a], 5)
    world.sim.run(0.5)
    owner = world.nodes[0]
    (notice,) = owner.received(DRIVER, p.ObjectReady)
    assert (notice.oid, notice.state, notice.size) == (oid, PENDING, 50 * MB)
    assert world.chunk_requests(oid) == []   # announced, not pulled
    world.sim.send(0, DRIVER, p.Subscribe([oid]))
    assert world.sim.run_until(lambda: oid in world.readies(), 2.0)
    assert [m.state for m in owner.received(DRIVER, p.ObjectReady)] == [PENDING, STORE]
    world.check_result(a)
    # the owner now holds a copy too, and says so in its GCS shard
    assert owner.fabric.gcs.get("loc", oid) == 50 * MB


# -- freeing --------------------------------------------------------------------------------

def test_dropping_the_refs_deletes_every_copy_and_its_gcs_location():
    """A's 50 MB result is made on X (node 1) and pulled by node 2 (B runs there, pinned
    by z); B's 5 MB result stays on node 2 (the owner pulls neither: nobody asked for
    their values). When the driver drops both refs, every node holding a copy deletes
    it, and once gossip has run no GCS replica lists a location for either."""
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}, {"CPU": 1, "z": 1}], seed=6)
    world.converge()
    a = world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    b = world.submit(2, resources={"z": 1}, deps=[rid(1)], returns=[5 * MB], duration=0.2)
    assert world.run_until_finished([a, b], 10)
    world.sim.run(0.3)   # the locations spread
    oids = [rid(1), rid(2)]
    holders = {oid: {n.index for n in world.nodes if oid in n.store} for oid in oids}
    assert holders == {rid(1): {1, 2}, rid(2): {2}}
    for n in world.nodes:
        gcs = n.fabric.gcs
        assert {world.sim.index_of(s) for s in gcs.lookup("loc", rid(1))} == {1, 2}
        assert {world.sim.index_of(s) for s in gcs.lookup("loc", rid(2))} == {2}
    world.sim.send(0, DRIVER, p.Refs([], oids))
    world.sim.run(0.5)
    for oid in oids:
        for i in holders[oid]:
            node = world.nodes[i]
            assert [o for _, o in node.deleted].count(oid) == 1, (i, oid.hex())
            assert oid not in node.store and oid not in node.scheduler.objects
    for n in world.nodes:
        assert n.store == {} and n.partial == {}
        assert n.scheduler.objects.entries == {} and n.scheduler.objects.store_used == 0
        assert n.fabric.gcs.items("loc") == []
    assert world.sim.violations == []


# -- bugs the harness found (each test failed before its fix; lineage is still missing) -----

def test_a_store_result_only_a_task_on_its_holder_needs_is_not_pulled_anywhere():
    world = World([{"CPU": 1}, {"CPU": 2, "x": 1}], seed=3)
    world.converge()
    world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    b = world.submit(2, deps=[rid(1)], duration=0.2)
    assert world.run_until_finished([b], 10)
    assert [r.node for r in world.runs_of(b)] == [1]       # locality did its part
    assert world.chunk_requests(rid(1)) == [], "50 MB pulled to the owner for nothing"


def test_locality_sees_the_free_cpus_of_a_holder_that_also_runs_another_of_our_tasks():
    """X (3 CPUs) runs our long task L and our task A (which makes 50 MB there). While
    both run X gossips 1 free CPU; when A ends it has 2. B needs A's result: the owner's
    view of X is available 1 - inflight 1 (L) = 0, so B is pulled to node 0."""
    world = World([{"CPU": 1}, {"CPU": 3, "x": 1, "y": 1}], seed=3)
    world.converge()
    x = world.nodes[1].node_id
    seen = []

    def at_result(src, dst, msg):
        if type(msg) is p.TaskResult and msg.task_id == tid(1):
            view = world.nodes[0].scheduler.spill.peers[x]
            seen.append((dict(view.available), dict(view.inflight)))
        return False
    world.sim.drop = at_result
    world.submit(3, resources={"y": 1}, duration=5.0)                   # L
    world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)  # A
    b = world.submit(2, deps=[rid(1)], duration=0.2)
    assert world.run_until_finished([b], 10)
    # by gossip X had a CPU free, and the scheduler's own books say L holds the other
    assert seen == [({"CPU": rs.UNIT}, {"CPU": 2 * rs.UNIT, "x": rs.UNIT, "y": rs.UNIT})]
    assert [r.node for r in world.runs_of(b)] == [1]


def test_locality_counts_the_cpu_a_finished_task_gave_back():
    """X has 1 CPU and runs A only; when A ends X is idle, and B (which needs A's 50 MB)
    should go there. Same root as above: PeerView does not reconcile our own tasks'
    comings and goings with the gossiped view."""
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}], seed=3)
    world.converge()
    world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    b = world.submit(2, deps=[rid(1)], duration=0.2)
    assert world.run_until_finished([b], 10)
    assert [r.node for r in world.runs_of(b)] == [1]
