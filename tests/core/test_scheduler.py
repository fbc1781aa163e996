"""core/scheduler.py alone: feed it events, assert the exact effects.

No sockets and no processes: a `Node` below wraps a bare `Scheduler`, plays
the driver and the workers by handing it protocol messages, and runs
`Scheduler.validate()` after every step. `summary()` turns effects into
short tuples so that each test can state the whole list it expects.
"""
from __future__ import annotations

import pytest

from zfabric import protocol as p
from zfabric import records, serialization
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.core import resources as rs
from zfabric.protocol import ObjectState
from zfabric.core.scheduler import Scheduler, TaskState, workers_for
from zfabric.protocol import TaskStatus
from zfabric.exceptions import (ObjectLostError, ObjectStoreFullError, TaskCancelledError,
                                TaskError, WorkerCrashedError, ZFabricError)

NODE_ID = b"N" * 16
DRIVER = b"driver-1"
OTHER = b"driver-2"
FN = b"F" * 16
FN_BLOB = b"cloudpickled function"
INLINE, STORE, ERROR = int(ObjectState.INLINE), int(ObjectState.STORE), int(ObjectState.ERROR)


def tid(n: int) -> bytes:
    return b"T" + n.to_bytes(15, "big")


def rid(n: int, i: int = 0) -> bytes:
    """Return object `i` of task `n`: the task id and a 4-byte big-endian index."""
    return tid(n) + i.to_bytes(4, "big")


def num(task_id: bytes) -> int:
    return int.from_bytes(task_id[1:16], "big")


def put_id(n: int) -> bytes:
    return b"P" + n.to_bytes(15, "big") + (0x80000000).to_bytes(4, "big")


def submit_msg(n: int, *, deps=(), num_returns=1, cpu=1.0, resources=None, max_retries=3,
               retry_exceptions=False, depth=0, parent=None, contained=(),
               fn_blob=FN_BLOB, name="f") -> p.Submit:
    demand = {"CPU": cpu} if cpu else {}
    demand.update(resources or {})
    return p.Submit(tid(n), name, FN, num_returns, demand, max_retries, retry_exceptions,
                    depth, tid(parent) if parent else b"", list(deps), list(contained),
                    fn_blob, b"args-%d" % n, b"")


def user_error(text: str = "boom") -> bytes:
    try:
        raise ValueError(text)
    except ValueError as e:
        return serialization.error_record(e, "f")


def summary(effects: list) -> list[tuple]:
    out = []
    for e in effects:
        kind = type(e)
        if kind is fx.Send:
            m = e.msg
            if isinstance(m, p.Execute):
                out.append(("execute", e.to.decode(), num(m.task_id)))
            elif isinstance(m, p.ObjectReady):
                out.append(("ready", e.to, m.oid, ObjectState(m.state).name))
            elif isinstance(m, p.Welcome):
                out.append(("welcome", e.to))
            elif isinstance(m, p.Revoke):
                out.append(("revoke", e.to.decode(), num(m.task_id)))
            elif isinstance(m, p.PutReply):
                out.append(("put_reply", m.req_id, m.error != ""))
            elif isinstance(m, p.Reply):
                out.append(("reply", m.req_id, m.error != ""))
            else:
                out.append(("send", e.to, type(m).__name__))
        elif kind is fx.SpawnWorker:
            out.append(("spawn", e.worker_id))
        elif kind is fx.StopWorker:
            out.append(("stop", e.worker_id))
        elif kind is fx.KillWorker:
            out.append(("kill", e.worker_id))
        elif kind is fx.InterruptWorker:
            out.append(("interrupt", e.worker_id, num(e.task_id)))
        elif kind is fx.DeleteObject:
            out.append(("delete", e.oid))
        elif kind is fx.WatchClient:
            out.append(("watch", e.client, e.pid))
        elif kind is fx.StopNode:
            out.append(("stop_node",))
        elif kind is fx.Publish:
            pass  # GCS entries (locations, owned objects): tests/test_fabric.py
        elif kind is fx.Log:
            out.append(("log", e.level))
        else:
            raise AssertionError(f"unexpected effect {e!r}")
    return out


def only(effects: list, kind: type) -> list:
    return [e.msg for e in effects if type(e) is fx.Send and isinstance(e.msg, kind)]


def error_for(effects: list, oid: bytes) -> BaseException:
    """The exception `get` would raise for `oid`, from its ObjectReady in `effects`."""
    msgs = [m for m in only(effects, p.ObjectReady) if m.oid == oid]
    assert len(msgs) == 1, msgs
    assert msgs[0].state == ERROR, msgs[0]
    return serialization.error_from_record(msgs[0].payload)


class Node:
    """A bare Scheduler, with helpers that play its driver and workers."""

    def __init__(self, cpus: float = 1, resources: dict | None = None, *,
                 num_workers: int | None = None, max_workers: int = 8,
                 store_capacity: int = 1000, idle_worker_timeout: float = 10.0,
                 hello: bool = True, prefetch: float = 0.0):
        self.s = Scheduler(
            node_id=NODE_ID, resources={"CPU": cpus, **(resources or {})},
            store_capacity=store_capacity,
            num_workers=workers_for(cpus) if num_workers is None else num_workers,
            max_workers=max_workers, idle_worker_timeout=idle_worker_timeout,
            timeline_capacity=100, prefetch_max_task_seconds=prefetch)
        self.now = 0.0
        self.started = self.s.start(self.now)
        self.s.validate()
        if hello:
            for e in self.started:
                self.hello(e.worker_id)
            self.send(DRIVER, p.Hello("driver", 4242, None))

    # events --------------------------------------------------------------------
    def handle(self, event) -> list:
        out = self.s.handle(event, self.now)
        self.s.validate()
        return out

    def send(self, client: bytes, msg) -> list:
        return self.handle(ev.ClientMessage(client, msg))

    def hello(self, wid: str) -> list:
        return self.send(wid.encode(), p.Hello("worker", 1000, wid))

    def submit(self, n: int, client: bytes = DRIVER, **kw) -> list:
        return self.send(client, submit_msg(n, **kw))

    def done(self, wid: str, n: int, payloads=None, states=None, sizes=None,
             contained=None, took: float = 1.0) -> list:
        """Worker `wid` reports task `n` finished OK."""
        nret = self.s.tasks[tid(n)].spec.num_returns if tid(n) in self.s.tasks else 1
        payloads = [b"value-%d-%d" % (n, i) for i in range(nret)] if payloads is None else payloads
        states = [INLINE] * len(payloads) if states is None else states
        sizes = [len(b) for b in payloads] if sizes is None else sizes
        contained = [[] for _ in payloads] if contained is None else contained
        return self.send(wid.encode(), p.TaskDone(tid(n), int(TaskStatus.OK), False, states,
                                                  sizes, contained, 1.0, 1.0 + took, payloads))

    def fail(self, wid: str, n: int, record: bytes, retryable: bool = False) -> list:
        return self.send(wid.encode(), p.TaskDone(tid(n), int(TaskStatus.ERROR), retryable,
                                                  [], [], [], 1.0, 2.0, [record]))

    def report_cancelled(self, wid: str, n: int) -> list:
        record = records.system_error_record(TaskCancelledError, "cancelled", "f")
        return self.send(wid.encode(), p.TaskDone(tid(n), int(TaskStatus.CANCELLED), False,
                                                  [], [], [], 1.0, 2.0, [record]))

    def exit(self, wid: str, code: int | None = -9) -> list:
        return self.handle(ev.WorkerExited(wid, code))

    def cancel(self, n: int, force: bool = False, recursive: bool = True,
               client: bytes = DRIVER) -> list:
        return self.send(client, p.Cancel(rid(n), force, recursive))

    def put(self, oid: bytes, *, state=INLINE, size=None, payload=b"put-value",
            contained=(), req_id=0, client: bytes = DRIVER) -> list:
        if state == STORE:
            payload = b""
        size = len(payload) if size is None else size
        return self.send(client, p.Put(oid, state, size, list(contained), req_id, payload))

    def refs(self, incs=(), decs=(), client: bytes = DRIVER) -> list:
        return self.send(client, p.Refs(list(incs), list(decs)))

    def cpu(self) -> float:
        return self.s.available.get(rs.CPU, 0) / rs.UNIT


# -- start, hello ----------------------------------------------------------------------

def test_start_spawns_one_worker_per_cpu_rounded_up():
    node = Node(cpus=2.5, hello=False)
    assert summary(node.started) == [("spawn", "w1"), ("spawn", "w2"), ("spawn", "w3")]
    assert workers_for(0.5) == 1 and workers_for(4) == 4


def test_worker_and_driver_hello_are_welcomed():
    node = Node(hello=False)
    assert summary(node.hello("w1")) == [("welcome", b"w1")]
    assert summary(node.send(DRIVER, p.Hello("driver", 77, None))) == [
        ("watch", DRIVER, 77), ("welcome", DRIVER)]
    welcome = only(node.send(OTHER, p.Hello("tool", 5, None)), p.Welcome)[0]
    assert welcome.node_id == NODE_ID


def test_unknown_or_repeated_worker_hello_is_ignored_with_a_warning():
    node = Node()
    assert summary(node.send(b"w9", p.Hello("worker", 1, "w9"))) == [("log", "warning")]
    assert summary(node.hello("w1")) == [("log", "warning")]          # already idle
    assert summary(node.send(b"imposter", p.Hello("worker", 1, "w1"))) == [("log", "warning")]
    assert len(node.s.idle) == 1


# -- dispatch and results -------------------------------------------------------------------

def test_submit_runs_on_idle_worker_and_result_goes_to_owner():
    node = Node()
    out = node.submit(1)
    assert summary(out) == [("execute", "w1", 1)]
    ex = only(out, p.Execute)[0]
    assert ex == p.Execute(tid(1), "f", FN, 1, 0, [], [], FN_BLOB, b"args-1", b"", [])
    assert summary(node.done("w1", 1, payloads=[b"42"])) == [("ready", DRIVER, rid(1), "INLINE")]
    assert node.s.tasks == {} and node.cpu() == 1
    ready = node.s.objects.get(rid(1))
    assert ready.state == ObjectState.INLINE and ready.payload == b"42"


def test_function_code_is_sent_once_per_worker():
    node = Node(cpus=2)
    first = only(node.submit(1), p.Execute)[0]          # w2: idle is a stack
    second = only(node.submit(2, fn_blob=b""), p.Execute)[0]
    assert first.fn_blob == FN_BLOB and second.fn_blob == FN_BLOB   # two workers
    node.done("w2", 1)
    third = only(node.submit(3, fn_blob=b""), p.Execute)[0]
    assert third.fn_blob == b""                                      # w2 knows it


def test_task_queued_until_a_worker_says_hello():
    node = Node(hello=False)
    node.send(DRIVER, p.Hello("driver", 1, None))
    assert summary(node.submit(1)) == []
    assert node.s.queued == 1
    assert summary(node.hello("w1")) == [("welcome", b"w1"), ("execute", "w1", 1)]


def test_finished_task_frees_the_worker_for_the_next_in_the_same_step():
    node = Node()
    node.submit(1)
    assert summary(node.submit(2)) == []
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE"),
                                           ("execute", "w1", 2)]


def test_several_returns_and_zero_returns():
    node = Node()
    node.submit(1, num_returns=3)
    out = node.done("w1", 1, payloads=[b"a", b"b", b"c"])
    assert summary(out) == [("ready", DRIVER, rid(1, i), "INLINE") for i in range(3)]
    node.submit(2, num_returns=0)
    assert summary(node.done("w1", 2, payloads=[])) == []
    assert tid(2) not in node.s.tasks


def test_wrong_number_of_returns_fails_the_task():
    node = Node()
    node.submit(1, num_returns=2)
    out = node.done("w1", 1, payloads=[b"only one"])
    assert summary(out) == [("log", "warning"), ("ready", DRIVER, rid(1, 0), "ERROR"),
                            ("ready", DRIVER, rid(1, 1), "ERROR")]
    assert isinstance(error_for(out, rid(1, 1)), ZFabricError)


def test_malformed_result_state_becomes_an_error():
    node = Node()
    node.submit(1)
    out = node.done("w1", 1, payloads=[b"x"], states=[7])
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]


def test_report_for_a_task_the_worker_is_not_running_is_ignored():
    node = Node()
    node.submit(1)
    assert summary(node.done("w1", 99)) == [("log", "warning")]
    assert summary(node.done("w7", 1)) == [("log", "warning")]
    assert node.s.tasks[tid(1)].worker == "w1"


def test_unknown_function_fails_at_submit():
    node = Node()
    out = node.submit(1, fn_blob=b"")
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]
    err = error_for(out, rid(1))
    assert type(err) is ZFabricError and "function" in str(err)


# -- dependencies ------------------------------------------------------------------------

def test_dependent_waits_then_gets_inline_and_store_arguments():
    node = Node(cpus=2)
    node.submit(1)                                  # -> w2
    node.submit(2)                                  # -> w1
    assert summary(node.submit(3, deps=[rid(1), rid(2)])) == []
    assert node.s.tasks[tid(3)].missing == {rid(1), rid(2)}
    assert summary(node.done("w2", 1, payloads=[b"one"])) == [("ready", DRIVER, rid(1), "INLINE")]
    out = node.done("w1", 2, payloads=[b""], states=[STORE], sizes=[100])
    assert summary(out) == [("ready", DRIVER, rid(2), "STORE"), ("execute", "w1", 3)]
    ex = only(out, p.Execute)[0]
    assert ex.dep_ids == [rid(1), rid(2)]
    assert ex.dep_states == [INLINE, STORE]
    assert ex.dep_payloads == [b"one", b""]


def test_ready_argument_dispatches_at_once_and_stays_pinned():
    node = Node()
    node.submit(1)
    node.done("w1", 1)
    node.refs(decs=[rid(1)])                        # the driver dropped it: freed
    assert rid(1) not in node.s.objects
    node.submit(2)
    node.done("w1", 2, payloads=[b""], states=[STORE], sizes=[10])
    out = node.submit(3, deps=[rid(2)])
    assert summary(out) == [("execute", "w1", 3)]
    assert summary(node.refs(decs=[rid(2)])) == []  # still an argument of task 3
    assert summary(node.done("w1", 3)) == [("ready", DRIVER, rid(3), "INLINE"),
                                           ("delete", rid(2))]


def test_argument_error_fails_dependents_with_the_original_error():
    node = Node()
    node.submit(1)
    node.submit(2, deps=[rid(1)])
    node.submit(3, deps=[rid(2)])
    out = node.fail("w1", 1, user_error("bad input"))
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR"), ("ready", DRIVER, rid(2), "ERROR"),
                            ("ready", DRIVER, rid(3), "ERROR")]
    for n in (1, 2, 3):
        err = error_for(out, rid(n))
        assert isinstance(err, TaskError) and isinstance(err, ValueError)
        assert "bad input" in str(err)
    assert "could not be computed" in str(error_for(out, rid(3)))
    assert node.s.tasks == {}
    # submitting against a failed object fails at once, too
    out = node.submit(4, deps=[rid(1)])
    assert summary(out) == [("ready", DRIVER, rid(4), "ERROR")]
    assert isinstance(error_for(out, rid(4)), ValueError)


def test_missing_argument_is_an_object_lost_error():
    node = Node()
    out = node.submit(1, deps=[rid(77)])
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]
    assert isinstance(error_for(out, rid(1)), ObjectLostError)


def test_duplicate_argument_is_counted_once_as_missing_and_unpinned_twice():
    node = Node()
    node.submit(1)
    node.submit(2, deps=[rid(1), rid(1)])
    assert node.s.objects.get(rid(1)).pins == 2
    out = node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[5])
    assert summary(out) == [("ready", DRIVER, rid(1), "STORE"), ("execute", "w1", 2)]
    node.refs(decs=[rid(1)])
    assert summary(node.done("w1", 2)) == [("ready", DRIVER, rid(2), "INLINE"), ("delete", rid(1))]


# -- errors and retries -----------------------------------------------------------------

def test_task_error_is_forwarded_as_is_when_not_retryable():
    node = Node()
    node.submit(1, max_retries=3)
    record = user_error("nope")
    out = node.fail("w1", 1, record, retryable=False)
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]
    assert only(out, p.ObjectReady)[0].payload == record


def test_retryable_error_runs_again_up_to_max_retries():
    node = Node()
    node.submit(1, max_retries=2, retry_exceptions=True)
    for _ in range(2):
        assert summary(node.fail("w1", 1, user_error(), retryable=True)) == [("execute", "w1", 1)]
    out = node.fail("w1", 1, user_error("third"), retryable=True)
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]
    assert "third" in str(error_for(out, rid(1)))
    assert node.s.stats["retried"] == 2


def test_crashed_worker_is_replaced_and_task_retried_then_fails():
    node = Node()
    node.submit(1, max_retries=1)
    assert summary(node.exit("w1", -9)) == [("spawn", "w2")]
    assert node.s.queued == 1 and node.cpu() == 1
    assert summary(node.hello("w2")) == [("welcome", b"w2"), ("execute", "w2", 1)]
    out = node.exit("w2", -11)
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR"), ("spawn", "w3")]
    err = error_for(out, rid(1))
    assert isinstance(err, WorkerCrashedError)
    assert "signal 11" in str(err) and "max_retries=1" in str(err)
    assert node.s.stats["workers_crashed"] == 2


def test_max_retries_minus_one_retries_forever():
    node = Node()
    node.submit(1, max_retries=-1)
    for i in range(2, 12):
        node.exit(f"w{i - 1}", 1)
        assert summary(node.hello(f"w{i}")) == [("welcome", f"w{i}".encode()),
                                                ("execute", f"w{i}", 1)]
    assert summary(node.done("w11", 1)) == [("ready", DRIVER, rid(1), "INLINE")]


def test_max_retries_zero_fails_on_first_crash_with_exit_code():
    node = Node()
    node.submit(1, max_retries=0)
    out = node.exit("w1", 3)
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR"), ("spawn", "w2")]
    assert "exit code 3" in str(error_for(out, rid(1)))


def test_idle_worker_exit_and_spawn_failure_are_replaced():
    node = Node(cpus=2)
    assert summary(node.exit("w1", 0)) == [("spawn", "w3")]
    assert [w.wid for w in node.s.idle] == ["w2"]
    out = node.handle(ev.WorkerSpawnFailed("w3", "no such file"))
    assert summary(out) == [("log", "error"), ("spawn", "w4")]
    assert summary(node.exit("w42")) == []   # not ours


# -- cancel ---------------------------------------------------------------------------------

def test_cancel_queued_task():
    node = Node()
    node.submit(1)
    node.submit(2)
    out = node.cancel(2)
    assert summary(out) == [("ready", DRIVER, rid(2), "ERROR")]
    assert isinstance(error_for(out, rid(2)), TaskCancelledError)
    assert node.s.queued == 0
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE")]   # not run


def test_cancel_task_waiting_on_a_running_dependency():
    node = Node()
    node.submit(1)
    node.submit(2, deps=[rid(1)])
    out = node.cancel(2)
    assert summary(out) == [("ready", DRIVER, rid(2), "ERROR")]
    assert node.s.objects.get(rid(1)).dependents == []
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE")]


def test_cancel_running_task_interrupts_and_is_not_retried():
    node = Node()
    node.submit(1, max_retries=3, retry_exceptions=True)
    assert summary(node.cancel(1)) == [("interrupt", "w1", 1)]
    assert summary(node.cancel(1)) == []                       # already asked
    out = node.fail("w1", 1, user_error(), retryable=True)     # raised while cancelled
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]
    assert isinstance(error_for(out, rid(1)), TaskCancelledError)


def test_cancel_running_task_reported_cancelled():
    node = Node()
    node.submit(1)
    node.cancel(1)
    out = node.report_cancelled("w1", 1)
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]
    assert isinstance(error_for(out, rid(1)), TaskCancelledError)
    assert node.s.stats["cancelled"] == 1


def test_cancelled_task_that_finishes_anyway_keeps_its_result():
    node = Node()
    node.submit(1)
    node.cancel(1)
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE")]


def test_force_cancel_kills_the_worker_and_is_not_retried():
    node = Node()
    node.submit(1, max_retries=3)
    assert summary(node.cancel(1, force=False)) == [("interrupt", "w1", 1)]
    assert summary(node.cancel(1, force=True)) == [("kill", "w1")]    # escalate
    out = node.exit("w1", -9)
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR"), ("spawn", "w2")]
    assert isinstance(error_for(out, rid(1)), TaskCancelledError)


def test_cancel_finished_or_unknown_task_changes_nothing():
    node = Node()
    node.submit(1)
    node.done("w1", 1)
    assert summary(node.cancel(1)) == []
    assert summary(node.cancel(1, force=True)) == []
    assert summary(node.cancel(99)) == []
    assert node.s.objects.get(rid(1)).state == ObjectState.INLINE


def test_dependents_of_a_cancelled_task_fail_with_task_cancelled():
    node = Node()
    node.submit(1)
    node.submit(2, deps=[rid(1)])
    node.cancel(1, force=True)
    out = node.exit("w1")
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR"), ("ready", DRIVER, rid(2), "ERROR"),
                            ("spawn", "w2")]
    err = error_for(out, rid(2))
    assert isinstance(err, TaskCancelledError) and "could not be computed" in str(err)


def test_recursive_cancel_reaches_children_of_the_task():
    node = Node(cpus=2)
    node.submit(1)                                                    # w2
    child = b"w2"                                                     # the parent's worker
    node.submit(2, client=child, parent=1, depth=1)                   # w1
    node.submit(3, client=child, parent=1, depth=1)                   # queued
    node.submit(4, client=b"w1", parent=2, depth=2)                   # queued
    out = node.cancel(1, recursive=True)
    assert sorted(summary(out)) == sorted([
        ("interrupt", "w1", 2), ("ready", child, rid(3), "ERROR"),
        ("ready", b"w1", rid(4), "ERROR"), ("interrupt", "w2", 1)])
    assert set(node.s.tasks) == {tid(1), tid(2)}


def test_non_recursive_cancel_spares_children():
    node = Node(cpus=2)
    node.submit(1)                                                    # w2
    node.submit(2, client=b"w2", parent=1, depth=1)                   # w1
    node.submit(3, client=b"w2", parent=1, depth=1)                   # queued
    assert summary(node.cancel(1, recursive=False)) == [("interrupt", "w2", 1)]
    assert set(node.s.tasks) == {tid(1), tid(2), tid(3)}


# -- blocked workers -------------------------------------------------------------------------

def test_blocked_worker_gives_its_cpu_to_an_extra_worker():
    node = Node(cpus=1, max_workers=4)
    node.submit(1)
    node.submit(2, client=b"w1", parent=1, depth=1)
    assert node.s.queued == 1
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
    """Documented in _on_unblocked: the task is running again, so it takes its CPU back."""
    node = Node(cpus=1, max_workers=4)
    node.submit(1)
    node.submit(2, parent=1, depth=1)
    node.send(b"w1", p.Blocked(tid(1)))
    node.hello("w2")                                   # runs task 2
    node.send(b"w1", p.Unblocked(tid(1)))
    assert node.cpu() == -1
    node.submit(3)
    assert node.s.queued == 1                          # nothing fits a negative CPU
    assert summary(node.done("w2", 2)) == [("ready", DRIVER, rid(2), "INLINE")]
    assert node.cpu() == 0 and node.s.queued == 1
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
    assert summary(node.send(b"w1", p.Blocked(tid(9)))) == []       # not its task
    assert node.cpu() == 0
    node.send(b"w1", p.Blocked(tid(1)))
    node.send(b"w1", p.Blocked(tid(1)))
    assert node.cpu() == 1
    node.send(b"w1", p.Unblocked(tid(1)))
    node.send(b"w1", p.Unblocked(tid(1)))
    assert node.cpu() == 0
    assert summary(node.send(b"w9", p.Blocked(tid(1)))) == []       # not a worker


def test_task_ending_or_crashing_while_blocked_returns_only_what_it_holds():
    node = Node(cpus=2, resources={"gpu": 1}, max_workers=2)
    node.submit(1, resources={"gpu": 1})
    node.submit(2, max_retries=0)
    node.send(b"w2", p.Blocked(tid(1)))
    node.send(b"w1", p.Blocked(tid(2)))
    assert node.cpu() == 2
    node.done("w2", 1)
    node.exit("w1")
    assert node.cpu() == 2 and node.s.available["gpu"] == rs.UNIT


def test_max_workers_bounds_extra_workers():
    node = Node(cpus=1, max_workers=2)
    node.submit(1)
    node.submit(2, parent=1, depth=1)
    node.submit(3, parent=1, depth=1, cpu=0)
    node.send(b"w1", p.Blocked(tid(1)))
    assert summary(node.send(b"w1", p.Refs([], []))) == []          # w2 already starting
    assert len(node.s.workers) == 2


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
    assert set(node.s.workers) == {"w1"}


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
    assert node.cpu() == 0 and node.s.queued == 0
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


# -- resources and priority --------------------------------------------------------------------

def test_deeper_task_first_then_oldest():
    node = Node(cpus=1)
    node.submit(1)
    node.submit(2, depth=0)
    node.submit(3, depth=2)
    node.submit(4, depth=1)
    node.submit(5, depth=2)
    order = []
    for n in (1, 3, 5, 4):
        order += [e[2] for e in summary(node.done("w1", n)) if e[0] == "execute"]
    assert order == [3, 5, 4, 2]


def test_priority_across_resource_shapes():
    node = Node(cpus=1, num_workers=1)
    node.submit(1)
    node.submit(2, cpu=0.5, depth=0)
    node.submit(3, cpu=1, depth=1)
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE"),
                                           ("execute", "w1", 3)]


def test_fractional_cpus_share_one_cpu():
    node = Node(cpus=1, num_workers=5)
    out = []
    for n in range(1, 6):
        out += node.submit(n, cpu=0.25)
    assert [e[2] for e in summary(out)] == [1, 2, 3, 4]
    assert node.cpu() == 0 and node.s.queued == 1


def test_a_blocked_shape_does_not_hold_back_another():
    node = Node(cpus=2, resources={"gpu": 1})
    node.submit(1, resources={"gpu": 1})             # w2
    assert summary(node.submit(2, resources={"gpu": 1})) == []
    assert summary(node.submit(3)) == [("execute", "w1", 3)]
    assert node.s.available["gpu"] == 0


def test_infeasible_task_waits_and_status_reports_it():
    node = Node(cpus=1)
    assert summary(node.submit(1, resources={"tpu": 1})) == []
    status = node.s.status()
    assert status["tasks_queued"] == 1
    assert status["pending_demand"] == [{"CPU": 1.0, "tpu": 1.0}]
    assert summary(node.submit(2)) == [("execute", "w1", 2)]


def test_zero_cpu_task_needs_no_cpu():
    node = Node(cpus=1, num_workers=2)
    node.submit(1)
    assert summary(node.submit(2, cpu=0)) == [("execute", "w1", 2)]


# -- objects: put, refs, subscribe, store capacity ---------------------------------------------

def test_store_result_is_deleted_when_its_last_ref_goes():
    node = Node()
    node.submit(1)
    node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[400])
    assert node.s.objects.store_used == 400
    node.refs(incs=[rid(1)], client=OTHER)                  # borrowed by another client
    assert summary(node.refs(decs=[rid(1)])) == []
    assert summary(node.refs(decs=[rid(1)], client=OTHER)) == [("delete", rid(1))]
    assert node.s.objects.store_used == 0
    assert summary(node.refs(decs=[rid(1)], client=OTHER)) == []   # once only


def test_inline_result_is_freed_without_delete():
    node = Node()
    node.submit(1)
    node.done("w1", 1)
    assert summary(node.refs(decs=[rid(1)])) == []
    assert rid(1) not in node.s.objects


def test_ref_dropped_while_pending_frees_the_result_when_sealed():
    node = Node()
    node.submit(1)
    node.refs(decs=[rid(1)])
    out = node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[10])
    assert summary(out) == [("ready", DRIVER, rid(1), "STORE"), ("delete", rid(1))]
    assert node.s.objects.store_used == 0


def test_result_over_store_capacity_is_object_store_full():
    node = Node(store_capacity=100)
    node.submit(1, num_returns=2)
    out = node.done("w1", 1, payloads=[b"", b""], states=[STORE, STORE], sizes=[60, 60])
    assert summary(out) == [("ready", DRIVER, rid(1, 0), "STORE"), ("delete", rid(1, 1)),
                            ("ready", DRIVER, rid(1, 1), "ERROR")]
    assert isinstance(error_for(out, rid(1, 1)), ObjectStoreFullError)
    assert node.s.objects.store_used == 60


def test_put_inline_and_store_with_capacity():
    node = Node(store_capacity=100)
    assert summary(node.put(put_id(1))) == []
    assert node.s.objects.get(put_id(1)).payload == b"put-value"
    assert summary(node.put(put_id(2), state=STORE, size=80, req_id=7)) == [("put_reply", 7, False)]
    out = node.put(put_id(3), state=STORE, size=30, req_id=8)
    assert summary(out) == [("delete", put_id(3)), ("put_reply", 8, True)]
    assert "object store is full" in only(out, p.PutReply)[0].error
    assert put_id(3) not in node.s.objects
    assert summary(node.put(put_id(4), state=STORE, size=30)) == [("delete", put_id(4)),
                                                                  ("log", "warning")]
    assert summary(node.put(put_id(1), req_id=9)) == [("put_reply", 9, True)]   # exists
    assert summary(node.send(DRIVER, p.Put(put_id(5), 3, 1, [], 10, b"x"))) == [
        ("put_reply", 10, True)]                                               # bad state
    assert summary(node.refs(decs=[put_id(2)])) == [("delete", put_id(2))]


def test_contained_objects_live_as_long_as_their_container():
    node = Node()
    node.put(put_id(1), state=STORE, size=10, req_id=1)
    node.put(put_id(2), state=STORE, size=10, req_id=2, contained=[put_id(1)])
    assert summary(node.refs(decs=[put_id(1)])) == []
    assert summary(node.refs(decs=[put_id(2)])) == [("delete", put_id(2)), ("delete", put_id(1))]


def test_task_arguments_nested_in_args_are_kept_alive():
    node = Node()
    node.put(put_id(1), state=STORE, size=10, req_id=1)
    node.submit(1, contained=[put_id(1)])
    assert summary(node.refs(decs=[put_id(1)])) == []
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE"),
                                           ("delete", put_id(1))]


def test_result_holding_refs_keeps_them_alive():
    node = Node()
    node.submit(1)
    node.put(put_id(1), state=STORE, size=10, req_id=1, client=b"w1")   # put inside the task
    node.done("w1", 1, contained=[[put_id(1)]])
    assert summary(node.refs(decs=[put_id(1)], client=b"w1")) == []
    assert summary(node.refs(decs=[rid(1)])) == [("delete", put_id(1))]


def test_subscribe_ready_pending_and_unknown():
    node = Node()
    node.submit(1)
    node.put(put_id(1))
    out = node.send(OTHER, p.Subscribe([put_id(1), rid(1), rid(50)]))
    assert summary(out) == [("ready", OTHER, put_id(1), "INLINE"),
                            ("ready", OTHER, rid(50), "ERROR")]
    assert isinstance(error_for(out, rid(50)), ObjectLostError)
    node.send(OTHER, p.Subscribe([rid(1)]))                    # twice: still one answer
    assert sorted(summary(node.done("w1", 1))) == [("ready", DRIVER, rid(1), "INLINE"),
                                                   ("ready", OTHER, rid(1), "INLINE")]


def test_refs_for_unknown_objects_are_ignored():
    node = Node()
    assert summary(node.refs(incs=[rid(5)], decs=[rid(6)])) == []
    assert node.s.objects.entries == {}


# -- clients going away -------------------------------------------------------------------------

def test_driver_gone_cancels_its_tasks_and_frees_its_objects():
    node = Node(cpus=1)
    node.send(OTHER, p.Hello("driver", 2, None))
    node.put(put_id(1), state=STORE, size=10, req_id=1)
    node.submit(1)                                             # running on w1
    node.submit(2)                                             # queued
    node.submit(3, client=OTHER)                               # someone else's
    out = node.handle(ev.ClientGone(DRIVER))
    assert summary(out) == [("kill", "w1"), ("ready", DRIVER, rid(2), "ERROR"),
                            ("delete", put_id(1))]
    assert DRIVER not in node.s.drivers
    out = node.exit("w1")
    assert summary(out) == [("spawn", "w2")]                   # nobody to tell about task 1
    assert rid(1) not in node.s.objects
    assert summary(node.hello("w2")) == [("welcome", b"w2"), ("execute", "w2", 3)]


def test_goodbye_is_like_client_gone_and_non_drivers_are_ignored():
    node = Node()
    node.submit(1, client=b"w1")
    assert summary(node.handle(ev.ClientGone(b"w1"))) == []    # workers are not watched
    assert summary(node.handle(ev.ClientGone(b"stranger"))) == []
    node.submit(2)
    out = node.send(DRIVER, p.Goodbye("bye"))
    assert summary(out) == [("ready", DRIVER, rid(2), "ERROR")]


def test_task_of_a_gone_driver_that_ends_frees_its_store_results():
    node = Node()
    node.submit(1)
    node.handle(ev.ClientGone(DRIVER))
    out = node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[10])   # raced the kill
    assert summary(out) == [("delete", rid(1))]
    assert node.s.objects.store_used == 0


# -- queries and control ------------------------------------------------------------------------

def test_status_and_timeline():
    node = Node(cpus=2, resources={"gpu": 1})
    node.submit(1)
    status = node.s.status()
    assert status["Resources"] == {"CPU": 2.0, "gpu": 1.0}
    assert status["available"] == {"CPU": 1.0, "gpu": 1.0} and status["tasks_running"] == 1
    node.now = 3.0
    node.done("w2", 1)
    [event] = node.s.trace_events()
    assert event["name"] == "f" and event["tid"] == "w2" and event["args"]["status"] == "ok"
    assert node.s.timeline_since(0) == list(node.s.timeline) and node.s.timeline_since(1) == []
    status = node.s.status()
    assert status["stats"]["finished"] == 1 and status["available"] == {"CPU": 2.0, "gpu": 1.0}


def test_shutdown_stops_the_node():
    node = Node()
    out = node.send(DRIVER, p.Shutdown("bye"))
    assert out == [fx.StopNode("bye")]


def test_unexpected_message_and_event():
    node = Node()
    assert summary(node.send(DRIVER, p.Welcome(b"x", "", "", "", "{}", 0))) == [("log", "warning")]
    with pytest.raises(TypeError):
        node.s.handle(object(), 0.0)


# -- regressions: bugs the property and unit tests found --------------------------------------------------------------


# Regression: failing a task fails its dependents recursively (_finish_failed ->
# _object_ready ->  _finish_failed ...): a chain of ~500 dependent tasks overflows the stack
# and the  exception would stop the node loop
def test_long_dependency_chain_fails_without_recursion_error():
    node = Node()
    node.submit(1)
    for n in range(2, 1002):
        node.submit(n, deps=[rid(n - 1)])
    out = node.cancel(1, force=True)
    out += node.exit("w1")
    assert len(only(out, p.ObjectReady)) == 1001



# Regression: after a force cancel the scheduler still hands the worker it asked to kill a
# new task  if that worker's TaskDone was already in flight: the new task then dies with the
# killed worker and is charged an attempt (here it fails with WorkerCrashedError)
def test_force_cancel_race_does_not_reuse_the_killed_worker():
    node = Node()
    node.submit(1, max_retries=0)
    node.submit(2, max_retries=0)
    assert summary(node.cancel(1, force=True)) == [("kill", "w1")]
    out = node.done("w1", 1)                 # sent before the SIGKILL landed
    assert ("execute", "w1", 2) not in summary(out)
    out = node.exit("w1", -9)
    assert not any(m.oid == rid(2) for m in only(out, p.ObjectReady))



# Regression: objects a worker holds are never released when the worker dies:
# _on_worker_exited  does not drop the worker's references, so a put (or a nested task's
# result) made by  a task whose worker crashes stays in the store forever
def test_objects_held_by_a_dead_worker_are_freed():
    node = Node()
    node.submit(1, max_retries=0)
    node.put(put_id(1), state=STORE, size=100, req_id=1, client=b"w1")
    node.submit(2, client=b"w1", parent=1, depth=1)
    out = node.exit("w1", -9)
    assert ("delete", put_id(1)) in summary(out)
    assert put_id(1) not in node.s.objects



# Regression: _on_submit pins only the contained ids that exist at submit, but _end_task
# unpins every  contained id that exists when the task ends: an id created in between gets
# pins == -1  (validate() fails) and can never be freed
def test_contained_id_unknown_at_submit_is_not_unpinned():
    node = Node()
    node.submit(1, contained=[put_id(1)])    # put_id(1) not known yet
    node.put(put_id(1), state=STORE, size=10, req_id=1)
    node.done("w1", 1)                       # validate() runs here
    assert summary(node.refs(decs=[put_id(1)])) == [("delete", put_id(1))]


# Regression: a recursive cancel walked the children recursively and overflowed the
# stack on ~1,000 nested tasks.
def test_deeply_nested_recursive_cancel_without_recursion_error():
    node = Node(hello=False)
    node.send(DRIVER, p.Hello("driver", 1, None))
    node.submit(1)
    for n in range(2, 1201):
        node.submit(n, client=b"w%d" % n, parent=n - 1, depth=n - 1)
    out = node.cancel(1)
    assert len(only(out, p.ObjectReady)) == 1200
