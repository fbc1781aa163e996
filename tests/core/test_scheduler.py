"""core/scheduler.py, the entry point: the task table, submission and dependencies,
finish / fail / retry, cancel, and the clients (hello, goodbye, a driver gone).

Feed a bare Scheduler events, assert the exact effects; the harness
(tests/harness/scheduler.py) runs `Scheduler.validate()` after every step.
"""
from __future__ import annotations

import pytest

from zfabric import protocol as p
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.protocol import ObjectState
from zfabric.exceptions import (ObjectLostError, TaskCancelledError, TaskError,
                                WorkerCrashedError, ZFabricError)

from tests.harness.scheduler import (DRIVER, FN, FN_BLOB, INLINE, NODE_ID, OTHER, STORE, Node,
                                     error_for, only, put_id, rid, submit_msg, summary, tid,
                                     user_error)


# -- start, hello ----------------------------------------------------------------------

def test_worker_and_driver_hello_are_welcomed():
    node = Node(hello=False)
    assert summary(node.hello("w1")) == [("welcome", b"w1")]
    assert summary(node.send(DRIVER, p.Hello("driver", 77, None))) == [
        ("watch", DRIVER, 77), ("welcome", DRIVER)]
    welcome = only(node.send(OTHER, p.Hello("tool", 5, None)), p.Welcome)[0]
    assert welcome.node_id == NODE_ID


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
    assert summary(out) == [("nonsense",), ("ready", DRIVER, rid(1, 0), "ERROR"),
                            ("ready", DRIVER, rid(1, 1), "ERROR")]
    assert isinstance(error_for(out, rid(1, 1)), ZFabricError)


def test_malformed_result_state_becomes_an_error():
    node = Node()
    node.submit(1)
    out = node.done("w1", 1, payloads=[b"x"], states=[7])
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]


def test_report_for_a_task_the_worker_is_not_running_is_refused():
    node = Node()
    node.submit(1)
    assert summary(node.done("w1", 99)) == [("nonsense",)]
    assert summary(node.done("w7", 1)) == [("nonsense",)]
    assert node.s.tasks[tid(1)].worker == "w1"


def test_unknown_function_fails_at_submit():
    node = Node()
    out = node.submit(1, fn_blob=b"")
    assert summary(out) == [("ready", DRIVER, rid(1), "ERROR")]
    err = error_for(out, rid(1))
    assert type(err) is ZFabricError and "function" in str(err)


# -- a frame of several messages ------------------------------------------------------

def test_a_frame_of_messages_ends_as_the_messages_one_by_one():
    """The node hands a client's messages in a row on as one event, scheduled once
    after them all: a task that depends on one before it in the frame still waits
    for it, and the rest start and queue as they would one by one."""
    def msgs():   # (afresh for each node: a node keeps a Submit's code, not the message's)
        return (submit_msg(1), submit_msg(2, fn_blob=b""),
                submit_msg(3, deps=[rid(1)], fn_blob=b""), submit_msg(4, fn_blob=b""),
                p.Refs([], [rid(2)]))
    one_by_one = Node(cpus=2)
    expected = [e for m in msgs() for e in summary(one_by_one.send(DRIVER, m))]
    framed = Node(cpus=2)
    assert summary(framed.handle(ev.ClientMessages(DRIVER, msgs()))) == expected
    assert ({t: task.state for t, task in framed.s.tasks.items()}
            == {t: task.state for t, task in one_by_one.s.tasks.items()})
    assert summary(framed.done("w2", 1)) == summary(one_by_one.done("w2", 1))


def test_nonsense_in_a_frame_is_refused_and_the_rest_still_handled():
    node = Node()
    out = node.handle(ev.ClientMessages(DRIVER, (p.TaskDone(tid(9), 0, False, [], [], [], 0.0,
                                                            0.0, 0.0, 0.0, []),
                                                 submit_msg(1))))
    assert summary(out) == [("nonsense",), ("execute", "w1", 1)]


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
    assert node.s.queues.count == 1 and node.cpu() == 1
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


# -- cancel ---------------------------------------------------------------------------------

def test_cancel_queued_task():
    node = Node()
    node.submit(1)
    node.submit(2)
    out = node.cancel(2)
    assert summary(out) == [("ready", DRIVER, rid(2), "ERROR")]
    assert isinstance(error_for(out, rid(2)), TaskCancelledError)
    assert node.s.queues.count == 0
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
    assert summary(node.cancel(1)) == []                # (its return is still held)
    assert summary(node.cancel(1, force=True)) == []
    assert summary(node.cancel(99)) == [("nonsense",)]  # nobody knows that object
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

def test_shutdown_stops_the_node():
    node = Node()
    out = node.send(DRIVER, p.Shutdown("bye"))
    assert out == [fx.StopNode("bye")]


def test_unexpected_message_and_event():
    node = Node()
    assert summary(node.send(DRIVER, p.Welcome(b"x", "", "", "", "{}", 0))) == [("nonsense",)]
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
