#!/usr/bin/env python3
"""zfabric beside Ray, Dask distributed and concurrent.futures, measured in one run.

    python bench/run.py                       # every installed system, full counts
    python bench/run.py --quick               # smaller counts, a smoke run
    python bench/run.py --only zfabric,ray --json bench/out.json
    python bench/run.py --peer-python .peers/bin/python    # (or ZFABRIC_PEER_PYTHON=...)

Each system runs in its own fresh subprocess (one more fresh subprocess per
startup measurement), with a timeout; every process a system leaves behind is
stopped by PID. Progress goes to stderr; stdout is only the markdown result
(machine line, table, notes, then the Targets table of issue #11 with the
baselines measured in the same run: bench/baselines.py, bench/targets.py)
ready to paste into docs/benchmarks.md.

The module imports nothing but the standard library at top level, so a child
measuring startup counts the system's whole import (numpy included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The interpreter that has Ray and Dask, when they are not importable here:
# --peer-python, else this environment variable, else .peers/ in the repo.
PEER_PYTHON_ENV = "ZFABRIC_PEER_PYTHON"
PEERS_VENV_PYTHON = os.path.join(REPO, ".peers", "bin", "python")
NUM_CPUS = 2

SYSTEMS = ["zfabric", "ray", "dask", "processpool"]
LABEL = {"zfabric": "zfabric", "ray": "Ray", "dask": "Dask distributed",
         "processpool": "ProcessPool"}
MODULE = {"zfabric": "zfabric", "ray": "ray", "dask": "distributed",
          "processpool": "concurrent.futures"}
ALIASES = {"zf": "zfabric", "pool": "processpool", "concurrent.futures": "processpool",
           "processpoolexecutor": "processpool", "distributed": "dask"}

FULL = dict(tasks=5000, throughput_rounds=3, rtt=1000, rtt_warmup=100, chain=1000, big_mb=100, big_warmup=2, big_reps=5,
            big_gets=3, tiny_gets=200, small_ops=2000, startup_reps=3, idle_wait=2.0,
            import_reps=7)
QUICK = dict(tasks=500, throughput_rounds=1, rtt=200, rtt_warmup=20, chain=100, big_mb=10, big_warmup=1, big_reps=2,
             big_gets=2, tiny_gets=50, small_ops=200, startup_reps=1, idle_wait=1.0,
             import_reps=3)


# --------------------------------------------------------------------------
# task bodies (module level: ProcessPool pickles them by reference)

def noop(*args):
    return None


def one():
    return 1


def inc(x):
    return x + 1


# --------------------------------------------------------------------------
# one small adapter per system, all with the same interface:
#   load()  imports the system          start(n)  brings it up with n CPUs
#   task(fn) -> submit(*args) -> handle get(handle or list) -> value(s)
#   put(value) -> handle                stop()    version() -> str
# has_refs=False: handles cannot be passed as task arguments, no object store.

class System:
    has_refs = True

    def put(self, value):
        raise NotImplementedError("no object store")


class Zfabric(System):
    def load(self):
        import zfabric
        if not hasattr(zfabric, "init"):
            raise ImportError(f"zfabric at {list(zfabric.__path__)} has no init() yet")
        self.zf = zfabric

    def start(self, n):
        self.zf.init(num_cpus=n)

    def task(self, fn):
        return self.zf.remote(fn).remote

    def get(self, h):
        return self.zf.get(h)

    def put(self, value):
        return self.zf.put(value)

    def stop(self):
        self.zf.shutdown()

    def version(self):
        return str(getattr(self.zf, "__version__", "?"))


class Ray(System):
    def load(self):
        import ray
        self.ray = ray

    def start(self, n):
        self.ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)

    def task(self, fn):
        return self.ray.remote(fn).remote

    def get(self, h):
        return self.ray.get(h)

    def put(self, value):
        return self.ray.put(value)

    def stop(self):
        self.ray.shutdown()

    def version(self):
        return self.ray.__version__


class Dask(System):
    def load(self):
        import dask
        import distributed
        self.dask, self.distributed = dask, distributed

    def start(self, n):
        cluster = self.distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        self.cluster, self.client = cluster, self.distributed.Client(cluster)

    def task(self, fn):
        submit = self.client.submit
        return lambda *args: submit(fn, *args, pure=False)

    def get(self, h):
        return self.client.gather(h)

    def put(self, value):
        return self.client.scatter(value, hash=False)

    def stop(self):
        self.client.close()
        self.cluster.close()

    def version(self):
        d, dd = self.dask.__version__, self.distributed.__version__
        return d if d == dd else f"{d} (distributed {dd})"


class ProcessPool(System):
    has_refs = False

    def load(self):
        from concurrent.futures import ProcessPoolExecutor
        self.cls = ProcessPoolExecutor

    def start(self, n):
        self.ex = self.cls(max_workers=n)

    def task(self, fn):
        return lambda *args: self.ex.submit(fn, *args)

    def get(self, h):
        return [f.result() for f in h] if isinstance(h, list) else h.result()

    def stop(self):
        self.ex.shutdown(wait=True)

    def version(self):
        return "Python " + platform.python_version()


ADAPTERS = {"zfabric": Zfabric, "ray": Ray, "dask": Dask, "processpool": ProcessPool}


# --------------------------------------------------------------------------
# workloads: each takes (system, params) and returns {metric: value, ...}

def w_throughput(s, p):
    """`throughput_rounds` bursts of `tasks` no-op tasks, one after the other:
    the median burst's rate (one burst of half a second moves with the host)."""
    f, n = s.task(noop), p["tasks"]
    times = []
    for _ in range(p["throughput_rounds"]):
        t = time.perf_counter()
        refs = [f() for _ in range(n)]
        s.get(refs)
        times.append(time.perf_counter() - t)
        del refs
    dt = statistics.median(times)
    return {"throughput": n / dt, "throughput_seconds": dt,
            "throughput_rates": [n / x for x in times]}


def w_rtt(s, p):
    f = s.task(noop)
    for _ in range(p["rtt_warmup"]):
        s.get(f())
    samples = []
    for _ in range(p["rtt"]):
        t = time.perf_counter()
        s.get(f())
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {"rtt": statistics.median(samples), "rtt_p10": samples[len(samples) // 10],
            "rtt_p90": samples[len(samples) * 9 // 10], "rtt_mean": statistics.fmean(samples)}


def w_chain(s, p):
    f, n = s.task(inc), p["chain"]
    t = time.perf_counter()
    ref = f(0)
    for _ in range(n - 1):
        # ProcessPool cannot pass a future as an argument: resolve in the driver.
        ref = f(ref if s.has_refs else s.get(ref))
    value = s.get(ref)
    dt = time.perf_counter() - t
    if value != n:
        raise AssertionError(f"chain returned {value!r}, expected {n}")
    return {"chain": dt}


def w_big(s, p):
    import numpy as np
    big = np.ones(p["big_mb"] * 2**20 // 8)           # pages really touched
    puts, gets = [], []
    for _ in range(p["big_warmup"] + p["big_reps"]):
        t = time.perf_counter()
        ref = s.put(big)
        puts.append(time.perf_counter() - t)
        for _ in range(p["big_gets"]):
            t = time.perf_counter()
            v = s.get(ref)
            gets.append(time.perf_counter() - t)
            if v.shape != big.shape or v[0] != 1.0 or v[-1] != 1.0:
                raise AssertionError("big get returned a wrong array")
            del v
        del ref
    tiny = np.ones(128)                                 # 1 KB
    ref = s.put(tiny)
    tiny_gets = []
    for _ in range(p["tiny_gets"]):
        t = time.perf_counter()
        v = s.get(ref)
        tiny_gets.append(time.perf_counter() - t)
    if v.shape != tiny.shape:
        raise AssertionError("tiny get returned a wrong array")
    return {"big_put": statistics.median(puts[p["big_warmup"]:]),
            "big_get": statistics.median(gets),
            "tiny_get": statistics.median(tiny_gets), "big_put_all": puts,
            "big_get_all": gets}


def w_small(s, p):
    n = p["small_ops"]
    t = time.perf_counter()
    refs = [s.put(i) for i in range(n)]
    t_put = time.perf_counter() - t
    t = time.perf_counter()
    values = [s.get(r) for r in refs]
    t_get = time.perf_counter() - t
    if values != list(range(n)):
        raise AssertionError("small gets returned wrong values")
    return {"small_puts": n / t_put, "small_gets": n / t_get}


WORKLOADS = [  # (name, function, metrics it yields, needs an object store)
    ("throughput", w_throughput, ["throughput"], False),
    ("rtt", w_rtt, ["rtt"], False),
    ("chain", w_chain, ["chain"], False),
    ("big", w_big, ["big_put", "big_get", "tiny_get"], True),
    ("small", w_small, ["small_puts", "small_gets"], True),
]


def describe(proc):
    """'pid cmdline' of a process, for diagnostics."""
    try:
        return f"{proc.pid} {' '.join(proc.cmdline()).strip()[:120]}"
    except Exception:                             # noqa: BLE001
        return str(proc.pid)


def children_rss():
    """(MB, [descriptions]) of this process's descendants: the system's processes."""
    import psutil
    total, names = 0, []
    for proc in psutil.Process().children(recursive=True):
        try:
            total += proc.memory_info().rss
            names.append(f"{proc.memory_info().rss / 2**20:.0f} MB {describe(proc)}")
        except psutil.Error:
            pass
    return total / 2**20, names


# --------------------------------------------------------------------------
# child modes

_ABS_PATH = re.compile(r"(?<![\w.~])(?:/[\w.+@-]+){2,}/?")


def portable(obj):
    """`obj` with the paths of this machine made relative, for results that are
    committed (bench/results/): inside the repository relative to it, any other
    absolute path of more than two parts (an interpreter, a log) shortened to
    its last two."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v) for v in obj]
    if isinstance(obj, str):
        return _ABS_PATH.sub(_relative, obj)
    return obj


def _relative(match) -> str:
    path = match.group(0).rstrip("/")
    if path == REPO or path.startswith(REPO + "/"):
        return os.path.relpath(path, REPO)
    parts = path.split("/")[1:]
    return path if len(parts) <= 2 else os.path.join("...", *parts[-2:])


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
    os.replace(tmp, path)


def child_startup(system, out):
    t0 = time.perf_counter()                  # before the system's import
    res = {"python": platform.python_version()}
    s = ADAPTERS[system]()
    try:
        s.load()
    except Exception as e:                    # noqa: BLE001 - reported, not hidden
        res.update(phase="import", error=f"{type(e).__name__}: {e}")
        write_json(out, res)
        return 1
    t1 = time.perf_counter()
    try:
        s.start(NUM_CPUS)
        t2 = time.perf_counter()
        value = s.get(s.task(one)())
        t3 = time.perf_counter()
        if value != 1:
            raise AssertionError(f"first task returned {value!r}")
    except Exception as e:
        res.update(phase="start", error=f"{type(e).__name__}: {e}")
        write_json(out, res)
        raise
    res.update(import_s=t1 - t0, init_s=t2 - t1, first_task_s=t3 - t2, startup_s=t3 - t0,
               version=s.version())
    write_json(out, res)
    s.stop()
    res["shutdown_s"] = time.perf_counter() - t3
    write_json(out, res)
    return 0


def child_bench(system, out, params):
    res = {"python": platform.python_version(), "metrics": {}, "details": {}, "errors": {}}
    s = ADAPTERS[system]()
    s.load()
    res["version"] = s.version()
    t = time.perf_counter()
    try:
        s.start(NUM_CPUS)
        warm = s.task(noop)
        s.get([warm() for _ in range(20)])    # workers up and used once
    except Exception as e:
        res["errors"]["init"] = f"{type(e).__name__}: {e}"
        write_json(out, res)
        raise
    res["details"]["init_and_warmup_s"] = time.perf_counter() - t
    time.sleep(params["idle_wait"])
    mb, names = children_rss()
    res["metrics"]["idle_rss"] = mb
    res["details"]["idle_procs"] = len(names)
    res["details"]["idle_proc_list"] = names
    write_json(out, res)
    for name, fn, keys, needs_store in WORKLOADS:
        if needs_store and not s.has_refs:
            res["details"][name] = "n/a"
            continue
        print(f"[{system}] {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            r = fn(s, params)
        except Exception as e:                # noqa: BLE001 - reported in the table
            res["errors"][name] = f"{type(e).__name__}: {e}"
        else:
            for k, v in r.items():
                (res["metrics"] if k in keys else res["details"])[k] = v
        res["details"][name + "_wall_s"] = time.perf_counter() - t
        write_json(out, res)
    t = time.perf_counter()
    s.stop()
    res["details"]["shutdown_s"] = time.perf_counter() - t
    write_json(out, res)
    return 0


def child_baselines(out, params):
    """The floors of the issue's targets (bench/baselines.py), with this
    interpreter: raw ZeroMQ ipc round trip, numpy copy, fresh-interpreter imports."""
    sys.path.insert(0, HERE)
    import baselines
    res = baselines.measure_all(params, log=log, env=dict(os.environ))
    res["python"] = platform.python_version()
    write_json(out, res)
    return 0


# --------------------------------------------------------------------------
# orchestration: subprocesses, PID tracking and cleanup

def become_subreaper():
    """Orphaned descendants of our children get reparented to us, so cleanup
    by PID finds every process a system leaves behind (Linux only)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0      # PR_SET_CHILD_SUBREAPER
    except Exception:                               # noqa: BLE001
        return False


def stop_pids(procs, grace=5.0):
    """SIGTERM each process, SIGKILL the ones alive after `grace`; reaps ours."""
    import psutil
    procs = [p for p in procs if p.pid != os.getpid()]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(procs)


def run_child(python, argv, timeout, env, log_path, script=None):
    """Run `script` (this file by default) as a child to completion or timeout,
    then stop by PID every process it left behind.
    Returns (rc, wall_s, timed_out, [leftovers still alive])."""
    import psutil
    seen = {}                                     # pid -> psutil.Process (keeps create time)
    end = {}
    with open(log_path, "ab") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, script or os.path.abspath(__file__)] + argv, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)

        def wait():
            end["rc"] = proc.wait()
            end["t"] = time.perf_counter()
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()

        def snapshot():
            try:
                for c in psutil.Process(proc.pid).children(recursive=True):
                    seen.setdefault(c.pid, c)
            except psutil.Error:
                pass
        deadline = time.monotonic() + timeout
        while waiter.is_alive() and time.monotonic() < deadline:
            waiter.join(1.0)                      # cheap 1 Hz snapshot of descendants
            if waiter.is_alive():
                snapshot()
        timed_out = waiter.is_alive()
        if timed_out:
            snapshot()
            proc.terminate()
            waiter.join(3.0)
            if waiter.is_alive():
                proc.kill()
            waiter.join()
        wall = end.get("t", time.perf_counter()) - t0
    # leftovers: descendants seen while it ran, plus orphans reparented to us
    for c in psutil.Process().children(recursive=True):
        seen.setdefault(c.pid, c)
    candidates = [p for p in seen.values() if p.pid != proc.pid]
    _, candidates = psutil.wait_procs(candidates, timeout=1.0)   # let exiting ones go
    leftovers, live = [], []
    for p in candidates:
        try:
            if p.is_running():
                leftovers.append(p)
                if p.status() != psutil.STATUS_ZOMBIE:
                    live.append(describe(p))
        except psutil.Error:
            pass
    stop_pids(leftovers, grace=5.0)               # also reaps zombies of ours
    return end.get("rc", -9), wall, timed_out, live


def short_machine() -> dict:
    """CPU model, cores and Python: what a small bench script's JSON records."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}


def machine_line(script: str, load: list) -> str:
    """A small bench script's first stdout line: the machine, the load before and after."""
    return (f"**Machine:** {cpu_model()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()} · load average {load[0]:.2f} before, {load[-1]:.2f} "
            f"after · `bench/{script}` · {time.strftime('%Y-%m-%d')}\n")


def script_round(script, argv, out, timeout, env):
    """One round of a bench script: run `script` with `argv` as a child (its
    log beside `out`), then read the JSON it wrote to `out`. Returns (the
    JSON, wall seconds), or (None, wall) after logging why the round failed.
    Leftover processes are stopped by PID and logged (run_child)."""
    log_path = out[:-5] + ".log" if out.endswith(".json") else out + ".log"
    rc, wall, timed_out, left = run_child(sys.executable, argv, timeout, env, log_path,
                                          script=script)
    r = read_json(out)
    if rc != 0 or r is None:
        log(f"round failed (rc {rc}{', timeout' if timed_out else ''})\n{tail(log_path)}")
        return None, wall
    if left:
        log(f"stopped leftovers {left}")
    return r, wall


def read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def tail(path, n=12):
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-n:])
    except OSError:
        return ""


def probe(python, env):
    """Which systems an interpreter can find, its versions (no imports)."""
    code = (
        "import importlib.util as u, importlib.metadata as m, json, platform\n"
        "def v(d):\n"
        "    try: return m.version(d)\n"
        "    except Exception: return None\n"
        "print(json.dumps({'python': platform.python_version(),"
        " 'found': {k: u.find_spec(k) is not None for k in"
        " ['zfabric', 'ray', 'distributed', 'numpy', 'psutil']},"
        " 'versions': {k: v(k) for k in ['ray', 'dask', 'distributed', 'numpy', 'zfabric']}}))\n"
    )
    try:
        out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def child_env(system):
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    for var in ("RAY_ADDRESS", "ZFABRIC_ADDRESS"):    # always a fresh local cluster
        env.pop(var, None)
    if system == "zfabric":                       # the package from this checkout
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
    return env


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_system(system, python, params, timeout, workdir):
    """Startup runs (fresh interpreters) then the workload run, each in a subprocess."""
    env = child_env(system)
    out = {"python_exe": python, "startup": [], "errors": {}, "metrics": {},
           "details": {}, "log": os.path.join(workdir, system + ".log")}
    for i in range(params["startup_reps"]):
        path = os.path.join(workdir, f"{system}-startup{i}.json")
        rc, wall, timed_out, left = run_child(
            python, ["--child", "startup", "--system", system, "--out", path],
            min(timeout, 90), env, out["log"])
        r = read_json(path) or {}
        r.update(rc=rc, wall_s=wall, timed_out=timed_out, leftovers=left)
        out["startup"].append(r)
        if r.get("phase") == "import":
            out["skipped"] = r.get("error")
            log(f"[{system}] not importable: {r.get('error')}")
            return out
        if "startup_s" not in r:
            why = "timeout" if timed_out else f"exit {rc}"
            out["errors"]["startup"] = f"startup failed ({why})" + (
                f": {r['error']}" if r.get("error") else "")
            log(f"[{system}] startup failed ({why}):\n{tail(out['log'])}")
            break
        log(f"[{system}] startup {r['startup_s']:.2f}s (import {r['import_s']:.2f}s), "
            f"subprocess wall {wall:.2f}s" + (f", stopped leftovers {left}" if left else ""))
        out["version"] = r.get("version")
        out["child_python"] = r.get("python")
    good = [r for r in out["startup"] if "startup_s" in r]
    if good:
        for key, metric in [("startup_s", "startup"), ("import_s", "startup_import"),
                            ("wall_s", "startup_wall")]:
            out["metrics"][metric] = statistics.median(r[key] for r in good)
    path = os.path.join(workdir, f"{system}-bench.json")
    t = time.perf_counter()
    rc, wall, timed_out, left = run_child(
        python, ["--child", "bench", "--system", system, "--out", path,
                 "--params", json.dumps(params)], timeout, env, out["log"])
    r = read_json(path) or {}
    out["metrics"].update(r.get("metrics", {}))
    out["details"].update(r.get("details", {}))
    out["errors"].update(r.get("errors", {}))
    out["version"] = r.get("version") or out.get("version")
    out["child_python"] = r.get("python") or out.get("child_python")
    out.update(bench_rc=rc, bench_wall_s=wall, bench_timed_out=timed_out,
               bench_leftovers=left)
    if timed_out or rc != 0:
        why = f"timeout after {timeout:.0f}s" if timed_out else f"exit {rc}"
        out["bench_failure"] = why
        log(f"[{system}] bench run failed ({why}):\n{tail(out['log'])}")
    log(f"[{system}] done in {time.perf_counter() - t:.1f}s"
        + (f", stopped leftovers {left}" if left else ""))
    return out


def run_baselines(params, timeout, workdir):
    """bench/baselines.py in a fresh subprocess of this interpreter, with the
    checkout on PYTHONPATH (its `import zfabric` is this checkout's)."""
    path = os.path.join(workdir, "baselines.json")
    log_path = os.path.join(workdir, "baselines.log")
    log("[baselines] raw ZeroMQ ipc round trip, numpy copy, imports ...")
    rc, wall, timed_out, left = run_child(
        sys.executable, ["--child", "baselines", "--out", path, "--params", json.dumps(params)],
        timeout, child_env("zfabric"), log_path)
    res = read_json(path) or {"errors": {}}
    res.update(rc=rc, wall_s=wall, timed_out=timed_out, leftovers=left)
    if rc != 0 or timed_out:
        res["errors"]["run"] = "timeout" if timed_out else f"exit {rc}"
        log(f"[baselines] failed:\n{tail(log_path)}")
    else:
        log(f"[baselines] done in {wall:.1f}s")
    return res


# the targets of several nodes: bench/cluster.py and bench/scale.py, run as they are
OTHER_SCRIPTS = {  # name -> (arguments, --quick arguments added)
    "cluster": (["--only", "zfabric,zfabric-insecure,zmq,zmq-curve", "--workloads", "transfer"],
                ["--quick"]),
    "scale": (["--idle-nodes", "16", "--configs", "1x2,4x1", "--no-workers"],
              ["--rounds", "1", "--tasks", "1000", "--warmup", "300", "--settle", "3",
               "--window", "8"]),
}


def run_other_scripts(mode, peer_python, workdir):
    """`--all-targets`: cluster.py and scale.py, each a subprocess of this
    interpreter with its own cleanup (and this one's after it); their JSON."""
    out = []
    for name, (args, quick) in OTHER_SCRIPTS.items():
        path = os.path.join(workdir, f"{name}.json")
        log_path = os.path.join(workdir, f"{name}.log")
        argv = args + (quick if mode == "quick" else []) + ["--json", path]
        if name == "cluster":
            argv += ["--peer-python", peer_python]
        log(f"[{name}] bench/{name}.py {' '.join(argv[:-2])} ...")
        rc, wall, timed_out, left = run_child(
            sys.executable, argv, 1800, child_env("zfabric"), log_path,
            script=os.path.join(HERE, f"{name}.py"))
        res = read_json(path)
        if res is None or rc != 0:
            log(f"[{name}] failed ({'timeout' if timed_out else f'exit {rc}'}):\n"
                + tail(log_path))
        else:
            log(f"[{name}] done in {wall:.1f}s")
        if res is not None:
            res["subprocess"] = {"rc": rc, "wall_s": wall, "timed_out": timed_out,
                                 "leftovers": left}
        out.append(res)
    return out


# --------------------------------------------------------------------------
# report

def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs" if s >= 1e-5 else f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"
    return f"{s:.2f} s"


def fmt_rate(r, unit):
    return f"{r:,.0f} {unit}" if r >= 100 else f"{r:.1f} {unit}"


def ratio_text(zf, peer, higher_better, words):
    if not zf or not peer:
        return ""
    r = zf / peer if higher_better else peer / zf
    better, worse = words
    if 0.95 <= r <= 1.05:
        return "zf ≈ same"
    if r >= 1:
        return f"zf {r:,.0f}x {better}" if r >= 10 else f"zf {r:.1f}x {better}"
    r = 1 / r
    return f"zf {r:,.0f}x {worse}" if r >= 10 else f"zf {r:.1f}x {worse}"


def rows(p):
    fast, mem = ("faster", "slower"), ("smaller", "larger")
    t, rate = "time", "rate"
    return [  # key, label, kind, unit, higher is better, ratio words
        ("startup", "startup → first result (fresh interpreter, incl. import)", t, None, False, fast),
        ("startup_import", "… of which `import`", t, None, False, fast),
        ("startup_wall", "startup subprocess wall time (exec → exit)", t, None, False, fast),
        ("throughput", f"tiny-task throughput ({p['tasks']:,} no-op tasks, median of "
                       f"{p['throughput_rounds']} bursts)", rate, "tasks/s", True, fast),
        ("rtt", f"sync round trip `get(f.remote())` (median of {p['rtt']:,})", t, None, False, fast),
        ("chain", f"{p['chain']:,}-task dependency chain", t, None, False, fast),
        ("big_put", f"put {p['big_mb']} MB numpy array", t, None, False, fast),
        ("big_get", f"get {p['big_mb']} MB numpy array", t, None, False, fast),
        ("tiny_get", "get 1 KB numpy array", t, None, False, fast),
        ("small_puts", f"{p['small_ops']:,} small puts", rate, "ops/s", True, fast),
        ("small_gets", f"{p['small_ops']:,} small gets (one `get` each)", rate, "ops/s", True, fast),
        ("idle_rss", "idle RSS of the system's processes (driver excluded)", "mb", None, False, mem),
    ]


WORKLOAD_OF = {k: name for name, _, keys, _ in WORKLOADS for k in keys}


def cell(res, key, kind, unit):
    if key in res["metrics"]:
        v = res["metrics"][key]
        if kind == "time":
            text = fmt_time(v)
        elif kind == "rate":
            text = fmt_rate(v, unit)
        else:
            text = f"{v:.0f} MB / {res['details'].get('idle_procs', '?')} procs"
        if key == "chain" and res.get("name") == "processpool":
            text += " †"
        return text
    if key.startswith("startup"):
        return "error" if "startup" in res["errors"] else "—"
    wl = WORKLOAD_OF.get(key)
    if wl in res["errors"]:
        return "error"
    if res["details"].get(wl) == "n/a":
        return "n/a"
    if res.get("bench_timed_out"):
        return "timeout"
    return "error" if res.get("bench_failure") else "—"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_facts(results, probes):
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    facts = {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gib": round(ram, 1),
             "os": f"{platform.system()} {platform.release()}",
             "python": platform.python_version(), "versions": {}}
    for name, res in results.items():
        if res.get("version"):
            facts["versions"][name] = res["version"]
        if res.get("child_python") and res["child_python"] != facts["python"]:
            facts.setdefault("peer_python", res["child_python"])
    for pr in probes.values():
        if pr and pr["versions"].get("numpy"):
            facts["versions"].setdefault("numpy", pr["versions"]["numpy"])
    return facts


def markdown(results, order, params, facts, mode, stamp):
    v = facts["versions"]
    vers = " · ".join(f"{LABEL.get(k, k)} {v[k]}" for k in ["zfabric", "ray", "dask", "numpy"]
                      if k in v)
    py = f"Python {facts['python']}"
    if facts.get("peer_python"):
        py += f" (peers: Python {facts['peer_python']})"
    head = (f"**Machine:** {facts['cpu']}, {facts['cores']} cores, {facts['ram_gib']} GiB RAM, "
            f"{facts['os']} · {py} · {vers} · `bench/run.py{' --quick' if mode == 'quick' else ''}`"
            f" · {stamp}")
    cols = [s for s in order if s in results and not results[s].get("skipped")]
    lines = [head, "", "| workload | " + " | ".join(LABEL[s] for s in cols) + " |",
             "|---|" + "---|" * len(cols)]
    if not cols:
        lines[2:] = ["No system could be benchmarked."]
    zf = results.get("zfabric") if "zfabric" in cols else None
    for key, label, kind, unit, higher, words in rows(params) if cols else []:
        cells = []
        for s in cols:
            c = cell(results[s], key, kind, unit)
            if zf is not None and s != "zfabric" and key in results[s]["metrics"]:
                rt = ratio_text(zf["metrics"].get(key), results[s]["metrics"][key], higher, words)
                if rt:
                    c += f" ({rt})"
            cells.append(c)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    setup = {"zfabric": f"zfabric `zf.init(num_cpus={NUM_CPUS})`",
             "ray": f"Ray `ray.init(num_cpus={NUM_CPUS})`",
             "dask": f"Dask `LocalCluster(n_workers={NUM_CPUS}, threads_per_worker=1, "
                     "processes=True)`",
             "processpool": f"`ProcessPoolExecutor({NUM_CPUS})`"}
    notes = [
        "Each system ran in its own fresh subprocess: "
        + (", ".join(setup[s] for s in cols) or "none") + "."
        + (" Ratios in parentheses compare zfabric with that column." if zf else "")
        + (" zfabric was compiled to bytecode first, as a wheel's install does."
           if facts.get("zfabric_bytecode_compiled") else ""),
        f"Startup is the median of {params['startup_reps']} fresh interpreter(s), timed inside "
        "the subprocess from before the system's `import` to the first task's result; the wall "
        "time also counts interpreter start, shutdown and exit.",
        f"Big-array rows: the put is the median of {params['big_reps']} puts after "
        f"{params.get('big_warmup', 0)} warm-up put(s), each object freed before the next "
        f"(a loop's steady state: freed pages are reused); the get, of {params['big_gets']} "
        "gets after each put; "
        "a zero-copy get maps the stored array instead of copying it. Small puts/gets put "
        "Python ints."
        + (" Dask puts are `client.scatter(hash=False)`, gets `client.gather`."
           if "dask" in cols else ""),
        "Idle RSS sums the resident memory of every descendant of the driver process after "
        "start-up and 20 warm-up tasks; shared pages count in every process that maps them."
        + (" Dask's scheduler and nannies live inside the driver process, so its figure holds "
           "only the worker processes." if "dask" in cols else ""),
    ]
    if "processpool" in cols:
        notes.append("† ProcessPool cannot pass a future as an argument: its chain waits for "
                     "each result in the driver and submits the next task. It has no object "
                     "store (n/a).")
    for s in order:
        res = results.get(s)
        if not res:
            continue
        if res.get("skipped"):
            notes.append(f"{LABEL[s]} was skipped: {res['skipped']}")
            continue
        for wl, err in res["errors"].items():
            notes.append(f"{LABEL[s]} `{wl}` error: {err}")
        if res.get("bench_failure"):
            notes.append(f"{LABEL[s]} bench subprocess: {res['bench_failure']}")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------

def default_peer_python():
    """$ZFABRIC_PEER_PYTHON; else this interpreter if it has Ray; else .peers/'s if any."""
    import importlib.util
    if os.environ.get(PEER_PYTHON_ENV):
        return os.environ[PEER_PYTHON_ENV]
    if importlib.util.find_spec("ray") is None and os.path.exists(PEERS_VENV_PYTHON):
        return PEERS_VENV_PYTHON
    return sys.executable


def parse_only(text):
    names = []
    for raw in text.split(","):
        n = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if n not in SYSTEMS:
            raise SystemExit(f"--only: unknown system {raw!r} (choose from {', '.join(SYSTEMS)})")
        names.append(n)
    return names


def compile_package() -> bool:
    """Compile this checkout's zfabric to bytecode, as `pip install` of a wheel
    does. An editable install under PYTHONDONTWRITEBYTECODE=1 never writes
    .pyc files, so every process (driver, node, zygote) would compile the
    package from source at start-up; the peers' site-packages are compiled."""
    import compileall
    return bool(compileall.compile_dir(os.path.join(REPO, "zfabric"), quiet=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma list of systems: " + ",".join(SYSTEMS))
    ap.add_argument("--quick", action="store_true", help="smaller counts, a smoke run")
    ap.add_argument("--json", metavar="PATH", help="also write raw results and the table here")
    ap.add_argument("--peer-python", metavar="PATH",
                    help=f"interpreter for Ray and Dask (default: ${PEER_PYTHON_ENV}, else "
                         "this one if it has ray, else .peers/bin/python in the repo)")
    ap.add_argument("--timeout", type=float,
                    help="seconds per system's workload subprocess (default 150, quick 60)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    ap.add_argument("--no-baselines", action="store_true",
                    help="skip the raw ZeroMQ / numpy copy / import baselines (and the "
                         "Targets table's rows that need them)")
    ap.add_argument("--all-targets", action="store_true",
                    help="also run bench/cluster.py (100 MB between nodes, zfabric and raw "
                         "ZeroMQ, with CURVE and without) and bench/scale.py (tiny tasks on "
                         "1 x 2 and 4 x 1, 16 idle nodes) in this run, for their targets")
    ap.add_argument("--no-compile", action="store_true",
                    help="do not compile zfabric to bytecode first (as an editable install "
                         "under PYTHONDONTWRITEBYTECODE runs: every process compiles it)")
    ap.add_argument("--child", choices=["startup", "bench", "baselines"], help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child == "startup":
        return child_startup(a.system, a.out)
    if a.child == "bench":
        return child_bench(a.system, a.out, json.loads(a.params))
    if a.child == "baselines":
        return child_baselines(a.out, json.loads(a.params))

    sys.path.insert(0, HERE)
    import targets                                # bench/targets.py: the Targets table
    t_start = time.perf_counter()
    mode = "quick" if a.quick else "full"
    params = dict(QUICK if a.quick else FULL)
    timeout = a.timeout or (60.0 if a.quick else 150.0)
    order = [s for s in SYSTEMS if s in parse_only(a.only)] if a.only else list(SYSTEMS)
    peer_python = a.peer_python or default_peer_python()
    python_of = {s: (peer_python if s in ("ray", "dask") else sys.executable) for s in SYSTEMS}
    become_subreaper()
    compiled = False if a.no_compile else compile_package()

    probes = {py: probe(py, child_env("zfabric")) for py in set(python_of[s] for s in order)}
    results, run_order = {}, []
    for s in order:
        pr = probes.get(python_of[s])
        if pr is None:
            log(f"[{s}] skipped: cannot run {python_of[s]}")
            continue
        missing = [m for m in (MODULE[s], "numpy", "psutil")
                   if m in pr["found"] and not pr["found"][m]]
        if missing:
            log(f"[{s}] skipped: {', '.join(missing)} not importable with {python_of[s]}")
            continue
        run_order.append(s)

    import psutil
    load, busy = os.getloadavg()[0], psutil.cpu_percent(interval=1.0)
    if busy > 15:
        log(f"warning: CPUs {busy:.0f}% busy before the run (load average {load:.2f}): "
            f"other processes share the {os.cpu_count()} cores, numbers will be noisy")
    workdir = tempfile.mkdtemp(prefix="zfabric-bench-")
    log(f"mode {mode}; systems {', '.join(run_order) or 'none'}; peers run with {peer_python}; "
        f"logs in {workdir}")
    for s in run_order:
        res = bench_system(s, python_of[s], params, timeout, workdir)
        res["name"] = s
        results[s] = res

    base = None if a.no_baselines else run_baselines(params, timeout, workdir)
    cluster = scale = None
    if a.all_targets:
        cluster, scale = run_other_scripts(mode, peer_python, workdir)

    facts = machine_facts(results, probes)
    facts["loadavg_before"], facts["cpu_busy_percent_before"] = round(load, 2), busy
    facts["loadavg_after"] = round(os.getloadavg()[0], 2)
    facts["zfabric_bytecode_compiled"] = compiled
    stamp = time.strftime("%Y-%m-%d")
    table = markdown(results, run_order, params, facts, mode, stamp)
    target_rows = targets.evaluate(results, base, params, cluster, scale)
    table += "\n\n" + targets.markdown(target_rows, base, params, scale, cluster)
    total = time.perf_counter() - t_start
    if a.json:
        write_json(a.json, portable({"mode": mode, "params": params, "machine": facts,
                                     "peer_python": peer_python, "total_s": total,
                                     "systems": results, "baselines": base,
                                     "cluster": cluster, "scale": scale,
                                     "targets": target_rows, "markdown": table}))
        log(f"wrote {a.json}")
    if not a.keep_logs:
        for f in os.listdir(workdir):
            os.unlink(os.path.join(workdir, f))
        os.rmdir(workdir)
    log(f"total {total:.1f}s")
    print(table, flush=True)
    ran = [s for s in run_order if not results[s].get("skipped")]
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
