#!/usr/bin/env python3
"""The floors the issue's targets compare zfabric with, measured by `run.py`
in the same run as the systems (also runnable alone for a look):

    python bench/baselines.py              # full counts, JSON on stdout
    python bench/baselines.py --quick

- `zmq_rtt`: a raw ZeroMQ round trip between two Python processes over ipc://
  (a socket file in a temp dir): this process's DEALER sends a 16-byte
  message to a ROUTER in a fresh interpreter (`--echo ADDR`), which sends it
  straight back; median of `rtt` round trips after `rtt_warmup`. What
  zfabric's sync round trip (`get(f.remote())`) is held against.
- `numpy_copy`: `a.copy()` of the float64 array of `big_mb` MiB that run.py
  puts (pages touched), median of `big_reps`; each copy lands in new memory,
  as a put lands in a new store file. What a put of that array is held against.
- `import_*`: fresh interpreters timed from outside, exec to exit (median of
  `import_reps`, the commands in alternating order): `python -c pass`,
  `python -c "import zmq, cloudpickle, msgpack"` (zfabric's own dependencies
  of its wire; the issue's floor) and `python -c "import zfabric; zfabric.remote"`
  (zfabric's public names load on first use: touching one loads what a driver
  needs before `init`; with the environment the caller gives: run.py puts the
  checkout on PYTHONPATH).

Imports nothing but the standard library at top level; numpy and zmq are
imported by the measurement that needs them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPORTS = {  # key -> the -c program
    "import_pass": "pass",
    "import_deps": "import zmq, cloudpickle, msgpack",
    "import_zfabric": "import zfabric; zfabric.remote",
}
FULL = dict(rtt=1000, rtt_warmup=100, big_mb=100, big_reps=3, import_reps=7)
QUICK = dict(rtt=200, rtt_warmup=20, big_mb=10, big_reps=2, import_reps=3)


def echo(addr: str) -> None:
    """The far end of the round trip: every message straight back to its sender;
    an empty message ends it."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(addr)
    print("ready", flush=True)
    while True:
        ident, msg = sock.recv_multipart()
        sock.send_multipart([ident, msg])
        if not msg:
            break
    sock.close(linger=1000)
    ctx.term()


def zmq_rtt(rtt: int, rtt_warmup: int, **_) -> dict:
    """Round trips of a 16-byte message to a ROUTER in another Python process."""
    import zmq
    with tempfile.TemporaryDirectory(prefix="zf-bench-ipc-") as tmp:
        addr = "ipc://" + os.path.join(tmp, "echo")
        peer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--echo", addr],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        try:
            if peer.stdout.readline().strip() != "ready":
                raise RuntimeError("the echo process did not start")
            sock.connect(addr)
            msg = b"x" * 16
            for _ in range(rtt_warmup):
                sock.send(msg)
                sock.recv()
            samples = []
            for _ in range(rtt):
                t = time.perf_counter()
                sock.send(msg)
                sock.recv()
                samples.append(time.perf_counter() - t)
            sock.send(b"")
            sock.recv()
            peer.wait(timeout=10)
        finally:
            sock.close(linger=0)
            ctx.term()
            if peer.poll() is None:
                peer.kill()
                peer.wait()
    samples.sort()
    return {"zmq_rtt": statistics.median(samples), "zmq_rtt_p10": samples[len(samples) // 10],
            "zmq_rtt_p90": samples[len(samples) * 9 // 10],
            "zmq_version": zmq.zmq_version(), "pyzmq_version": zmq.__version__}


def numpy_copy(big_mb: int, big_reps: int, **_) -> dict:
    """`a.copy()` of the array run.py puts: the same size, pages touched."""
    import numpy as np
    big = np.ones(big_mb * 2**20 // 8)
    times = []
    for _ in range(big_reps):
        t = time.perf_counter()
        c = big.copy()
        times.append(time.perf_counter() - t)
        if c[-1] != 1.0:
            raise AssertionError("numpy copy is wrong")
        del c
    return {"numpy_copy": statistics.median(times), "numpy_copy_all": times,
            "numpy_version": np.__version__}


def import_times(import_reps: int, env: dict | None = None, **_) -> dict:
    """Fresh interpreters, exec to exit, each command in turn (the order
    reversed every other round); median of `import_reps` each."""
    samples = {k: [] for k in IMPORTS}
    errors = {}
    keys = list(IMPORTS)
    for i in range(import_reps):
        for key in keys if i % 2 == 0 else keys[::-1]:
            if key in errors:
                continue
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", IMPORTS[key]], env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=60)
            dt = time.perf_counter() - t
            if proc.returncode != 0:
                errors[key] = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
            else:
                samples[key].append(dt)
    out = {k: statistics.median(v) for k, v in samples.items() if v}
    out.update({k + "_all": v for k, v in samples.items() if v})
    out["import_commands"] = {k: f'python -c "{c}"' for k, c in IMPORTS.items()}
    if errors:
        out["import_errors"] = errors
    return out


MEASURES = [("zmq_rtt", zmq_rtt), ("numpy_copy", numpy_copy), ("imports", import_times)]


def measure_all(params: dict, log=None, env: dict | None = None) -> dict:
    """Every baseline; one that fails is reported under `errors`, not raised."""
    out, errors = {}, {}
    for name, fn in MEASURES:
        if log:
            log(f"[baselines] {name} ...")
        try:
            out.update(fn(env=env, **params))
        except Exception as e:                 # noqa: BLE001 - reported in the table
            errors[name] = f"{type(e).__name__}: {e}"
    out["errors"] = errors
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--echo", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.echo:
        echo(a.echo)
        return 0
    res = measure_all(QUICK if a.quick else FULL,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
