"""core/capacity.py and the directory's capacity paths: evicting secondary
copies, spilling primary ones to disk and restoring them (tests/harness/scheduler.py).

The unit tests state the policy: least recently used first, secondary
copies before spilling, pinned objects never, nothing done when it would
not make enough room. The state machine plays a driver, tasks and the
node's spiller (a FIFO of copy jobs, whose disk may be full) against one
scheduler, keeps a model of the files in the store and on disk, and checks
after every step: `validate()` (the bytes in the store, being spilled and
spilled add up), no object anybody holds loses its bytes, a local object
has its store file and a spilled one its spill file, a client or a task is
only handed an object whose store file exists, nothing pinned is spilled,
and a put is refused only when spilling everything unpinned would not make
room. At the end every file is gone.
"""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zfabric import protocol as p
from zfabric.core import capacity
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.core.objects import ObjectTable
from zfabric.exceptions import ObjectStoreFullError
from zfabric.protocol import ObjectState

from tests.harness.scheduler import (DRIVER, STORE, Node, error_for, put_id, rid, submit_msg,
                                     summary)

NODE_B = b"B" * 16


def stored(table: ObjectTable, n: int, size: int, remote=()) -> None:
    entry = table.create(put_id(n), DRIVER)
    table.seal(entry, ObjectState.STORE, size, b"", [])
    entry.remote = list(remote)   # other nodes holding a copy: ours is a secondary one


# -- the policy -------------------------------------------------------------------------

def test_nothing_moves_while_it_fits():
    table = ObjectTable()
    stored(table, 1, 60)
    assert capacity.plan(table, 40, 100, may_spill=True) == capacity.Room()


def test_secondary_copies_are_evicted_before_anything_is_spilled_oldest_first():
    table = ObjectTable()
    stored(table, 1, 30)                       # primary, oldest
    stored(table, 2, 30, remote=[NODE_B])      # secondary
    stored(table, 3, 30, remote=[NODE_B])      # secondary, newest
    room = capacity.plan(table, 40, 100, may_spill=True)
    assert [e.oid for e in room.evict] == [put_id(2)] and room.spill == []
    room = capacity.plan(table, 80, 100, may_spill=True)
    assert [e.oid for e in room.evict] == [put_id(2), put_id(3)]
    assert [e.oid for e in room.spill] == [put_id(1)]


def test_use_makes_an_object_the_last_to_go_and_pinned_ones_never_go():
    table = ObjectTable()
    for n in (1, 2, 3):
        stored(table, n, 30)
    table.touch(put_id(1))                     # got: now the most recently used
    table.pin(put_id(2))                       # an argument of a task
    room = capacity.plan(table, 50, 100, may_spill=True)
    assert [e.oid for e in room.spill] == [put_id(3), put_id(1)]
    assert capacity.plan(table, 80, 100, may_spill=True) is None   # only 60 are movable


def test_nothing_is_done_when_it_cannot_make_enough_room():
    table = ObjectTable()
    stored(table, 1, 30)
    assert capacity.plan(table, 101, 100, may_spill=True) is None   # never fits alone
    assert capacity.plan(table, 80, 100, may_spill=False) is None   # spilling is off
    table.start_spill(table.entries[put_id(1)])                      # being spilled already
    assert capacity.plan(table, 80, 100, may_spill=True) == capacity.Room()
    assert capacity.plan(table, 90, 100, may_spill=True) == capacity.Room()
    assert capacity.plan(table, 101, 100, may_spill=True) is None


# -- the directory ----------------------------------------------------------------------

def test_a_spilled_put_comes_back_for_a_get_and_for_a_task():
    node = Node(store_capacity=100)
    node.put(put_id(1), state=STORE, size=60, req_id=1)
    out = node.put(put_id(2), state=STORE, size=60, req_id=2)
    assert summary(out) == [("spill", put_id(1)), ("put_reply", 2, False)]
    assert summary(node.handle(ev.ObjectSpilled(put_id(1)))) == [("unstore", put_id(1))]
    # a get: restore it, which spills the other
    out = node.send(DRIVER, p.Subscribe([put_id(1)]))
    assert summary(out) == [("spill", put_id(2)), ("restore", put_id(1))]
    assert summary(node.handle(ev.ObjectRestored(put_id(1)))) == [
        ("delete_spilled", put_id(1)), ("ready", DRIVER, put_id(1), "STORE")]
    assert summary(node.handle(ev.ObjectSpilled(put_id(2)))) == [("unstore", put_id(2))]
    # a task: it waits for its argument to come back, pinned meanwhile
    out = node.submit(1, deps=[put_id(2)])
    assert summary(out) == [("spill", put_id(1)), ("restore", put_id(2))]
    out = node.handle(ev.ObjectRestored(put_id(2)))
    assert summary(out) == [("delete_spilled", put_id(2)), ("execute", "w1", 1)]
    # its spill ends while the task holds it: the store copy stays
    assert summary(node.handle(ev.ObjectSpilled(put_id(1)))) == [("unstore", put_id(1))]
    assert node.s.objects.table.spilled_bytes == 60 and node.s.objects.store_used == 60


def test_a_spill_that_ends_after_a_task_pinned_the_object_keeps_it_in_the_store():
    node = Node(store_capacity=100)
    node.put(put_id(1), state=STORE, size=60, req_id=1)
    node.put(put_id(2), state=STORE, size=60, req_id=2)            # spills put 1
    assert summary(node.submit(1, deps=[put_id(1)])) == [("execute", "w1", 1)]
    assert summary(node.handle(ev.ObjectSpilled(put_id(1)))) == [("delete_spilled", put_id(1))]
    assert node.s.objects.get(put_id(1)).local


def test_freeing_objects_on_their_way_to_or_from_disk_removes_their_files():
    node = Node(store_capacity=100)
    node.put(put_id(1), state=STORE, size=60, req_id=1)
    node.put(put_id(2), state=STORE, size=60, req_id=2)            # spills put 1
    assert summary(node.refs(decs=[put_id(1)])) == [("delete", put_id(1))]
    assert summary(node.handle(ev.ObjectSpilled(put_id(1)))) == [("delete_spilled", put_id(1))]
    node.put(put_id(3), state=STORE, size=60, req_id=3)            # spills put 2
    node.handle(ev.ObjectSpilled(put_id(2)))
    node.refs(decs=[put_id(3)])
    assert summary(node.send(DRIVER, p.Subscribe([put_id(2)]))) == [("restore", put_id(2))]
    assert summary(node.refs(decs=[put_id(2)])) == [("delete_spilled", put_id(2))]
    assert summary(node.handle(ev.ObjectRestored(put_id(2)))) == [("delete", put_id(2))]
    assert node.s.objects.entries == {}
    assert (node.s.objects.store_used, node.s.objects.table.spilled_bytes) == (0, 0)


def test_a_full_disk_stops_spilling_and_names_the_cause_until_disk_is_freed():
    node = Node(store_capacity=100)
    node.put(put_id(1), state=STORE, size=60, req_id=1)
    node.put(put_id(2), state=STORE, size=30, req_id=2)
    node.put(put_id(3), state=STORE, size=30, req_id=3)            # spills put 1
    out = node.handle(ev.SpillFailed(put_id(1), "No space left on device (spill dir /d)"))
    assert summary(out) == [("log", "warning")]
    assert node.s.objects.get(put_id(1)).local
    out = node.put(put_id(4), state=STORE, size=10, req_id=4)
    assert summary(out) == [("delete", put_id(4)), ("put_reply", 4, True)]
    reply = [e.msg for e in out if type(e) is fx.Send][0]
    assert "spilling to disk failed: No space left on device" in reply.error
    assert node.s.stats["spill_failures"] == 1
    node.refs(decs=[put_id(2)])                                    # room without spilling
    assert summary(node.put(put_id(5), state=STORE, size=10, req_id=5)) == [("put_reply", 5, False)]


def test_a_spilled_object_that_cannot_be_read_back_is_lost():
    node = Node(store_capacity=100)
    node.put(put_id(1), state=STORE, size=60, req_id=1)
    node.put(put_id(2), state=STORE, size=60, req_id=2)
    node.handle(ev.ObjectSpilled(put_id(1)))
    node.refs(decs=[put_id(2)])
    node.send(DRIVER, p.Subscribe([put_id(1)]))
    out = node.handle(ev.RestoreFailed(put_id(1), "Input/output error", lost=True))
    assert ("delete_spilled", put_id(1)) in summary(out)
    assert "could not be read back from disk" in str(error_for(out, put_id(1)))


def test_a_result_that_does_not_fit_with_everything_pinned_is_object_store_full():
    node = Node(store_capacity=100)
    node.put(put_id(1), state=STORE, size=90, req_id=1)
    node.submit(1, deps=[put_id(1)])
    out = node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[20])
    assert isinstance(error_for(out, rid(1)), ObjectStoreFullError)


# -- random schedules ---------------------------------------------------------------------

class CapacityMachine(RuleBasedStateMachine):
    CAPACITY = 150

    def __init__(self):
        super().__init__()
        self.node = Node(cpus=2, store_capacity=self.CAPACITY)
        self.n = 0
        self.held: list[bytes] = []          # put objects the driver holds
        self.tasks: dict[int, bytes] = {}    # task number -> its argument
        self.submitted: list[int] = []       # (their results are the driver's too)
        self.store: set[bytes] = set()       # files in the store
        self.disk: set[bytes] = set()        # spill files
        self.jobs: list[tuple] = []          # the spiller's queue, in order
        self.spilled_ok: set[bytes] = set()  # spills reported done, not yet followed up

    # -- the world -----------------------------------------------------------------------

    def apply(self, out: list) -> None:
        table = self.node.s.objects.table
        for e in out:
            kind = type(e)
            if kind is fx.SpillObject:
                entry = table.entries[e.oid]
                assert entry.local and entry.pins == 0, "a pinned or absent object is spilled"
                self.jobs.append(("spill", e.oid))
            elif kind is fx.RestoreObject:
                self.jobs.append(("restore", e.oid))
            elif kind is fx.DeleteSpilled:
                self.jobs.append(("delete", e.oid))
            elif kind is fx.DeleteObject:
                assert not e.spilled or e.oid in self.disk, "store file removed before its spill"
                self.store.discard(e.oid)
            elif kind is fx.Send and isinstance(e.msg, p.ObjectReady):
                if e.msg.state == ObjectState.STORE:
                    assert e.msg.oid in self.store, "told of an object without its store file"
            elif kind is fx.Send and isinstance(e.msg, p.Execute):
                for oid, state in zip(e.msg.dep_ids, e.msg.dep_states):
                    assert state != STORE or oid in self.store, "an argument not in the store"

    def handle(self, event) -> list:
        out = self.node.handle(event)
        self.apply(out)
        return out

    # -- rules --------------------------------------------------------------------------

    @rule(size=st.sampled_from([10, 40, 70, 160]))
    def put(self, size):
        self.n += 1
        oid = put_id(self.n)
        committed = capacity.committed(self.node.s.objects.table)
        movable = sum(e.size for e in self.node.s.objects.entries.values()
                      if e.state == ObjectState.STORE and e.local and e.pins == 0
                      and not e.spilling)
        need = committed + size - self.CAPACITY
        spilling_off = bool(self.node.s.objects.spill_error)
        self.store.add(oid)                  # the driver wrote it before asking
        out = self.handle(ev.ClientMessage(DRIVER, p.Put(oid, STORE, size, [], self.n, b"")))
        refused = [e.msg for e in out if type(e) is fx.Send][-1].error != ""
        if not refused:
            self.held.append(oid)
        if need <= 0:
            assert not refused
        elif size <= self.CAPACITY and need <= movable and not spilling_off:
            assert not refused, "refused though spilling could make room"
        elif not spilling_off:
            assert refused

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def drop(self, data):
        oid = data.draw(st.sampled_from(self.held))
        self.held.remove(oid)
        self.handle(ev.ClientMessage(DRIVER, p.Refs([], [oid])))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def get(self, data):
        oid = data.draw(st.sampled_from(self.held))
        self.handle(ev.ClientMessage(DRIVER, p.Subscribe([oid])))

    @precondition(lambda self: self.held and len(self.tasks) < 4)
    @rule(data=st.data())
    def submit(self, data):
        oid = data.draw(st.sampled_from(self.held))
        self.n += 1
        self.tasks[self.n] = oid
        self.submitted.append(self.n)
        self.handle(ev.ClientMessage(DRIVER, submit_msg(self.n, deps=[oid])))

    @precondition(lambda self: any(w.current_id for w in self.node.workers.values()))
    @rule(data=st.data())
    def task_ends(self, data):
        running = sorted((wid, w.current_id) for wid, w in self.node.workers.items()
                         if w.current_id)
        wid, task_id = data.draw(st.sampled_from(running))
        n = int.from_bytes(task_id[1:16], "big")
        self.apply(self.node.done(wid, n))
        self.tasks.pop(n, None)

    @precondition(lambda self: self.jobs)
    @rule(disk_full=st.booleans(), unreadable=st.booleans())
    def spiller_does_a_job(self, disk_full, unreadable):
        kind, oid = self.jobs.pop(0)
        if kind == "spill":
            if oid not in self.store or disk_full:
                self.handle(ev.SpillFailed(oid, "No space left on device"))
            else:
                self.disk.add(oid)
                self.handle(ev.ObjectSpilled(oid))
        elif kind == "restore":
            if oid not in self.disk or unreadable:
                self.handle(ev.RestoreFailed(oid, "Input/output error", lost=True))
            else:
                self.store.add(oid)
                self.handle(ev.ObjectRestored(oid))
        else:
            self.disk.discard(oid)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def no_held_object_loses_its_bytes(self):
        entries = self.node.s.objects.entries
        for oid in self.held:
            entry = entries[oid]
            if entry.state == ObjectState.STORE:
                assert oid in self.store or oid in self.disk, "a held object's bytes are gone"
                assert not entry.local or oid in self.store, "a local object has no store file"
                assert not entry.spilled or oid in self.disk, "a spilled object has no spill file"

    @invariant()
    def running_tasks_have_their_arguments_in_the_store(self):
        for w in self.node.workers.values():
            task = self.node.s.tasks.get(w.current_id) if w.current_id else None
            for oid in task.spec.deps if task is not None else ():
                assert oid in self.store, "an argument left the store under a running task"

    def teardown(self):
        for _ in range(100):   # every task ends: the spiller answers, the workers finish
            while self.jobs:
                self.spiller_does_a_job(disk_full=False, unreadable=False)
            running = [(wid, w.current_id) for wid, w in self.node.workers.items()
                       if w.current_id]
            if not running:
                break
            for wid, task_id in running:
                self.apply(self.node.done(wid, int.from_bytes(task_id[1:16], "big")))
        assert not self.node.s.tasks, "a task never ended"
        for oid in list(self.held):
            self.drop_one(oid)
        self.handle(ev.ClientMessage(DRIVER, p.Refs([], [rid(n) for n in self.submitted])))
        while self.jobs:
            self.spiller_does_a_job(disk_full=False, unreadable=False)
        assert self.node.s.objects.entries == {}
        assert self.store == set() and self.disk == set(), "files left behind"

    def drop_one(self, oid: bytes) -> None:
        self.held.remove(oid)
        self.handle(ev.ClientMessage(DRIVER, p.Refs([], [oid])))


TestCapacity = CapacityMachine.TestCase
TestCapacity.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
