"""Chaos on real processes: a checkable job, a seeded killer, memory peaks.

    job = ChaosJob(seed=7, tasks=2000)      # tiny tasks + 1 MiB results with dependencies
    with Killer(cluster, seed=7) as killer:  # SIGKILLs a random child of a random node
        job.submit()                         #   every 200 ms: workers and zygotes alike
        outcome = job.collect(timeout=60)
    assert outcome.wrong == 0 and outcome.hung == 0, outcome

Everything random comes from the seed, so a failing run names the job it ran.
The job's functions live in this module, so every node's workers import them
by name; the value each task must return is computed here, in-process, and
every result is compared with it. `collect` gets every ref one by one, so one
failed task does not hide the others: each ends right, wrong, in a
documented error (counted by type) or hung (no answer within the timeout).

Used by tests/cluster/test_chaos.py and bench/soak.py.
"""
from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import psutil

from .. import api
from ..exceptions import GetTimeoutError, ZFabricError

BIG_ELEMENTS = 2**20 // 8          # float64: 1 MiB


# -- the job's functions: importable by every node's workers ------------------------------------

def tiny(i: int) -> int:
    return i * i + 1


def make(i: int) -> np.ndarray:
    return np.full(BIG_ELEMENTS, float(i))


def combine(a: np.ndarray, b: np.ndarray, i: int) -> float:
    return float(a[0]) * 1_000_000 + float(b[-1]) + i


def _big_is(value, i: int) -> bool:
    return (isinstance(value, np.ndarray) and value.shape == (BIG_ELEMENTS,)
            and bool(np.all(value == float(i))))


# -- the job -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    """How each task of a job ended."""
    completed: int = 0                      # got, and equal to the in-process value
    wrong: int = 0                          # got, and not equal: must never happen
    hung: int = 0                           # no answer within the timeout: must never happen
    errors: collections.Counter = field(default_factory=collections.Counter)  # type -> count
    first_problems: list = field(default_factory=list)   # a few, for the report

    @property
    def total(self) -> int:
        return self.completed + self.wrong + self.hung + sum(self.errors.values())

    def note(self, what: str) -> None:
        if len(self.first_problems) < 5:
            self.first_problems.append(what)


class ChaosJob:
    """`tasks` tasks: tiny ones, `make` tasks with 1 MiB results, and `combine`
    tasks taking two `make` results (so objects move between nodes)."""

    def __init__(self, seed: int, tasks: int = 2000, *, big_share: float = 0.15,
                 max_retries: int = -1):
        self.seed = seed
        self.rng = random.Random(seed)
        self.tasks = tasks
        self.big_share = big_share
        self.max_retries = max_retries
        self.checks: list[tuple[object, object, str]] = []   # (ref, check(value) -> bool, name)

    def submit(self) -> None:
        opts = {"max_retries": self.max_retries}
        r_tiny = api.remote(**opts)(tiny)
        r_make = api.remote(**opts)(make)
        r_combine = api.remote(**opts)(combine)
        bigs: list[tuple[object, int]] = []
        for i in range(self.tasks):
            roll = self.rng.random()
            if roll < self.big_share or len(bigs) < 2:
                ref = r_make.remote(i)
                bigs.append((ref, i))
                self.checks.append((ref, lambda v, i=i: _big_is(v, i), f"make({i})"))
            elif roll < 2 * self.big_share:
                (a, ia), (b, ib) = self.rng.sample(bigs[-20:], 2)
                want = combine(np.full(1, float(ia)), np.full(1, float(ib)), i)
                self.checks.append((r_combine.remote(a, b, i), lambda v, w=want: v == w,
                                    f"combine(make({ia}), make({ib}), {i})"))
            else:
                self.checks.append((r_tiny.remote(i), lambda v, w=tiny(i): v == w, f"tiny({i})"))

    def collect(self, timeout: float) -> Outcome:
        """Get every result (each within what is left of `timeout`) and check it."""
        out = Outcome()
        deadline = time.monotonic() + timeout
        for ref, check, name in self.checks:
            try:
                value = api.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except GetTimeoutError:
                out.hung += 1
                out.note(f"{name}: no answer within {timeout:g} s")
            except ZFabricError as e:
                out.errors[type(e).__name__] += 1
                out.note(f"{name}: {type(e).__name__}: {str(e).splitlines()[0]}")
            else:
                if check(value):
                    out.completed += 1
                else:
                    out.wrong += 1
                    out.note(f"{name}: wrong value {value!r:.80}")
        self.checks.clear()
        return out


# -- the killer and the memory watch --------------------------------------------------------------

def child_kind(proc: psutil.Process) -> str:
    """'zygote' or 'worker' (or 'other') for a child process of a node."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    return "zygote" if "zfabric.node.zygote" in cmd else "worker" if proc.ppid() != 1 else "other"


class Killer:
    """A thread that SIGKILLs a random child process (worker or zygote) of a
    random node of `cluster` every `interval` seconds, and samples each node's
    resident memory (the node and its children) to keep the peaks."""

    def __init__(self, cluster, seed: int, interval: float = 0.2, *, kill: bool = True):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.interval = interval
        self.kill = kill
        self.kills: collections.Counter = collections.Counter()
        self.peak_rss: dict[str, int] = {}    # node id -> bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zfabric-chaos-killer",
                                        daemon=True)

    def __enter__(self) -> "Killer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            nodes = self.cluster.nodes
            for node in nodes:
                self._sample(node)
            if self.kill and nodes:
                self._kill_one(self.rng.choice(nodes))

    def _children(self, node) -> list[psutil.Process]:
        try:
            return sorted(psutil.Process(node.pid).children(recursive=True), key=lambda c: c.pid)
        except psutil.Error:
            return []

    def _kill_one(self, node) -> None:
        children = self._children(node)
        if not children:
            return
        victim = self.rng.choice(children)
        kind = child_kind(victim)
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills[kind] += 1

    def _sample(self, node) -> None:
        if not _alive(node.pid):
            return
        total = 0
        for proc in [psutil.Process(node.pid)] + self._children(node):
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        if total > self.peak_rss.get(node.node_id, 0):
            self.peak_rss[node.node_id] = total


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
