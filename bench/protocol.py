#!/usr/bin/env python3
"""What decoding a message costs: the hot messages of a tiny task, encoded
once and decoded (checked against their schema) many times, in one process.

    python bench/protocol.py                      # this checkout: ns a decode, best of 7
    python bench/protocol.py --json out.json

A tiny task crosses the node as a Submit (driver -> node), an Execute (node
-> worker), a TaskDone (worker -> node) and an ObjectReady (node -> driver);
clients batch what one turn owes them (Batch). Every message is decoded
once on receipt, so this is the per-message price of the schema checks on
the hot path. It needs only zfabric (the checkout it runs from goes first on
sys.path), so two checkouts compare in one session, interleaved to share the
machine's noise:

    python bench/protocol.py --json a.json && (cd ../other && python bench/protocol.py --json b.json)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cloudpickle  # noqa: E402

from zfabric import ids  # noqa: E402
from zfabric import protocol as p  # noqa: E402


def hot_messages() -> dict[str, bytes]:
    """One encoded frame of each message a tiny task sends, as the code sends them."""
    blob = cloudpickle.dumps(lambda: None)
    fn_id = ids.function_id(blob)
    tid = ids.new_task_id()
    oid = ids.return_ids(tid, 1)[0]
    value = b"\x80\x05N."                      # pickle of None
    done = p.TaskDone(tid, int(p.TaskStatus.OK), False, [int(p.ObjectState.INLINE)], [len(value)],
                      [[]], 1.0, 1.001, 1.0, 1.001, [value])
    frames = {
        "Submit (function sent before)": p.Submit(tid, "noop", fn_id, 1, {"CPU": 1.0}, 3, False,
                                                  0, b"", [], [], b"", b"", b""),
        "Submit (with its code)": p.Submit(tid, "noop", fn_id, 1, {"CPU": 1.0}, 3, False, 0,
                                           b"", [], [], blob, b"", b""),
        "Execute": p.Execute(tid, "noop", fn_id, 1, 0, [], [], b"", b"", b"", []),
        "TaskDone": done,
        "ObjectReady": p.ObjectReady(oid, int(p.ObjectState.INLINE), len(value), value),
    }
    out = {name: p.encode(msg) for name, msg in frames.items()}
    out["Batch of 16 TaskDone"] = p.encode(p.Batch([p.encode(done)] * 16))
    return out


def time_decode(frame: bytes, repeat: int, number: int) -> float:
    """Best of `repeat` runs of `number` decodes: ns per decode."""
    decode = p.decode
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            msg = decode(frame)
            if type(msg) is p.Batch:
                for inner in msg.messages:
                    decode(inner)
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best


def _revision() -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for name, frame in hot_messages().items():
        results[name] = round(time_decode(frame, args.repeat, args.number))
        print(f"{name:<32} {len(frame):>6} bytes  {results[name]:>8,} ns a decode", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"revision": _revision(), "python": platform.python_version(),
                       "machine": platform.processor() or platform.machine(),
                       "load": os.getloadavg(), "ns_per_decode": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
