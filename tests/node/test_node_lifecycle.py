"""Real node processes: start-up, shutdown, a driver killed with SIGKILL, the CLI.

Every process a test starts is stopped by its PID, also when the test fails.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from zfabric.node.pids import alive

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def temp_dir():
    """A private, short temp dir (ipc socket paths must stay under ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="zf-")
    yield path
    for record in node_records(path):   # a node the test failed to stop (killed by the
        store_dir = record.get("store_dir", "")   # reaper) cannot remove its own store
        if os.path.basename(store_dir).startswith("zfabric-"):
            shutil.rmtree(store_dir, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def reaper():
    """Collects PIDs a test started and kills whatever is left of them at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in proc.children(recursive=True) + [proc]:
                p.kill()
        except psutil.Error:
            pass


def env_with(temp_dir: str) -> dict:
    env = dict(os.environ)
    env["ZFABRIC_TEMP_DIR"] = temp_dir
    env.pop("ZFABRIC_ADDRESS", None)
    return env


def wait_gone(pids, timeout=15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]   # (a zombie, or gone between two reads: not alive)
        time.sleep(0.05)
    return left


def describe(pids) -> list[tuple[int, str]]:
    """Each pid with its command line, for a failure's message."""
    out = []
    for pid in pids:
        try:
            out.append((pid, " ".join(psutil.Process(pid).cmdline())))
        except psutil.Error as e:
            out.append((pid, repr(e)))
    return out


DRIVER = textwrap.dedent("""
    import json, sys, time, psutil
    import numpy as np
    import zfabric as zf
    info = zf.init(num_cpus=2)
    ref = zf.put(np.ones(2_000_000))              # a store file
    @zf.remote
    def forever():
        time.sleep(600)
    running = forever.remote()
    deadline = time.monotonic() + 60   # until the node, its zygote and both workers are up
    while True:
        kids = [p.pid for p in psutil.Process().children(recursive=True)]
        if len(kids) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(json.dumps({**info, "pids": kids}), flush=True)
    time.sleep(600)
""")


def test_driver_killed_with_sigkill_leaves_nothing_behind(temp_dir, reaper):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE,
                            env=env_with(temp_dir), text=True)
    reaper.append(proc.pid)
    line = proc.stdout.readline()
    info = json.loads(line)
    reaper.extend(info["pids"])
    assert len(info["pids"]) >= 4, info["pids"]   # node, zygote, two workers
    assert os.listdir(info["object_store_address"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = wait_gone(info["pids"])
    assert left == [], describe(left)
    assert not os.path.exists(info["object_store_address"]), os.listdir(
        info["object_store_address"])
    assert not os.path.exists(info["session_dir"]), os.listdir(info["session_dir"])


def test_shutdown_stops_every_process(temp_dir, reaper):
    code = textwrap.dedent("""
        import json, psutil, zfabric as zf
        zf.init(num_cpus=3)
        kids = [p.pid for p in psutil.Process().children(recursive=True)]
        zf.shutdown()
        left = [p.pid for p in psutil.Process().children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE]
        print(json.dumps({"kids": kids, "left": left}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env_with(temp_dir), timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    reaper.extend(data["kids"])
    assert len(data["kids"]) >= 5 and data["left"] == []
    assert wait_gone(data["kids"]) == []


# -- the CLI ------------------------------------------------------------------------------

def cli(temp_dir, *args, timeout=60, **environ):
    env = env_with(temp_dir)
    env["ZFABRIC_JOIN_TIMEOUT"] = "1.5"   # an unreachable --address fails fast
    env.update(environ)
    return subprocess.run([sys.executable, "-m", "zfabric.node", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def node_records(temp_dir):
    folder = os.path.join(temp_dir, "nodes")
    return [json.load(open(os.path.join(folder, n))) for n in os.listdir(folder)] \
        if os.path.isdir(folder) else []


# A driver that holds one small (inline) object and two store objects until its stdin
# closes; it prints the ids of the store ones.
HOLDER = textwrap.dedent("""
    import sys
    import numpy as np
    import zfabric as zf
    zf.init(address="auto")
    small = zf.put(b"small")                            # inline: no store file
    big = [zf.put(np.zeros(n, dtype=np.uint8)) for n in (1 << 20, 2 << 20)]
    print(" ".join(r.hex() for r in big), flush=True)   # (each put was answered)
    sys.stdin.read()
    zf.shutdown()
""")

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def memory_lines(temp_dir) -> list[tuple[str, int, float, float]]:
    """`zfabric memory`'s summary (after the objects), one (node id prefix, objects,
    store used, capacity) per line; sizes in bytes, as precise as printed (one
    decimal of the unit)."""
    out = cli(temp_dir, "memory")
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.split("\n\n")[-1].splitlines():
        m = re.fullmatch(r"node ([0-9a-f]{12}): (\d+) objects, store ([\d.]+) (\w+) of "
                         r"([\d.]+) (\w+), 0 objects spilled to disk \(0 B\)", line)
        assert m, f"unexpected line from `zfabric memory`: {line!r}"
        rows.append((m[1], int(m[2]), float(m[3]) * UNITS[m[4]], float(m[5]) * UNITS[m[6]]))
    return rows


def same_size(shown: float, size: int) -> bool:
    """`shown` is `size` printed with one decimal of its unit."""
    unit = next(u for u in reversed(UNITS.values()) if size >= u or u == 1)
    return abs(shown - size) <= 0.05 * unit + 1e-9


def check_memory(temp_dir, record: dict, objects: int, used: int) -> None:
    """Wait (a client's goodbye may still be on its way) until `zfabric memory` shows
    this node alone, holding `objects` objects of `used` bytes in its store."""
    deadline = time.monotonic() + 10
    while True:
        rows = memory_lines(temp_dir)
        ok = len(rows) == 1 and rows[0][:2] == (record["node_id"][:12], objects) \
            and same_size(rows[0][2], used) and same_size(rows[0][3], record["store_capacity"])
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ok, (rows, objects, used, record["store_capacity"])


def test_cli_start_attach_status_timeline_stop(temp_dir, reaper, tmp_path):
    out = cli(temp_dir, "start", "--head", "--port", "0", "--num-cpus", "2",
              "--resources", '{"gpu": 1}', "--num-gpus", "2")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("address: tcp://127.0.0.1:")
    address = first.split(" ", 1)[1]
    assert f"start --address {address}" in out.stdout
    (record,) = node_records(temp_dir)
    reaper.append(record["pid"])
    assert record["address"] == address

    driver = textwrap.dedent("""
        import zfabric as zf
        info = zf.init(address="auto")
        @zf.remote
        def sq(x):
            return x * x
        print(sum(zf.get([sq.remote(i) for i in range(10)])), zf.cluster_resources()["gpu"],
              info["address"], zf.cluster_resources()["GPU"])
        zf.shutdown()
    """)
    run = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True,
                         env=env_with(temp_dir), timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["285", "1.0", address, "2.0"]

    env = env_with(temp_dir)
    env["ZFABRIC_ADDRESS"] = address   # the env var works like address=...
    run = subprocess.run([sys.executable, "-c", "import zfabric as zf; zf.init(); "
                          "print(zf.nodes()[0]['NodeID'])"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == record["node_id"], run.stderr

    status = cli(temp_dir, "status")
    assert status.returncode == 0, status.stderr
    assert record["node_id"][:12] in status.stdout and "0/2" in status.stdout
    assert "cluster: 1 node(s) alive of 1" in status.stdout

    trace = tmp_path / "trace.json"
    out = cli(temp_dir, "timeline", "-o", str(trace))
    assert out.returncode == 0, out.stderr
    assert sum(e["name"].endswith("sq") for e in json.loads(trace.read_text())) == 10

    # `memory`: what a driver holds shows up, with the size of its store files, and goes
    # when the driver does
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env_with(temp_dir))
    reaper.append(holder.pid)
    try:
        big = holder.stdout.readline().split()
        assert len(big) == 2, big
        files = {f: os.path.getsize(os.path.join(record["store_dir"], f))
                 for f in os.listdir(record["store_dir"])}
        assert set(files) == set(big), (files, big)
        assert all(files[f] > n for f, n in zip(big, (1 << 20, 2 << 20)))
        check_memory(temp_dir, record, objects=3, used=sum(files.values()))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    check_memory(temp_dir, record, objects=0, used=0)

    out = cli(temp_dir, "stop")
    assert out.returncode == 0 and "stopped 1 node(s)" in out.stdout
    assert wait_gone([record["pid"]]) == []
    assert node_records(temp_dir) == []
    assert not os.path.exists(record["session_dir"])
    assert not os.path.exists(record["store_dir"])


@pytest.mark.parametrize("args, message", [
    (["start"], "--head"),
    (["start", "--head", "--num-cpus", "x"], "invalid float"),
    (["start", "--head", "--resources", "{bad"], "not valid JSON"),
    (["start", "--head", "--resources", '{"CPU": 2}'], "--num-cpus"),
    (["start", "--head", "--resources", '{"GPU": 2}'], "--num-gpus"),
    (["start", "--head", "--num-gpus", "-1"], "--num-gpus must be >= 0"),
    (["start", "--head", "--num-gpus", "1.5"], "invalid int"),
    (["start", "--head", "--port", "70000"], "between 0 and 65535"),
    (["start", "--address", "tcp://127.0.0.1:1"], "no zfabric node answered"),
    (["start", "--address", "localhost:7380"], "expected tcp://HOST:PORT"),
    (["status"], "no zfabric node is running"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_errors_are_one_line_without_traceback(temp_dir, args, message):
    out = cli(temp_dir, *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_cli_port_in_use_is_one_clear_line(temp_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = cli(temp_dir, "start", "--head", "--port", str(port))
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert node_records(temp_dir) == []


def test_attach_without_a_node_says_how_to_start_one(temp_dir):
    code = "import zfabric as zf\ntry:\n    zf.init(address='auto')\nexcept ConnectionError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env_with(temp_dir), timeout=60)
    assert "start --head" in out.stdout


def test_node_killed_under_a_waiting_driver_raises_node_died(temp_dir, reaper):
    code = textwrap.dedent("""
        import os, signal, time, psutil
        import zfabric as zf
        from zfabric.exceptions import NodeDiedError
        info = zf.init(num_cpus=1)
        for p in psutil.Process().children(recursive=True):
            print("pid", p.pid, flush=True)
        @zf.remote
        def forever():
            time.sleep(600)
        def name(p):   # (a short-lived child may be gone by now)
            try:
                return p.name()
            except psutil.NoSuchProcess:
                return ""
        node = [p for p in psutil.Process().children() if name(p) == "zfabric-node"][0]
        ref = forever.remote()
        time.sleep(0.3)
        os.kill(node.pid, signal.SIGKILL)
        t = time.monotonic()
        try:
            zf.get(ref)
        except NodeDiedError as e:
            print("died", round(time.monotonic() - t, 1), flush=True)
        zf.shutdown()
        print("store left", os.path.exists(info["object_store_address"]), flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env_with(temp_dir), timeout=60)
    pids = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("pid")]
    reaper.extend(pids)
    assert "died" in out.stdout, out.stdout + out.stderr
    assert float(out.stdout.split("died")[1].split()[0]) < 3.0
    assert "store left False" in out.stdout
    assert wait_gone(pids) == []   # workers and zygote die with their node


def test_refs_live_until_the_message_that_protects_them_is_sent(temp_dir):
    """With the idle ref flush firing constantly, no argument or nested result is lost."""
    code = textwrap.dedent("""
        import numpy as np, zfabric as zf
        zf.init(num_cpus=2)
        @zf.remote
        def total(a):
            return float(a.sum())
        @zf.remote
        def nested():
            return [zf.put(np.ones(20_000))]
        big = np.ones(20_000)            # 160 KB: put in the store by .remote()
        sums = zf.get([total.remote(big) for _ in range(300)])
        inner = [zf.get(r)[0] for r in [nested.remote() for _ in range(300)]]
        print(sum(sums) == 300 * 20_000, all(zf.get(r).sum() == 20_000 for r in inner))
        zf.shutdown()
    """)
    env = env_with(temp_dir)
    env["ZFABRIC_REF_FLUSH_INTERVAL"] = "0.00001"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=80)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"]


def test_any_client_id_routes(temp_dir):
    """A client id ending in the rx suffix byte once made every reply vanish."""
    code = textwrap.dedent("""
        import zfabric as zf
        from zfabric.node.client import Client
        info = zf.init(num_cpus=1)
        c = Client("ipc://" + info["session_dir"] + "/node.sock", "tool",
                   identity=b"dabcdef<", connect_timeout=5)
        print(c.request("nodes")[0]["NodeID"] == info["node_id"])
        c.close()
        zf.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env_with(temp_dir), timeout=60)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_failed_start_leaves_no_files(temp_dir):
    store_root = os.path.join(temp_dir, "shm")   # its own: other runs may use /dev/shm now
    os.mkdir(store_root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = cli(temp_dir, "start", "--head", "--port", str(s.getsockname()[1]),
                  ZFABRIC_STORE_ROOT=store_root)
    assert out.returncode != 0
    assert os.listdir(store_root) == []
    assert [d for d in os.listdir(temp_dir) if d.startswith("session_")] == []


def test_embedded_node_survives_the_thread_that_started_it(temp_dir):
    code = textwrap.dedent("""
        import threading, time, zfabric as zf
        t = threading.Thread(target=lambda: zf.init(num_cpus=1))
        t.start(); t.join(); time.sleep(0.5)
        print(zf.get(zf.put(41)) + 1)
        zf.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env_with(temp_dir), timeout=60)
    assert out.stdout.strip() == "42", out.stderr[-2000:]


def test_bad_environment_value_is_one_line(temp_dir):
    env = env_with(temp_dir)
    env["ZFABRIC_TICK_INTERVAL"] = "soon"
    out = subprocess.run([sys.executable, "-m", "zfabric.node", "status"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode != 0 and "ZFABRIC_TICK_INTERVAL" in out.stderr
    assert "Traceback" not in out.stderr


def test_three_cli_nodes_form_one_cluster_that_runs_tasks_on_all(temp_dir, reaper, tmp_path):
    out = cli(temp_dir, "start", "--head", "--port", "0", "--num-cpus", "1")
    assert out.returncode == 0, out.stderr
    head = out.stdout.splitlines()[0].split(" ", 1)[1]
    for extra in ([], ["--resources", '{"gpu": 1}']):
        out = cli(temp_dir, "start", "--address", head, "--port", "0", "--num-cpus", "1", *extra)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("address: tcp://127.0.0.1:")
    records = node_records(temp_dir)
    reaper.extend(r["pid"] for r in records)
    assert len(records) == 3
    last = sorted(records, key=lambda r: r["node_id"])[-1]   # attach to any node: not the head
    driver = textwrap.dedent(f"""
        import time
        import zfabric as zf
        zf.init(address={last["address"]!r})
        @zf.remote
        def where():
            time.sleep(0.3)
            return zf.get_runtime_context().get_node_id()
        print(len(set(zf.get([where.remote() for _ in range(9)]))), zf.cluster_resources())
        zf.shutdown()
    """)
    run = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True,
                         env=env_with(temp_dir), timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split(" ", 1) == ["3", "{'CPU': 3.0, 'gpu': 1.0}\n"]
    status = cli(temp_dir, "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    for r in records:
        (row,) = [line for line in lines if line.startswith(r["node_id"][:12])]
        assert f"127.0.0.1:{r['port']}" in row and " alive " in row and "/1 " in row
    assert "cluster: 3 node(s) alive of 3, 0/3 CPUs in use" in status.stdout
    out = cli(temp_dir, "stop")
    assert out.returncode == 0 and "stopped 3 node(s)" in out.stdout
    assert wait_gone([r["pid"] for r in records]) == []
    assert node_records(temp_dir) == []


def test_workers_of_a_driver_that_imported_numpy_start_with_it(temp_dir):
    """A node init() starts preloads numpy in its zygote if the driver imported it
    (its tasks will most likely use it: no import at each worker's first task);
    a driver without numpy gets workers without it (less memory each)."""
    code = textwrap.dedent("""
        import sys{imp}
        import zfabric as zf
        zf.init(num_cpus=1)
        print("numpy in worker:", zf.get(zf.remote(lambda: "numpy" in sys.modules).remote()))
        zf.shutdown()
        """)
    for imp, expect in (("", "False"), ("\nimport numpy", "True")):
        out = subprocess.run([sys.executable, "-c", code.format(imp=imp)], env=env_with(temp_dir),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == f"numpy in worker: {expect}"
