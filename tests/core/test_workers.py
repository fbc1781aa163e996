"""core/workers.py: the worker pool. Workers spawned for demand and replaced when they
die, idle extra workers reaped, the CPU of a task blocked in get lent to
another, and the prefetch policy (a quick function's next task waits on its
busy worker; see also test_workers_prefetch.py).

Feed a bare Scheduler events, assert the exact effects (tests/harness/scheduler.py).
"""
from __future__ import annotations

from zfabric import protocol as p
from zfabric.core import events as ev
from zfabric.core import resources as rs
from zfabric.core.tasks import TaskState
from zfabric.core.workers import workers_for
from zfabric.exceptions import TaskCancelledError

from tests.harness.scheduler import DRIVER, Node, error_for, only, rid, summary, tid


# -- the pool: start, hello, replacement -----------------------------------------------

def test_start_spawns_one_worker_per_cpu_rounded_up():
    node = Node(cpus=2.5, hello=False)
    assert summary(node.started) == [("spawn", "w1"), ("spawn", "w2"), ("spawn", "w3")]
    assert workers_for(0.5) == 1 and workers_for(4) == 4


def test_unknown_or_repeated_worker_hello_is_refused():
    node = Node()
    assert summary(node.send(b"w9", p.Hello("worker", 1, "w9"))) == [("nonsense",)]
    assert summary(node.hello("w1")) == [("nonsense",)]          # already idle
    assert summary(node.send(b"imposter", p.Hello("worker", 1, "w1"))) == [("nonsense",)]
    assert len(node.s.pool.idle) == 1


def test_task_queued_until_a_worker_says_hello():
    node = Node(hello=False)
    node.send(DRIVER, p.Hello("driver", 1, None))
    assert summary(node.submit(1)) == []
    assert node.s.queues.count == 1
    assert summary(node.hello("w1")) == [("welcome", b"w1"), ("execute", "w1", 1)]


def test_a_worker_that_exits_is_replaced_even_before_its_hello():
    node = Node(cpus=2)
    assert summary(node.exit("w1", 0)) == [("spawn", "w3")]
    assert [w.wid for w in node.s.pool.idle] == ["w2"]
    assert summary(node.exit("w3", 1)) == [("spawn", "w4")]   # died starting
    assert summary(node.exit("w42")) == []   # not ours


# -- blocked workers -------------------------------------------------------------------------

def test_blocked_worker_gives_its_cpu_to_an_extra_worker():
    node = Node(cpus=1, max_workers=4)
    node.submit(1)
    node.submit(2, client=b"w1", parent=1, depth=1)
    assert node.s.queues.count == 1
    assert summary(node.send(b"w1", p.Blocked(tid(1)))) == [("spawn", "w2")]
    assert node.cpu() == 1
    assert summary(node.hello("w2")) == [("welcome", b"w2"), ("execute", "w2", 2)]
    assert node.cpu() == 0
    assert summary(node.done("w2", 2)) == [("ready", b"w1", rid(2), "INLINE")]
    assert summary(node.send(b"w1", p.Unblocked(tid(1)))) == []
    assert node.cpu() == 0
    node.done("w1", 1)
    assert node.cpu() == 1


def test_unblocked_task_may_overcommit_cpu_for_a_while():
    """Documented in WorkerPool.unblock: the task is running again, so it takes its CPU back."""
    node = Node(cpus=1, max_workers=4)
    node.submit(1)
    node.submit(2, parent=1, depth=1)
    node.send(b"w1", p.Blocked(tid(1)))
    node.hello("w2")                                   # runs task 2
    node.send(b"w1", p.Unblocked(tid(1)))
    assert node.cpu() == -1
    node.submit(3)
    assert node.s.queues.count == 1                          # nothing fits a negative CPU
    assert summary(node.done("w2", 2)) == [("ready", DRIVER, rid(2), "INLINE")]
    assert node.cpu() == 0 and node.s.queues.count == 1
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE"),
                                           ("execute", "w1", 3)]


def test_blocked_worker_lends_cpu_to_an_idle_worker_at_once():
    node = Node(cpus=1, num_workers=2)
    node.submit(1)                                     # w2
    assert summary(node.submit(2)) == []
    assert summary(node.send(b"w2", p.Blocked(tid(1)))) == [("execute", "w1", 2)]


def test_blocked_and_unblocked_are_idempotent_and_checked():
    node = Node(cpus=1, max_workers=1)
    node.submit(1)
    assert summary(node.send(b"w1", p.Blocked(tid(9)))) == [("nonsense",)]   # not its task
    assert node.cpu() == 0
    node.send(b"w1", p.Blocked(tid(1)))
    node.send(b"w1", p.Blocked(tid(1)))
    assert node.cpu() == 1
    node.send(b"w1", p.Unblocked(tid(1)))
    node.send(b"w1", p.Unblocked(tid(1)))
    assert node.cpu() == 0
    assert summary(node.send(b"w9", p.Blocked(tid(1)))) == [("nonsense",)]   # not a worker


def test_task_ending_or_crashing_while_blocked_returns_only_what_it_holds():
    node = Node(cpus=2, resources={"gpu": 1}, max_workers=2)
    node.submit(1, resources={"gpu": 1})
    node.submit(2, max_retries=0)
    node.send(b"w2", p.Blocked(tid(1)))
    node.send(b"w1", p.Blocked(tid(2)))
    assert node.cpu() == 2
    node.done("w2", 1)
    node.exit("w1")
    assert node.cpu() == 2 and node.s.pool.available["gpu"] == rs.UNIT


def test_max_workers_bounds_extra_workers():
    node = Node(cpus=1, max_workers=2)
    node.submit(1)
    node.submit(2, parent=1, depth=1)
    node.submit(3, parent=1, depth=1, cpu=0)
    node.send(b"w1", p.Blocked(tid(1)))
    assert summary(node.send(b"w1", p.Refs([], []))) == []          # w2 already starting
    assert len(node.s.pool.workers) == 2


def test_extra_workers_stop_after_idling_too_long():
    node = Node(cpus=1, max_workers=4, idle_worker_timeout=10)
    node.submit(1)
    node.submit(2, parent=1, depth=1)
    node.send(b"w1", p.Blocked(tid(1)))
    node.hello("w2")
    node.done("w2", 2)
    node.now = 5
    assert summary(node.handle(ev.Tick())) == []
    node.now = 20
    node.send(b"w1", p.Unblocked(tid(1)))
    node.submit(3)
    assert summary(node.handle(ev.Tick())) == []                    # a task is queued
    node.cancel(3)
    assert summary(node.handle(ev.Tick())) == [("stop", "w2")]
    node.done("w1", 1)
    node.now = 100
    assert summary(node.handle(ev.Tick())) == []                    # w1 is pre-started
    assert summary(node.exit("w2", 0)) == []                        # no replacement
    assert set(node.s.pool.workers) == {"w1"}


# -- prefetch: a quick function's next task waits on its busy worker ------------------------

QUICK = 0.001


def warm(node: Node, first: int = 101) -> None:
    """Three quick runs of FN on w1, so that the node may prefetch behind it."""
    for n in range(first, first + 3):
        assert summary(node.submit(n, num_returns=0)) == [("execute", "w1", n)]
        node.done("w1", n, payloads=[], took=QUICK)


def test_prefetch_sends_the_next_task_to_the_busy_worker():
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1)
    out = node.submit(2)
    assert summary(out) == [("execute", "w1", 2)]
    assert node.s.tasks[tid(2)].state == TaskState.ASSIGNED
    assert node.cpu() == 0 and node.s.queues.count == 0
    assert node.s.status()["tasks_queued"] == 1
    # task 1 ends: task 2 takes over its CPU at once, with no second Execute
    assert summary(node.done("w1", 1, took=QUICK)) == [("ready", DRIVER, rid(1), "INLINE")]
    assert node.s.tasks[tid(2)].state == TaskState.RUNNING and node.cpu() == 0
    assert node.s.tasks[tid(2)].attempts == 1
    node.done("w1", 2, took=QUICK)
    assert node.cpu() == 1 and node.s.stats["prefetched"] == 1


def test_no_prefetch_behind_slow_or_unknown_functions_or_when_off():
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    node.submit(1)
    assert summary(node.submit(2)) == []              # FN never ran: not known to be quick
    node.done("w1", 1, took=QUICK)
    node.done("w1", 2, took=QUICK)
    warm(node)
    node.submit(3)
    node.done("w1", 3, took=5.0)                       # one slow run
    node.submit(4)
    assert summary(node.submit(5)) == []
    off = Node(cpus=1, max_workers=1)
    warm(off)
    off.submit(1)
    assert summary(off.submit(2)) == []


def test_blocked_worker_gets_its_prefetched_task_revoked():
    node = Node(cpus=1, max_workers=2, prefetch=1.0)
    warm(node)
    node.submit(1)
    node.submit(2)                                     # prefetched to w1
    out = node.send(b"w1", p.Blocked(tid(1)))
    assert summary(out) == [("revoke", "w1", 2)]
    assert summary(node.send(b"w1", p.Revoked(tid(2)))) == [("spawn", "w2")]
    assert node.s.tasks[tid(2)].state == TaskState.QUEUED
    assert summary(node.hello("w2")) == [("welcome", b"w2"), ("execute", "w2", 2)]
    assert node.s.tasks[tid(2)].attempts == 1


def test_revoked_after_the_node_started_it_is_not_charged():
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1)
    node.submit(2, max_retries=0)
    node.send(b"w1", p.Blocked(tid(1)))                # Revoke(2) is on its way
    node.send(b"w1", p.Unblocked(tid(1)))
    node.done("w1", 1, took=QUICK)                     # the node starts 2 ...
    assert node.s.tasks[tid(2)].state == TaskState.RUNNING
    out = node.send(b"w1", p.Revoked(tid(2)))          # ... the worker had dropped it
    assert summary(out) == [("execute", "w1", 2)]      # queued again, sent again
    assert node.s.tasks[tid(2)].attempts == 1


def test_cancel_of_a_prefetched_task_revokes_it():
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1)
    node.submit(2)
    assert summary(node.cancel(2)) == [("revoke", "w1", 2)]
    assert summary(node.cancel(2, force=True)) == []   # already asked; w1 is not killed
    out = node.send(b"w1", p.Revoked(tid(2)))
    assert summary(out) == [("ready", DRIVER, rid(2), "ERROR")]
    assert isinstance(error_for(out, rid(2)), TaskCancelledError)


def test_cancelled_prefetched_task_the_worker_already_started_is_interrupted():
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1)
    node.submit(2)
    node.cancel(2)                                     # Revoke(2) crosses TaskDone(1)
    out = node.done("w1", 1, took=QUICK)
    assert summary(out) == [("interrupt", "w1", 2), ("ready", DRIVER, rid(1), "INLINE")]


def test_worker_crash_requeues_its_prefetched_task_uncharged():
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1, max_retries=0)
    node.submit(2, max_retries=0)
    out = node.exit("w1", -9)
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR"), ("spawn", "w2")]
    assert node.s.tasks[tid(2)].state == TaskState.QUEUED
    assert summary(node.hello("w2")) == [("welcome", b"w2"), ("execute", "w2", 2)]


def test_force_cancel_requeues_the_prefetched_task_of_the_killed_worker():
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1)
    node.submit(2, max_retries=0)
    assert summary(node.cancel(1, force=True)) == [("kill", "w1")]
    node.done("w1", 1, took=QUICK)                     # raced the kill
    assert node.s.tasks[tid(2)].state == TaskState.QUEUED
    out = node.exit("w1", -9)
    assert summary(out) == [("spawn", "w2")]
    assert summary(node.hello("w2")) == [("welcome", b"w2"), ("execute", "w2", 2)]


# Regression: _on_revoked started the next prefetched task on a worker being killed.
def test_revoked_running_task_does_not_start_the_next_on_a_killed_worker():
    """Revoked(B) crosses a force cancel of B, which the node had started when A ended:
    C, prefetched behind B, must go back to the queue, not start on the dying worker."""
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1)                                     # A
    node.submit(2)                                     # B, prefetched
    node.send(b"w1", p.Blocked(tid(1)))                # Revoke(B) on its way
    node.send(b"w1", p.Unblocked(tid(1)))
    node.done("w1", 1, took=QUICK)                     # the node starts B
    assert summary(node.submit(3, max_retries=0)) == [("execute", "w1", 3)]   # C, prefetched
    assert summary(node.cancel(2, force=True)) == [("kill", "w1")]
    node.send(b"w1", p.Revoked(tid(2)))                # sent before the kill landed
    assert node.s.tasks[tid(3)].state == TaskState.QUEUED
    out = node.exit("w1", -9)
    assert not any(m.oid == rid(3) for m in only(out, p.ObjectReady))


# Regression: _on_revoked did not interrupt a cancelled prefetched task it started.
def test_revoked_running_task_interrupts_a_cancelled_next_one():
    """As above, without the kill: C was cancelled while prefetched; when the node
    starts it in B's place, the worker (which may have started it) is interrupted."""
    node = Node(cpus=1, max_workers=1, prefetch=1.0)
    warm(node)
    node.submit(1)
    node.submit(2)
    node.send(b"w1", p.Blocked(tid(1)))
    node.send(b"w1", p.Unblocked(tid(1)))
    node.done("w1", 1, took=QUICK)                     # the node starts B
    node.submit(3)                                     # C, prefetched
    assert summary(node.cancel(3)) == [("revoke", "w1", 3)]
    out = node.send(b"w1", p.Revoked(tid(2)))          # B dropped; C started in its place
    assert ("interrupt", "w1", 3) in summary(out)
