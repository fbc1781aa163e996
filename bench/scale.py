#!/usr/bin/env python3
"""Several zfabric nodes on one machine (`zfabric.testing.LocalCluster`):
tiny-task throughput against the number of nodes, and what idle nodes cost.

    python bench/scale.py                                   # both parts, full counts
    python bench/scale.py --quick                           # a smoke run (~1-2 min)
    python bench/scale.py --rounds 3 --json bench/out-scale.json --plot docs/scaling-throughput.png
    python bench/scale.py --parts idle --profile bench/out-idle-prof   # py-spy the idle nodes

Throughput (`--parts throughput`): for each `--configs` entry NxC (N nodes
of C CPUs each; default 1x1, 1x2, 2x1, 4x1), a fresh subprocess starts a
LocalCluster of N nodes, attaches a driver to the first (`zf.init(address=
...)`), warms it up (`--warmup` no-op tasks: workers started, spillover to
the peers under way), then times `--tasks` no-op tasks submitted from that
one driver and gotten with one `get`: tasks/s, and the CPU time of each
node process and of everything under it. Every round runs every config
once, in alternating order (A B C D, D C B A, ...); each figure is the
median over the rounds, and the ratios of the target are medians of
same-round ratios. The issue's target, "tiny-task throughput on 4 nodes at
least that of one node", is read here as 4x1 against 1x2: four one-CPU nodes
against one node with both of the machine's cores (its best one-node
figure); 4x1 against 1x1 (the same CPUs per node) is shown too.

Idle nodes (`--parts idle`): for each count of `--idle-nodes` (default
1,4,16), one after the other in a fresh subprocess, a cluster of that many
nodes with num_cpus=0 (a node with no CPUs starts no worker and no fork
server), waits `--settle` seconds, then measures over `--window` seconds the
CPU time (psutil, user + system) of the node processes, and of every
process under them, as % of one core; then each node process's
memory: RSS, USS and PSS (`memory_full_info`: USS is what the node alone
holds, PSS shares the pages it shares with the others). Then, for the
largest count only, the same with workers: as many nodes of 1 CPU each, a
driver runs one task pinned to each node (a custom resource per node: a
node starts its num_cpus workers at once, the task makes sure each is up
and has run something), and leaves
(`zf.shutdown()`); settle, window, memory again.
Targets: node processes of 16 idle nodes < 10% of one core together;
< 40 MB per idle node without workers (RSS of the node process).

`--profile DIR`: after the idle window (without workers), py-spy samples
the first node, a middle one and the last for another window
(`--profile-seconds`, 500 Hz, only samples holding the GIL: a thread
waiting in poll is not counted) and DIR gets their raw stacks and
`summary.txt` (top functions by self time): what idle nodes spend their
CPU on. The idle table also splits the node processes' CPU by thread (the
loop's main thread, libzmq's I/O threads, other Python threads) and counts
their wake-ups (voluntary context switches).

The nodes take their config from the environment as any node does
(`ZFABRIC_GOSSIP_INTERVAL=1.0 python bench/scale.py --parts idle` tries a
slower gossip); the JSON records every ZFABRIC_* variable set.

Only zfabric runs here (no peer system: Ray's figures for several nodes are
bench/cluster.py's). stdout: markdown tables; progress on stderr. Every
process a subprocess leaves behind is stopped by PID (run.py's run_child).
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

FULL = dict(configs="1x1,1x2,2x1,4x1", tasks=4000, warmup=1000, idle_nodes="1,4,16",
            settle=10.0, window=25.0, profile_seconds=15.0)
QUICK = dict(configs="1x1,2x1,4x1", tasks=500, warmup=200, idle_nodes="1,4",
             settle=3.0, window=5.0, profile_seconds=5.0)
IDLE_CPU_TARGET = 10.0        # % of one core, node processes of 16 idle nodes together
IDLE_RSS_TARGET = 40.0        # MB per idle node without workers
PROFILE_RATE = 500            # py-spy samples a second on idle nodes (they are rarely on a CPU)


def noop():
    return None


def where():
    import os as _os
    return _os.getpid()


# --------------------------------------------------------------------------
# measuring processes

def cpu_s(proc) -> float:
    """User + system CPU seconds of a process, 0.0 if it is gone."""
    import psutil
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def node_tree(pid):
    """(node process, [every process under it])."""
    import psutil
    node = psutil.Process(pid)
    try:
        return node, node.children(recursive=True)
    except psutil.Error:
        return node, []


def cpu_snapshot(cluster) -> list[dict]:
    """Per node: CPU seconds of the node process and of its descendants
    (descendants that exited since are missing from the next snapshot: a
    window's figure counts the processes alive at both ends)."""
    out = []
    for h in cluster.nodes:
        node, kids = node_tree(h.pid)
        out.append({"pid": h.pid, "node": cpu_s(node),
                    "children": {k.pid: cpu_s(k) for k in kids}})
    return out


def thread_kind(pid: int, tid: int) -> str:
    """'main' (the Python loop), libzmq's own threads by name (ZMQbg/IO/0,
    ZMQbg/Reaper), or 'other threads' (Python threads: dashboard, log monitor...)."""
    if tid == pid:
        return "main"
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            name = fh.read().strip()
    except OSError:
        return "gone"
    return name if name.startswith("ZMQ") else "other threads"


def thread_snapshot(cluster) -> dict:
    """{(pid, tid): (kind, CPU seconds)} of every thread of every node process,
    and {pid: voluntary context switches} (each is a wake-up from a wait)."""
    import psutil
    threads, switches = {}, {}
    for h in cluster.nodes:
        try:
            proc = psutil.Process(h.pid)
            for t in proc.threads():
                threads[(h.pid, t.id)] = (thread_kind(h.pid, t.id), t.user_time + t.system_time)
            switches[h.pid] = proc.num_ctx_switches().voluntary
        except psutil.Error:
            pass
    return {"threads": threads, "switches": switches}


def thread_window(before, after, seconds) -> dict:
    """% of one core by kind of thread, all nodes together; wake-ups a second per node."""
    by_kind = {}
    for key, (kind, cpu) in after["threads"].items():
        if key in before["threads"]:
            by_kind[kind] = by_kind.get(kind, 0.0) + cpu - before["threads"][key][1]
    wakeups = [(after["switches"][p] - before["switches"][p]) / seconds
               for p in after["switches"] if p in before["switches"]]
    return {"pct_by_thread": {k: 100 * v / seconds for k, v in sorted(by_kind.items())},
            "wakeups_per_s_per_node": statistics.median(wakeups) if wakeups else None}


def cpu_window(before, after, seconds) -> dict:
    nodes, under, per_node = 0.0, 0.0, []
    for b, a in zip(before, after):
        d_node = a["node"] - b["node"]
        d_under = sum(a["children"][p] - b["children"][p]
                      for p in a["children"] if p in b["children"])
        nodes += d_node
        under += d_under
        per_node.append({"pid": a["pid"], "node_pct": 100 * d_node / seconds,
                         "under_pct": 100 * d_under / seconds,
                         "children": len(a["children"])})
    return {"window_s": seconds, "nodes_pct": 100 * nodes / seconds,
            "with_children_pct": 100 * (nodes + under) / seconds, "per_node": per_node}


def memory(cluster) -> list[dict]:
    """Per node: RSS, USS and PSS (MB) of the node process, and RSS of it
    with every process under it."""
    import psutil
    out = []
    for h in cluster.nodes:
        node, kids = node_tree(h.pid)
        row = {"pid": h.pid, "children": len(kids)}
        try:
            m = node.memory_full_info()
            row.update(rss=m.rss / 2**20, uss=m.uss / 2**20, pss=getattr(m, "pss", 0) / 2**20)
        except psutil.Error:
            m = node.memory_info()
            row.update(rss=m.rss / 2**20)
        under = 0
        for k in kids:
            try:
                under += k.memory_info().rss
            except psutil.Error:
                pass
        row["rss_with_children"] = row["rss"] + under / 2**20
        out.append(row)
    return out


def spread(values) -> dict:
    values = sorted(values)
    return {"min": values[0], "median": statistics.median(values), "max": values[-1],
            "sum": sum(values)} if values else {}


# --------------------------------------------------------------------------
# child: throughput on N nodes of C CPUs

def child_throughput(out: str, p: dict) -> None:
    import zfabric as zf
    from zfabric.testing import LocalCluster
    res = {"nodes": p["nodes"], "cpus": p["cpus"], "python": platform.python_version(),
           "loadavg_before": os.getloadavg()[0]}
    t = time.perf_counter()
    cluster = LocalCluster(nodes=p["nodes"], num_cpus=p["cpus"], up_timeout=120)
    try:
        res["start_s"] = time.perf_counter() - t
        zf.init(address=cluster.address)
        f = zf.remote(noop)
        zf.get([f.remote() for _ in range(p["warmup"])])
        before = cpu_snapshot(cluster)
        t = time.perf_counter()
        zf.get([f.remote() for _ in range(p["tasks"])])
        dt = time.perf_counter() - t
        after = cpu_snapshot(cluster)
        cpu = cpu_window(before, after, dt)
        res.update(tasks=p["tasks"], seconds=dt, rate=p["tasks"] / dt,
                   node_cpu_us_per_task=cpu["nodes_pct"] / 100 * dt / p["tasks"] * 1e6,
                   all_cpu_us_per_task=cpu["with_children_pct"] / 100 * dt / p["tasks"] * 1e6,
                   per_node_cpu_pct=[(n["node_pct"], n["under_pct"]) for n in cpu["per_node"]])
        zf.shutdown()
    finally:
        close(cluster)
    res["loadavg_after"] = os.getloadavg()[0]
    harness.write_json(out, res)


# --------------------------------------------------------------------------
# child: idle nodes, without workers then with

def close(cluster) -> None:
    """Shut the cluster down, then check that its nodes left no store or
    session dir behind (a node's own cleanup); any left is named on stderr."""
    dirs = [d for h in cluster.nodes for d in (h.info["store_dir"], h.info["session_dir"])]
    cluster.shutdown()
    left = [d for d in dirs if os.path.exists(d)]
    if left:
        harness.log(f"warning: the cluster left {len(left)} dirs behind: {left}")


def start_cluster(n, cpus, per_node_resource=False):
    from zfabric.testing import LocalCluster
    cluster = LocalCluster(nodes=0, up_timeout=300)
    t0 = time.perf_counter()
    adds = []
    try:
        for i in range(n):
            t = time.perf_counter()
            cluster.add_node(num_cpus=cpus,
                             resources={f"scale_node_{i}": 1} if per_node_resource else None)
            adds.append(time.perf_counter() - t)
            harness.log(f"  node {i + 1}/{n} up in {adds[-1]:.2f}s")
    except BaseException:
        close(cluster)
        raise
    return cluster, {"start_s": time.perf_counter() - t0, "add_node_s": adds}


def idle_phase(cluster, p, profile_dir=None) -> dict:
    time.sleep(p["settle"])
    before, th_before = cpu_snapshot(cluster), thread_snapshot(cluster)
    t = time.perf_counter()
    time.sleep(p["window"])
    after, th_after = cpu_snapshot(cluster), thread_snapshot(cluster)
    seconds = time.perf_counter() - t
    res = {"cpu": cpu_window(before, after, seconds), "memory": memory(cluster),
           "threads": thread_window(th_before, th_after, seconds)}
    mem = res["memory"]
    res["rss"] = spread([m["rss"] for m in mem])
    if all("uss" in m for m in mem):
        res["uss"] = spread([m["uss"] for m in mem])
        res["pss"] = spread([m["pss"] for m in mem])
    res["rss_with_children"] = spread([m["rss_with_children"] for m in mem])
    if profile_dir:
        import pyspy
        hs = cluster.nodes
        picks = {"node-first": hs[0].pid, "node-middle": hs[len(hs) // 2].pid,
                 "node-last": hs[-1].pid}
        harness.log(f"  py-spy on {len(picks)} nodes for {p['profile_seconds']:g}s")
        profs = pyspy.start(picks, out_dir=profile_dir, seconds=p["profile_seconds"],
                            rate=PROFILE_RATE, gil=True)
        summaries = pyspy.finish(profs, timeout=p["profile_seconds"] + 60)
        res["profile"] = {k: {kk: vv for kk, vv in v.items() if kk != "raw"}
                          for k, v in summaries.items()}
        with open(os.path.join(profile_dir, "summary.txt"), "w") as fh:
            fh.write(f"py-spy --gil (samples holding the GIL), {len(hs)} idle nodes, "
                     f"{p['profile_seconds']:g} s each, {PROFILE_RATE} Hz\n\n")
            fh.write(pyspy.text(summaries, rate=PROFILE_RATE))
    return res


def child_idle(out: str, p: dict) -> None:
    import zfabric as zf
    counts = sorted(p["idle_nodes"])
    n = counts[-1]
    res = {"nodes": n, "counts": {}, "python": platform.python_version(),
           "loadavg_before": os.getloadavg()[0]}
    for k in counts:
        harness.log(f"idle: {k} nodes, num_cpus=0")
        cluster, start = start_cluster(k, 0)
        try:
            phase = idle_phase(cluster, p, p.get("profile_dir") if k == n else None)
            phase["start"] = start
            res["counts"][str(k)] = phase
            harness.write_json(out, res)
        finally:
            close(cluster)
    res["no_workers"], res["start_no_workers"] = res["counts"][str(n)], start
    if p.get("no_workers_phase"):
        harness.write_json(out, res)
        return
    harness.log(f"idle: {n} nodes, num_cpus=1, a worker each")
    cluster, res["start_workers"] = start_cluster(n, 1, per_node_resource=True)
    try:
        zf.init(address=cluster.address)
        pids = zf.get([zf.remote(resources={f"scale_node_{i}": 1})(where).remote()
                       for i in range(n)])
        res["worker_pids_distinct"] = len(set(pids))
        zf.shutdown()
        res["workers"] = idle_phase(cluster, p)
    finally:
        close(cluster)
    res["loadavg_after"] = os.getloadavg()[0]
    harness.write_json(out, res)


# --------------------------------------------------------------------------
# the parent

def parse_configs(text: str) -> list[tuple[int, float]]:
    out = []
    for item in text.split(","):
        n, _, c = item.strip().lower().partition("x")
        try:
            out.append((int(n), float(c)))
        except ValueError:
            raise SystemExit(f"--configs: {item!r} is not NxC (nodes x CPUs each), e.g. 4x1")
    return out


def label(cfg) -> str:
    return f"{cfg[0]}x{cfg[1]:g}"


def run_child(mode: str, params: dict, work: str, tag: str, timeout: float) -> dict | None:
    out = os.path.join(work, f"{tag}.json")
    log_path = os.path.join(work, f"{tag}.log")
    harness.log(f"{tag}: running (load {os.getloadavg()[0]:.2f})")
    rc, wall, timed_out, left = harness.run_child(
        sys.executable, ["--child", mode, "--out", out, "--params", json.dumps(params)],
        timeout, harness.child_env("zfabric"), log_path, script=os.path.abspath(__file__))
    res = harness.read_json(out)
    if rc != 0 or res is None:
        harness.log(f"{tag}: failed (rc {rc}{', timed out' if timed_out else ''})\n"
                    + harness.tail(log_path, 30))
        if res is not None:
            res["failed"] = f"timeout after {timeout:.0f}s" if timed_out else f"exit {rc}"
    if left:
        harness.log(f"{tag}: stopped leftover processes {left}")
        if res is not None:
            res["leftovers"] = left
    if res is not None:
        res["subprocess_wall_s"] = wall
    return res


def throughput_summary(runs: dict, configs) -> dict:
    """Per config: median tasks/s over rounds; same-round ratios for the target."""
    out = {}
    for cfg in configs:
        rs = [r for r in runs[label(cfg)] if r and "rate" in r]
        if rs:
            out[label(cfg)] = {
                "nodes": cfg[0], "cpus": cfg[1], "rounds": len(rs),
                "rate": statistics.median(r["rate"] for r in rs),
                "rates": [r["rate"] for r in rs],
                "node_cpu_us_per_task": statistics.median(r["node_cpu_us_per_task"] for r in rs),
                "all_cpu_us_per_task": statistics.median(r["all_cpu_us_per_task"] for r in rs),
                "start_s": statistics.median(r["start_s"] for r in rs)}
    ratios = {}
    for a, b in (("4x1", "1x2"), ("4x1", "1x1"), ("2x1", "1x1")):
        pairs = [(x["rate"], y["rate"]) for x, y in zip(runs.get(a, []), runs.get(b, []))
                 if x and y and "rate" in x and "rate" in y]
        if pairs:
            ratios[f"{a}/{b}"] = statistics.median(x / y for x, y in pairs)
    return {"configs": out, "ratios": ratios}


def _per_node(ph):
    d = spread([x["node_pct"] for x in ph["cpu"]["per_node"]])
    return f"{d['min']:.2f}% / {d['median']:.2f}% / {d['max']:.2f}%"


def _mb(ph, key):
    return f"{ph[key]['median']:.1f} MB ({ph[key]['max']:.1f})"


def _by_thread(ph, kind):
    pct = ph["threads"]["pct_by_thread"]
    return f"{sum(v for k, v in pct.items() if k.startswith(kind)):.1f}%"


IDLE_ROWS = [  # the idle table: (row, phase -> cell)
    ("CPU of the node processes, together", lambda ph: f"{ph['cpu']['nodes_pct']:.1f}% of a core"),
    ("  per node: min / median / max", _per_node),
    ("  of which the main thread (the loop)", lambda ph: _by_thread(ph, "main")),
    ("  of which libzmq's I/O threads", lambda ph: _by_thread(ph, "ZMQ")),
    ("  of which other (Python) threads", lambda ph: _by_thread(ph, "other")),
    ("wake-ups a second per node (voluntary context switches, median)",
     lambda ph: f"{ph['threads']['wakeups_per_s_per_node']:.0f}"),
    ("CPU of nodes and every process under them",
     lambda ph: f"{ph['cpu']['with_children_pct']:.1f}% of a core"),
    ("processes under each node", lambda ph: f"{ph['memory'][0]['children']}"),
    ("RSS of a node process: median (max)", lambda ph: _mb(ph, "rss")),
    ("USS of a node process: median (max)", lambda ph: _mb(ph, "uss")),
    ("PSS of a node process: median (max)", lambda ph: _mb(ph, "pss")),
    ("RSS of a node with everything under it: median (max)",
     lambda ph: _mb(ph, "rss_with_children")),
    ("RSS of all, summed", lambda ph: f"{ph['rss_with_children']['sum']:.0f} MB"),
]


def markdown(params, thr, idle) -> str:
    lines = []
    if thr and thr["configs"]:
        lines += [f"Tiny tasks: {params['tasks']:,} no-op tasks from one driver attached to "
                  f"the first node (after {params['warmup']:,} warm-up); medians of "
                  f"{params['rounds']} round(s)", "",
                  "| nodes x CPUs | tasks/s | node-process CPU a task | all CPU a task "
                  "(nodes, workers) | cluster start |", "|---|---|---|---|---|"]
        for name, c in thr["configs"].items():
            lines.append(f"| {c['nodes']} x {c['cpus']:g} | {c['rate']:,.0f} | "
                         f"{c['node_cpu_us_per_task']:.0f} µs | {c['all_cpu_us_per_task']:.0f} µs"
                         f" | {c['start_s']:.2f} s |")
        lines.append("")
    lines += ["**Targets** (scale on one machine)", "",
              "| target | figure | bound | met |", "|---|---|---|---|"]
    r = (thr or {}).get("ratios", {})
    for key, text in (("4x1/1x2", "tiny tasks, 4 nodes x 1 CPU against 1 node x 2 CPUs"),
                      ("4x1/1x1", "tiny tasks, 4 nodes x 1 CPU against 1 node x 1 CPU")):
        if key in r:
            lines.append(f"| {text} | {r[key]:.2f}x (same-round median) | ≥ 1x | "
                         + ("**met**" if r[key] >= 1 else "not met") + " |")
    nw = (idle or {}).get("no_workers")
    if nw:
        n = idle["nodes"]
        pct = nw["cpu"]["nodes_pct"]
        scaled = f" (scaled to 16: {pct * 16 / n:.1f}%)" if n != 16 else ""
        lines.append(f"| {n} idle nodes (no workers): CPU of the node processes together | "
                     f"{pct:.1f}% of one core{scaled} | < {IDLE_CPU_TARGET:g}% (16 nodes) | "
                     + ("**met**" if pct * 16 / n < IDLE_CPU_TARGET else "not met") + " |")
        rss = nw["rss"]
        lines.append(f"| memory per idle node without workers (RSS of the node process) | "
                     f"median {rss['median']:.1f} MB, max {rss['max']:.1f} MB | "
                     f"< {IDLE_RSS_TARGET:g} MB | "
                     + ("**met**" if rss["max"] < IDLE_RSS_TARGET else "not met") + " |")
    if idle:
        lines += ["", f"Idle nodes: {idle['nodes']} on one machine, {params['settle']:g} s to "
                  f"settle, then a {params['window']:g} s window", "",
                  "| | without workers (num_cpus=0) | with a worker each (num_cpus=1) |",
                  "|---|---|---|"]
        phases = [idle.get("no_workers"), idle.get("workers")]

        def cell(ph, fn):
            try:
                return fn(ph) if ph else "—"
            except (KeyError, TypeError):
                return "—"
        for name, fn in IDLE_ROWS:
            lines.append(f"| {name} | {cell(phases[0], fn)} | {cell(phases[1], fn)} |")
        sweep = idle.get("counts", {})
        if len(sweep) > 1:
            lines += ["", "Idle nodes without workers, by number of nodes (each count a fresh "
                      "cluster, same settle and window):", "",
                      "| nodes | CPU of the node processes together | per node (median) | "
                      "wake-ups a second per node | RSS per node (median) | cluster start |",
                      "|---|---|---|---|---|---|"]
            for k, ph in sorted(sweep.items(), key=lambda kv: int(kv[0])):
                per = spread([x["node_pct"] for x in ph["cpu"]["per_node"]])["median"]
                lines.append(f"| {k} | {ph['cpu']['nodes_pct']:.1f}% | {per:.2f}% | "
                             f"{ph['threads']['wakeups_per_s_per_node']:.0f} | "
                             f"{ph['rss']['median']:.1f} MB | {ph['start']['start_s']:.1f} s |")
        st = idle.get("start_no_workers")
        if st:
            lines += ["", f"Starting the {idle['nodes']} nodes one after the other (each "
                      f"`add_node` waits until every node sees every other): "
                      f"{st['start_s']:.1f} s, the last node {st['add_node_s'][-1]:.2f} s."]
    return "\n".join(lines)


def plot(path: str, thr: dict, runs: dict, machine: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    groups = {}
    for name, c in thr["configs"].items():
        groups.setdefault(c["cpus"], []).append(c)
    for cpus, cs in sorted(groups.items()):
        cs.sort(key=lambda c: c["nodes"])
        xs, ys = [c["nodes"] for c in cs], [c["rate"] for c in cs]
        ax.plot(xs, ys, marker="o",
                label=f"{cpus:g} CPU{'' if cpus == 1 else 's'} per node (median of rounds)")
        for c in cs:
            ax.scatter([c["nodes"]] * len(c["rates"]), c["rates"], s=12, alpha=0.35,
                       color=ax.lines[-1].get_color())
    ax.set_xlabel("nodes (LocalCluster, one machine)")
    ax.set_ylabel("no-op tasks/s from one driver")
    ax.set_xticks(sorted({c["nodes"] for c in thr["configs"].values()}))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("zfabric tiny-task throughput against nodes", fontsize=10)
    fig.text(0.01, 0.01, machine, fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, 4 idle nodes")
    ap.add_argument("--parts", default="throughput,idle", help="throughput, idle or both")
    ap.add_argument("--configs", help="NxC list: nodes x CPUs each (default 1x1,1x2,2x1,4x1)")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (alternating)")
    ap.add_argument("--tasks", type=int, help="tasks timed per config (default 4,000)")
    ap.add_argument("--warmup", type=int, help="warm-up tasks per config (default 1,000)")
    ap.add_argument("--idle-nodes", help="counts of idle nodes, the largest also with "
                    "workers and profiled (default 1,4,16)")
    ap.add_argument("--settle", type=float, help="seconds before the idle window (default 10)")
    ap.add_argument("--window", type=float, help="idle window in seconds (default 25)")
    ap.add_argument("--no-workers", action="store_true",
                    help="idle: skip the phase with a worker on each node")
    ap.add_argument("--profile", metavar="DIR", help="py-spy 3 idle nodes into DIR")
    ap.add_argument("--profile-seconds", type=float, help="py-spy window (default 15)")
    ap.add_argument("--json", metavar="PATH", help="write every figure here")
    ap.add_argument("--plot", metavar="PNG", help="draw tasks/s against nodes here")
    ap.add_argument("--replot", metavar="JSON",
                    help="only draw --plot again from the --json of an earlier run")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per subprocess")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        p = json.loads(a.params)
        (child_throughput if a.child == "throughput" else child_idle)(a.out, p)
        return 0
    if a.replot:
        if not a.plot:
            ap.error("--replot needs --plot PNG")
        with open(a.replot) as fh:
            old = json.load(fh)
        m = old["machine"]
        plot(a.plot, old["throughput"], old["throughput_runs"],
             f"{m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
             f"{old['load']['before'][0]:.2f} before, {old['load']['after'][0]:.2f} after · "
             f"`bench/scale.py` · {old.get('date', '')}".rstrip(" ·"))
        return 0
    params = dict(QUICK if a.quick else FULL, rounds=a.rounds, no_workers_phase=a.no_workers)
    for k in ("configs", "tasks", "warmup", "idle_nodes", "settle", "window",
              "profile_seconds"):
        if getattr(a, k) is not None:
            params[k] = getattr(a, k)
    parts = {x.strip() for x in a.parts.split(",") if x.strip()}
    if parts - {"throughput", "idle"}:
        ap.error(f"--parts: unknown {', '.join(parts - {'throughput', 'idle'})}")
    if a.profile:
        import pyspy
        if not pyspy.available():
            ap.error("--profile needs py-spy (pip install py-spy)")
        params["profile_dir"] = os.path.abspath(a.profile)
    if a.plot and "throughput" not in parts:
        ap.error("--plot needs the throughput part")
    configs = parse_configs(params["configs"])
    try:
        params["idle_nodes"] = sorted({int(x) for x in str(params["idle_nodes"]).split(",")})
    except ValueError:
        ap.error("--idle-nodes: a comma list of numbers of nodes, e.g. 1,4,16")
    if params["idle_nodes"][0] < 1:
        ap.error("--idle-nodes: at least one node")
    harness.become_subreaper()
    load = {"before": os.getloadavg()}
    runs = {label(c): [] for c in configs}
    order, thr, idle = [], None, None
    with tempfile.TemporaryDirectory(prefix="zf-bench-scale-") as work:
        if "throughput" in parts:
            for i in range(a.rounds):
                order.append([label(c) for c in (configs if i % 2 == 0 else configs[::-1])])
                for c in configs if i % 2 == 0 else configs[::-1]:
                    p = dict(params, nodes=c[0], cpus=c[1])
                    runs[label(c)].append(run_child("throughput", p, work,
                                                    f"throughput-{label(c)}-round{i + 1}",
                                                    a.timeout))
            thr = throughput_summary(runs, configs)
        if "idle" in parts:
            idle = run_child("idle", params, work, "idle", a.timeout)
    load["after"] = os.getloadavg()
    machine = (f"{harness.cpu_model()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}; load average {load['before'][0]:.2f} before, "
               f"{load['after'][0]:.2f} after · `bench/scale.py` · {time.strftime('%Y-%m-%d')}")
    table = markdown(params, thr, idle)
    if a.plot and thr and thr["configs"]:
        plot(a.plot, thr, runs, machine)
        harness.log(f"wrote {a.plot}")
    if a.json:
        harness.write_json(a.json, harness.portable({
            "params": params, "order": order, "load": load, "date": time.strftime("%Y-%m-%d"),
            "env": {k: v for k, v in os.environ.items() if k.startswith("ZFABRIC_")},
            "machine": {"cpu": harness.cpu_model(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "throughput": thr, "throughput_runs": runs, "idle": idle, "markdown": table}))
        harness.log(f"wrote {a.json}")
    print(f"**Machine:** {machine}\n")
    print(table)
    return 0 if (thr and thr["configs"]) or idle else 1


if __name__ == "__main__":
    sys.exit(main())
