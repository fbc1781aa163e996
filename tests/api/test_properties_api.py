"""Property tests of the public API on one embedded node (docs/architecture.md, "How it is tested").

- random task DAGs (fan-in, fan-out, num_returns=2, failures, refs passed
  at the top level, as keywords and nested in lists) give the values, and
  raise the errors, that calling the same functions in-process gives;
- `wait` keeps its invariants for any mix of ready, slow and failed refs,
  any num_returns and any timeout;
- `get` of a list with duplicates, in any order, maps element by element.
"""
from __future__ import annotations

import dataclasses
import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import zfabric as zf
from zfabric.exceptions import GetTimeoutError, TaskError

pytestmark = pytest.mark.timeout(120)


def _settings(n: int):
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


# -- the operations, as plain functions --------------------------------------------------

def op_add(x, k):
    return x + k


def op_mul(x, k):
    return x * k


def op_sum(xs, k):
    return sum(xs) + k


def op_check(x, m):
    if x % m == 0:
        raise ValueError(f"{x} is a multiple of {m}")
    return x - 1


def op_split(x, m):
    return divmod(x, m)  # num_returns=2


# -- ... and as tasks: top-level refs arrive resolved, nested ones are fetched here -----------

def _inputs(xs, kw, nested):
    values = list(xs) + [kw[k] for k in sorted(kw)]
    if nested:
        values += zf.get(list(nested))
    return values


@zf.remote
def t_leaf(k):
    return k


@zf.remote
def t_add(k, nested, *xs, **kw):
    (x,) = _inputs(xs, kw, nested)
    return op_add(x, k)


@zf.remote
def t_mul(k, nested, *xs, **kw):
    (x,) = _inputs(xs, kw, nested)
    return op_mul(x, k)


@zf.remote
def t_sum(k, nested, *xs, **kw):
    return op_sum(_inputs(xs, kw, nested), k)


@zf.remote
def t_check(k, nested, *xs, **kw):
    (x,) = _inputs(xs, kw, nested)
    return op_check(x, k)


@zf.remote(num_returns=2)
def t_split(k, nested, *xs, **kw):
    (x,) = _inputs(xs, kw, nested)
    return op_split(x, k)


TASKS = {"add": t_add, "mul": t_mul, "sum": t_sum, "check": t_check, "split": t_split}


# -- random DAGs ------------------------------------------------------------------------------

@dataclasses.dataclass
class Node:
    op: str
    k: int
    inputs: list          # slot indices of earlier nodes' outputs
    modes: list           # "arg" | "kw" | "nested", one per input
    put: bool = False     # a leaf made by zf.put instead of a task

    @property
    def outputs(self) -> int:
        return 2 if self.op == "split" else 1


@st.composite
def dags(draw):
    n = draw(st.integers(1, 25))
    nodes: list[Node] = []
    slots = 0
    for _ in range(n):
        op = "leaf" if slots == 0 else draw(
            st.sampled_from(["leaf", "add", "mul", "sum", "sum", "check", "check", "split"]))
        if op == "leaf":
            node = Node("leaf", draw(st.integers(-20, 20)), [], [], put=draw(st.booleans()))
        else:
            k = draw(st.integers(2, 4)) if op in ("check", "split") else draw(st.integers(-3, 3))
            # prefer recent slots a little, so that chains get deep
            pick = st.one_of(st.integers(0, slots - 1), st.integers(max(0, slots - 3), slots - 1))
            count = draw(st.integers(1, 4)) if op == "sum" else 1
            inputs = [draw(pick) for _ in range(count)]
            modes = [draw(st.sampled_from(["arg", "arg", "kw", "nested"])) for _ in inputs]
            node = Node(op, k, inputs, modes)
        nodes.append(node)
        slots += node.outputs
    return nodes


OK, ERR = "ok", "err"


def evaluate_in_process(nodes: list[Node]) -> list[tuple]:
    """Per output slot: (OK, value) or (ERR, tainted).

    tainted: the error may reach the caller through a task that called
    zf.get on a nested failed ref itself and let the error propagate — see
    test_error_through_nested_get_keeps_its_type for why that differs."""
    slots: list[tuple] = []
    for node in nodes:
        if node.op == "leaf":
            slots.append((OK, node.k))
            continue
        top_failed = [slots[s] for s, m in zip(node.inputs, node.modes)
                      if m != "nested" and slots[s][0] == ERR]
        nested_failed = [slots[s] for s, m in zip(node.inputs, node.modes)
                         if m == "nested" and slots[s][0] == ERR]
        result = None
        if top_failed:  # the task never runs: it fails with its argument's error
            result = (ERR, any(t for _, t in top_failed))
        elif nested_failed:  # the task runs, and its zf.get raises
            result = (ERR, True)
        else:
            xs = [slots[s][1] for s in node.inputs]
            try:
                if node.op == "sum":
                    value = op_sum(xs, node.k)
                else:
                    value = {"add": op_add, "mul": op_mul, "check": op_check,
                             "split": op_split}[node.op](xs[0], node.k)
            except ValueError:
                result = (ERR, False)
        if result is not None:
            slots.extend([result] * node.outputs)
        elif node.outputs == 2:
            slots.extend([(OK, value[0]), (OK, value[1])])
        else:
            slots.append((OK, value))
    return slots


def submit(nodes: list[Node]) -> list:
    refs: list = []
    for node in nodes:
        if node.op == "leaf":
            refs.append(zf.put(node.k) if node.put else t_leaf.remote(node.k))
            continue
        args, kw, nested = [], {}, []
        for j, (s, mode) in enumerate(zip(node.inputs, node.modes)):
            if mode == "arg":
                args.append(refs[s])
            elif mode == "kw":
                kw[f"x{j}"] = refs[s]
            else:
                nested.append(refs[s])
        out = TASKS[node.op].remote(node.k, nested, *args, **kw)
        refs.extend(out if node.outputs == 2 else [out])
    return refs


@_settings(40)
@given(nodes=dags())
def test_random_dag_matches_in_process(cluster, nodes):
    expected = evaluate_in_process(nodes)
    event(f"nodes: {len(nodes) // 10 * 10}+")
    event("has nested refs" if any("nested" in n.modes for n in nodes) else "no nested refs")
    event("errors: " + ("tainted" if any(k == ERR and t for k, t in expected) else
                        "clean" if any(k == ERR for k, _ in expected) else "none"))
    refs = submit(nodes)
    assert len(refs) == len(expected)
    # get each slot, last first (so most are still being computed at first)
    for ref, (kind, payload) in reversed(list(zip(refs, expected))):
        if kind == OK:
            assert zf.get(ref, timeout=30) == payload
        else:  # directly, through arguments, or re-raised from a nested get
            with pytest.raises(ValueError) as info:
                zf.get(ref, timeout=30)
            assert isinstance(info.value, TaskError)
    # and all successful ones at once, as a list in the same order
    ok = [(r, v) for r, (kind, v) in zip(refs, expected) if kind == OK]
    assert zf.get([r for r, _ in ok], timeout=30) == [v for _, v in ok]
    failed = [r for r, (kind, _) in zip(refs, expected) if kind == ERR]
    if failed:
        with pytest.raises(TaskError):
            zf.get([r for r, _ in ok] + failed[:1], timeout=30)


def test_dag_smoke_fan_in_fan_out(cluster):
    nodes = [Node("leaf", 7, [], []), Node("leaf", 5, [], [], put=True),
             Node("split", 3, [0], ["arg"]),                      # slots 2, 3
             Node("sum", 1, [1, 2, 3, 0], ["arg", "kw", "nested", "arg"]),
             Node("check", 2, [4], ["arg"]),                      # 7+5+2+1+1 = 16 -> error
             Node("add", 1, [5], ["arg"]),                        # dependent of an error
             Node("mul", 2, [4], ["nested"])]
    expected = evaluate_in_process(nodes)
    assert expected[4] == (OK, 16) and expected[5][0] == expected[6][0] == ERR
    assert expected[7] == (OK, 32)
    refs = submit(nodes)
    assert zf.get([refs[i] for i in (0, 1, 2, 3, 4, 7)]) == [7, 5, 2, 1, 16, 32]
    for i in (5, 6):
        with pytest.raises(ValueError, match="multiple of 2"):
            zf.get(refs[i])
    with pytest.raises(ValueError, match="could not be computed"):
        zf.get(refs[6])


# Regression: error propagate makes the caller's get raise a plain TaskError, not a
# ValueError (TaskError(ValueError).__reduce__ pickles a plain TaskError; see
# tests/core/test_serialization.py::test_reraised_task_error_keeps_the_original_type)
def test_error_through_nested_get_keeps_its_type(cluster):
    nodes = [Node("leaf", 4, [], []), Node("check", 2, [0], ["arg"]),
             Node("add", 1, [1], ["nested"])]
    assert evaluate_in_process(nodes)[2][0] == ERR
    refs = submit(nodes)
    with pytest.raises(ValueError):
        zf.get(refs[1])
    with pytest.raises(ValueError):
        zf.get(refs[2], timeout=30)


# Regression: task blocked in get leaves the node believing the worker knows the function
# (Worker.known_fns is updated when the Execute is sent), so the worker later gets Executes
# with an empty fn_blob: EOFError, for every task of that function it is given
def test_revoked_prefetch_does_not_poison_the_worker(cluster):
    @zf.remote
    def getter(lst):          # quick once its nested ref is ready; blocks in get otherwise
        return zf.get(lst[0])

    @zf.remote
    def fresh_fn(i):          # a function no worker has seen yet
        return i

    for _ in range(5):        # the node learns that getter() is quick (< 5 ms)
        assert zf.get([getter.remote([zf.put(1)]) for _ in range(4)]) == [1] * 4
    slow = [w_slow.remote(i, 0.5) for i in range(3)]   # 3 of the 4 CPUs busy
    outer = getter.remote([slow[0]])  # the 4th runs getter, which blocks in zf.get...
    first = [fresh_fn.remote(i) for i in range(4)]  # ...once fresh_fn was prefetched to it
    assert zf.get(first, timeout=30) == [0, 1, 2, 3]
    assert zf.get(outer, timeout=30) == 0
    zf.get(slow, timeout=30)
    failures = []
    for _ in range(10):       # the poisoned worker fails every fresh_fn task it gets
        for i, r in enumerate([fresh_fn.remote(i) for i in range(20)]):
            try:
                assert zf.get(r, timeout=30) == i
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(repr(e)[:120])
    assert failures == []


# -- wait ----------------------------------------------------------------------------------------

@zf.remote
def w_value(x):
    return x


@zf.remote
def w_fail(x):
    raise ValueError(f"failed {x}")


@zf.remote
def w_slow(x, delay):
    time.sleep(delay)
    return x


@zf.remote
def w_slow_fail(x, delay):
    time.sleep(delay)
    raise ValueError(f"failed late {x}")


READY_KINDS = ("put", "put_big", "done", "failed")
SLOW_KINDS = ("slow", "slow_fail")


@st.composite
def wait_cases(draw):
    kinds = draw(st.lists(st.sampled_from(READY_KINDS + SLOW_KINDS), min_size=1, max_size=8))
    # at most 4 slow tasks (4 CPUs): each example stays well under a second
    seen = 0
    for i, kind in enumerate(kinds):
        if kind in SLOW_KINDS:
            seen += 1
            if seen > 4:
                kinds[i] = "done"
    delays = [draw(st.sampled_from([0.2, 0.3, 0.5])) for _ in kinds]
    num_returns = draw(st.integers(1, len(kinds)))
    timeout = draw(st.one_of(st.just(0), st.just(0), st.floats(0.01, 0.1), st.just(None),
                             st.floats(0.25, 0.6)))
    return kinds, delays, num_returns, timeout


def _make_refs(kinds, delays):
    """Refs in the order of `kinds`; the ready ones are ready (and known) before the
    slow ones are submitted. Returns (refs, expected values or ValueError)."""
    refs: list = [None] * len(kinds)
    expect: list = [None] * len(kinds)
    for i, kind in enumerate(kinds):
        if kind == "put":
            refs[i], expect[i] = zf.put(i), i
        elif kind == "put_big":
            arr = np.full(40_000, i, dtype=np.int64)  # 320 KB: lives in the store
            refs[i], expect[i] = zf.put(arr), arr
        elif kind == "done":
            refs[i], expect[i] = w_value.remote(i), i
        elif kind == "failed":
            refs[i], expect[i] = w_fail.remote(i), ValueError
    early = [r for r in refs if r is not None]
    if early:
        ready, _ = zf.wait(early, num_returns=len(early), timeout=30)
        assert len(ready) == len(early)
    for i, kind in enumerate(kinds):
        if kind == "slow":
            refs[i], expect[i] = w_slow.remote(i, delays[i]), i
        elif kind == "slow_fail":
            refs[i], expect[i] = w_slow_fail.remote(i, delays[i]), ValueError
    return refs, expect


def _check_value(ref, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            zf.get(ref, timeout=0)
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(zf.get(ref, timeout=0), expected)
    else:
        assert zf.get(ref, timeout=0) == expected


@_settings(25)
@given(case=wait_cases())
def test_wait_invariants(cluster, case):
    kinds, delays, num_returns, timeout = case
    refs, expect = _make_refs(kinds, delays)
    known_ready = [r for r, k in zip(refs, kinds) if k in READY_KINDS]
    slow = [r for r, k in zip(refs, kinds) if k in SLOW_KINDS]

    start = time.monotonic()
    ready, not_ready = zf.wait(refs, num_returns=num_returns, timeout=timeout)
    elapsed = time.monotonic() - start

    # a partition of the input
    assert sorted(r.hex() for r in ready + not_ready) == sorted(r.hex() for r in refs)
    assert len(ready) + len(not_ready) == len(refs)
    # ready keeps the input order
    pos = [refs.index(r) for r in ready]
    assert pos == sorted(pos)
    assert len(ready) <= num_returns
    if timeout is None:
        assert len(ready) == num_returns
    if timeout == 0:
        # a poll: exactly the refs already known to be ready (failed ones included)
        assert ready == known_ready[:num_returns]
        assert elapsed < 1.0
    if len(ready) < num_returns:
        # it gave up: only because the timeout passed, and with every ready ref in hand
        assert timeout is not None
        assert elapsed >= timeout * 0.95
        assert set(known_ready) <= set(ready)
    elif timeout is not None:
        assert elapsed < timeout + 2.0
    # anything reported ready can be had at once (failed ones raise their error)
    for r in ready:
        _check_value(r, expect[refs.index(r)])

    # in the end everything is ready, and right
    if slow:
        done, rest = zf.wait(slow, num_returns=len(slow), timeout=30)
        assert rest == [] and done == slow
    ready, not_ready = zf.wait(refs, num_returns=len(refs), timeout=0)
    assert ready == refs and not_ready == []
    for r, e in zip(refs, expect):
        _check_value(r, e)


@_settings(25)
@given(n=st.integers(1, 6), data=st.data())
def test_wait_rejects_bad_arguments(cluster, n, data):
    refs = [zf.put(i) for i in range(n)]
    with pytest.raises(ValueError):
        zf.wait(refs, num_returns=n + data.draw(st.integers(1, 3)))
    dup = data.draw(st.integers(0, n - 1))
    dupped = list(refs)
    dupped.insert(data.draw(st.integers(0, n)), refs[dup])
    with pytest.raises(ValueError):
        zf.wait(dupped, num_returns=1, timeout=0)
    with pytest.raises(ValueError):
        zf.wait(refs, num_returns=0)
    with pytest.raises(ValueError):
        zf.wait(refs, timeout=-data.draw(st.floats(0.001, 10)))
    with pytest.raises(TypeError):
        zf.wait(refs + [data.draw(st.sampled_from([1, "x", None, [refs[0]]]))])
    # and a well-formed call on the same refs works
    ready, not_ready = zf.wait(refs, num_returns=n, timeout=5)
    assert ready == refs and not_ready == []


def test_wait_empty_and_failed_count_as_ready(cluster):
    assert zf.wait([]) == ([], [])
    bad = w_fail.remote(0)
    slow = w_slow.remote(1, 0.5)
    ready, not_ready = zf.wait([slow, bad], num_returns=1, timeout=5)
    assert ready == [bad] and not_ready == [slow]
    zf.wait([slow], timeout=5)


# -- get of lists with duplicates --------------------------------------------------------------

@_settings(30)
@given(kinds=st.lists(st.sampled_from(["put", "task", "slow", "list", "failed"]),
                      min_size=1, max_size=6),
       data=st.data())
def test_get_list_with_duplicates_maps_in_process(cluster, kinds, data):
    pool, values = [], []
    for i, kind in enumerate(kinds):
        if kind == "put":
            pool.append(zf.put(i * 10))
            values.append(i * 10)
        elif kind == "task":
            pool.append(w_value.remote(i * 10))
            values.append(i * 10)
        elif kind == "slow":
            pool.append(w_slow.remote(i * 10, 0.05))
            values.append(i * 10)
        elif kind == "list":
            pool.append(w_value.remote([i, {"k": (i, None)}]))
            values.append([i, {"k": (i, None)}])
        else:
            pool.append(w_fail.remote(i))
            values.append(ValueError)
    picks = data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=12))
    wanted = [pool[i] for i in picks]
    expected = [values[i] for i in picks]
    if ValueError in expected:
        with pytest.raises(ValueError):
            zf.get(wanted, timeout=30)
    else:
        assert zf.get(wanted, timeout=30) == expected
        assert zf.get(tuple(wanted), timeout=30) == expected
    # the failure of one element does not spoil the others
    good = [i for i in picks if values[i] is not ValueError]
    assert zf.get([pool[i] for i in good], timeout=30) == [values[i] for i in good]


def test_get_timeout_returns_nothing_partial(cluster):
    fast = zf.put(1)
    slow = w_slow.remote(2, 0.5)
    with pytest.raises(GetTimeoutError):
        zf.get([fast, slow, fast], timeout=0.05)
    assert zf.get([slow, fast, slow], timeout=5) == [2, 1, 2]


def test_get_shuffled_large_list(cluster):
    refs = [w_value.remote(i) for i in range(60)] + [zf.put(-i) for i in range(20)]
    values = list(range(60)) + [-i for i in range(20)]
    order = list(range(len(refs))) * 2
    random.Random(7).shuffle(order)
    assert zf.get([refs[i] for i in order], timeout=30) == [values[i] for i in order]
