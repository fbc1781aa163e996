"""Chaos on real processes: a 3-node LocalCluster runs a job of 2,000 tasks
(tiny ones, 1 MiB numpy arrays, and tasks that take two of those arrays as
arguments, so objects move between nodes) while processes die under it.
Every result is checked against what the same functions compute in-process.

- A seeded killer SIGKILLs a random child process (a worker or a zygote) of
  a random node every 200 ms for the whole job.
- One node, not the driver's, is SIGKILLed midway through the job.

The killer's seed comes from ZF_CHAOS_SEED or is drawn; it is printed, and
named in every failure, so `ZF_CHAOS_SEED=<seed> pytest tests/cluster/test_chaos.py`
replays its choice of victims (the timing of a real cluster does not replay).
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest

import zfabric as zf
from zfabric.config import Config
from zfabric.testing import LocalCluster

pytestmark = pytest.mark.timeout(120)

BIG = 1 << 17          # int64s in one array: 1 MiB
ARRAYS = 100           # 1 MiB arrays in a job
COMBINES = 400         # tasks taking two of them
TINY = 2000 - ARRAYS - COMBINES
GET_TIMEOUT = 60.0


def tiny(i: int) -> int:
    return i * 7 + 1


def make_big(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 1000, BIG, dtype=np.int64)


def combine(a: np.ndarray, b: np.ndarray, k: int) -> int:
    return int(a.sum()) - 3 * int(b[k * 31 % BIG]) + k


# every task retried until it succeeds: each kill of its worker is an attempt
r_tiny = zf.remote(max_retries=-1)(tiny)
r_make_big = zf.remote(max_retries=-1)(make_big)
r_combine = zf.remote(max_retries=-1)(combine)


def pair_of(k: int) -> tuple[int, int]:
    return k % ARRAYS, (k * 7 + 3) % ARRAYS


def expected_job() -> tuple[list, list, list]:
    arrays = [make_big(i) for i in range(ARRAYS)]
    combined = [combine(arrays[a], arrays[b], k) for k, (a, b) in
                ((k, pair_of(k)) for k in range(COMBINES))]
    return arrays, combined, [tiny(i) for i in range(TINY)]


def submit_job(big_options: dict | None = None) -> tuple[list, list, list]:
    """The job's refs: arrays, combines (two arrays each) and tiny tasks, interleaved."""
    maker = r_make_big.options(**big_options) if big_options else r_make_big
    arrays = [maker.remote(i) for i in range(ARRAYS)]
    combined, tinies = [], []
    per_combine = TINY // COMBINES
    for k in range(COMBINES):
        a, b = pair_of(k)
        combined.append(r_combine.remote(arrays[a], arrays[b], k))
        tinies += [r_tiny.remote(i) for i in range(len(tinies), len(tinies) + per_combine)]
    tinies += [r_tiny.remote(i) for i in range(len(tinies), TINY)]
    return arrays, combined, tinies


def check_job(refs: tuple[list, list, list], why: str) -> None:
    arrays, combined, tinies = refs
    want_arrays, want_combined, want_tiny = expected_job()
    assert zf.get(tinies, timeout=GET_TIMEOUT) == want_tiny, why
    assert zf.get(combined, timeout=GET_TIMEOUT) == want_combined, why
    got = zf.get(arrays, timeout=GET_TIMEOUT)
    wrong = [i for i, (g, w) in enumerate(zip(got, want_arrays)) if not np.array_equal(g, w)]
    assert wrong == [], f"{why}: arrays {wrong} differ"


def fast_config() -> Config:
    return Config.from_env().replace(failure_timeout=1.5)


def chaos_seed() -> int:
    seed = int(os.environ.get("ZF_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed: {seed} (replay the victims with ZF_CHAOS_SEED={seed})")
    return seed


class Killer:
    """A thread that SIGKILLs a random child process (worker or zygote, never a
    node) of a random node of `cluster` every `period` seconds until stopped."""

    def __init__(self, cluster: LocalCluster, seed: int, period: float = 0.2):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.period = period
        self.kills: list[tuple[str, str]] = []   # (node id prefix, "zygote" / "worker")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)

    def __enter__(self) -> "Killer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            handle = self.rng.choice(self.cluster.nodes)
            pids = sorted(self.cluster.child_pids(handle))
            if not pids:
                continue
            pid = self.rng.choice(pids)
            what = "zygote" if pid in self.cluster.zygote_pids(handle) else "worker"
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append((handle.node_id[:8], what))


@pytest.fixture
def driver_off():
    if zf.is_initialized():
        zf.shutdown()
    yield
    if zf.is_initialized():
        zf.shutdown()


def node_stats(cluster: LocalCluster) -> dict[str, dict]:
    out = {}
    for handle in cluster.nodes:
        status = cluster.query(handle, "status")
        out[handle.node_id[:8]] = next(n for n in status["nodes"]
                                       if n["NodeID"] == status["self"])["stats"]
    return out


def test_every_result_is_right_while_workers_and_zygotes_are_killed(driver_off):
    seed = chaos_seed()
    with LocalCluster(nodes=3, num_cpus=2, config=fast_config()) as cluster:
        zf.init(address=cluster.address)
        with Killer(cluster, seed) as killer:
            refs = submit_job()
            check_job(refs, f"chaos seed {seed}")
        why = f"chaos seed {seed}, kills {killer.kills}"
        assert killer.kills, why
        assert all(h.proc.poll() is None for h in cluster.nodes), why   # no node died
        # every zygote killed is counted (the last ones once their node has seen them go;
        # a zygote killed between fork and exec still looks like its node, a "worker", and
        # under memory pressure a zygote may die by itself, e.g. when it cannot fork)
        zygotes = sum(1 for _, what in killer.kills if what == "zygote")
        deadline = time.monotonic() + 10
        while True:
            stats = node_stats(cluster)
            deaths = sum(s["zygote_deaths"] for s in stats.values())
            if deaths >= zygotes or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert deaths >= zygotes, (why, stats)
        # and the cluster still works
        assert zf.get([r_tiny.remote(i) for i in range(30)], timeout=GET_TIMEOUT) == \
            [tiny(i) for i in range(30)], why
        zf.shutdown()


def test_every_result_is_right_when_a_node_is_killed_midway(driver_off):
    # The arrays are made on the driver's node (the only one with "maker"), the node
    # not killed: what the killed node held were tasks and small results, which are
    # resubmitted. (Arrays whose only copy dies with a node need lineage, #8.)
    with LocalCluster(nodes=1, num_cpus=2, resources={"maker": 1000},
                      config=fast_config()) as cluster:
        cluster.add_node(num_cpus=2)
        victim = cluster.add_node(num_cpus=2)
        zf.init(address=cluster.address)
        refs = submit_job({"resources": {"maker": 1}})
        small = refs[1] + refs[2]
        ready, _ = zf.wait(small, num_returns=len(small) // 2, timeout=GET_TIMEOUT)
        assert len(ready) == len(small) // 2
        cluster.kill_node(victim)
        check_job(refs, "a node killed midway")
        alive = {n["NodeID"] for n in zf.nodes() if n["Alive"]}
        assert alive == {h.node_id for h in cluster.nodes}
        zf.shutdown()
