"""Task output in the driver: prefixed, in order, folded across workers, or off;
the full logs stay in the session dir (node/logmon.py, node/loglisten.py)."""
from __future__ import annotations

import glob
import logging
import os
import re
import sys
import time

import pytest

import zfabric as zf
from zfabric import ids

pytestmark = pytest.mark.timeout(90)


def prefix(info, name: str, pid: int) -> str:
    return f"({name} pid={pid} node={ids.short(bytes.fromhex(info['node_id']))}) "


def output_after_shutdown(capfd):
    """What the driver printed, once shutdown printed what was still on its way."""
    zf.shutdown()
    return capfd.readouterr()


def session_logs(info, ext: str = "out") -> str:
    paths = glob.glob(os.path.join(info["session_dir"], "logs", f"worker-*.{ext}"))
    return "".join(open(p, errors="replace").read() for p in paths)


@zf.remote
def say(text):
    print(text)
    return os.getpid()


def test_a_task_line_reaches_the_driver_with_its_prefix(fresh, capfd):
    info = zf.init(num_cpus=1)
    pid = zf.get(say.remote("hello from a task"))
    want = prefix(info, "say", pid) + "hello from a task\n"
    out = output_after_shutdown(capfd).out
    assert out.count(want) == 1, out


def test_logging_from_a_task_reaches_the_drivers_stderr(fresh, capfd):
    info = zf.init(num_cpus=1)

    @zf.remote
    def warn():
        logging.warning("the disk is %d%% full", 93)
        return os.getpid()

    pid = zf.get(warn.remote())
    got = output_after_shutdown(capfd)
    assert prefix(info, "warn", pid) + "WARNING:root:the disk is 93% full\n" in got.err
    assert "the disk is" not in got.out


def test_one_workers_lines_keep_their_order(fresh, capfd):
    info = zf.init(num_cpus=2)

    @zf.remote
    def count(n):
        for i in range(n):
            print(f"line {i}", flush=i % 7 == 0)
        return os.getpid()

    pid = zf.get(count.remote(2000))
    lines = [line for line in output_after_shutdown(capfd).out.splitlines()
             if line.startswith(prefix(info, "count", pid))]
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(2000)]


def _same_line_from_eight_workers(tmp_path):
    """Eight tasks that run at once (one per worker) and print the same line."""
    @zf.remote
    def together(folder):
        open(os.path.join(folder, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(folder)) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        print("loading the model")
        return os.getpid()

    pids = zf.get([together.remote(str(tmp_path)) for _ in range(8)])
    assert len(set(pids)) == 8
    return pids


def test_a_line_eight_workers_print_is_folded_with_a_count(fresh, capfd, tmp_path):
    info = zf.init(num_cpus=8)
    pids = _same_line_from_eight_workers(tmp_path)
    out = output_after_shutdown(capfd).out
    lines = [line for line in out.splitlines() if "loading the model" in line]
    assert len(lines) == 2, out
    first, folded = lines
    assert first.endswith(") loading the model")
    assert ") loading the model [repeated 7x across cluster]" in folded
    assert {int(re.search(r"pid=(\d+)", line).group(1)) for line in lines} <= set(pids)


def test_folding_is_off_with_zfabric_dedup_logs_0(fresh, capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("ZFABRIC_DEDUP_LOGS", "0")
    info = zf.init(num_cpus=8)
    pids = _same_line_from_eight_workers(tmp_path)
    out = output_after_shutdown(capfd).out
    assert sorted(out.count(prefix(info, "together", pid) + "loading the model\n")
                  for pid in pids) == [1] * 8
    assert "repeated" not in out


def test_log_to_driver_false_prints_nothing_and_the_session_dir_keeps_it(fresh, capfd):
    info = zf.init(num_cpus=1, log_to_driver=False)

    @zf.remote
    def both():
        print("quiet please")
        logging.warning("quiet warning")

    zf.get(both.remote())
    deadline = time.monotonic() + 10
    while "quiet please" not in session_logs(info) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "quiet please" in session_logs(info, "out")
    assert "quiet warning" in session_logs(info, "err")
    got = output_after_shutdown(capfd)
    assert "quiet" not in got.out + got.err


def test_output_appears_while_the_driver_does_not_wait(fresh, capfd):
    info = zf.init(num_cpus=1)
    ref = say.remote("printed while the driver sleeps")   # never waited on before it shows
    seen = ""
    deadline = time.monotonic() + 30
    while "printed while the driver sleeps" not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
        seen += capfd.readouterr().out
    assert "printed while the driver sleeps" in seen
    del ref


def test_a_task_printing_without_pause_drops_lines_but_counts_them(fresh, capfd):
    info = zf.init(num_cpus=2)
    n = 300_000

    @zf.remote
    def chatty(n):   # 27 MB in one write: far more than a read takes at once
        sys.stdout.write("".join(f"line {i:07d} " + "x" * 80 + "\n" for i in range(n)))
        return os.getpid()

    pid = zf.get(chatty.remote(n), timeout=60)
    assert zf.get(say.remote("still fine")) > 0           # nothing hangs after it
    with open(os.path.join(info["session_dir"], "logs", f"worker-{_wid_of(info, pid)}.out")) as f:
        assert sum(1 for line in f if line.startswith("line ")) == n   # the file keeps all
    out = output_after_shutdown(capfd).out
    shown = re.findall(r"^\(chatty pid=\d+ node=\w+\) line \d{7} x{80}$", out, re.M)
    dropped = [int(x) for x in re.findall(r"\[zfabric: (\d+) lines dropped", out)]
    assert dropped, "300,000 lines at once should be more than the node passes on"
    assert len(shown) + sum(dropped) == n      # every line shown or counted
    assert "still fine" in out


def _wid_of(info, pid: int) -> str:
    for path in glob.glob(os.path.join(info["session_dir"], "logs", "worker-*.out")):
        with open(path, errors="replace") as f:
            if f"::zfabric-task:: {pid} " in f.read(1 << 16):
                return os.path.basename(path)[len("worker-"):-len(".out")]
    raise AssertionError(f"no log file names pid {pid}")
