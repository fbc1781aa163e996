"""The GCS across several Fabrics (tests/harness/world.py): every replica has every
node, the owner sees its peers' timeline, and the objects table follows the
STORE objects an owner holds until they are freed.
"""
from __future__ import annotations

import pytest

from zfabric import protocol as p

from tests.harness.trace import check_trace, process_names, thread_names
from tests.harness.world import DRIVER, MB, World, rid, tid


# -- the GCS across fabrics -------------------------------------------------------------------

def test_every_gcs_replica_has_every_node_and_the_owner_sees_the_peers_timeline():
    nodes = [{"CPU": 1}, {"CPU": 2}, {"CPU": 1, "gpu": 1}, {"CPU": 1}]
    world = World(nodes, seed=7)
    plans = [world.submit(n, duration=0.2) for n in range(1, 9)]
    plans.append(world.submit(9, resources={"gpu": 1}, duration=0.2))
    assert world.run_until_finished(plans, 10)
    world.sim.run(0.3)
    for n in world.nodes:
        gcs = n.fabric.gcs
        for m in world.nodes:
            assert gcs.get("node", m.node_id, shard=m.node_id) == m.fabric.static_info
        gcs.validate()
    owner = world.nodes[0].fabric
    timeline = owner.views.answer("timeline")
    by_phase = check_trace(timeline)
    tasks = [e for e in by_phase["X"] if e["cat"] == "task"]
    by_task = {e["args"]["task_id"]: e for e in tasks}
    processes, threads = process_names(timeline), thread_names(timeline)
    ran_on_peers = 0
    for pl in plans:
        (run,) = world.runs_of(pl)
        event = by_task[pl.task_id.hex()]
        assert processes[event["pid"]] == f"node {world.nodes[run.node].node_id.hex()}"
        assert threads[(event["pid"], event["tid"])].split()[:2] == ["worker", run.worker]
        assert event["args"]["worker"] == run.worker and event["args"]["status"] == "ok"
        assert event["ts"] == pytest.approx(run.start * 1e6, abs=1)
        assert event["dur"] == pytest.approx((run.end - run.start) * 1e6, abs=1)
        ran_on_peers += run.node != 0
    assert ran_on_peers >= 5 and len(tasks) == len(plans)
    # the cluster queries see every node
    assert {r["NodeID"] for r in owner.views.answer("nodes")} == {n.node_id.hex() for n in world.nodes}
    assert all(r["Alive"] for r in owner.views.answer("nodes"))
    assert owner.views.answer("resources")["total"] == {"CPU": 5.0, "gpu": 1.0}


# -- bugs the harness found (each test failed before its fix; lineage is still missing) -----

def test_the_owner_records_its_store_objects_in_the_gcs_until_they_are_freed():
    """The objects table: the owner writes each STORE object it owns (size, creating
    task, where it was made) into its shard; every replica has it; freeing it
    deletes it everywhere."""
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}], seed=7)
    world.converge()
    a = world.submit(1, resources={"x": 1}, returns=[5 * MB], duration=0.1)
    assert world.run_until_finished([a], 5)
    world.sim.run(0.3)
    owner, maker = world.nodes
    for n in world.nodes:
        assert n.fabric.gcs.lookup("obj", rid(1)) == {
            owner.node_id: {"size": 5 * MB, "task": tid(1), "made_on": maker.node_id}}
    world.sim.send(0, DRIVER, p.Refs([], [rid(1)]))
    world.sim.run(0.5)
    assert all(n.fabric.gcs.items("obj") == [] for n in world.nodes)


def test_status_sums_the_pending_demands_every_node_gossips():
    """`status` lists queued tasks by resource shape for the whole cluster: the
    asker's own queue live, each peer's as its heartbeat carries it."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 2}], seed=3)
    world.converge()
    plans = [world.submit(n, duration=5.0) for n in range(1, 13)]
    plans += [world.submit(n, cpu=2, duration=5.0) for n in range(13, 16)]
    world.sim.run(1.0)
    status = world.nodes[0].fabric.views.answer("status")
    per_node = [sum(d["tasks"] for d in row["demands"]) for row in status["nodes"]]
    by_id = {n.node_id.hex(): n for n in world.nodes}
    queued = [by_id[row["NodeID"]].fabric.scheduler.queues.count for row in status["nodes"]]
    assert per_node == queued and sum(queued) > 0
    cluster = {tuple(d["resources"].items()): d["tasks"] for d in status["demands"]}
    for shape in ((("CPU", 1.0),), (("CPU", 2.0),)):
        assert cluster.get(shape, 0) == sum(
            d["tasks"] for row in status["nodes"] for d in row["demands"]
            if tuple(d["resources"].items()) == shape)
    assert sum(cluster.values()) == sum(queued)
    assert world.run_until_finished(plans, 60)
    world.sim.run(0.5)
    assert world.nodes[0].fabric.views.answer("status")["demands"] == []


def test_a_node_is_never_alive_in_a_view_without_its_resources():
    """A joining node's first rows carry its resources: from the moment a peer
    holds it alive, "nodes" and "resources" there count what it has (a driver
    attached to the seed right after a cluster started saw a peer with none)."""
    world = World([{"CPU": 2}, {"CPU": 3}, {"CPU": 1, "gpu": 1}], seed=5)
    seen_alive = set()
    for _ in range(200):
        world.sim.step()
        for n in world.nodes:
            for row in n.fabric.views.answer("nodes"):
                if row["Alive"]:
                    assert row["Resources"], (n.node_id.hex(), row)
                    seen_alive.add((n.node_id.hex(), row["NodeID"]))
    assert len(seen_alive) == 9          # every node came to see every node alive
