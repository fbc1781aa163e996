"""Chaos on real processes: a 3-node LocalCluster runs a job of 2,000 tasks
(`zfabric.testing.chaos.ChaosJob`: 100 tasks making 1 MiB arrays, 400 taking
two of them as arguments, so objects move between nodes, and tiny ones)
while processes die under it. Every result is checked against what the same
functions compute in-process.

- A seeded killer SIGKILLs a random child process (a worker or a zygote) of
  a random node every 200 ms for the whole job.
- One node, not the driver's, is SIGKILLed midway through the job; what
  only it held is made again from lineage.

The seed comes from ZF_CHAOS_SEED or is drawn; it is printed, and named in
every failure, so `ZF_CHAOS_SEED=<seed> pytest tests/cluster/test_chaos.py`
replays the job and the killer's choice of victims (the timing of a real
cluster does not replay).
"""
from __future__ import annotations

import os
import random
import time

import pytest

import zfabric as zf
from zfabric.config import Config
from zfabric.testing import LocalCluster
from zfabric.testing.chaos import ChaosJob, Killer, tiny

pytestmark = pytest.mark.timeout(120)

GET_TIMEOUT = 60.0


def fast_config() -> Config:
    return Config.from_env().replace(failure_timeout=1.5)


def chaos_seed() -> int:
    seed = int(os.environ.get("ZF_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed: {seed} (replay with ZF_CHAOS_SEED={seed})")
    return seed


def node_stats(cluster: LocalCluster) -> dict[str, dict]:
    out = {}
    for handle in cluster.nodes:
        out[handle.node_id[:8]] = cluster.own_status(handle)["stats"]
    return out


def zygote_deaths(cluster: LocalCluster) -> int:
    return sum(s["zygote_deaths"] for s in node_stats(cluster).values())


def test_every_result_is_right_while_workers_and_zygotes_are_killed(fresh):
    seed = chaos_seed()
    with LocalCluster(nodes=3, num_cpus=2, config=fast_config()) as cluster:
        zf.init(address=cluster.address)
        job = ChaosJob(seed)
        with Killer(cluster, seed) as killer:
            job.submit()
            outcome = job.collect(GET_TIMEOUT)
        why = f"chaos seed {seed}, kills {killer.victims}"
        assert outcome.all_right, (why, outcome)
        assert killer.kills, why
        assert all(h.proc.poll() is None for h in cluster.nodes), why   # no node died
        # every zygote killed is counted (the last ones once their node has seen them go;
        # a zygote killed between fork and exec still looks like its node, a "worker", and
        # a zygote may also die by itself, e.g. when it cannot fork)
        deadline = time.monotonic() + 10
        while zygote_deaths(cluster) < killer.kills["zygote"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zygote_deaths(cluster) >= killer.kills["zygote"], (why, node_stats(cluster))
        # and the cluster still works
        r_tiny = zf.remote(tiny)
        assert zf.get([r_tiny.remote(i) for i in range(30)], timeout=GET_TIMEOUT) == \
            [tiny(i) for i in range(30)], why


def test_every_result_is_right_when_a_node_is_killed_midway(fresh):
    seed = chaos_seed()
    with LocalCluster(nodes=3, num_cpus=2, config=fast_config()) as cluster:
        victim = cluster.nodes[2]
        zf.init(address=cluster.address)
        job = ChaosJob(seed)
        job.submit()
        small = job.small_refs()
        ready, _ = zf.wait(small, num_returns=len(small) // 2, timeout=GET_TIMEOUT)
        assert len(ready) == len(small) // 2, f"chaos seed {seed}"
        cluster.kill_node(victim)
        # the victim is declared dead within a few failure timeouts of the kill (the job
        # may end before that: tiny tasks stay on the driver's node, not on the victim)
        deadline = time.monotonic() + 4 * fast_config().failure_timeout
        outcome = job.collect(GET_TIMEOUT)
        assert outcome.all_right, (f"chaos seed {seed}", outcome)
        while True:
            alive = {n["NodeID"] for n in zf.nodes() if n["Alive"]}
            if alive == {h.node_id for h in cluster.nodes} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert alive == {h.node_id for h in cluster.nodes}, f"chaos seed {seed}"
