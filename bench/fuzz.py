#!/usr/bin/env python3
"""Fuzz: hostile traffic at real nodes' TCP ports for N minutes.

    python bench/fuzz.py --minutes 2 --seed 1          # bench/results/2026-11-30-fuzz.txt
    python bench/fuzz.py --minutes 10 --nodes 3 --seed 7

Starts a `LocalCluster` of `--nodes` nodes (1 CPU each, CURVE on) and fires
volley after volley (`zfabric.testing.portfuzz`, drawn by hypothesis from
`--seed`) at their scheduler and object ports, one node after the other: raw
TCP (random bytes, ZMTP greetings garbled or cut short, connect-and-close)
and ZeroMQ sockets of every type, each plain, as a CURVE client with a key
pair of its own, and with the cluster key (whose frames reach the decoder:
random garbage, and `zfabric.testing.hostile`'s valid, mutated, oversize and
bomb frames naming the cluster's nodes).
After each volley it waits until the node counted what it had to drop.
Meanwhile a driver (a subprocess of this script, `--workload`) runs tasks on
the cluster round after round and checks every result.

Every minute it prints what it sent (by mode and by socket type), each
node's rejected_* counters, whether it is alive and answers, and its
resident memory.
At the end the workload reports its rounds, and a new driver runs tasks on
the cluster (small ones and two with an 8 MB argument) and checks them.

Exit code 1 on any failure: a node died or stopped answering, a volley was
not counted within VOLLEY_TIMEOUT (a hang, or a drop nobody counted), a
sender without the key got an answer, or a task gave a wrong result or
none within GET_TIMEOUT. Every process it starts is stopped by PID (the
cluster's, and the workload's).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import psutil
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import zfabric as zf
from zfabric.exceptions import GetTimeoutError, NodeDiedError
from zfabric.node import auth
from zfabric.testing import LocalCluster, hostile
from zfabric.testing import portfuzz as pf

VOLLEY_TIMEOUT = 60.0   # seconds for a node to count one volley
GET_TIMEOUT = 60.0      # a task that takes longer counts as hung
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TimeUp(Exception):
    """The run is over (raised out of hypothesis' loop to leave it)."""


class Run:
    def __init__(self, cluster: LocalCluster, minutes: float):
        self.cluster = cluster
        self.ctx = zmq.Context()
        self.key = auth.read(cluster.key_path)
        self.start = time.monotonic()
        self.end = self.start + minutes * 60
        self.next_minute = self.start + 60
        self.volleys = 0
        self.sent = Counter()          # (mode, kind) -> messages
        self.answers = 0               # answers to holders of the key
        self.failures: list[str] = []

    def volley(self, shots: list) -> None:
        if self.failures or time.monotonic() >= self.end:
            raise TimeUp
        handle = self.cluster.nodes[self.volleys % len(self.cluster.nodes)]
        target = pf.Target(handle.info["address"], handle.info["object_address"], self.key)
        try:
            report = pf.fire(self.ctx, target, shots, lambda: self.stats(handle),
                             timeout=VOLLEY_TIMEOUT)
        except (GetTimeoutError, NodeDiedError, ConnectionError) as e:
            self.failures.append(f"node {handle.node_id[:12]} stopped answering: {e}")
            raise TimeUp from None
        self.volleys += 1
        self.sent.update(report.sent)
        self.answers += report.answers
        grew = {c: report.grew(c) for c in pf.COUNTERS}
        if not report.settled:
            self.failures.append(f"volley {self.volleys} at node {handle.node_id[:12]}: "
                                 f"counters grew by {grew}, not {report.expected}")
        elif grew["rejected_malformed"] > sum(
                d["rejected_malformed"] for d in (report.expected, report.uncertain)):
            self.failures.append(f"volley {self.volleys} at node {handle.node_id[:12]}: "
                                 f"counted more malformed frames than it was sent ({grew})")
        for port, mode, kind, data in report.answered_unauthenticated:
            self.failures.append(f"node {handle.node_id[:12]} answered a {mode} {kind} on "
                                 f"its {port} port: {data!r}")
        if time.monotonic() >= self.next_minute:
            self.next_minute += 60
            self.print_minute()
        if self.failures:
            raise TimeUp

    def stats(self, handle) -> dict:
        return self.cluster.own_status(handle)["stats"]

    def alive(self, handle) -> str:
        try:
            if psutil.Process(handle.pid).status() == psutil.STATUS_ZOMBIE:
                return "DEAD"
        except psutil.NoSuchProcess:
            return "DEAD"
        try:
            self.stats(handle)
        except Exception as e:   # noqa: BLE001 -- whatever it was, the node does not answer
            return f"NOT ANSWERING ({type(e).__name__})"
        return "alive"

    def print_minute(self) -> None:
        minute = (time.monotonic() - self.start) / 60
        print(f"\n== after {minute:.1f} min: {self.volleys} volleys")
        for mode in ("raw",) + pf.MODES:
            kinds = {k: n for (m, k), n in sorted(self.sent.items()) if m == mode}
            print(f"  sent {mode:12} {sum(kinds.values()):7}  "
                  + " ".join(f"{k}={n}" for k, n in kinds.items()))
        print(f"  answers to holders of the key: {self.answers}")
        for handle in self.cluster.nodes:
            state = self.alive(handle)
            counters = self.stats(handle) if state == "alive" else {}
            print(f"  node {handle.node_id[:12]} pid {handle.pid}: {state}, {rss_mib(handle)}  "
                  + " ".join(f"{c}={counters.get(c, '?')}" for c in pf.COUNTERS))
            if state != "alive":
                self.failures.append(f"node {handle.node_id[:12]} is {state}")
        sys.stdout.flush()

    def check_tasks(self) -> None:
        """A new driver runs tasks on the fuzzed cluster: right results, none hung."""
        zf.init(address=self.cluster.address)
        try:
            rounds = tasks_round(0)
            print(f"\ntasks after fuzzing: right ({rounds} small, 2 with an 8 MB argument)")
        except GetTimeoutError as e:
            self.failures.append(f"tasks hung after fuzzing: {e}")
        except WrongResult as e:
            self.failures.append(f"a task gave a wrong result after fuzzing: {e}")
        finally:
            zf.shutdown()

    def check_workload(self, proc: subprocess.Popen) -> None:
        """What the driver that ran tasks during the fuzzing saw."""
        try:
            out, err = proc.communicate(timeout=GET_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.failures.append("the workload driver hung")
            return
        try:
            seen = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.failures.append(f"the workload driver failed (exit {proc.returncode}): "
                                 f"{err.strip()[-500:]}")
            return
        print(f"\ntasks during fuzzing: {seen['rounds']} rounds of 20 small tasks and two "
              f"with an 8 MB argument; {len(seen['failures'])} failure(s)")
        self.failures += [f"workload: {f}" for f in seen["failures"]]

    def close(self) -> None:
        self.ctx.destroy(0)


def rss_mib(handle) -> str:
    """The node process's resident memory (not its workers')."""
    try:
        return f"{psutil.Process(handle.pid).memory_info().rss / 2 ** 20:.0f} MiB"
    except psutil.Error:
        return "? MiB"


class WrongResult(Exception):
    pass


def tasks_round(i: int) -> int:
    """Small tasks and two with an 8 MB argument (through the store); raises
    WrongResult, or GetTimeoutError if one hangs. Returns how many small ones."""
    @zf.remote
    def square(x):
        return x * x

    @zf.remote
    def total(a):
        return int(a.sum())

    n = 20 if i else 100
    small = zf.get([square.remote(i + k) for k in range(n)], timeout=GET_TIMEOUT)
    if small != [(i + k) ** 2 for k in range(n)]:
        raise WrongResult(f"squares {small}")
    big = np.arange(1_000_000, dtype=np.int64) + i
    sums = zf.get([total.remote(big), total.remote(zf.put(big))], timeout=GET_TIMEOUT)
    if sums != [int(big.sum())] * 2:
        raise WrongResult(f"sums {sums}, not {int(big.sum())}")
    return n


def workload(address: str, seconds: float) -> int:
    """Run rounds of tasks for `seconds` (a driver attached to `address`); print
    what it saw as one JSON line."""
    zf.init(address=address)
    rounds, failures = 0, []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not failures:
            try:
                tasks_round(rounds + 1)
                rounds += 1
            except (WrongResult, GetTimeoutError) as e:
                failures.append(f"round {rounds + 1}: {type(e).__name__}: {e}")
    finally:
        zf.shutdown()
    print(json.dumps({"rounds": rounds, "failures": failures}))
    return 0


def start_workload(address: str, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--workload", address,
                             "--minutes", str(seconds / 60)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def fuzz(run: Run, seed: int, strategy) -> None:
    """Draw volleys from `strategy` and fire them until the run is over."""
    @hypothesis_seed(seed)
    @settings(max_examples=10 ** 9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(shots):
        run.volley(shots)

    try:
        one()
    except TimeUp:
        pass


def frames(cluster: LocalCluster) -> st.SearchStrategy:
    """What the ZeroMQ sockets send: garbage, and hostile.py's frames (valid
    messages naming the cluster's nodes, mutated ones, oversize, bombs)."""
    known = hostile.Known(node_ids=[bytes.fromhex(h.node_id) for h in cluster.nodes],
                          addresses=[h.address for h in cluster.nodes])
    return st.one_of(pf.garbage_frames(), hostile.frames(known))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--workload", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.workload:   # the driver that runs tasks while the fuzzing goes on
        return workload(args.workload, args.minutes * 60)
    print(f"zfabric port fuzz: {args.nodes} node(s), {args.minutes:g} min, seed {args.seed}, "
          f"zmq {zmq.zmq_version()}")
    with LocalCluster(nodes=args.nodes, num_cpus=1) as cluster:
        run = Run(cluster, args.minutes)
        driver = start_workload(cluster.address, args.minutes * 60)
        try:
            fuzz(run, args.seed, pf.volleys(frame=frames(cluster)))
            run.print_minute()
            run.check_workload(driver)
            if not any("DEAD" in f or "answering" in f for f in run.failures):
                run.check_tasks()
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            run.close()
    print(f"\n{run.volleys} volleys, {sum(run.sent.values())} messages and connections sent; "
          f"{len(run.failures)} failure(s)")
    for failure in run.failures:
        print(f"  FAIL: {failure}")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
