#!/usr/bin/env python3
"""Several nodes on one machine: zfabric's LocalCluster beside Ray's
`ray.cluster_utils.Cluster` and raw ZeroMQ, measured in one run.

    python bench/cluster.py                  # every installed system
    python bench/cluster.py --quick          # smaller counts, a smoke run
    python bench/cluster.py --only zfabric,zmq --json bench/cluster.json

Workloads (each system in its own fresh subprocess, every process it leaves
behind stopped by PID — see run.py):
- transfer: a task pinned (by a custom resource) to node B takes a 100 MB
  numpy array made by a task pinned to node A, and returns its last element;
  timed from submitting the consumer (the array is ready on A) to its result:
  the first time (connections cold), then warm (median of fresh arrays).
  Raw ZeroMQ: the same bytes pushed over loopback between two processes in
  4 MiB frames, received (recv_into) into a new buffer of the receiver, as
  any new object lands in new memory — no store, no task, no request round
  trips; and, as a floor, into one buffer touched beforehand.
- spillover: N nodes x 1 CPU, all tasks submitted to the first node:
  efficiency = ideal time (tasks x duration / N) / measured time.
- tiny tasks: no-op tasks on 3 nodes x 1 CPU submitted from one driver: tasks/s.

Progress goes to stderr; stdout is the markdown table for docs/benchmarks.md.
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
import run as harness  # noqa: E402  (bench/run.py: child processes, cleanup, probes)

SYSTEMS = ["zfabric", "ray", "zmq"]
LABEL = {"zfabric": "zfabric", "ray": "Ray", "zmq": "raw ZeroMQ"}
FULL = dict(mb=100, warm_reps=5, spill=[(60, 0.1), (40, 0.3)], tiny=3000)
QUICK = dict(mb=20, warm_reps=2, spill=[(15, 0.1)], tiny=300)


# --------------------------------------------------------------------------
# the workloads, one adapter per task system

class ZfabricCluster:
    def start(self, nodes: list[dict]):
        import zfabric as zf
        from zfabric.testing import LocalCluster
        self.zf = zf
        self.cluster = LocalCluster(nodes=0)
        for spec in nodes:
            self.cluster.add_node(**spec)
        zf.init(address=self.cluster.address)

    def remote(self, fn, **options):
        return self.zf.remote(**options)(fn) if options else self.zf.remote(fn)

    def get(self, refs):
        return self.zf.get(refs)

    def wait(self, refs):
        self.zf.wait(refs, num_returns=len(refs), fetch_local=False)

    def stop(self):
        self.zf.shutdown()
        self.cluster.shutdown()

    def version(self):
        import zfabric
        return getattr(zfabric, "__version__", "dev")


class RayCluster:
    def start(self, nodes: list[dict]):
        import ray
        from ray.cluster_utils import Cluster
        self.ray = ray
        first, rest = nodes[0], nodes[1:]
        self.cluster = Cluster(initialize_head=True, head_node_args=_ray_args(first))
        for spec in rest:
            self.cluster.add_node(**_ray_args(spec))
        ray.init(address=self.cluster.address, log_to_driver=False)
        self.cluster.wait_for_nodes()

    def remote(self, fn, **options):
        return self.ray.remote(**options)(fn) if options else self.ray.remote(fn)

    def get(self, refs):
        return self.ray.get(refs)

    def wait(self, refs):
        self.ray.wait(refs, num_returns=len(refs), fetch_local=False)

    def stop(self):
        self.ray.shutdown()
        self.cluster.shutdown()

    def version(self):
        import ray
        return ray.__version__


def _ray_args(spec: dict) -> dict:
    args = {"num_cpus": spec.get("num_cpus", 1)}
    if spec.get("resources"):
        args["resources"] = spec["resources"]
    return args


def make(mb):
    import numpy as np
    return np.ones(mb * 1_000_000, dtype=np.uint8)


def last(arr):
    return int(arr[-1]) + arr.nbytes


def pause(seconds):
    time.sleep(seconds)


def noop():
    return None


def w_transfer(s, p):
    maker = s.remote(make, resources={"a": 1})
    reader = s.remote(last, resources={"b": 1})
    times = []
    for _ in range(1 + p["warm_reps"]):
        arr = maker.remote(p["mb"])
        s.wait([arr])
        t = time.perf_counter()
        assert s.get(reader.remote(arr)) == 1 + p["mb"] * 1_000_000
        times.append(time.perf_counter() - t)
        del arr
        time.sleep(0.3)   # the copies' deletion is not part of the next measurement
    return {"transfer_first_s": times[0], "transfer_warm_s": statistics.median(times[1:])}


def w_spill(s, p):
    task = s.remote(pause)
    s.get([task.remote(0.0) for _ in range(6)])   # workers warm on every node
    out = {}
    for n, seconds in p["spill"]:
        t = time.perf_counter()
        s.get([task.remote(seconds) for _ in range(n)])
        took = time.perf_counter() - t
        out[f"spill_{n}x{seconds:g}_s"] = took
        out[f"spill_{n}x{seconds:g}_eff"] = n * seconds / 3 / took
    return out


def w_tiny(s, p):
    task = s.remote(noop)
    s.get([task.remote() for _ in range(300)])
    t = time.perf_counter()
    s.get([task.remote() for _ in range(p["tiny"])])
    return {"tiny_rate": p["tiny"] / (time.perf_counter() - t)}


def child_bench(system: str, out: str, params: dict) -> None:
    result = {"system": system, "python": platform.python_version()}
    if system == "zmq":
        result.update(raw_zmq(params["mb"]))
        harness.write_json(out, result)
        return
    s = ZfabricCluster() if system == "zfabric" else RayCluster()
    nodes = [{"num_cpus": 1, "resources": {"a": 1}}, {"num_cpus": 1, "resources": {"b": 1}},
             {"num_cpus": 1}]
    t = time.perf_counter()
    s.start(nodes)
    result["start_s"] = time.perf_counter() - t
    result["version"] = s.version()
    try:
        for name, fn in (("transfer", w_transfer), ("spill", w_spill), ("tiny", w_tiny)):
            harness.log(f"  {system}: {name}")
            result.update(fn(s, params))
            harness.write_json(out, result)
    finally:
        s.stop()
    harness.write_json(out, result)


# --------------------------------------------------------------------------
# raw ZeroMQ: the same bytes between two processes over loopback

def _zmq_sink(port: int, size: int, reps: int, fresh: bool) -> None:
    """Land the bytes in one buffer of the receiving process: a new one each
    time (`fresh`: its pages are faulted in as the bytes land, as they are for
    any new object), or one allocated and touched beforehand (the floor)."""
    import numpy as np
    import zmq
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{port}")
    done = ctx.socket(zmq.PUSH)
    done.connect(f"tcp://127.0.0.1:{port + 1}")
    dest = np.ones(size, dtype=np.uint8)
    for _ in range(reps):
        if fresh:
            dest = np.empty(size, dtype=np.uint8)
        view = memoryview(dest)
        got = 0
        while got < size:
            got += pull.recv_into(view[got:])
        done.send(b"")
        del view


def raw_zmq(mb: int, reps: int = 6) -> dict:
    out = {}
    for fresh, key in ((True, "transfer"), (False, "touched")):
        t = _raw_zmq_run(mb, reps, fresh)
        out[f"{key}_first_s"], out[f"{key}_warm_s"] = t[0], statistics.median(t[1:])
    import zmq
    out["version"] = zmq.zmq_version()
    return out


def _raw_zmq_run(mb: int, reps: int, fresh: bool) -> list:
    import multiprocessing

    import numpy as np
    import zmq
    size, chunk = mb * 1_000_000, 4 << 20
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=60000)
    done = ctx.socket(zmq.PULL)
    done.bind(f"tcp://127.0.0.1:{port + 1}")
    sink = multiprocessing.Process(target=_zmq_sink, args=(port, size, reps, fresh))
    sink.start()
    data = memoryview(np.ones(size, dtype=np.uint8))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for off in range(0, size, chunk):
            push.send(data[off:off + chunk], copy=False)
        done.recv()
        times.append(time.perf_counter() - t)
    sink.join()
    push.close(0)
    done.close(0)
    ctx.term()
    return times


# --------------------------------------------------------------------------
# the parent: run each system, print the table

def fmt_s(x):
    return "—" if x is None else (f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s")


def markdown(results: dict, params: dict) -> str:
    mb = params["mb"]
    cols = [s for s in SYSTEMS if s in results]
    lines = ["| workload | " + " | ".join(LABEL[s] for s in cols) + " |",
             "|---|" + "---|" * len(cols)]

    def row(name, key, fmt):
        cells = [fmt(results[s].get(key)) if results[s].get(key) is not None else "—"
                 for s in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row(f"{mb} MB argument from another node, first", "transfer_first_s", fmt_s)
    row(f"{mb} MB argument from another node, warm", "transfer_warm_s", fmt_s)
    row("  (GB/s, warm)", "transfer_warm_s", lambda x: f"{mb / 1000 / x:.2f}")
    row("  raw ZeroMQ into a buffer touched beforehand, warm", "touched_warm_s", fmt_s)
    for n, seconds in params["spill"]:
        row(f"spillover {n} x {seconds:g} s on 3 x 1 CPU: time", f"spill_{n}x{seconds:g}_s", fmt_s)
        row(f"spillover {n} x {seconds:g} s: efficiency", f"spill_{n}x{seconds:g}_eff",
            lambda x: f"{x * 100:.0f}%")
    row("tiny tasks on 3 nodes (tasks/s)", "tiny_rate", lambda x: f"{x:,.0f}")
    row("3-node cluster start", "start_s", fmt_s)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SYSTEMS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--peer-python", default=None, help="interpreter that has Ray")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_bench(args.child, args.out, json.loads(args.params))
        return 0
    params = QUICK if args.quick else FULL
    harness.become_subreaper()
    peer = args.peer_python or harness.default_peer_python()
    results = {}
    with tempfile.TemporaryDirectory(prefix="zf-bench-") as work:
        for system in [s.strip() for s in args.only.split(",") if s.strip()]:
            python = peer if system == "ray" else sys.executable
            if system == "ray" and not (python and (harness.probe(python, harness.child_env("ray"))
                                                    or {}).get("found", {}).get("ray")):
                harness.log("ray: not installed (pip install -r bench/requirements-peers.txt)")
                continue
            out = os.path.join(work, f"{system}.json")
            log_path = os.path.join(work, f"{system}.log")
            harness.log(f"{system}: running")
            rc, wall, timed_out, left = harness.run_child(
                python, ["--child", system, "--out", out, "--params", json.dumps(params)],
                args.timeout, harness.child_env("zfabric" if system != "ray" else "ray"),
                log_path, script=os.path.abspath(__file__))
            res = harness.read_json(out)
            if rc != 0 or res is None:
                harness.log(f"{system}: failed (rc {rc}{', timed out' if timed_out else ''})\n"
                            + harness.tail(log_path))
            if left:
                harness.log(f"{system}: stopped leftover processes {left}")
            if res:
                results[system] = res
    if args.json:
        harness.write_json(args.json, harness.portable({"params": params, "results": results}))
    print(f"{harness.cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          + ", ".join(f"{LABEL[s]} {r.get('version', '?')}" for s, r in results.items()))
    print()
    print(markdown(results, params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
