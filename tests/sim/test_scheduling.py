"""Tasks across several Fabrics (tests/harness/world.py): random batches on random
clusters finish exactly once where they fit, and equal tasks keep every CPU busy.
"""
from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric.core import resources as rs
from zfabric.core.tasks import TaskState

from tests.harness.world import DRIVER, SIM, World, batches, clusters, fits_total


# -- random batches on random clusters ----------------------------------------------------

@settings(max_examples=80, **SIM)
@given(nodes=clusters(), tasks=batches(), seed=st.integers(0, 2**32 - 1),
       warm=st.booleans())
def test_random_batches_finish_once_where_they_fit_and_the_rest_wait(nodes, tasks, seed, warm):
    world = World(nodes, seed=seed)
    if warm:   # else the tasks arrive while the nodes are still joining
        world.converge()
    plans = [world.submit(t["n"], cpu=t["cpu"], resources=t["resources"],
                          duration=t["duration"], returns=t["returns"], deps=t["deps"])
             for t in tasks]
    # A task can finish iff some node can hold it and its arguments can be made.
    runnable: dict[bytes, bool] = {}
    maker = {oid: pl for pl in plans for oid in pl.oids}
    for pl in plans:
        runnable[pl.task_id] = (any(fits_total(r, pl.demand) for r in nodes)
                                and all(runnable[maker[d].task_id] for d in pl.deps))
    can = [pl for pl in plans if runnable[pl.task_id]]
    cannot = [pl for pl in plans if not runnable[pl.task_id]]
    budget = 5.0 + sum(pl.duration for pl in can)
    assert world.run_until_finished(can, budget), \
        [(pl.n, pl.demand, world.nodes[0].scheduler.tasks.get(pl.task_id) and
          TaskState(world.nodes[0].scheduler.tasks[pl.task_id].state).name) for pl in can
         if not world.finished(pl)]
    world.sim.run(1.0)   # nothing more happens to the others
    sim = world.sim
    assert sim.violations == []
    for pl in can:
        world.check_result(pl)
        runs = world.runs_of(pl)
        assert len(runs) == 1, (pl.n, runs)    # nothing failed: no task runs twice
        assert fits_total(nodes[runs[0].node], pl.demand), (pl.n, runs[0].node)
    owner = world.nodes[0].scheduler
    status = owner.status()
    for pl in cannot:
        assert world.runs_of(pl) == [] and world.readies().keys().isdisjoint(pl.oids)
        task = owner.tasks[pl.task_id]         # still pending at its owner: not lost
        if any(fits_total(r, pl.demand) for r in nodes):
            assert task.state == TaskState.WAITING   # on an argument that cannot be made
        elif task.state == TaskState.QUEUED:
            assert rs.from_units(task.demand) in status["pending_demand"], pl.demand
        else:
            assert task.state == TaskState.WAITING, TaskState(task.state).name
    assert status["tasks_queued"] + status["tasks_waiting"] == len(cannot)
    assert sum(len(n.running()) for n in world.nodes) == 0


# -- work conservation ----------------------------------------------------------------------

@settings(max_examples=60, **SIM)
@given(cpus=st.one_of(st.lists(st.just(1), min_size=1, max_size=4),
                      st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=4)),
       count=st.integers(1, 30), duration=st.sampled_from([0.05, 0.2, 0.5, 1.0]),
       seed=st.integers(0, 2**32 - 1))
def test_equal_tasks_keep_every_cpu_busy_to_the_end(cpus, count, duration, seed):
    """T tasks of d seconds, all submitted at once to node 0 of a cluster with C CPUs
    in all: the makespan is at most ceil(T/C) * d (what C CPUs need) plus, per
    wave of tasks, one owner -> peer -> owner round trip (2 * the largest link
    delay) and two worker hops, plus one gossip interval. (Measured: never more
    than 14 ms over ceil(T/C) * d.) So peers always have their next task at hand
    (spill_depth) and the tail is not stuck behind a peer's queue."""
    world = World([{"CPU": c} for c in cpus], seed=seed)
    world.converge()
    start = world.sim.now
    plans = [world.submit(n, duration=duration) for n in range(1, count + 1)]
    sim = world.sim
    waves = math.ceil(count / sum(cpus))
    bound = waves * (duration + 2 * sim.latency[1] + 2 * sim.ipc_latency) \
        + sim.config.gossip_interval
    assert world.run_until_finished(plans, bound + 1.0)
    end = max(t for t, m in world.nodes[0].inbox[DRIVER] if type(m) is p.ObjectReady)
    assert end - start <= bound, (end - start, waves * duration)
    for pl in plans:
        world.check_result(pl)
    assert sim.violations == []
