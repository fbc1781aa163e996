"""Chaos on real processes: a checkable job, a seeded killer, memory peaks.

    job = ChaosJob(seed=7, tasks=2000)      # 1 MiB arrays, tasks taking two, tiny tasks
    with Killer(cluster, seed=7) as killer:  # SIGKILLs a random child of a random node
        job.submit()                         #   every 200 ms: workers and zygotes alike
        outcome = job.collect(timeout=60)
    assert outcome.all_right, outcome

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

BIG_ELEMENTS = 2**20 // 8          # int64: 1 MiB


# -- the job's functions: importable by every node's workers ------------------------------------

def tiny(i: int) -> int:
    return i * 7 + 1


def make_big(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 1000, BIG_ELEMENTS, dtype=np.int64)


def combine(a: np.ndarray, b: np.ndarray, k: int) -> int:
    return int(a.sum()) - 3 * int(b[k * 31 % BIG_ELEMENTS]) + k


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

    @property
    def all_right(self) -> bool:
        return self.completed == self.total

    def note(self, what: str) -> None:
        if len(self.first_problems) < 5:
            self.first_problems.append(what)


class ChaosJob:
    """`tasks` tasks: `arrays` tasks making 1 MiB arrays, `combines` tasks that
    take two of those arrays (chosen by the seed) and the rest tiny, submitted
    interleaved. `big_options`: options for the array makers (e.g. resources
    that pin them to one node)."""

    def __init__(self, seed: int, tasks: int = 2000, *, arrays: int = 100, combines: int = 400,
                 max_retries: int = -1, big_options: dict | None = None):
        if arrays < 1 or tasks < arrays + combines:
            raise ValueError("a job needs an array, and room for its arrays and combines")
        self.seed = seed
        rng = random.Random(seed)
        self.pairs = [(rng.randrange(arrays), rng.randrange(arrays)) for _ in range(combines)]
        self.arrays, self.tiny = arrays, tasks - arrays - combines
        self.max_retries = max_retries    # -1: every kill of a task's worker is one more attempt
        self.big_options = dict(big_options or {})
        self.refs: dict[str, list] = {}

    def submit(self) -> None:
        """Submit the whole job (arrays first, then combines and tiny tasks interleaved)."""
        opts = {"max_retries": self.max_retries}
        r_make = api.remote(**opts, **self.big_options)(make_big)
        r_combine, r_tiny = api.remote(**opts)(combine), api.remote(**opts)(tiny)
        arrays = [r_make.remote(i) for i in range(self.arrays)]
        combined, tinies = [], []
        per_combine = self.tiny // max(1, len(self.pairs))
        for k, (a, b) in enumerate(self.pairs):
            combined.append(r_combine.remote(arrays[a], arrays[b], k))
            tinies += [r_tiny.remote(i) for i in range(len(tinies), len(tinies) + per_combine)]
        tinies += [r_tiny.remote(i) for i in range(len(tinies), self.tiny)]
        self.refs = {"arrays": arrays, "combines": combined, "tiny": tinies}

    def small_refs(self) -> list:
        """The refs of the small results (combines and tiny tasks)."""
        return self.refs["combines"] + self.refs["tiny"]

    def expected(self) -> dict[str, list]:
        """What each task returns, computed in this process."""
        arrays = [make_big(i) for i in range(self.arrays)]
        return {"arrays": arrays,
                "combines": [combine(arrays[a], arrays[b], k)
                             for k, (a, b) in enumerate(self.pairs)],
                "tiny": [tiny(i) for i in range(self.tiny)]}

    def collect(self, timeout: float) -> Outcome:
        """Get every result (all within `timeout`) and compare it with `expected()`."""
        out = Outcome()
        deadline = time.monotonic() + timeout
        want = self.expected()
        for kind, refs in self.refs.items():
            for i, (ref, wanted) in enumerate(zip(refs, want[kind])):
                name = f"{kind}[{i}]"
                try:
                    value = api.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                except GetTimeoutError:
                    out.hung += 1
                    out.note(f"{name}: no answer within {timeout:g} s")
                except ZFabricError as e:
                    out.errors[type(e).__name__] += 1
                    out.note(f"{name}: {type(e).__name__}: {str(e).splitlines()[0]}")
                else:
                    right = (np.array_equal(value, wanted) if kind == "arrays"
                             else value == wanted)
                    if right:
                        out.completed += 1
                    else:
                        out.wrong += 1
                        out.note(f"{name}: wrong value {value!r:.80}")
        self.refs = {}
        return out


# -- the killer and the memory watch --------------------------------------------------------------

class Killer:
    """A thread that SIGKILLs a random child process (worker or zygote) of a
    random node of `cluster` every `interval` seconds, and samples each node's
    resident memory (the node and its children) to keep the peaks."""

    def __init__(self, cluster, seed: int, interval: float = 0.2, *, kill: bool = True):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.interval = interval
        self.kill = kill
        self.kills: collections.Counter = collections.Counter()   # "worker"/"zygote" -> count
        self.victims: list[tuple[str, str]] = []   # (node id prefix, kind), in order
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

    def _kill_one(self, node) -> None:
        pids = sorted(self.cluster.child_pids(node))
        if not pids:
            return
        pid = self.rng.choice(pids)
        kind = "zygote" if pid in self.cluster.zygote_pids(node) else "worker"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills[kind] += 1
        self.victims.append((node.node_id[:8], kind))

    def _sample(self, node) -> None:
        total = 0
        for pid in [node.pid] + self.cluster.child_pids(node):
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        if total > self.peak_rss.get(node.node_id, 0):
            self.peak_rss[node.node_id] = total
