"""GPU ids (core/gpus.py, core/workers.py): a task that demands "GPU" is given ids
of the node's GPUs when it starts, in its Execute's opts["gpus"], and gives
them back when it ends however it ends (finished, failed, cancelled, its
worker died). Whole demands get distinct ids no running task shares;
fractional ones share an id, never more than one GPU's worth of it; a task
blocked in get keeps its GPUs (only its CPU is lent out).
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric.core import resources as rs
from zfabric.core.gpus import GpuBook
from zfabric.core.scheduler import Scheduler
from zfabric.core.tasks import TaskState
from zfabric.core.workers import WorkerState, workers_for

from tests.harness.scheduler import DRIVER, Node, num, user_error

U = rs.UNIT


def executes(effects: list) -> dict[int, tuple[str, list | None]]:
    """task number -> (worker, its GPU ids) for each Execute in `effects`."""
    return {num(e.msg.task_id): (e.to.decode(), e.msg.opts.get("gpus"))
            for e in effects if isinstance(getattr(e, "msg", None), p.Execute)}


# -- the book ----------------------------------------------------------------------------

def test_whole_demands_get_distinct_free_ids_and_fractions_pack_onto_one():
    book = GpuBook(4 * U)
    assert book.capacity() == 4 * U
    assert book.assign(2 * U) == [0, 1]
    assert book.assign(U // 2) == [2]
    assert book.assign(U // 4) == [2]          # the busiest id it fits on
    assert book.capacity() == U                 # id 3 is the only whole one
    assert book.assign(U) == [3]
    assert book.capacity() == U // 4            # what is left: a quarter of id 2
    assert book.free_total() == U // 4
    book.release([0, 1], 2 * U)
    book.release([2], U // 2)
    assert book.capacity() == 2 * U and book.free_total() == 2 * U + 3 * U // 4


def test_half_used_gpus_do_not_make_a_whole_one():
    book = GpuBook(2 * U)
    book.assign(U // 2)
    book.assign(6000)   # does not fit beside the half: takes the other id
    assert book.free == [U // 2, U - 6000]
    assert book.capacity() == U // 2            # a 1-GPU task cannot start


def test_a_node_without_gpus_has_an_empty_book():
    assert len(GpuBook(0)) == 0 and GpuBook(0).capacity() == 0


# -- on a scheduler ------------------------------------------------------------------------

def test_execute_carries_the_ids_and_a_third_task_waits_for_one():
    node = Node(cpus=4, resources={"GPU": 2})
    out = {}
    for n in (1, 2, 3):
        out.update(executes(node.submit(n, resources={"GPU": 1})))
    assert sorted(gpus for _, gpus in out.values()) == [[0], [1]]
    assert 3 not in out and node.s.queues.count == 1
    wid, gpus = out[1]
    started = executes(node.done(wid, 1))
    assert started == {3: (wid, gpus)}          # the freed id goes to the waiting task


def test_a_task_without_gpu_demand_gets_no_ids():
    node = Node(cpus=2, resources={"GPU": 1})
    assert executes(node.submit(1)) == {1: ("w2", None)}


def test_a_blocked_task_keeps_its_gpu_but_lends_its_cpu():
    node = Node(cpus=1, resources={"GPU": 1})
    (wid, gpus), = executes(node.submit(1, resources={"GPU": 1})).values()
    node.send(wid.encode(), node.worker(wid).blocked())
    assert node.cpu() == 1 and node.s.pool.gpus.free == [0]
    assert executes(node.submit(2, resources={"GPU": 1})) == {}   # waits for the GPU
    assert node.s.queues.count == 1


# -- random lives of GPU tasks -----------------------------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["submit", "submit", "done", "fail", "cancel",
                                          "kill", "exit", "block", "unblock"]),
                         st.integers(0, 1000), st.sampled_from([0.25, 0.5, 1, 1, 2, 3])),
               min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(gpus=st.integers(1, 4), ops=OPS)
def test_no_gpu_id_is_given_to_two_running_tasks_and_every_id_comes_back(gpus, ops):
    node = Node(cpus=8, resources={"GPU": gpus}, max_workers=16)
    running: dict[int, tuple[str, list, float]] = {}   # task -> (worker, ids, demand)
    demands: dict[int, float] = {}
    next_n = 1

    def seen(effects):
        for n, (wid, ids) in executes(effects).items():
            assert ids is not None and len(ids) == len(set(ids)), ids
            assert all(0 <= i < gpus for i in ids), ids
            running[n] = (wid, ids, demands[n])
        check()

    def check():
        for n in [n for n, (wid, _, _) in running.items()
                  if node.workers.get(wid) is None or node.worker(wid).current_id is None
                  or num(node.worker(wid).current_id) != n]:
            del running[n]   # ended, or its worker died
        share = [0.0] * gpus
        whole = set()
        for _, ids, demand in running.values():
            for i in ids:
                assert i not in whole, ("a whole GPU held twice", running)
                if demand >= 1:
                    whole.add(i)
                share[i] += min(demand, 1)
        assert all(s <= 1 + 1e-9 for s in share), share
        assert not (whole & {i for i, s in enumerate(share) if s and i not in whole})

    for op, pick, demand in ops:
        live = sorted(running)
        victim = live[pick % len(live)] if live else None
        if op == "submit":
            demands[next_n] = demand
            seen(node.submit(next_n, resources={"GPU": demand}, max_retries=1))
            next_n += 1
        elif victim is None:
            continue
        else:
            wid = running[victim][0]
            if op == "done":
                seen(node.done(wid, victim))
            elif op == "fail":
                seen(node.fail(wid, victim, user_error(), retryable=True))
            elif op == "cancel":
                seen(node.cancel(victim))
                seen(node.report_cancelled(wid, victim))
            elif op in ("kill", "exit"):
                if op == "kill":
                    node.cancel(victim, force=True)
                seen(node.exit(wid))
            elif op == "block":
                seen(node.send(wid.encode(), node.worker(wid).blocked()))
            else:
                seen(node.send(wid.encode(), node.worker(wid).unblocked()))
    while True:   # finish everything: every id comes back
        for w in [w for w in node.s.pool.workers.values() if w.state == WorkerState.STARTING]:
            seen(node.hello(w.wid))   # (replacements of workers that died come up)
        if not running:
            break
        n = min(running)
        seen(node.done(running[n][0], n))
    for t in node.s.tasks.values():   # only those that can never fit are left
        assert t.state == TaskState.QUEUED and t.demand[rs.GPU] > gpus * U, t.demand
    assert node.s.pool.gpus.free == [U] * gpus
    assert node.s.pool.available[rs.GPU] == gpus * U


def test_ids_come_back_when_a_retried_task_runs_again():
    node = Node(cpus=2, resources={"GPU": 1})
    (wid, gpus), = executes(node.submit(1, resources={"GPU": 1}, max_retries=1)).values()
    again = executes(node.exit(wid))
    assert list(again) == [1] and again[1][1] == [0]
    assert node.s.pool.gpus.free == [0]


def test_scheduler_with_gpus_builds():
    s = Scheduler(node_id=b"N" * 16, resources={"CPU": 1, "GPU": 2}, store_capacity=10,
                  num_workers=workers_for(1), max_workers=2, idle_worker_timeout=1,
                  timeline_capacity=1)
    assert s.resource_view() == {"total": {"CPU": 1.0, "GPU": 2.0},
                                 "available": {"CPU": 1.0, "GPU": 2.0}}
    assert DRIVER
