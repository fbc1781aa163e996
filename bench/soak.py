#!/usr/bin/env python3
"""Soak: run the chaos job round after round for N minutes while processes die.

    python bench/soak.py --minutes 10                 # what docs/fault-tolerance.md shows
    python bench/soak.py --minutes 1 --seed 3         # a short one
    python bench/soak.py --minutes 10 --json bench/results/soak.json
    python bench/soak.py --minutes 10 --partition-share 0   # no partition cycles

Each round runs `zfabric.testing.chaos.ChaosJob` (2,000 tasks: 100 making
1 MiB arrays, 400 taking two of them, the rest tiny) on a 3-node
`LocalCluster` (1 CPU each, failure timeout 1.5 s). The rounds go in turn:

- `fault-free`: nothing is killed (the baseline the others are measured by);
- `killer`: a seeded killer SIGKILLs a random worker or zygote of a random
  node every 200 ms for the whole round;
- `node`: a whole node (never the one the driver is attached to) is
  SIGKILLed once half of the job's small results are in; a new node joins in
  its place after the round.

Then, where it runs as root with `ip` (else it says so and skips them),
partition cycles on three hosts in network namespaces (the multi-host tests'
topology, tests/harness/netns.py): host C is cut off for 5 s and healed, and
at once a new driver on *each* host runs 12 tasks across the cluster with a
`get` without timeout; each must answer with the right values.

Every result is compared with the value computed in-process. At the end it
prints tasks completed, faults injected by kind, wrong results (must be 0),
hung gets (must be 0), documented errors by type, the median time of each
kind of round beside the fault-free one, and the peak resident memory of
each node (the node process and its children). The exit code is 1 if any
result was wrong, any get hung or any task ended in an error.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import statistics
import sys
import time

import zfabric as zf
from zfabric.config import Config
from zfabric.testing import LocalCluster
from zfabric.testing.chaos import ChaosJob, Killer

NODES = 3
GET_TIMEOUT = 120.0     # a get that waits longer than this counts as hung
KINDS = ("fault-free", "killer", "node")
CUT_SECONDS = 5.0
PARTITION_TASKS = 12
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Totals:
    def __init__(self):
        self.rounds = 0
        self.completed = self.wrong = self.hung = 0
        self.errors: collections.Counter = collections.Counter()
        self.faults: collections.Counter = collections.Counter()
        self.seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.peak_rss: dict[str, int] = {}
        self.problems: list[str] = []
        self.partition_cycles = 0
        self.partition_drivers_done = 0
        self.partition_note = ""

    def add(self, kind: str, seed: int, outcome, killer, seconds: float, killed: int) -> None:
        self.rounds += 1
        self.completed += outcome.completed
        self.wrong += outcome.wrong
        self.hung += outcome.hung
        self.errors.update(outcome.errors)
        self.faults.update(killer.kills)
        if killed:
            self.faults["node"] += killed
        self.seconds[kind].append(seconds)
        for node, rss in killer.peak_rss.items():
            self.peak_rss[node] = max(rss, self.peak_rss.get(node, 0))
        for problem in outcome.first_problems:
            self.problem(f"round {self.rounds} ({kind}, seed {seed}): {problem}")

    def problem(self, what: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(what)

    def to_json(self) -> dict:
        return {"rounds": self.rounds, "partition cycles": self.partition_cycles,
                "partition drivers finished": self.partition_drivers_done,
                "tasks completed": self.completed,
                "wrong results": self.wrong, "hung gets": self.hung,
                "errors": dict(self.errors), "faults": dict(self.faults),
                "round seconds": self.seconds, "peak rss": self.peak_rss,
                "problems": self.problems}


def one_round(cluster: LocalCluster, kind: str, seed: int, tasks: int, totals: Totals) -> None:
    job = ChaosJob(seed, tasks)
    killed = 0
    t0 = time.monotonic()
    with Killer(cluster, seed, kill=(kind == "killer")) as killer:
        job.submit()
        if kind == "node":
            small = job.small_refs()
            zf.wait(small, num_returns=len(small) // 2, timeout=GET_TIMEOUT)
            cluster.kill_node(random.Random(seed).choice(cluster.nodes[1:]))
            killed = 1
        outcome = job.collect(GET_TIMEOUT)
    seconds = time.monotonic() - t0
    totals.add(kind, seed, outcome, killer, seconds, killed)
    print(f"round {totals.rounds} ({kind}, seed {seed}): {outcome.completed}/{outcome.total} "
          f"right in {seconds:.1f} s, kills {dict(killer.kills)}", file=sys.stderr)
    if killed:
        cluster.add_node(num_cpus=1)


def partition_cycles(minutes: float, totals: Totals) -> None:
    """Cut host C off for CUT_SECONDS, heal, and at once run a driver on each host."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        totals.partition_note = "skipped: partition cycles need root and `ip`"
        return
    sys.path.insert(0, REPO)
    from tests.harness.netns import Driver, three_hosts   # noqa: E402  (the tests' topology)
    end = time.monotonic() + minutes * 60
    with three_hosts() as topo:
        hosts = list(topo.hosts.values())
        while time.monotonic() < end:
            topo.cut(topo.hosts["c"])
            time.sleep(CUT_SECONDS)
            topo.heal(topo.hosts["c"])
            totals.partition_cycles += 1
            drivers = []
            try:
                for host in hosts:
                    drivers.append(Driver(topo, host))
                    drivers[-1].ask("squares", n=PARTITION_TASKS, duration=0.05)
                for host, driver in zip(hosts, drivers):
                    _partition_answer(host.name, driver, totals)
            finally:
                for driver in drivers:
                    driver.close()
            print(f"partition cycle {totals.partition_cycles}: "
                  f"{totals.partition_drivers_done} drivers finished so far", file=sys.stderr)


def _partition_answer(host: str, driver, totals: Totals) -> None:
    cycle = f"partition cycle {totals.partition_cycles}, driver on {host}"
    try:
        out = driver.answer(GET_TIMEOUT)
    except AssertionError as e:     # the driver's errors and silence, as the tests see them
        if "did not answer" in str(e):
            totals.hung += PARTITION_TASKS
        else:
            totals.errors[str(e).split(":", 2)[1].strip().split()[0]] += PARTITION_TASKS
        totals.problem(f"{cycle}: {str(e).splitlines()[0]}")
        return
    right = sum(v == i * i for i, v in enumerate(out["values"]))
    totals.completed += right
    totals.wrong += PARTITION_TASKS - right
    totals.partition_drivers_done += 1
    if right != PARTITION_TASKS:
        totals.problem(f"{cycle}: wrong values {out['values']}")


def soak(minutes: float, seed: int, tasks: int, partition_share: float) -> Totals:
    rng = random.Random(seed)
    totals = Totals()
    end = time.monotonic() + minutes * 60 * (1 - partition_share)
    config = Config.from_env().replace(failure_timeout=1.5)
    with LocalCluster(nodes=NODES, num_cpus=1, config=config) as cluster:
        zf.init(address=cluster.address)
        try:
            while time.monotonic() < end:
                kind = KINDS[totals.rounds % len(KINDS)]
                one_round(cluster, kind, rng.randrange(2**32), tasks, totals)
        finally:
            zf.shutdown()
    if partition_share > 0:
        partition_cycles(minutes * partition_share, totals)
    return totals


def report(totals: Totals, minutes: float, seed: int) -> str:
    base = statistics.median(totals.seconds["fault-free"]) if totals.seconds["fault-free"] else 0
    lines = [f"soak: {minutes:g} min, seed {seed}, {NODES} nodes x 1 CPU, {totals.rounds} rounds "
             "of the 2,000-task chaos job",
             f"partition cycles (C cut off {CUT_SECONDS:g} s, then a driver on each host): "
             f"{totals.partition_cycles}, drivers finished {totals.partition_drivers_done} of "
             f"{3 * totals.partition_cycles}" + (f" ({totals.partition_note})"
                                                 if totals.partition_note else ""),
             f"tasks completed (right): {totals.completed}",
             "faults injected: " + (", ".join(f"{n} {k}" for k, n in sorted(totals.faults.items()))
                                    or "none"),
             f"wrong results: {totals.wrong}",
             f"hung gets: {totals.hung}",
             "documented errors: " + (", ".join(f"{n} {k}" for k, n in
                                                sorted(totals.errors.items())) or "none"),
             "round time, median (x fault-free):"]
    for kind in KINDS:
        times = totals.seconds[kind]
        if times:
            med = statistics.median(times)
            ratio = f" ({med / base:.2f}x)" if base else ""
            lines.append(f"  {kind:<10} {len(times):>3} rounds  {med:6.1f} s{ratio}")
    peaks = sorted(totals.peak_rss.values())
    if len(peaks) <= 2 * NODES:
        lines.append("peak memory per node (node + workers, resident):")
        for node, rss in sorted(totals.peak_rss.items()):
            lines.append(f"  {node[:12]}  {rss / 2**20:.0f} MiB")
    elif peaks:   # a new node joined after each node round: the spread, not every one
        lines.append(f"peak memory per node (node + workers, resident), {len(peaks)} nodes: "
                     f"min {peaks[0] / 2**20:.0f} MiB, median "
                     f"{statistics.median(peaks) / 2**20:.0f} MiB, max {peaks[-1] / 2**20:.0f} MiB")
    lines += [f"  {p}" for p in totals.problems]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=2000, help="tasks a round (at least 500)")
    ap.add_argument("--partition-share", type=float, default=0.3,
                    help="share of the time spent on partition cycles (0: none)")
    ap.add_argument("--json", help="also write the totals to this file")
    args = ap.parse_args()
    if not 0 <= args.partition_share <= 1:
        ap.error("--partition-share is a share of the time: between 0 and 1")
    totals = soak(args.minutes, args.seed, args.tasks, args.partition_share)
    print(report(totals, args.minutes, args.seed))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"minutes": args.minutes, "seed": args.seed, **totals.to_json()}, f,
                      indent=1)
    return 1 if totals.wrong or totals.hung or sum(totals.errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
