#!/usr/bin/env python3
"""Where a sync round trip `zf.get(f.remote())` spends its time and CPU: wall
time per round trip, and the CPU of every thread of the node, the workers and
the driver (psutil per-thread times), beside a raw ZeroMQ ipc round trip
measured in the same run.

    python bench/rtt_split.py                          # 3,000 round trips, 3 rounds
    python bench/rtt_split.py --quick                  # 500, 1 round
    python bench/rtt_split.py --tree base=/tmp/old --tree new=. --rounds 4 \\
        --json bench/results/out.json                  # A/B: trees alternate
    python bench/rtt_split.py --profile DIR --rate 1000   # also py-spy every process

Each round runs in a fresh subprocess with the tree's package first on
PYTHONPATH and the tree as its cwd, so that the node and its workers, started
with `python -m`, import that tree's package too (every process it leaves
behind is stopped by PID, as in run.py):
`zf.init(num_cpus=N)`, a warm-up of `--warmup` round trips of a no-op task
that returns its worker's pid, then `--trips` timed round trips. Before and
after, user and system CPU time of each thread (`/proc/PID/task`, via psutil)
of the node process, every worker and the driver; threads are named by
their `comm` (the main thread "main"; ZeroMQ's I/O thread "ZMQbg/IO/0").
Reported as µs of CPU per round trip. With several `--tree`s the rounds
alternate between them (A B A B ...), so a shared machine's load falls on
both alike; the raw ZeroMQ round trip (bench/baselines.py) is measured
before each round.

`--profile DIR`: py-spy samples (into DIR/LABEL-ROUND) the node, the workers and the driver during
the timed round trips, at `--rate` Hz (see cpu_split.py for reading it;
`--gil` keeps only the samples holding the GIL).

stdout: a markdown table (medians over each tree's rounds); progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as harness  # noqa: E402  (bench/run.py: child processes, cleanup, JSON)

FULL = dict(trips=3000, warmup=200, num_cpus=2, rounds=3)
QUICK = dict(trips=500, warmup=100, num_cpus=2, rounds=1)


def worker_pid():
    return os.getpid()


def threads_cpu(pid: int) -> dict:
    """{thread name: [user s, system s]} of a process (same names summed)."""
    import psutil
    out = {}
    try:
        threads = psutil.Process(pid).threads()
    except psutil.Error:
        return out
    for t in threads:
        if t.id == pid:
            name = "main"
        else:
            try:
                with open(f"/proc/{pid}/task/{t.id}/comm") as fh:
                    name = fh.read().strip()
            except OSError:
                continue
        u, s = out.get(name, (0.0, 0.0))
        out[name] = [u + t.user_time, s + t.system_time]
    return out


def snapshot(pids: dict) -> dict:
    return {role: threads_cpu(pid) for role, pid in pids.items()}


def child(out_path: str, params: dict) -> int:
    if params.get("tree"):   # (the node and its workers run `python -m zfabric...`, which
        os.chdir(params["tree"])   # takes the package in the cwd before PYTHONPATH's)
    import zfabric as zf
    from zfabric.node import client
    res = {"python": platform.python_version(), "params": params,
           "zfabric_file": os.path.dirname(zf.__file__)}
    zf.init(num_cpus=params["num_cpus"])
    try:
        f = zf.remote(worker_pid)
        workers = set()
        for _ in range(params["warmup"]):
            workers.add(zf.get(f.remote()))
        time.sleep(0.3)
        pids = {"node": client.current().node_pid, "driver": os.getpid()}
        for i, w in enumerate(sorted(workers)):
            pids[f"worker-{i + 1}"] = w
        profs = None
        if params.get("profile_dir"):
            import pyspy
            profs = pyspy.start(pids, out_dir=params["profile_dir"], rate=params["rate"],
                                gil=params.get("gil", False))
            time.sleep(1.0)                     # py-spy attached before the clock starts
        before = snapshot(pids)
        samples = []
        seen = set()
        t0 = time.perf_counter()
        for _ in range(params["trips"]):
            t = time.perf_counter()
            seen.add(zf.get(f.remote()))
            samples.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        after = snapshot(pids)
        if profs is not None:
            summaries = pyspy.finish(profs, stop=True)
            with open(os.path.join(params["profile_dir"], "summary.txt"), "w") as fh:
                fh.write(f"py-spy at {params['rate']} Hz{' --gil' if params.get('gil') else ''}"
                         f", {params['trips']:,} sync round trips, {wall:.2f} s\n\n")
                fh.write(pyspy.text(summaries, rate=params["rate"]))
        if not seen <= workers:
            res["note"] = "a worker that did not run in the warm-up ran timed round trips"
        n = params["trips"]
        samples.sort()
        res.update(wall_s=wall, rtt_median=statistics.median(samples),
                   rtt_mean=wall / n, rtt_p10=samples[n // 10], rtt_p90=samples[n * 9 // 10],
                   us_per_trip={})
        for role, threads in after.items():
            per = {}
            for name, (u1, s1) in threads.items():
                u0, s0 = before.get(role, {}).get(name, (0.0, 0.0))
                if u1 - u0 + s1 - s0 > 0:
                    per[name] = {"user": (u1 - u0) / n * 1e6, "sys": (s1 - s0) / n * 1e6}
            res["us_per_trip"][role] = per
    finally:
        zf.shutdown()
    harness.write_json(out_path, res)
    return 0


def role_of(name: str) -> str:
    return "worker" if name.startswith("worker-") else name


def summary(runs: list) -> dict:
    """{'rtt_median': µs, 'zmq_rtt': µs, 'cpu': {(role, thread): µs user+sys}} medians."""
    ok = [r for r in runs if r and "us_per_trip" in r]
    if not ok:
        return {}
    per_run = []
    for r in ok:
        acc = {}
        for role, threads in r["us_per_trip"].items():
            for name, v in threads.items():
                key = f"{role_of(role)} {name}"
                acc[key] = acc.get(key, 0.0) + v["user"] + v["sys"]
        acc["all"] = sum(acc.values())
        per_run.append(acc)
    keys = sorted({k for a in per_run for k in a})
    cpu = {k: statistics.median(a.get(k, 0.0) for a in per_run) for k in keys}
    out = {"rounds": len(ok), "rtt_median": statistics.median(r["rtt_median"] for r in ok) * 1e6,
           "rtt_mean": statistics.median(r["rtt_mean"] for r in ok) * 1e6, "cpu": cpu}
    zmq = [r["zmq_rtt"] for r in ok if r.get("zmq_rtt")]
    if zmq:
        out["zmq_rtt"] = statistics.median(zmq) * 1e6
        out["ratio_to_zmq"] = statistics.median(r["rtt_median"] / r["zmq_rtt"]
                                                for r in ok if r.get("zmq_rtt"))
    return out


def markdown(by_tree: dict, params: dict) -> str:
    names = list(by_tree)
    sums = {t: summary(runs) for t, runs in by_tree.items()}
    lines = [f"{params['trips']:,} sync round trips `zf.get(f.remote())` on "
             f"`zf.init(num_cpus={params['num_cpus']})`; median of each tree's rounds", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, get, fmt="{:.0f} µs"):
        cells = []
        for t in names:
            v = get(sums[t]) if sums[t] else None
            cells.append("—" if v is None else fmt.format(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("round trip (median)", lambda s: s.get("rtt_median"))
    row("round trip (mean)", lambda s: s.get("rtt_mean"))
    row("raw ZeroMQ ipc round trip", lambda s: s.get("zmq_rtt"))
    row("ratio to raw ZeroMQ", lambda s: s.get("ratio_to_zmq"), "{:.2f}x")
    keys = sorted({k for s in sums.values() if s for k in s["cpu"]},
                  key=lambda k: (k == "all", k))
    for k in keys:
        row(f"CPU: {k}", lambda s, k=k: s["cpu"].get(k))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 round trips, 1 round")
    ap.add_argument("--trips", type=int, help="timed round trips a round (default 3,000)")
    ap.add_argument("--warmup", type=int, help="round trips before the clock starts")
    ap.add_argument("--num-cpus", type=int, help="the embedded node's CPUs (default 2)")
    ap.add_argument("--rounds", type=int, help="fresh subprocesses per tree (default 3)")
    ap.add_argument("--tree", action="append", metavar="LABEL=DIR",
                    help="a source tree to measure (its zfabric/ package); repeat to "
                         "alternate A/B; default: this checkout")
    ap.add_argument("--no-zmq", action="store_true", help="skip the raw ZeroMQ round trip")
    ap.add_argument("--profile", metavar="DIR", help="py-spy every process into DIR/LABEL-N")
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples a second")
    ap.add_argument("--gil", action="store_true", help="with --profile: only GIL samples")
    ap.add_argument("--json", metavar="PATH", help="write every round's figures here")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a round may take")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child, json.loads(a.params))
    params = dict(QUICK if a.quick else FULL)
    for k in ("trips", "warmup", "num_cpus", "rounds"):
        if getattr(a, k):
            params[k] = getattr(a, k)
    trees = {}
    for spec in a.tree or [f"this={os.path.dirname(HERE)}"]:
        label, _, path = spec.rpartition("=")
        label = label or os.path.basename(os.path.abspath(path))
        if not os.path.isdir(os.path.join(path, "zfabric")):
            ap.error(f"--tree {spec}: no zfabric/ package in {path}")
        trees[label] = os.path.abspath(path)
    if a.profile:
        import pyspy
        if not pyspy.available():
            ap.error("--profile needs py-spy (pip install py-spy)")
    import baselines
    harness.become_subreaper()
    by_tree = {t: [] for t in trees}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="zf-bench-rtt-") as work:
        for i in range(params["rounds"]):
            for t, (label, path) in enumerate(trees.items()):
                p = dict(params, rate=a.rate, gil=a.gil, tree=path)
                name = f"{re.sub(r'[^A-Za-z0-9_.-]', '-', label)}-{i + 1}"   # (a file name)
                if a.profile:
                    p["profile_dir"] = os.path.abspath(os.path.join(a.profile, name))
                zmq = None if a.no_zmq else baselines.zmq_rtt(rtt=1000, rtt_warmup=100)
                out = os.path.join(work, f"{t}-{name}.json")
                logp = os.path.join(work, f"{t}-{name}.log")
                harness.log(f"round {i + 1}/{params['rounds']} {label} "
                            f"(load {os.getloadavg()[0]:.2f})")
                env = harness.child_env("other")
                env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"]
                                            if env.get("PYTHONPATH") else "")
                rc, _, timed_out, left = harness.run_child(
                    sys.executable, ["--child", out, "--params", json.dumps(p)],
                    a.timeout, env, logp, script=os.path.abspath(__file__))
                r = harness.read_json(out)
                if rc != 0 or r is None:
                    harness.log(f"round {i + 1} {label} failed (rc {rc}"
                                f"{', timeout' if timed_out else ''})\n{harness.tail(logp)}")
                    r = None
                elif zmq:
                    r["zmq_rtt"] = zmq["zmq_rtt"]
                if left:
                    harness.log(f"stopped leftovers {left}")
                by_tree[label].append(r)
                load.append(os.getloadavg()[0])
    table = markdown(by_tree, params)
    if a.json:
        harness.write_json(a.json, harness.portable({
            "params": params, "trees": list(trees), "loadavg": load,
            "machine": {"cpu": harness.cpu_model(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "runs": by_tree, "summary": {t: summary(r) for t, r in by_tree.items()},
            "markdown": table}))
    print(f"**Machine:** {harness.cpu_model()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} · load average {load[0]:.2f} before, {load[-1]:.2f} "
          f"after · `bench/rtt_split.py` · {time.strftime('%Y-%m-%d')}\n")
    print(table)
    return 0 if any(r for runs in by_tree.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
