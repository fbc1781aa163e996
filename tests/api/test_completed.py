"""zf.as_completed (refs in the order they finish) and zfabric.util.progress."""
from __future__ import annotations

import io
import time

import pytest

import zfabric as zf
from zfabric.exceptions import GetTimeoutError, TaskError
from zfabric.util import progress
from tests.harness.functions import fail, inc, slow

pytestmark = pytest.mark.timeout(60)


@zf.remote
def sleep_then(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def test_refs_come_in_the_order_their_tasks_finish(cluster):
    sleeps = [1.5, 0.1, 1.0, 0.55]          # 4 tasks on 4 CPUs: all start at once
    refs = [sleep_then.remote(i, s) for i, s in enumerate(sleeps)]
    order = [zf.get(r) for r in zf.as_completed(refs)]
    assert order == [1, 3, 2, 0]


def test_refs_already_finished_come_first_in_input_order(cluster):
    done = [inc.remote(i) for i in range(5)]
    zf.get(done)
    late = slow.remote(99, 0.5)
    got = list(zf.as_completed([late] + done))
    assert got == done + [late]


def test_each_ref_of_thousands_comes_once(cluster):
    refs = [inc.remote(i) for i in range(3000)]
    it = zf.as_completed(refs)
    assert len(it) == 3000
    got = list(it)
    assert len(got) == 3000 and set(got) == set(refs)
    assert sorted(zf.get(got)) == list(range(1, 3001))


def test_a_failed_task_counts_as_finished(cluster):
    refs = [fail.remote("no"), slow.remote(1, 0.2)]
    got = list(zf.as_completed(refs))
    assert got == refs
    with pytest.raises(ValueError):
        zf.get(got[0])


def test_timeout_raises_after_yielding_every_ready_ref(cluster):
    fast = inc.remote(1)
    zf.get(fast)
    stuck = slow.remote(2, 30)
    it = zf.as_completed([stuck, fast], timeout=0.5)
    assert next(it) == fast
    with pytest.raises(GetTimeoutError) as e:
        next(it)
    assert isinstance(e.value, TimeoutError)
    assert it.pending == [stuck] and len(it) == 1     # nothing lost
    zf.cancel(stuck)


def test_bad_input_gets_the_errors_wait_gives(cluster):
    r = inc.remote(1)
    for bad, error in [(r, TypeError), ([r, 3], TypeError), ("abc", TypeError),
                       ([r, r], ValueError)]:
        with pytest.raises(error):
            zf.as_completed(bad)
        with pytest.raises(error):
            zf.wait(bad, num_returns=1)
    with pytest.raises(ValueError):
        zf.as_completed([r], timeout=-1)
    with pytest.raises(TypeError):
        zf.as_completed([r], timeout="1")
    assert list(zf.as_completed([])) == []
    assert list(zf.as_completed((r,))) == [r]


def test_as_completed_is_public():
    import zfabric.util
    assert zf.as_completed is zfabric.util.as_completed
    assert "as_completed" in zf.__all__


def test_tqdm_counts_as_completed(cluster):
    tqdm = pytest.importorskip("tqdm").tqdm
    refs = [sleep_then.remote(i, 0.01 * (i % 3)) for i in range(20)]
    out = io.StringIO()
    seen = [r for r in tqdm(zf.as_completed(refs), total=len(refs), file=out)]
    assert set(seen) == set(refs)
    assert "20/20" in out.getvalue()
    # without total=, tqdm takes len() of the iterator
    out = io.StringIO()
    list(tqdm(zf.as_completed(refs), file=out))
    assert "20/20" in out.getvalue()


def test_progress_returns_the_values_in_order_and_draws_a_bar(cluster):
    pytest.importorskip("tqdm")
    refs = [sleep_then.remote(i, 0.05 * (5 - i)) for i in range(6)]
    out = io.StringIO()
    assert progress(refs + [refs[0]], desc="squares", file=out) == [0, 1, 2, 3, 4, 5, 0]
    assert "squares" in out.getvalue() and "6/6" in out.getvalue()
    assert progress(inc.remote(41), file=io.StringIO()) == 42
    assert progress([], file=io.StringIO()) == []


def test_progress_raises_a_failed_refs_error_and_checks_input(cluster):
    with pytest.raises(ValueError):
        progress([inc.remote(1), fail.remote("bad")], file=io.StringIO())
    with pytest.raises(TypeError):
        progress([inc.remote(1), 2], file=io.StringIO())
    with pytest.raises(GetTimeoutError):
        r = slow.remote(1, 30)
        try:
            progress([r], timeout=0.3, file=io.StringIO())
        finally:
            zf.cancel(r)


def test_progress_without_tqdm_counts_on_a_terminal_only(cluster, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term, pipe = Terminal(), io.StringIO()
    refs = [inc.remote(i) for i in range(4)]
    assert progress(refs, desc="n", file=term) == [1, 2, 3, 4]
    assert progress(refs, file=pipe) == [1, 2, 3, 4]
    assert term.getvalue().endswith("n: 4/4\n") and pipe.getvalue() == ""
    with pytest.raises(TypeError, match="tqdm is not installed"):
        progress(refs, file=pipe, ncols=40)
