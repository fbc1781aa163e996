#!/usr/bin/env python3
"""Start-up of a driver with its own node, the node forked from the driver
against the node exec'd, alternating in one run.

    python bench/startup_split.py                     # 10 rounds of each
    python bench/startup_split.py --rounds 20 --json bench/results/out.json

Each round is a fresh interpreter (bench/run.py's child harness: every
process it leaves behind is stopped by PID) running `import zfabric`,
`zf.init(num_cpus=2)`, one no-op task's result and `zf.shutdown()`, with
ZFABRIC_FORK_EMBEDDED_NODE=1 (the node forked from the driver, its zygote
from the node: node/forking.py) or 0 (both exec'd). The child times each
phase; the harness times the whole process, exec to exit, as bench/run.py's
start-up row does. `python -c pass` is timed between rounds for scale.

stdout: a markdown table of medians; progress on stderr.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402  (bench/run.py: child processes, cleanup, JSON)

MODES = {"fork": "1", "exec": "0"}


def child(out_path: str) -> int:
    t0 = time.perf_counter()
    import zfabric as zf
    t1 = time.perf_counter()
    zf.init(num_cpus=2)
    t2 = time.perf_counter()
    value = zf.get(zf.remote(lambda: 1).remote())
    t3 = time.perf_counter()
    zf.shutdown()
    t4 = time.perf_counter()
    if value != 1:
        raise AssertionError(f"the first task returned {value!r}")
    harness.write_json(out_path, {"import": t1 - t0, "init": t2 - t1, "first_task": t3 - t2,
                                  "shutdown": t4 - t3})
    return 0


def python_pass() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="rounds of each mode, alternating")
    ap.add_argument("--json", metavar="PATH", help="write every round's figures here")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a round may take")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child)
    harness.become_subreaper()
    runs: dict[str, list] = {mode: [] for mode in MODES}
    passes, load = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="zf-bench-startup-") as work:
        for i in range(a.rounds):
            for mode, switch in MODES.items():
                out = os.path.join(work, f"round{i}-{mode}.json")
                r, wall = harness.script_round(
                    os.path.abspath(__file__), ["--child", out], out, a.timeout,
                    {**harness.child_env("zfabric"), "ZFABRIC_FORK_EMBEDDED_NODE": switch})
                if r is None:
                    return 1
                runs[mode].append({**r, "wall": wall})
            passes.append(python_pass())
            load.append(os.getloadavg()[0])
            harness.log(f"round {i + 1}/{a.rounds}: fork {runs['fork'][-1]['wall']:.3f} s, "
                        f"exec {runs['exec'][-1]['wall']:.3f} s (load {load[-1]:.2f})")
    phases = ("wall", "import", "init", "first_task", "shutdown")
    summary = {mode: {k: statistics.median(r[k] for r in rs) for k in phases}
               for mode, rs in runs.items()}
    ratio = statistics.median(f["wall"] / e["wall"] for f, e in zip(runs["fork"], runs["exec"]))
    lines = [f"Driver start-up with its own node, medians of {a.rounds} rounds each, modes "
             f"alternating (`python -c pass`: {statistics.median(passes) * 1e3:.0f} ms)", "",
             "| node started by | exec → exit | import | init | first task | shutdown |",
             "|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['wall'] * 1e3:.0f} ms | {s['import'] * 1e3:.0f} ms | "
                     f"{s['init'] * 1e3:.0f} ms | {s['first_task'] * 1e3:.1f} ms | "
                     f"{s['shutdown'] * 1e3:.0f} ms |")
    lines.append(f"\nfork / exec, exec → exit, median of the rounds' ratios: {ratio:.2f}x")
    table = "\n".join(lines)
    if a.json:
        harness.write_json(a.json, harness.portable({
            "params": {"rounds": a.rounds}, "loadavg": load, "python_pass": passes,
            "machine": harness.short_machine(), "runs": runs, "summary": summary, "fork_over_exec": ratio, "markdown": table}))
    print(harness.machine_line("startup_split.py", load))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
