"""node/logmon.py on real files: lines attributed to the task their marker
names, whatever the read boundaries; far-behind files skipped ahead with
every line counted; lines of no job only read past."""
from __future__ import annotations

import os
import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric.node.logmon import LogMonitor, marker

JOBS = [b"", b"\x01" * 24, b"\x02" * 24]

events = st.lists(st.one_of(
    st.tuples(st.just("mark"), st.sampled_from(JOBS), st.sampled_from(["f", "g h"])),
    st.tuples(st.just("line"), st.text(alphabet="ab \t:é", max_size=20), st.none()),
), max_size=40)


def write(monitor, wid: str, data: bytes, ext: str = "out") -> None:
    with open(monitor.path(wid, ext), "ab") as f:
        f.write(data)


def model(events) -> list:
    """(job, name, line) of each line printed under a job."""
    job, name, out = b"", "", []
    for kind, a, b in events:
        if kind == "mark":
            job, name = a, b
        elif job:
            out.append((job, name, a))
    return out


def shown(runs) -> list:
    return [(job, name, line) for job, name, _pid, _s, lines, _d in runs for line in lines]


@settings(max_examples=200, deadline=None)
@given(events, st.lists(st.integers(1, 50), min_size=1, max_size=10))
def test_lines_belong_to_the_task_of_the_marker_before_them(tmp_path_factory, events, cuts):
    monitor = LogMonitor(str(tmp_path_factory.mktemp("logs")), read_bytes=1 << 16,
                         max_behind=1 << 20)
    monitor.add("w1")
    data = b"".join(marker(42, a, b) if kind == "mark" else a.encode() + b"\n"
                    for kind, a, b in events)
    runs, pos = [], 0
    for cut in cuts + [len(data)]:   # written in pieces, read between them
        write(monitor, "w1", data[pos:pos + cut])
        pos += cut
        runs += monitor.read_worker(b"w1")
    runs += monitor.remove("w1")
    assert shown(runs) == model(events)
    assert all(run[2] == 42 and run[3] == 1 for run in runs)


def test_a_file_far_behind_is_skipped_ahead_and_every_line_shown_or_counted(tmp_path):
    monitor = LogMonitor(str(tmp_path), read_bytes=1024, max_behind=4096)
    monitor.add("w1")
    lines = [f"line {i:05d}" for i in range(5000)]
    write(monitor, "w1", marker(7, JOBS[1], "chatty") + "".join(f"{x}\n" for x in lines).encode()
          + marker(7, JOBS[2], "next") + b"after\n")
    runs = []
    while True:   # tick by tick, at most read_bytes a tick
        got = monitor.read_all()
        if not got:
            break
        runs += got
    chatty = [r for r in runs if r[0] == JOBS[1]]
    kept = [line for r in chatty for line in r[4] if line.startswith("line ")]
    dropped = sum(r[5] for r in chatty)
    assert dropped > 0 and kept == sorted(kept)
    assert len(kept) + dropped == 5000
    assert all(re.fullmatch(r"line \d{5}", line) for r in chatty for line in r[4])
    assert shown([r for r in runs if r[0] == JOBS[2]]) == [(JOBS[2], "next", "after")]


def test_lines_of_no_job_cost_no_run_and_a_long_line_is_cut(tmp_path):
    monitor = LogMonitor(str(tmp_path), read_bytes=1 << 16, max_behind=1 << 20)
    monitor.add("w1")
    write(monitor, "w1", b"before any task\n" + marker(1, b"", "quiet") + b"unheard\n", "err")
    assert monitor.read_all() == []
    write(monitor, "w1", marker(1, JOBS[1], "loud") + b"x" * 40000 + b"\n", "err")
    runs = monitor.read_worker(b"w1")
    assert [len(line) for r in runs for line in r[4]] == [16384, 16384, 40000 - 32768]
    assert {r[3] for r in runs} == {2}
    monitor.close()
    assert sorted(os.listdir(tmp_path)) == ["worker-w1.err", "worker-w1.out"]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 1 << 30))
def test_written_and_read_in_any_pieces_every_line_is_shown_whole_or_counted(
        tmp_path_factory, seed):
    rng = random.Random(seed)
    size = rng.choice([64, 100, 256])
    monitor = LogMonitor(str(tmp_path_factory.mktemp("logs")), size, size * rng.choice([1, 2, 5]))
    monitor.add("w1")
    data = marker(7, JOBS[1], "c") + "".join(f"line {i:05d}\n" for i in range(2000)).encode()
    runs, pos = [], 0
    while pos < len(data):   # the task writes in pieces; the node reads between them
        step = rng.randint(1, 3000)
        write(monitor, "w1", data[pos:pos + step])
        pos += step
        runs += monitor.read_all(drain=rng.random() < 0.3)
    runs += monitor.remove("w1")
    lines = [line for r in runs for line in r[4]]
    assert all(re.fullmatch(r"line \d{5}", line) for line in lines)
    assert lines == sorted(lines) and len(lines) + sum(r[5] for r in runs) == 2000
