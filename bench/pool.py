#!/usr/bin/env python3
"""zfabric.util.Pool.map beside multiprocessing.Pool.map, and zfabric.util.Executor.map
beside concurrent.futures.ProcessPoolExecutor.map: N tiny calls, same run.

    python bench/pool.py                         # 10,000 calls, 2 processes, 8 rounds
    python bench/pool.py --calls 10000 --processes 2 --rounds 8 --reps 15 \
        --json bench/results/2026-11-30-pool.json

One process holds all four, set up once: `zf.init(num_cpus=P)` (an embedded
node with P workers), `zfabric.util.Pool(P)`, `multiprocessing.Pool(P)`,
`zfabric.util.Executor(P)` and `ProcessPoolExecutor(P)`. The call is
`square(x)`, a function of this module, over range(N). Pools use their
default chunk size (len / (4 * P), rounded up: the stdlib's heuristic, which
zfabric's Pool starts from, then makes chunks larger for a function whose
calls it saw take little time: after the warm-up call, one chunk here). The
line "stdlib's chunks" passes chunksize=len/(4*P) to zfabric's Pool, to show
what a task costs beside a stdlib chunk. The executors get the same
chunksize, since theirs defaults to 1.

Rounds: each round times every system `--reps` times in a row (one warm-up
call first) and keeps the median; even rounds run the systems in the order
below, odd rounds in reverse, so that neither of a pair always runs first
while the machine's load drifts. The table gives the median over the rounds
of each system's time and of the same-round ratio zfabric / stdlib. The JSON
keeps every sample, the load average before each round and the machine.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zfabric as zf  # noqa: E402
from zfabric.util import Executor, Pool  # noqa: E402

SYSTEMS = ["zfabric Pool.map", "multiprocessing Pool.map",
           "zfabric Pool.map, stdlib's chunks", "zfabric Executor.map",
           "ProcessPoolExecutor.map"]
PAIRS = [("zfabric Pool.map", "multiprocessing Pool.map"),
         ("zfabric Pool.map, stdlib's chunks", "multiprocessing Pool.map"),
         ("zfabric Executor.map", "ProcessPoolExecutor.map")]


def square(x):
    return x * x


def stdlib_chunksize(n: int, processes: int) -> int:
    chunksize, extra = divmod(n, processes * 4)
    return chunksize + (1 if extra else 0)


def make_runs(n: int, processes: int, mp_ctx: str):
    """The four systems' set-up: {name: call} and the things to close."""
    zpool = Pool(processes)
    mpool = multiprocessing.get_context(mp_ctx).Pool(processes)
    zexec = Executor(processes)
    pexec = concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context(mp_ctx))
    cs = stdlib_chunksize(n, processes)
    expected = [square(x) for x in range(n)]
    runs = {
        "zfabric Pool.map": lambda: zpool.map(square, range(n)),
        "multiprocessing Pool.map": lambda: mpool.map(square, range(n)),
        "zfabric Pool.map, stdlib's chunks": lambda: zpool.map(square, range(n), cs),
        "zfabric Executor.map": lambda: list(zexec.map(square, range(n), chunksize=cs)),
        "ProcessPoolExecutor.map": lambda: list(pexec.map(square, range(n), chunksize=cs)),
    }
    for name, run in runs.items():   # right answers first, and every pool warm
        if run() != expected:
            raise SystemExit(f"{name} gave a wrong result")
    closers = [zpool.terminate, mpool.terminate, zexec.shutdown, pexec.shutdown]
    return runs, closers


def time_reps(run, reps: int) -> list[float]:
    run()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--mp-context", default="fork", help="multiprocessing start method")
    ap.add_argument("--json", help="write every sample here")
    args = ap.parse_args()
    zf.init(num_cpus=args.processes)
    runs, closers = make_runs(args.calls, args.processes, args.mp_context)
    rounds = []
    try:
        for r in range(args.rounds):
            order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
            load = os.getloadavg()
            samples = {name: time_reps(runs[name], args.reps) for name in order}
            rounds.append({"order": order, "load": load, "samples": samples})
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} {statistics.median(s) * 1e3:.2f} ms" for n, s in samples.items()),
                file=sys.stderr)
    finally:
        for close in closers:
            close()
        zf.shutdown()
    report = summarize(args, rounds)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")


def summarize(args, rounds: list) -> dict:
    med = {name: [statistics.median(rd["samples"][name]) for rd in rounds] for name in SYSTEMS}
    ratios = {f"{a} / {b}": [x / y for x, y in zip(med[a], med[b])] for a, b in PAIRS}
    return {
        "params": {"calls": args.calls, "processes": args.processes, "rounds": args.rounds,
                   "reps": args.reps, "mp_context": args.mp_context,
                   "chunksize": stdlib_chunksize(args.calls, args.processes)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "median_ms": {n: statistics.median(v) * 1e3 for n, v in med.items()},
        "round_medians_ms": {n: [x * 1e3 for x in v] for n, v in med.items()},
        "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
        "ratios": ratios,
        "rounds": rounds,
    }


def table(report: dict) -> str:
    p = report["params"]
    lines = [f"{p['calls']:,} calls of square(x), {p['processes']} processes, median of "
             f"{p['rounds']} alternating rounds (each the median of {p['reps']} maps)", "",
             "| zfabric | time | stdlib | time | zfabric / stdlib (same round) |",
             "|---|---|---|---|---|"]
    ms = report["median_ms"]
    for a, b in PAIRS:
        ratio = report["ratio_median"][f"{a} / {b}"]
        lines.append(f"| {a.removeprefix('zfabric ')} | {ms[a]:.2f} ms | {b} | {ms[b]:.2f} ms "
                     f"| {ratio:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
