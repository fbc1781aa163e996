#!/usr/bin/env python3
"""Two sets of zfabric runs side by side: medians, and after / before.

    python bench/compare.py "bench/results/DIR/run-before-*.json" "bench/results/DIR/run-after-*.json"

Each argument is a glob of JSON files written by `bench/run.py --json` or
`bench/cluster.py --json` (the zfabric figures are read from either). On a
shared machine one run of each is not enough to tell a change from noise:
run the two checkouts alternately several times (before, after, before,
after...) and compare the medians. Prints a markdown table.
"""
from __future__ import annotations

import glob
import json
import statistics
import sys

# key -> (label, how to show it, True if higher is better)
METRICS = {
    "startup": ("startup → first result", "s", False),
    "startup_wall": ("startup subprocess wall time", "s", False),
    "throughput": ("tiny-task throughput (tasks/s)", "n", True),
    "rtt": ("sync round trip", "s", False),
    "chain": ("1,000-task dependency chain", "s", False),
    "big_put": ("put 100 MB numpy array", "s", False),
    "big_get": ("get 100 MB numpy array", "s", False),
    "tiny_get": ("get 1 KB numpy array", "s", False),
    "small_puts": ("2,000 small puts (ops/s)", "n", True),
    "small_gets": ("2,000 small gets (ops/s)", "n", True),
    "idle_rss": ("idle RSS (MB)", "n", False),
    "transfer_first_s": ("100 MB argument from another node, first", "s", False),
    "transfer_warm_s": ("100 MB argument from another node, warm", "s", False),
    "spill_60x0.1_s": ("spillover 60 x 0.1 s on 3 x 1 CPU", "s", False),
    "spill_40x0.3_s": ("spillover 40 x 0.3 s on 3 x 1 CPU", "s", False),
    "tiny_rate": ("tiny tasks on 3 nodes (tasks/s)", "n", True),
    "start_s": ("3-node cluster start", "s", False),
}


def zfabric_figures(path: str) -> dict:
    with open(path) as fh:
        data = json.load(fh)
    if "systems" in data:                       # bench/run.py
        return data["systems"]["zfabric"]["metrics"]
    return data["results"]["zfabric"]           # bench/cluster.py


def show(value: float, kind: str) -> str:
    if kind == "n":
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    sets = []
    for pattern in argv:
        files = sorted(glob.glob(pattern))
        if not files:
            print(f"no file matches {pattern}", file=sys.stderr)
            return 2
        sets.append([zfabric_figures(f) for f in files])
    before, after = sets
    print(f"| workload | before (median of {len(before)}) | after (median of {len(after)}) "
          "| after / before |")
    print("|---|---|---|---|")
    for key, (label, kind, higher_better) in METRICS.items():
        b = [r[key] for r in before if isinstance(r.get(key), (int, float))]
        a = [r[key] for r in after if isinstance(r.get(key), (int, float))]
        if not a or not b:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        better = "higher is better" if higher_better else "lower is better"
        print(f"| {label} | {show(mb, kind)} | {show(ma, kind)} | {ma / mb:.2f} ({better}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
