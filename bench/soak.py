#!/usr/bin/env python3
"""Soak: run the chaos job round after round for N minutes while processes die.

    python bench/soak.py --minutes 10                 # what docs/fault-tolerance.md shows
    python bench/soak.py --minutes 1 --seed 3         # a short one
    python bench/soak.py --minutes 10 --json bench/results/soak.json
    python bench/soak.py --minutes 2 --no-faults      # the same rounds, nothing killed

Each round runs `zfabric.testing.chaos.ChaosJob` (2,000 tasks: tiny ones and
1 MiB results with dependencies) on a 3-node `LocalCluster` (1 CPU each), with
a seeded killer SIGKILLing a random worker or zygote of a random node every
200 ms. Every third round also SIGKILLs a whole node (never the one the driver
is attached to) halfway through the job, and a new node joins in its place
after the round. Every result is compared with the value computed in-process.

It prints, at the end: tasks completed, faults injected by kind, wrong results
(must be 0), hung gets (must be 0), documented errors by type, and the peak
resident memory of each node (the node process and its children). The exit
code is 1 if any result was wrong or any get hung.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import threading
import time

import zfabric as zf
from zfabric.testing import LocalCluster
from zfabric.testing.chaos import ChaosJob, Killer

NODES = 3
GET_TIMEOUT = 120.0     # a get that waits longer than this counts as hung


def _kill_a_node_later(cluster, rng: random.Random, after: float, killed: list) -> threading.Timer:
    def kill():
        candidates = cluster.nodes[1:]     # never the driver's node
        if candidates:
            victim = rng.choice(candidates)
            cluster.kill_node(victim)
            killed.append(victim.node_id)
    timer = threading.Timer(after, kill)
    timer.start()
    return timer


def soak(minutes: float, seed: int, tasks: int, faults: bool = True) -> dict:
    rng = random.Random(seed)
    totals = {"rounds": 0, "tasks completed": 0, "wrong results": 0, "hung gets": 0,
              "errors": collections.Counter(), "faults": collections.Counter(),
              "peak rss": {}, "problems": []}
    end = time.monotonic() + minutes * 60
    with LocalCluster(nodes=NODES, num_cpus=1) as cluster:
        zf.init(address=cluster.address)
        try:
            while time.monotonic() < end:
                _round(cluster, rng, tasks, totals, faults)
                print(f"round {totals['rounds']}: {totals['tasks completed']} tasks right, "
                      f"{sum(totals['faults'].values())} faults so far", file=sys.stderr)
        finally:
            zf.shutdown()
    return totals


def _round(cluster, rng: random.Random, tasks: int, totals: dict, faults: bool) -> None:
    round_seed = rng.randrange(2**32)
    node_round = faults and totals["rounds"] % 3 == 2
    job = ChaosJob(round_seed, tasks)
    killed: list[str] = []
    t0 = time.monotonic()
    with Killer(cluster, round_seed, kill=faults) as killer:
        timer = _kill_a_node_later(cluster, rng, 2.0, killed) if node_round else None
        job.submit()
        outcome = job.collect(GET_TIMEOUT)
        if timer is not None:
            timer.cancel()
            timer.join()
    totals["rounds"] += 1
    totals["tasks completed"] += outcome.completed
    totals["wrong results"] += outcome.wrong
    totals["hung gets"] += outcome.hung
    totals["errors"].update(outcome.errors)
    totals["faults"].update(killer.kills)
    totals["faults"]["node"] += len(killed)
    for node, rss in killer.peak_rss.items():
        totals["peak rss"][node] = max(rss, totals["peak rss"].get(node, 0))
    totals["problems"] += [f"round {totals['rounds']} (seed {round_seed}): {p}"
                           for p in outcome.first_problems][:10 - len(totals["problems"])]
    print(f"  seed {round_seed}: {outcome.completed}/{outcome.total} right in "
          f"{time.monotonic() - t0:.1f} s, kills {dict(killer.kills)}"
          + (f", node {killed[0][:12]} killed" if killed else ""), file=sys.stderr)
    if killed:
        cluster.add_node(num_cpus=1)


def report(totals: dict, minutes: float, seed: int) -> str:
    lines = [f"soak: {minutes:g} min, seed {seed}, {NODES} nodes x 1 CPU, "
             f"{totals['rounds']} rounds",
             f"tasks completed (right): {totals['tasks completed']}",
             "faults injected: " + ", ".join(f"{n} {k}" for k, n in
                                             sorted(totals["faults"].items())),
             f"wrong results: {totals['wrong results']}",
             f"hung gets: {totals['hung gets']}",
             "documented errors: " + (", ".join(f"{n} {k}" for k, n in
                                                sorted(totals["errors"].items())) or "none"),
             "peak memory per node (node + workers, resident):"]
    for node, rss in sorted(totals["peak rss"].items()):
        lines.append(f"  {node[:12]}  {rss / 2**20:.0f} MiB")
    lines += [f"  {p}" for p in totals["problems"]]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=2000, help="tasks a round")
    ap.add_argument("--no-faults", action="store_true",
                    help="kill nothing: the fault-free baseline")
    ap.add_argument("--json", help="also write the totals to this file")
    args = ap.parse_args()
    totals = soak(args.minutes, args.seed, args.tasks, faults=not args.no_faults)
    print(report(totals, args.minutes, args.seed))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"minutes": args.minutes, "seed": args.seed, **totals}, f, indent=1,
                      default=dict)
    return 1 if totals["wrong results"] or totals["hung gets"] else 0


if __name__ == "__main__":
    sys.exit(main())
