"""core/directory.py: the object directory on one node. Put, subscribe, refs,
pins of arguments and contained refs, free, and the store's capacity
(tests/harness/scheduler.py). Fetch, lose and publish across nodes: tests/sim/.
"""
from __future__ import annotations

from zfabric import protocol as p
from zfabric.core import events as ev
from zfabric.exceptions import ObjectLostError, ObjectStoreFullError

from tests.harness.scheduler import (DRIVER, OTHER, STORE, Node, error_for, only, put_id, rid,
                                     summary)


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
    assert summary(out) == [("delete", rid(1))]        # not sent to the driver that dropped it
    assert node.s.objects.store_used == 0


def test_a_dropped_result_that_a_task_still_needs_is_not_pushed_to_its_submitter():
    # r = f.remote(r) in a loop: the driver drops each ref as it submits the next
    node = Node(cpus=1)
    node.submit(1)
    node.submit(2, deps=[rid(1)])
    node.refs(decs=[rid(1)])
    out = node.done("w1", 1)
    assert [s for s in summary(out) if s[0] == "ready"] == []
    assert ("execute", "w1", 2) in summary(out)        # the dependent runs with the value
    assert summary(node.done("w1", 2))[0][:3] == ("ready", DRIVER, rid(2))


def test_result_over_store_capacity_spills_what_nobody_pinned():
    node = Node(store_capacity=100)
    node.submit(1, num_returns=2)
    out = node.done("w1", 1, payloads=[b"", b""], states=[STORE, STORE], sizes=[60, 60])
    assert summary(out) == [("ready", DRIVER, rid(1, 0), "STORE"), ("spill", rid(1, 0)),
                            ("ready", DRIVER, rid(1, 1), "STORE")]
    assert node.s.objects.store_used == 120                 # till the copy to disk is done
    assert summary(node.handle(ev.ObjectSpilled(rid(1, 0)))) == [("unstore", rid(1, 0))]
    assert node.s.objects.store_used == 60 and node.s.objects.table.spilled_bytes == 60


def test_result_over_store_capacity_is_object_store_full_when_all_is_pinned():
    node = Node(store_capacity=100)
    node.put(put_id(1), state=STORE, size=80, req_id=1)
    node.submit(1, deps=[put_id(1)])                      # pins it while it runs
    out = node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[60])
    assert summary(out) == [("delete", rid(1)), ("ready", DRIVER, rid(1), "ERROR")]
    error = error_for(out, rid(1))
    assert isinstance(error, ObjectStoreFullError) and "pinned" in str(error)
    assert node.s.objects.store_used == 80


def test_put_inline_and_store_with_capacity():
    node = Node(store_capacity=100)
    assert summary(node.put(put_id(1))) == []
    assert node.s.objects.get(put_id(1)).payload == b"put-value"
    assert summary(node.put(put_id(2), state=STORE, size=80, req_id=7)) == [("put_reply", 7, False)]
    node.submit(1, deps=[put_id(2)])                      # pinned: it may not be spilled
    out = node.put(put_id(3), state=STORE, size=30, req_id=8)
    assert summary(out) == [("delete", put_id(3)), ("put_reply", 8, True)]
    assert "object store is full" in only(out, p.PutReply)[0].error
    assert put_id(3) not in node.s.objects
    # a put that wants no answer (a task's argument, its Submit right behind it) becomes
    # the error, and the task that names it raises it
    assert summary(node.put(put_id(4), state=STORE, size=30)) == [("delete", put_id(4))]
    assert node.s.objects.get(put_id(4)).state == p.ObjectState.ERROR
    out = node.submit(2, deps=[put_id(4)])
    assert summary(out) == [("ready", DRIVER, rid(2), "ERROR")]
    assert isinstance(error_for(out, rid(2)), ObjectStoreFullError)
    assert summary(node.put(put_id(1), req_id=9)) == [("nonsense",),
                                                      ("put_reply", 9, True)]   # exists
    assert summary(node.send(DRIVER, p.Put(put_id(5), 3, 1, [], 10, b"x"))) == [
        ("nonsense",), ("put_reply", 10, True)]                                # bad state
    node.done("w1", 1)
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


# -- regressions: bugs the property and unit tests found --------------------------------------------------------------

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


def test_a_ref_in_a_value_to_an_object_not_known_yet_counts_once_it_is_and_not_after_the_value_goes():
    node = Node()
    node.put(put_id(1), contained=[put_id(2)])        # 2 is not known here yet
    assert node.s.objects.table.awaited == {put_id(2): [node.s.objects.get(put_id(1))]}
    node.put(put_id(2))
    assert node.s.objects.get(put_id(2)).contained_in == 1
    assert node.s.objects.get(put_id(1)).contains == [put_id(2)]
    node.refs(decs=[put_id(2)])                        # kept: 1 holds it
    assert node.s.objects.get(put_id(2)) is not None
    node.put(put_id(3), contained=[put_id(4)])
    node.refs(decs=[put_id(1), put_id(3)])             # 3 goes before 4 is ever known
    assert node.s.objects.entries == {} and node.s.objects.table.awaited == {}
    node.put(put_id(4))                                # nothing counts it now
    assert node.s.objects.get(put_id(4)).contained_in == 0
