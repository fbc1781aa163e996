#!/usr/bin/env python3
"""The node's decisions alone: tiny tasks through one node's state machines, no I/O.

    python bench/core.py                      # this checkout: µs a task, best of 5
    python bench/core.py --instructions       # CPU instructions a task (valgrind)
    python bench/core.py --tasks 50000 --repeat 7 --json bench/out-core.json

Builds a node's Fabric the way the node does (`zfabric.core.fabric.build`) and
plays its driver and workers in the same process: the driver submits tiny
tasks in batches, each worker runs what it is sent and reports an inline
result at once, the driver drops its ref when the value arrives; what a
client sends in one turn reaches the node as one `ClientMessages` event, as
the node loop hands on a client's messages in a row. What is timed is only `Fabric.handle()`: the
scheduler, the object directory, the effects. Sockets, pickling and other
processes are out of the picture, so this isolates the cost of the core's
code path per task -- the part of the hot path that a refactor of
`zfabric/core/` can make slower -- and it is less noisy than the end-to-end
benchmarks in `run.py`: best of `--repeat` runs.

On a machine whose clock is shared with noisy neighbours even that drifts by
tens of percent between runs. `--instructions` counts instead: it runs this
script under valgrind's callgrind twice, with `--tasks` and 3 x `--tasks`
tasks, and divides the difference in instructions executed by the
difference in tasks (start-up and warm-up cancel out). The count is the
same from run to run for the same code, interpreter and inputs; it includes
the harness's own work (building the messages), which is the same for any
checkout.

It needs only zfabric (the checkout it is run from: the repository root goes
first on sys.path), so two checkouts can be compared in one session:

    python bench/core.py --json a.json && (cd ../other && python bench/core.py --json b.json)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from zfabric import protocol as p  # noqa: E402
from zfabric.config import Config  # noqa: E402
from zfabric.core import effects as fx  # noqa: E402
from zfabric.core import events as ev  # noqa: E402
from zfabric.core.fabric import build  # noqa: E402

INLINE, OK = 1, 0          # ObjectState.INLINE, TaskStatus.OK on the wire
DRIVER = b"driver"
FN = b"F" * 16
BATCH = 100                # tasks the driver submits per turn


def node(cpus: int):
    info = {"address": "tcp://127.0.0.1:1", "object_address": "tcp://127.0.0.1:2",
            "host": "127.0.0.1", "port": 1, "pid": 1, "store_dir": "", "session_dir": ""}
    return build(Config(), node_id=b"N" * 16, resources={"CPU": cpus},
                 store_capacity=1 << 30, info=info, seeds=[], now=0.0)


def run(tasks: int, cpus: int) -> float:
    """Seconds spent in Fabric.handle for `tasks` tiny tasks, start to last value."""
    fabric = node(cpus)
    handle = fabric.handle
    now = 0.0
    pending = []            # effects not looked at yet
    workers = []

    def take(effects):
        pending.extend(effects)

    take(fabric.start(now))
    for e in list(pending):
        if type(e) is fx.SpawnWorker:
            workers.append(e.worker_id)
    pending.clear()
    for wid in workers:
        take(handle(ev.ClientMessage(wid.encode(), p.Hello("worker", 2, wid)), now))
    take(handle(ev.ClientMessage(DRIVER, p.Hello("driver", 1, None)), now))
    pending.clear()

    submitted = done = 0
    spent = 0.0
    clock = time.perf_counter
    while done < tasks:
        inbox = []
        if submitted < tasks and submitted - done < 4 * BATCH:
            for _ in range(min(BATCH, tasks - submitted)):
                submitted += 1
                tid = b"T" + submitted.to_bytes(15, "big")
                inbox.append((DRIVER, p.Submit(tid, "f", FN, 1, {"CPU": 1}, 3, False, 0, b"",
                                               [], [], b"code" if submitted == 1 else b"",
                                               b"args", b"")))
        for e in pending:
            if type(e) is not fx.Send:
                continue
            msg = e.msg
            if type(msg) is p.Execute:      # a worker runs it and reports at once
                inbox.append((e.to, p.TaskDone(msg.task_id, OK, False, [INLINE], [3], [[]],
                                               0.0, 0.0, 0.0, 0.0, [b"val"])))
            elif type(msg) is p.ObjectReady:  # the driver has its value; drops the ref
                done += 1
                inbox.append((DRIVER, p.Refs([], [msg.oid])))
        pending.clear()
        frames: dict[bytes, list] = {}     # what each client sends this turn, one frame
        for client, msg in inbox:          # each (a Batch), as the node loop hands them on
            frames.setdefault(client, []).append(msg)
        t0 = clock()
        for client, msgs in frames.items():
            event = (ev.ClientMessage(client, msgs[0]) if len(msgs) == 1
                     else ev.ClientMessages(client, tuple(msgs)))
            pending.extend(handle(event, now))
        spent += clock() - t0
        if not inbox:
            raise RuntimeError(f"stalled after {done} of {tasks} tasks")
    return spent


def instructions(tasks: int, cpus: int) -> int:
    """Instructions valgrind counts for this script with `tasks` tasks, one run."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         os.path.abspath(__file__), "--tasks", str(tasks), "--cpus", str(cpus), "--repeat", "1"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"})   # str hashes vary the count otherwise
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError("valgrind printed no instruction count:\n" + out.stderr[-2000:])
    return int(found.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions with valgrind (--tasks default 1,000)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if args.instructions:
        tasks = args.tasks if "--tasks" in (argv or sys.argv) else 1_000
        low, high = instructions(tasks, args.cpus), instructions(3 * tasks, args.cpus)
        per_task = (high - low) / (2 * tasks)
        print(f"{per_task:,.0f} instructions a task through one node's core "
              f"({args.cpus} CPUs; {tasks:,} and {3 * tasks:,} tasks under callgrind)")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"tasks": [tasks, 3 * tasks], "instructions": [low, high],
                           "instructions_per_task": per_task, "cpus": args.cpus,
                           "python": platform.python_version(),
                           "date": time.strftime("%Y-%m-%d")}, fh, indent=1)
        return 0
    run(1_000, args.cpus)   # warm-up
    runs = [run(args.tasks, args.cpus) for _ in range(args.repeat)]
    best = min(runs)
    print(f"{args.tasks:,} tiny tasks through one node's core ({args.cpus} CPUs): "
          f"{best / args.tasks * 1e6:.2f} µs a task (best of {args.repeat}; "
          f"all: {', '.join(f'{r / args.tasks * 1e6:.2f}' for r in runs)})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"tasks": args.tasks, "cpus": args.cpus, "runs_s": runs,
                       "best_us_per_task": best / args.tasks * 1e6,
                       "python": platform.python_version(),
                       "date": time.strftime("%Y-%m-%d")}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
