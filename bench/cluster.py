#!/usr/bin/env python3
"""Several nodes on one machine: zfabric's LocalCluster beside Ray's
`ray.cluster_utils.Cluster` and raw ZeroMQ, measured in one run.

    python bench/cluster.py                  # every installed system
    python bench/cluster.py --quick          # smaller counts, a smoke run
    python bench/cluster.py --only zfabric,zmq --json bench/cluster.json
    python bench/cluster.py --only zfabric,zfabric-insecure,zmq,zmq-curve --rounds 8
    python bench/cluster.py --workloads transfer       # some workloads (transfer, spill, tiny)

Systems: `zfabric` (nodes as started by default: every TCP socket between
them CURVE-encrypted with the cluster key), `zfabric-insecure` (the same
nodes started with --insecure-no-auth: plain TCP), `ray`, `zmq` (raw ZeroMQ,
plain TCP) and `zmq-curve` (raw ZeroMQ, the sockets CURVE server and client
with one key pair, as a cluster key; no ZAP handler).

Rounds (`--rounds N`): every system of `--only` runs once a round, each in
a fresh subprocess; even rounds in the order given, odd rounds in reverse
(A B, B A, A B, ...), so that neither of two systems always runs first or
always right after the other while the machine's load drifts. Each cell of
the table is the median over the rounds; for each CURVE system measured
with its plain twin (zfabric and zfabric-insecure, zmq-curve and zmq) a
column gives the median over the rounds of the ratio of the two measured in
the same round (with CURVE / without). The JSON keeps every round's figures
and the load average before each subprocess.

Workloads (each system in its own fresh subprocess, every process it leaves
behind stopped by PID — see run.py):
- transfer: a task pinned (by a custom resource) to node B takes a 100 MB
  numpy array made by a task pinned to node A, and returns its last element;
  timed from submitting the consumer (the array is ready on A) to its result:
  the first time (connections cold), then warm (median of fresh arrays).
  For zfabric also the CPU time its three node processes used meanwhile
  (median of the warm ones): the pull, and with CURVE its encryption and
  decryption, run there (in libzmq's I/O threads).
  Raw ZeroMQ: the same bytes pushed over loopback between two processes in
  4 MiB frames, received (recv_into) into a new buffer of the receiver, as
  any new object lands in new memory — no store, no task, no request round
  trips; and, as a floor, into one buffer touched beforehand. zmq-curve
  also times libsodium alone encrypting and decrypting the same bytes in
  4 MiB messages (the cipher CURVE runs, no socket: `sodium_box`).
- spillover: N nodes x 1 CPU, all tasks submitted to the first node:
  efficiency = ideal time (tasks x duration / N) / measured time.
- tiny tasks: no-op tasks on 3 nodes x 1 CPU submitted from one driver: tasks/s,
  and for zfabric the CPU time of its three node processes a task.

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

SYSTEMS = ["zfabric", "zfabric-insecure", "ray", "zmq", "zmq-curve"]
LABEL = {"zfabric": "zfabric", "zfabric-insecure": "zfabric, no CURVE", "ray": "Ray",
         "zmq": "raw ZeroMQ", "zmq-curve": "raw ZeroMQ, CURVE"}
# (with CURVE, its plain twin): measured in the same rounds, their ratio gets a column
TWINS = [("zfabric", "zfabric-insecure"), ("zmq-curve", "zmq")]
RATIO_LABEL = {"zfabric": "zfabric: CURVE / none", "zmq-curve": "raw ZeroMQ: CURVE / none"}
FULL = dict(mb=100, warm_reps=5, spill=[(60, 0.1), (40, 0.3)], tiny=3000)
QUICK = dict(mb=20, warm_reps=2, spill=[(15, 0.1)], tiny=300)


# --------------------------------------------------------------------------
# the workloads, one adapter per task system

class ZfabricCluster:
    def __init__(self, insecure: bool = False):
        self.insecure = insecure      # plain TCP between the nodes (--insecure-no-auth)

    def start(self, nodes: list[dict]):
        import zfabric as zf
        from zfabric.testing import LocalCluster
        self.zf = zf
        self.cluster = LocalCluster(nodes=0, insecure=self.insecure)
        for spec in nodes:
            self.cluster.add_node(**spec)
        zf.init(address=self.cluster.address)

    def remote(self, fn, **options):
        return self.zf.remote(**options)(fn) if options else self.zf.remote(fn)

    def get(self, refs):
        return self.zf.get(refs)

    def wait(self, refs):
        self.zf.wait(refs, num_returns=len(refs), fetch_local=False)

    def node_cpu(self) -> float:
        """CPU seconds the node processes (not their workers) have used so far."""
        import psutil
        total = 0.0
        for handle in self.cluster.nodes:
            t = psutil.Process(handle.pid).cpu_times()
            total += t.user + t.system
        return total

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

    def node_cpu(self):
        return None     # Ray's object transfer runs in several processes per node

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
    times, cpu = [], []
    for _ in range(1 + p["warm_reps"]):
        arr = maker.remote(p["mb"])
        s.wait([arr])
        c = s.node_cpu()
        t = time.perf_counter()
        assert s.get(reader.remote(arr)) == 1 + p["mb"] * 1_000_000
        times.append(time.perf_counter() - t)
        cpu.append(None if c is None else s.node_cpu() - c)
        del arr
        time.sleep(0.3)   # the copies' deletion is not part of the next measurement
    out = {"transfer_first_s": times[0], "transfer_warm_s": statistics.median(times[1:])}
    if cpu[-1] is not None:   # all three node processes, while the consumer ran
        out["transfer_node_cpu_s"] = statistics.median(cpu[1:])
    return out


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
    c = s.node_cpu()
    t = time.perf_counter()
    s.get([task.remote() for _ in range(p["tiny"])])
    out = {"tiny_rate": p["tiny"] / (time.perf_counter() - t)}
    if c is not None:   # all three node processes, a task
        out["tiny_node_cpu_s"] = (s.node_cpu() - c) / p["tiny"]
    return out


WORKLOADS = {"transfer": w_transfer, "spill": w_spill, "tiny": w_tiny}


def child_bench(system: str, out: str, params: dict) -> None:
    result = {"system": system, "python": platform.python_version(),
              "loadavg_before": os.getloadavg()}
    if system in ("zmq", "zmq-curve"):
        result.update(raw_zmq(params["mb"], curve=system == "zmq-curve"))
        harness.write_json(out, result)
        return
    s = RayCluster() if system == "ray" else ZfabricCluster(system == "zfabric-insecure")
    nodes = [{"num_cpus": 1, "resources": {"a": 1}}, {"num_cpus": 1, "resources": {"b": 1}},
             {"num_cpus": 1}]
    t = time.perf_counter()
    s.start(nodes)
    result["start_s"] = time.perf_counter() - t
    result["version"] = s.version()
    try:
        for name, fn in WORKLOADS.items():
            if name not in params.get("workloads", WORKLOADS):
                continue
            harness.log(f"  {system}: {name}")
            result.update(fn(s, params))
            harness.write_json(out, result)
    finally:
        s.stop()
    harness.write_json(out, result)


# --------------------------------------------------------------------------
# raw ZeroMQ: the same bytes between two processes over loopback

def _zmq_sink(port: int, done_port: int, size: int, reps: int, fresh: bool, keys) -> None:
    """Land the bytes in one buffer of the receiving process: a new one each
    time (`fresh`: its pages are faulted in as the bytes land, as they are for
    any new object), or one allocated and touched beforehand (the floor).
    `keys` (public, secret): connect as a CURVE client, as zfabric's nodes do."""
    import numpy as np
    import zmq
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    if keys:   # one key pair on both ends, like a cluster key
        pull.curve_serverkey = keys[0]
        pull.curve_publickey = keys[0]
        pull.curve_secretkey = keys[1]
    pull.connect(f"tcp://127.0.0.1:{port}")
    done = ctx.socket(zmq.PUSH)
    done.connect(f"tcp://127.0.0.1:{done_port}")
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


def raw_zmq(mb: int, reps: int = 6, curve: bool = False) -> dict:
    out = {}
    for fresh, key in ((True, "transfer"), (False, "touched")):
        t = _raw_zmq_run(mb, reps, fresh, curve)
        out[f"{key}_first_s"], out[f"{key}_warm_s"] = t[0], statistics.median(t[1:])
    import zmq
    out["version"] = zmq.zmq_version()
    if curve:
        out.update(sodium_box(mb))
    return out


def sodium_box(mb: int, reps: int = 5) -> dict:
    """What CURVE's cipher alone costs: libsodium's crypto_box_easy_afternm and
    crypto_box_open_easy_afternm (XSalsa20-Poly1305, what libzmq calls for each
    message) over `mb` MB in 4 MiB messages, in this one thread, with no socket;
    the median of `reps`. The libsodium that pyzmq's libzmq links (its wheel
    bundles one), else the system's; {} if there is none."""
    import ctypes
    import ctypes.util
    import glob

    import numpy as np
    import zmq
    libs = os.path.join(os.path.dirname(os.path.dirname(zmq.__file__)), "pyzmq.libs")
    found = glob.glob(os.path.join(libs, "libsodium*")) or [ctypes.util.find_library("sodium")]
    if not found[0]:
        return {}
    lib = ctypes.CDLL(found[0])
    if lib.sodium_init() < 0:
        return {}
    public, secret = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
    lib.crypto_box_keypair(public, secret)
    shared, nonce = ctypes.create_string_buffer(32), ctypes.create_string_buffer(24)
    lib.crypto_box_beforenm(shared, public, secret)
    chunk, size = 4 << 20, mb * 1_000_000
    lengths = [ctypes.c_ulonglong(min(chunk, size - off)) for off in range(0, size, chunk)]
    plain, box = np.ones(chunk, np.uint8), np.empty(chunk + 16, np.uint8)
    p_plain, p_box = plain.ctypes.data_as(ctypes.c_void_p), box.ctypes.data_as(ctypes.c_void_p)
    seal, unseal = [], []
    for _ in range(reps):
        sealing = opening = 0.0
        for length in lengths:
            t = time.perf_counter()
            lib.crypto_box_easy_afternm(p_box, p_plain, length, nonce, shared)
            t2 = time.perf_counter()
            rc = lib.crypto_box_open_easy_afternm(p_plain, p_box,
                                                  ctypes.c_ulonglong(length.value + 16),
                                                  nonce, shared)
            opening += time.perf_counter() - t2
            sealing += t2 - t
            assert rc == 0, "libsodium could not open what it sealed"
        seal.append(sealing)
        unseal.append(opening)
    return {"sodium_seal_s": statistics.median(seal), "sodium_open_s": statistics.median(unseal)}


def _raw_zmq_run(mb: int, reps: int, fresh: bool, curve: bool) -> list:
    """The sender's side (a CURVE server with a fresh key pair if `curve`; no
    ZAP handler: any client that knows the server's key gets in)."""
    import multiprocessing

    import numpy as np
    import zmq
    size, chunk = mb * 1_000_000, 4 << 20
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    keys = zmq.curve_keypair() if curve else None
    if keys:
        push.curve_server = True
        push.curve_secretkey = keys[1]
    port = push.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=60000)
    done = ctx.socket(zmq.PULL)
    done_port = done.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=60000)
    sink = multiprocessing.Process(target=_zmq_sink,
                                   args=(port, done_port, size, reps, fresh, keys))
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


def markdown(results: dict, params: dict, ratios: dict | None = None) -> str:
    """The table: a column per system (medians over the rounds), then one per
    pair of TWINS measured (the median of their same-round ratios)."""
    mb = params["mb"]
    ratios = ratios or {}
    cols = [s for s in SYSTEMS if s in results]
    twins = [(a, b) for a, b in TWINS if a in ratios]
    lines = ["| workload | " + " | ".join(LABEL[s] for s in cols)
             + "".join(f" | {RATIO_LABEL[a]}" for a, _ in twins) + " |",
             "|---|" + "---|" * (len(cols) + len(twins))]

    def row(name, key, fmt, inverse=False):
        """`inverse`: the row shows a rate derived from a time, so the ratio of
        the rates is the inverse of the ratio of the times."""
        cells = [fmt(results[s].get(key)) if results[s].get(key) is not None else "—"
                 for s in cols]
        for a, _ in twins:
            r = ratios[a].get(key)
            cells.append("—" if r is None else f"{1 / r if inverse else r:.2f}x")
        if set(cells) == {"—"}:
            return
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row(f"{mb} MB argument from another node, first", "transfer_first_s", fmt_s)
    row(f"{mb} MB argument from another node, warm", "transfer_warm_s", fmt_s)
    row("  (GB/s, warm)", "transfer_warm_s", lambda x: f"{mb / 1000 / x:.2f}", inverse=True)
    row("  CPU time of the node processes, warm", "transfer_node_cpu_s", fmt_s)
    row("  raw ZeroMQ into a buffer touched beforehand, warm", "touched_warm_s", fmt_s)
    row(f"  libsodium alone: encrypt {mb} MB (one thread)", "sodium_seal_s", fmt_s)
    row(f"  libsodium alone: decrypt {mb} MB (one thread)", "sodium_open_s", fmt_s)
    for n, seconds in params["spill"]:
        row(f"spillover {n} x {seconds:g} s on 3 x 1 CPU: time", f"spill_{n}x{seconds:g}_s", fmt_s)
        row(f"spillover {n} x {seconds:g} s: efficiency", f"spill_{n}x{seconds:g}_eff",
            lambda x: f"{x * 100:.0f}%")
    row("tiny tasks on 3 nodes (tasks/s)", "tiny_rate", lambda x: f"{x:,.0f}")
    row("  CPU time of the node processes a task", "tiny_node_cpu_s",
        lambda x: f"{x * 1e6:.0f} µs")
    row("3-node cluster start", "start_s", fmt_s)
    return "\n".join(lines)


def medians(runs: list) -> dict:
    """Every number of a system's runs (None: that round failed) as its median
    over the rounds; other fields as the first run has them."""
    done = [r for r in runs if r]
    out = dict(done[0]) if done else {}
    for key, value in out.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in done if r.get(key) is not None)
    out["rounds"] = len(done)
    return out


def paired_ratios(with_: list, without: list) -> dict:
    """For each figure, the median over rounds of with / without measured in
    the same round (rounds where either failed are left out)."""
    out = {}
    pairs = [(a, b) for a, b in zip(with_, without) if a and b]
    for key in (pairs[0][0] if pairs else {}):
        got = [a[key] / b[key] for a, b in pairs
               if isinstance(a.get(key), (int, float)) and not isinstance(a[key], bool)
               and isinstance(b.get(key), (int, float)) and b[key]]
        if got:
            out[key] = statistics.median(got)
    return out


def run_one(system: str, params: dict, args, peer, work: str, tag: str) -> dict | None:
    """One system's workloads in a fresh subprocess; its results, or None."""
    python = peer if system == "ray" else sys.executable
    out = os.path.join(work, f"{system}-{tag}.json")
    log_path = os.path.join(work, f"{system}-{tag}.log")
    harness.log(f"{system}: running ({tag}, load {os.getloadavg()[0]:.2f})")
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
    return res


def checked_systems(ap, args, params: dict, peer) -> list:
    """The systems to run (`--only`, less Ray if `peer` cannot import it);
    a usage error for a system, a workload or a round count that is not one."""
    systems = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown system {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    unknown = [w for w in params["workloads"] if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if "ray" in systems and not (peer and (harness.probe(peer, harness.child_env("ray"))
                                           or {}).get("found", {}).get("ray")):
        harness.log("ray: not installed (pip install -r bench/requirements-peers.txt)")
        systems.remove("ray")
    return systems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SYSTEMS))
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every system this many times, alternating the order")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="cluster workloads to run (raw ZeroMQ only ever moves the bytes)")
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
    params = dict(QUICK if args.quick else FULL,
                  workloads=[w.strip() for w in args.workloads.split(",") if w.strip()])
    harness.become_subreaper()
    peer = args.peer_python or harness.default_peer_python()
    systems = checked_systems(ap, args, params, peer)
    runs = {s: [] for s in systems}
    order = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="zf-bench-") as work:
        for i in range(args.rounds):
            order.append(systems if i % 2 == 0 else systems[::-1])
            for system in order[-1]:
                runs[system].append(run_one(system, params, args, peer, work, f"round{i + 1}"))
    results = {s: medians(r) for s, r in runs.items() if any(r)}
    ratios = {a: paired_ratios(runs[a], runs[b]) for a, b in TWINS
              if any(runs.get(a, [])) and any(runs.get(b, []))}
    load = {"before": load_before, "after": os.getloadavg()}
    if args.json:
        harness.write_json(args.json, harness.portable({
            "params": params, "rounds": args.rounds, "order": order, "load": load,
            "env": {k: v for k, v in os.environ.items() if k.startswith("ZFABRIC_")},
            "machine": {"cpu": harness.cpu_model(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "results": results, "ratios": ratios, "runs": runs}))
    versions = {LABEL[s].split(",")[0]: r.get("version", "?") for s, r in results.items()}
    print(f"{harness.cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          + ", ".join(f"{name} {v}" for name, v in versions.items())
          + (f"; median of {args.rounds} rounds" if args.rounds > 1 else "")
          + f"; load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after")
    print()
    print(markdown(results, params, ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
