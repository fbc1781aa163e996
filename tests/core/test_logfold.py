"""core/logfold.py: lines repeated across workers fold into one with a count;
nothing is lost, a worker's own repeats and a lone line are shown as they come."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric.core.logfold import LogFolder

A, B, C = ("n1", 1, "f"), ("n1", 2, "f"), ("n2", 1, "g")   # three workers (node, pid, name)


def texts(shown):
    return [text for _source, _stream, text in shown]


def test_the_first_line_shows_at_once_and_repeats_fold_when_the_window_ends():
    fold = LogFolder(window=5.0)
    assert fold.add(A, 1, ["loading"], now=0.0) == [(A, 1, "loading")]
    assert fold.add(B, 1, ["loading"], now=1.0) == []
    assert fold.add(C, 1, ["loading"], now=2.0) == []
    assert fold.expire(4.9) == []
    (source, stream, text), = fold.expire(5.0)
    assert source == C and stream == 1
    assert text.startswith("loading [repeated 2x across cluster]")
    assert "ZFABRIC_DEDUP_LOGS=0" in text                  # said once
    fold.add(A, 1, ["loading", "loading"], now=6.0)
    assert texts(fold.flush()) == ["loading [repeated 2x across cluster]"]


def test_a_workers_own_repeats_and_empty_lines_are_not_folded():
    fold = LogFolder(window=5.0)
    assert texts(fold.add(A, 1, ["tick", "tick", "", "tick"], now=0.0)) == ["tick", "tick", "",
                                                                            "tick"]
    assert texts(fold.add(B, 1, [""], now=0.1)) == [""]
    assert fold.flush() == []


def test_a_line_repeated_once_shows_as_it_is_with_the_repeats_prefix():
    fold = LogFolder(window=1.0)
    fold.add(A, 2, ["warn"], now=0.0)
    assert fold.add(B, 2, ["warn"], now=0.5) == []
    assert fold.expire(1.0) == [(B, 2, "warn")]


def test_streams_fold_apart_and_off_means_every_line():
    fold = LogFolder(window=5.0)
    assert fold.add(A, 1, ["x"], 0.0) == [(A, 1, "x")]
    assert fold.add(B, 2, ["x"], 0.0) == [(B, 2, "x")]     # stderr's x is another line
    off = LogFolder(window=5.0, enabled=False)
    assert off.add(A, 1, ["x"], 0.0) + off.add(B, 1, ["x"], 0.0) == [(A, 1, "x"), (B, 1, "x")]


def weight(text: str) -> int:
    """How many printed lines a shown line stands for."""
    if " [repeated " in text:
        return int(text.split(" [repeated ")[1].split("x")[0])
    return 1


batches = st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from([1, 2]),
                             st.lists(st.sampled_from(["a", "b", "", "c c"]), max_size=5),
                             st.floats(0, 3)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(batches, st.floats(0.5, 5), st.integers(1, 8))
def test_every_line_is_shown_or_counted_once(batches, window, max_kept):
    fold = LogFolder(window=window, max_kept=max_kept)
    now = 0.0
    shown = []
    for source, stream, lines, dt in batches:
        now += dt
        shown += fold.add(source, stream, lines, now)
        shown += fold.expire(now)
    shown += fold.flush()
    printed: dict = {}
    for _source, stream, lines, _dt in batches:
        for line in lines:
            printed[(stream, line)] = printed.get((stream, line), 0) + 1
    got: dict = {}
    for _source, stream, text in shown:
        key = (stream, text.split(" [repeated ")[0])
        got[key] = got.get(key, 0) + weight(text)
    assert got == printed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.lists(st.sampled_from(["a", "b", ""]),
                                                            max_size=5)), max_size=20))
def test_one_worker_alone_is_shown_as_it_prints(batches):
    fold = LogFolder(window=1.0)
    shown = []
    for i, (stream, lines) in enumerate(batches):
        shown += fold.add(A, stream, lines, now=i * 0.7)
    assert shown == [(A, s, line) for s, lines in batches for line in lines]
    assert fold.flush() == []
