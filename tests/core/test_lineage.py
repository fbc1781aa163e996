"""core/lineage.py: the book of kept specs on its own (record, free, the cap),
and what an owner does with an object it cannot rebuild (tests/harness/scheduler.py).
Rebuilding across nodes: tests/sim/test_failures.py.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import ids
from zfabric import protocol as p
from zfabric.core import events as ev
from zfabric.core.lineage import Lineage, spec_bytes
from zfabric.exceptions import ObjectLostError

from tests.harness.scheduler import (DRIVER, OTHER, STORE, Node, error_for, only, put_id,
                                     rid, submit_msg, summary, tid)


def spec(n: int, deps=(), args: bytes = b"", num_returns: int = 1) -> p.Submit:
    msg = submit_msg(n, deps=deps, num_returns=num_returns)
    msg.args_blob = args
    return msg


def record(book: Lineage, n: int, deps=(), live=None, args: bytes = b"", num_returns: int = 1,
           values=None):
    live = set(ids.return_ids(tid(n), num_returns)) if live is None else set(live)
    book.record(spec(n, deps, args, num_returns), DRIVER, {}, 1, live, values or {})
    book.validate()


# -- the book ------------------------------------------------------------------------------

def test_a_spec_lives_while_a_return_or_a_kept_dependent_needs_it():
    book = Lineage(max_specs=100, max_bytes=1 << 20)
    record(book, 1)                              # a
    record(book, 2, deps=[rid(1)])               # b(a)
    book.freed(rid(1))                           # a's value freed: b's lineage needs it
    book.validate()
    assert book.get(tid(1)) is not None
    book.freed(rid(2))                           # b's value freed: both go
    book.validate()
    assert len(book) == 0 and book.bytes == 0


def test_an_inline_argument_is_kept_by_value_not_by_lineage():
    book = Lineage(max_specs=100, max_bytes=1 << 20)
    record(book, 1)
    record(book, 2, deps=[rid(1), put_id(7)], values={rid(1): b"x" * 50, put_id(7): b"y"})
    assert book.get(tid(2)).holds == [] and book.get(tid(1)).users == 0
    assert book.get(tid(2)).size == spec_bytes(spec(2, [rid(1), put_id(7)]), [rid(1), put_id(7)],
                                               [], {}) + 51
    book.freed(rid(1))
    assert book.get(tid(1)) is None and book.get(tid(2)) is not None


def test_a_task_whose_returns_are_all_freed_at_once_is_not_kept():
    book = Lineage(max_specs=100, max_bytes=1 << 20)
    record(book, 1, live=())
    assert len(book) == 0


def test_the_cap_drops_the_oldest_spec_first_and_remembers_it():
    book = Lineage(max_specs=2, max_bytes=1 << 20)
    for n in (1, 2, 3):
        record(book, n)
    assert list(book.specs) == [tid(2), tid(3)]
    assert book.was_dropped(tid(1)) and not book.was_dropped(tid(2))
    assert book.dropped_count == 1


def test_a_spec_over_the_byte_cap_alone_is_never_kept_and_drops_nothing():
    small = spec_bytes(spec(1), [], [], {})
    book = Lineage(max_specs=10, max_bytes=3 * small)
    record(book, 1)
    record(book, 2, args=b"x" * (3 * small))
    assert list(book.specs) == [tid(1)] and book.was_dropped(tid(2))


def test_a_re_run_that_finishes_updates_its_spec_without_counting_it_twice():
    book = Lineage(max_specs=10, max_bytes=1 << 20)
    record(book, 1)
    record(book, 2, deps=[rid(1)])
    book.record(spec(2, deps=[rid(1)]), DRIVER, {}, 2, {rid(2)}, {})
    book.validate()
    assert book.get(tid(2)).attempts == 2 and book.get(tid(1)).users == 1


# A random life of the book: tasks finish (their arguments among earlier returns,
# some returns already freed), and returns are freed, in any order.
events = st.lists(st.one_of(
    st.tuples(st.just("record"), st.lists(st.integers(0, 30), max_size=3),
              st.integers(0, 3), st.integers(0, 400), st.sets(st.integers(0, 2))),
    st.tuples(st.just("free"), st.integers(0, 30), st.integers(0, 2))), max_size=60)


@settings(max_examples=300, deadline=None)
@given(events=events, max_specs=st.integers(1, 12), max_kib=st.integers(1, 4))
def test_the_book_stays_under_its_cap_and_keeps_every_needed_spec(events, max_specs, max_kib):
    """For any sequence of records and frees: the book stays under both caps,
    keeps only specs that are needed, and lets go of a needed spec only when
    the cap drops it, the oldest first."""
    book = Lineage(max_specs=max_specs, max_bytes=max_kib * 1024)
    live: dict[bytes, set[bytes]] = {}        # recorded task -> its returns not freed yet
    order: list[bytes] = []                   # record order: oldest first
    n = 0
    for event in events:
        before = list(book.specs)
        drops = book.dropped_count
        if event[0] == "record":
            _, picks, num_returns, args, inline = event
            n += 1
            deps = [ids.object_id(order[i % len(order)], 0) for i in picks] if order else []
            values = {d: b"v" * 10 for i, d in enumerate(deps) if i in inline}  # INLINE ones
            alive = set(ids.return_ids(tid(n), num_returns))      # 0: all freed at once
            book.record(spec(n, deps, b"a" * args, max(1, num_returns)), DRIVER, {}, 1, alive,
                        values)
            live[tid(n)] = set(alive)
            order.append(tid(n))
            if alive and book.dropped_count == drops:   # room: it is kept
                assert tid(n) in book.specs
        elif order:
            _, pick, k = event
            task = order[pick % len(order)]
            live[task].discard(ids.object_id(task, k))
            book.freed(ids.object_id(task, k))
        book.validate()   # under both caps; every kept spec is needed; users add up
        assert len(book) <= max_specs and book.bytes <= max_kib * 1024
        # a spec is needed while a return lives or a kept spec holds it
        held = {d for t in book.specs for d in book.specs[t].holds}
        survivors = [t for t in before if t in book.specs]
        for t in before:
            if t not in book.specs and (live[t] or t in held):
                # still needed, yet gone: only the cap may do that, oldest first
                assert book.dropped_count > drops and book.was_dropped(t), t
                assert all(order.index(t) < order.index(k) for k in survivors), (t, survivors)


# -- what an owner says when it cannot rebuild -----------------------------------------------

def lose(node: Node, oid: bytes) -> list:
    """The object's only copy was on a node that died (as ObjectDirectory.holder_gone
    would find it: sealed STORE, no copy here or anywhere)."""
    entry = node.s.objects.get(oid)
    if entry.local:
        node.s.objects.table.evict(entry)   # (the books let go of the copy here)
    entry.remote = []
    node.s.objects.lose(entry, ObjectLostError,
                        f"object {oid.hex()} was only on a node that died (node abcdef failed)")
    out = node.s.out.take()
    node.s.validate()
    return out


def test_a_put_object_whose_copy_is_lost_raises_object_lost_naming_it_and_the_node():
    """A put object lives in its owner's store, so only its owner's death loses
    it today; should its copy be lost anyway, nothing can make it again."""
    node = Node()
    node.put(put_id(1), state=STORE, size=10, req_id=1)
    node.s.objects.get(put_id(1)).subscribers.add(OTHER)   # a client waits for it here
    error = error_for(lose(node, put_id(1)), put_id(1))
    assert isinstance(error, ObjectLostError)
    assert put_id(1).hex() in str(error) and "node abcdef" in str(error)
    assert "made by put" in str(error)


def test_a_result_whose_task_has_no_retries_left_is_not_rebuilt():
    node = Node()
    node.submit(1, max_retries=0)
    node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[10])
    node.s.objects.get(rid(1)).subscribers.add(OTHER)
    error = error_for(lose(node, rid(1)), rid(1))
    assert "no retries left (max_retries=0)" in str(error) and rid(1).hex() in str(error)
    assert node.s.stats["rebuilt"] == 0


def test_a_lost_result_is_made_again_on_a_worker_and_its_subscriber_waits():
    node = Node()
    node.submit(1)
    node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[10])
    node.s.objects.get(rid(1)).subscribers.add(OTHER)
    assert only(lose(node, rid(1)), p.ObjectReady) == []       # no error: it waits
    assert summary(node.handle(ev.Tick())) == [("execute", "w1", 1)]
    assert node.s.tasks[tid(1)].attempts == 2 and node.s.stats["rebuilt"] == 1
    out = node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[10])
    assert ("ready", OTHER, rid(1), "STORE") in summary(out)
