#!/usr/bin/env python3
"""Put of a large array against a numpy copy of it, with the object store on
different filesystems (`store_root`), in the same run.

    python bench/store_root.py --root /dev/shm --root /mnt/zf-huge
    python bench/store_root.py --root /dev/shm --root /mnt/zf-huge --rounds 6 --json out.json

A put writes the array's bytes once into a new file of the store
(`store_root`, /dev/shm by default). On a tmpfs whose pages are 4 KiB, the
kernel allocates and clears 25,600 pages for 100 MB as the put writes,
while the numpy copy it is compared with gets transparent huge pages. A
tmpfs mounted with huge pages gives the store the same, for example (as
root):

    mkdir -p /mnt/zf-huge && mount -t tmpfs -o size=8g,huge=within_size tmpfs /mnt/zf-huge
    ZFABRIC_STORE_ROOT=/mnt/zf-huge python -m zfabric.node start ...

Each round runs in a fresh subprocess per root, the roots alternating:
`zf.init(num_cpus=1)` with `ZFABRIC_STORE_ROOT` set to that root, then
`--reps` puts of one array of `--mb` MB (a new object each, the last one
freed before the next) and as many `a.copy()` of it, interleaved; the
medians of each. Printed: per root, the median over the rounds of the put,
of the copy, and of the ratio put / copy within a round, with the root's
mount options (from /proc/mounts) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as harness  # noqa: E402  (bench/run.py: child processes, cleanup, JSON)


def child(out_path: str, params: dict) -> int:
    import numpy as np
    import zfabric as zf
    a = np.ones(params["mb"] * 2**20 // 8)          # its pages really touched
    zf.init(num_cpus=1)
    puts, copies = [], []
    try:
        ref = None
        for _ in range(params["reps"]):
            ref = None                              # (the last object freed first)
            t = time.perf_counter()
            ref = zf.put(a)
            puts.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = a.copy()
            copies.append(time.perf_counter() - t)
            del b
        if not (zf.get(ref) == a).all():
            raise AssertionError("the stored array differs from the one put")
        del ref
    finally:
        zf.shutdown()
    harness.write_json(out_path, {"puts": puts, "copies": copies,
                                  "put": statistics.median(puts),
                                  "copy": statistics.median(copies)})
    return 0


def mount_of(path: str) -> str:
    """The filesystem type and options of the mount holding `path`."""
    best, found = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 4 and (real == fields[1] or real.startswith(
                        fields[1].rstrip("/") + "/")) and len(fields[1]) > len(best):
                    best, found = fields[1], f"{fields[2]} ({fields[3]})"
    except OSError:
        pass
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", action="append", default=[],
                    help="a store_root to measure (give two or more)")
    ap.add_argument("--mb", type=int, default=100, help="array size in MB (default 100)")
    ap.add_argument("--reps", type=int, default=5, help="puts (and copies) a round")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per root, alternating")
    ap.add_argument("--json", metavar="PATH", help="write every round's figures here")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a round may take")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child, json.loads(a.params))
    if not a.root:
        ap.error("give at least one --root")
    for root in a.root:
        if not os.path.isdir(root):
            ap.error(f"--root {root}: not a directory")
    params = {"mb": a.mb, "reps": a.reps}
    harness.become_subreaper()
    runs: dict[str, list] = {root: [] for root in a.root}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="zf-bench-root-") as work:
        for i in range(a.rounds):
            for k, root in enumerate(a.root):
                out = os.path.join(work, f"round{i}-root{k}.json")
                harness.log(f"round {i + 1}/{a.rounds} {root} (load {os.getloadavg()[0]:.2f})")
                r, _ = harness.script_round(
                    os.path.abspath(__file__), ["--child", out, "--params", json.dumps(params)],
                    out, a.timeout, {**harness.child_env("zfabric"), "ZFABRIC_STORE_ROOT": root})
                if r is None:
                    return 1
                runs[root].append(r)
                load.append(os.getloadavg()[0])
    lines = [f"Put of {a.mb} MB against `a.copy()` of it, same subprocess; medians of "
             f"{a.rounds} round(s) x {a.reps} each, roots alternating", "",
             "| store_root | filesystem | put | numpy copy | put / copy |", "|---|---|---|---|---|"]
    summary = {}
    for root, rs in runs.items():
        put = statistics.median(r["put"] for r in rs)
        copy = statistics.median(r["copy"] for r in rs)
        ratio = statistics.median(r["put"] / r["copy"] for r in rs)
        summary[root] = {"put": put, "copy": copy, "ratio": ratio, "mount": mount_of(root)}
        lines.append(f"| `{root}` | {summary[root]['mount']} | {put * 1e3:.1f} ms | "
                     f"{copy * 1e3:.1f} ms | {ratio:.2f}x |")
    table = "\n".join(lines)
    if a.json:
        harness.write_json(a.json, harness.portable({
            "params": {**params, "rounds": a.rounds}, "loadavg": load,
            "machine": harness.short_machine(), "runs": runs, "summary": summary, "markdown": table}))
    print(harness.machine_line("store_root.py", load))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
