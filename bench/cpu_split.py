#!/usr/bin/env python3
"""Where the CPU of a tiny task goes: the node process, each worker, the
driver, measured with psutil around N no-op tasks on an embedded node.

    python bench/cpu_split.py                       # 20,000 tasks, 2 CPUs
    python bench/cpu_split.py --quick               # 2,000 tasks
    python bench/cpu_split.py --tasks 50000 --rounds 3 --json bench/out-split.json
    python bench/cpu_split.py --profile bench/out-prof   # also py-spy on every process

Each round runs in a fresh subprocess (every process it leaves behind is
stopped by PID, as in run.py): `zf.init(num_cpus=N)`, a warm-up of 500
tasks (the workers up and the function known to them), then the tasks in
batches of `--batch` (submitted, then one `get` of the batch's refs). Before
and after, user + system CPU time (psutil `cpu_times()`) of: the driver
(this process, all its threads), the node process, its worker fork
server(s) (zygote), and each worker. Reported as µs of CPU a task, and
the wall time (tasks/s).

`--profile DIR`: py-spy samples the node, every worker and the driver
during the timed tasks (not the warm-up) and DIR gets each one's raw
collapsed stacks, plus `summary.txt`: per process the top functions by self
time (and by total time). py-spy counts a thread as running when it is not
in a wait it recognizes: on a loaded machine that includes time spent
runnable but off the CPU and waiting for the GIL after a call that released
it, which lands on `Socket.send` and `Poller.poll`; `--gil` keeps only the
samples holding the GIL (Python code running; C code that releases the GIL,
such as a zmq send, is then not counted): its sample counts come close to
the CPU time psutil measures, so read that one for where the CPU goes. Sampling costs the machine CPU, so the CPU split
of a profiled round is higher than of a plain one: profile for where, and
measure without --profile for how much.

stdout: a markdown table (medians over the rounds); progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as harness  # noqa: E402  (bench/run.py: child processes, cleanup, JSON)

FULL = dict(tasks=20_000, batch=5_000, warmup=500, num_cpus=2)
QUICK = dict(tasks=2_000, batch=1_000, warmup=200, num_cpus=2)


def noop():
    return None


def processes():
    """{role: [psutil.Process]} of the embedded node under this driver:
    node, zygote (the worker fork servers), worker, other. By process name
    (zfabric names its processes), or by command line (a tree from before
    names, whose processes were all exec'd)."""
    import psutil

    def role(proc) -> str:
        try:
            name, cmd = proc.name(), " ".join(proc.cmdline())
        except psutil.Error:
            return ""
        if name == "zfabric-node" or "zfabric.node" in cmd and "_serve" in cmd:
            return "node"
        if name == "zfabric-zygote" or "zfabric.node.zygote" in cmd:
            return "zygote"
        return "other"
    roles = {"node": [], "zygote": [], "worker": [], "other": []}
    for child in psutil.Process().children():
        kind = role(child)
        if kind == "node":
            roles["node"].append(child)
            for sub in child.children():
                if role(sub) == "zygote":
                    roles["zygote"].append(sub)
                    roles["worker"] += sub.children()
                elif role(sub):
                    roles["other"].append(sub)
        elif kind:
            roles["other"].append(child)
    return roles


def cpu_of(proc) -> float | None:
    import psutil
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def snapshot(roles) -> dict:
    """{(role, pid): CPU seconds} for every process, the driver as ('driver', pid)."""
    import psutil
    out = {("driver", os.getpid()): cpu_of(psutil.Process())}
    for role, procs in roles.items():
        for p in procs:
            out[(role, p.pid)] = cpu_of(p)
    return out


def child(out_path: str, params: dict, profile_dir: str | None) -> int:
    import zfabric as zf
    # a node or worker started by exec (`python -m zfabric...`) takes the package in
    # its cwd first: run from the tree this driver imported, so that all run one code
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(zf.__file__))))
    res = {"python": platform.python_version(), "params": params,
           "zfabric_file": os.path.dirname(zf.__file__)}
    zf.init(num_cpus=params["num_cpus"])
    try:
        f = zf.remote(noop)
        zf.get([f.remote() for _ in range(params["warmup"])])
        time.sleep(0.5)
        roles = processes()
        res["pids"] = {r: [p.pid for p in ps] for r, ps in roles.items()}
        profs = None
        if profile_dir:
            import pyspy
            pids = {"driver": os.getpid()}
            pids.update({"node": p.pid for p in roles["node"]})
            pids.update({f"worker-{i + 1}": p.pid for i, p in enumerate(roles["worker"])})
            profs = pyspy.start(pids, out_dir=profile_dir, gil=params.get("gil", False))
            time.sleep(1.0)                     # py-spy attached before the clock starts
        before = snapshot(roles)
        t = time.perf_counter()
        done = 0
        while done < params["tasks"]:
            n = min(params["batch"], params["tasks"] - done)
            zf.get([f.remote() for _ in range(n)])
            done += n
        wall = time.perf_counter() - t
        after = snapshot(roles)
        if profs is not None:
            summaries = pyspy.finish(profs, stop=True)
            res["profile"] = {k: {kk: vv for kk, vv in v.items() if kk != "raw"}
                              for k, v in summaries.items()}
            with open(os.path.join(profile_dir, "summary.txt"), "w") as fh:
                fh.write(("py-spy --gil (only samples holding the GIL)" if params.get("gil")
                          else "py-spy (samples of threads py-spy takes for running: also a "
                          "wait for the GIL or the CPU, and some waits in poll)")
                         + f", {params['tasks']:,} no-op tasks on zf.init(num_cpus="
                         f"{params['num_cpus']}), {wall:.2f} s\n\n")
                fh.write(pyspy.text(summaries))
        if processes()["worker"] != roles["worker"]:
            res["note"] = "the set of workers changed during the run"
        n = params["tasks"]
        res.update(wall_s=wall, tasks_per_s=n / wall, per_process={})
        for (role, pid), cpu0 in before.items():
            cpu1 = after.get((role, pid))
            if cpu0 is None or cpu1 is None:
                continue
            res["per_process"][f"{role} {pid}"] = {"role": role, "pid": pid,
                                                   "cpu_s": cpu1 - cpu0,
                                                   "us_per_task": (cpu1 - cpu0) / n * 1e6}
        by_role = {}
        for v in res["per_process"].values():
            by_role.setdefault(v["role"], []).append(v["us_per_task"])
        res["us_per_task"] = {r: sum(v) for r, v in by_role.items()}
        res["us_per_task"]["worker_each"] = sorted(by_role.get("worker", []))
        res["us_per_task"]["total"] = sum(sum(v) for v in by_role.values())
        res["cores_busy"] = res["us_per_task"]["total"] * n / 1e6 / wall
    finally:
        zf.shutdown()
    harness.write_json(out_path, res)
    return 0


def markdown(runs: list, params: dict) -> str:
    ok = [r for r in runs if r and "us_per_task" in r]
    if not ok:
        return "No round finished."

    def med(get):
        vals = [get(r) for r in ok]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def us(v):
        return "—" if v is None else f"{v:.0f} µs"

    nworkers = max(len(r["us_per_task"]["worker_each"]) for r in ok)
    lines = [f"{params['tasks']:,} no-op tasks on `zf.init(num_cpus={params['num_cpus']})`, "
             f"batches of {params['batch']:,}; median of {len(ok)} round(s)", "",
             "| process | CPU a task |", "|---|---|"]
    lines.append(f"| node | {us(med(lambda r: r['us_per_task'].get('node')))} |")
    for i in range(nworkers):
        lines.append(f"| worker {i + 1} | " + us(med(
            lambda r: r["us_per_task"]["worker_each"][i]
            if i < len(r["us_per_task"]["worker_each"]) else None)) + " |")
    lines.append(f"| driver | {us(med(lambda r: r['us_per_task'].get('driver')))} |")
    z = med(lambda r: r["us_per_task"].get("zygote"))
    if z:
        lines.append(f"| zygote | {us(z)} |")
    lines.append(f"| all | {us(med(lambda r: r['us_per_task']['total']))} |")
    lines.append(f"| wall: tasks/s | {med(lambda r: r['tasks_per_s']):,.0f} |")
    lines.append(f"| cores busy (CPU / wall) | {med(lambda r: r['cores_busy']):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 tasks")
    ap.add_argument("--tasks", type=int, help="tasks timed (default 20,000)")
    ap.add_argument("--batch", type=int, help="tasks submitted before each get (default 5,000)")
    ap.add_argument("--num-cpus", type=int, help="the embedded node's CPUs (default 2)")
    ap.add_argument("--rounds", type=int, default=1, help="fresh subprocesses, medians")
    ap.add_argument("--profile", metavar="DIR", help="py-spy every process into DIR")
    ap.add_argument("--gil", action="store_true",
                    help="with --profile: only samples holding the GIL (Python running)")
    ap.add_argument("--json", metavar="PATH", help="write every round's figures here")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a round may take")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        p = json.loads(a.params)
        return child(a.child, p, p.get("profile_dir"))
    params = dict(QUICK if a.quick else FULL)
    for k in ("tasks", "batch", "num_cpus"):
        if getattr(a, k):
            params[k] = getattr(a, k)
    if a.profile:
        import pyspy
        if not pyspy.available():
            ap.error("--profile needs py-spy (pip install py-spy)")
        params["profile_dir"] = os.path.abspath(a.profile)
        params["gil"] = a.gil
    harness.become_subreaper()
    runs = []
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="zf-bench-split-") as work:
        for i in range(a.rounds):
            out = os.path.join(work, f"round{i}.json")
            logp = os.path.join(work, f"round{i}.log")
            harness.log(f"round {i + 1}/{a.rounds} (load {os.getloadavg()[0]:.2f})")
            rc, wall, timed_out, left = harness.run_child(
                sys.executable, ["--child", out, "--params", json.dumps(params)],
                a.timeout, harness.child_env("zfabric"), logp,
                script=os.path.abspath(__file__))
            r = harness.read_json(out)
            if rc != 0 or r is None:
                harness.log(f"round {i + 1} failed (rc {rc}{', timeout' if timed_out else ''})"
                            f"\n{harness.tail(logp)}")
            if left:
                harness.log(f"stopped leftovers {left}")
            runs.append(r)
            load.append(os.getloadavg()[0])
    table = markdown(runs, params)
    if a.profile:
        harness.log(f"profiles and summary.txt in {a.profile}")
    if a.json:
        harness.write_json(a.json, harness.portable({
            "params": params, "rounds": a.rounds, "loadavg": load,
            "machine": {"cpu": harness.cpu_model(), "cores": os.cpu_count(),
                        "python": platform.python_version()}, "runs": runs,
            "markdown": table}))
    print(f"**Machine:** {harness.cpu_model()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()} · load average {load[0]:.2f} before, {load[-1]:.2f} "
          f"after · `bench/cpu_split.py` · {time.strftime('%Y-%m-%d')}\n")
    print(table)
    return 0 if any(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
