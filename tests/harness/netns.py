"""Three "hosts" in Linux network namespaces, for tests/cluster/test_multihost.py
(and bench/soak.py's partition cycles).

The topology (namespaces A, B, C and a bridge namespace joined by veths),
one zfabric node per host started with `python -m zfabric.node start`
(`three_hosts()`, torn down whatever happens), a JSON driver inside a
namespace, and the fixtures: `cluster` (module scope: `three_hosts()`) and
`driver` (a driver in A, waiting until A sees all three nodes alive). The
test module imports both fixtures. See the test module for the topology and
the teardown.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAILURE_TIMEOUT = 1.5
CMD_TIMEOUT = 20.0          # any single `ip` / CLI command
NODE_START_TIMEOUT = 10.0   # ZFABRIC_NODE_START_TIMEOUT / ZFABRIC_JOIN_TIMEOUT: a node that
JOIN_TIMEOUT = 10.0         # cannot start or join says so before START_TIMEOUT expires
START_TIMEOUT = 30.0        # `zfabric start` (node start + join)
STOP_GRACE = 10.0           # SIGTERM -> SIGKILL
BIG_ELEMENTS = 20 * 2**20 // 8   # float64: 20 MiB


# -- small helpers ------------------------------------------------------------------------------

def run(cmd: list[str], *, timeout: float = CMD_TIMEOUT, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with a timeout; on failure raise with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, cwd=REPO)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)!r} exited {proc.returncode}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def wait_until(what: str, probe, timeout: float, interval: float = 0.1):
    """Poll `probe()` until it returns something truthy; return (seconds, value).
    Fails with the last value seen when `timeout` elapses."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        value = probe()
        if value:
            return time.monotonic() - start, value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {value!r})")
        time.sleep(interval)


def node_env(temp_dir: str) -> dict:
    env = dict(os.environ)
    env.pop("ZFABRIC_ADDRESS", None)
    env["ZFABRIC_TEMP_DIR"] = temp_dir
    env["ZFABRIC_FAILURE_TIMEOUT"] = str(FAILURE_TIMEOUT)
    env["ZFABRIC_NODE_START_TIMEOUT"] = str(NODE_START_TIMEOUT)
    env["ZFABRIC_JOIN_TIMEOUT"] = str(JOIN_TIMEOUT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def netns_exec(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


# -- the topology -------------------------------------------------------------------------------

@dataclass
class Host:
    """One namespace with one veth end, and the zfabric node started in it."""
    name: str           # "a", "b", "c"
    ns: str             # namespace name
    ip: str
    veth: str           # our end, inside `ns`
    port: str           # the bridge's end, inside the bridge namespace
    temp_dir: str       # ZFABRIC_TEMP_DIR of this host
    address: str = ""   # tcp://ip:port of its node
    node_id: str = ""
    pid: int = 0
    record: dict = field(default_factory=dict)

    @property
    def env(self) -> dict:
        return node_env(self.temp_dir)


@dataclass
class Topology:
    suffix: str
    subnet: int                      # the N of 10.231.N.0/24
    bridge_ns: str
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)   # created so far
    key: str = ""   # the cluster key file the first node wrote (copied to every joining host)
    drivers: list[subprocess.Popen] = field(default_factory=list)

    def cut(self, host: Host) -> None:
        """Partition `host`: its port on the bridge goes down (packets dropped at the switch)."""
        run(["ip", "-n", self.bridge_ns, "link", "set", host.port, "down"])

    def heal(self, host: Host) -> None:
        run(["ip", "-n", self.bridge_ns, "link", "set", host.port, "up"])


def check_privileges() -> None:
    if os.geteuid() != 0:
        pytest.skip("multi-host test needs root (network namespaces, veth, bridge)")
    if shutil.which("ip") is None:
        pytest.skip("multi-host test needs iproute2's `ip`")


def build_topology(topo: Topology) -> None:
    """Namespaces A, B, C and a bridge namespace; a veth from each host to the bridge."""
    try:
        for ns in [topo.bridge_ns] + [h.ns for h in topo.hosts.values()]:
            run(["ip", "netns", "add", ns])
            topo.namespaces.append(ns)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot create a network namespace here: {e}")
    try:
        br = topo.bridge_ns
        run(["ip", "-n", br, "link", "set", "lo", "up"])
        run(["ip", "-n", br, "link", "add", topo.bridge, "type", "bridge"])
        run(["ip", "-n", br, "link", "set", topo.bridge, "up"])
        for h in topo.hosts.values():
            # created in the bridge namespace, its peer straight in the host's: never in ours
            run(["ip", "-n", br, "link", "add", h.port, "type", "veth",
                 "peer", "name", h.veth, "netns", h.ns])
            run(["ip", "-n", br, "link", "set", h.port, "master", topo.bridge])
            run(["ip", "-n", br, "link", "set", h.port, "up"])
            run(["ip", "-n", h.ns, "link", "set", "lo", "up"])
            run(["ip", "-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", h.veth])
            run(["ip", "-n", h.ns, "link", "set", h.veth, "up"])
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot build the veth/bridge topology here: {e}")


REACH = textwrap.dedent("""
    import socket, sys
    for ip in sys.argv[1:]:
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect((ip, 9))          # the discard port: nobody listens
        except ConnectionRefusedError:
            pass                        # a RST: the host answered
        except OSError as e:
            sys.exit(f"{ip}: {e}")
        finally:
            s.close()
""")


def wait_reachable(src: Host, dsts: list[Host], timeout: float = 10.0) -> None:
    """Poll until `src` gets an answer (a TCP RST) from every host in `dsts`."""
    def probe():
        p = run(netns_exec(src.ns, sys.executable, "-c", REACH, *[d.ip for d in dsts]),
                check=False)
        return p.returncode == 0 or None
    wait_until(f"{src.ns} reaches {[d.ns for d in dsts]}", probe, timeout, interval=0.2)


def rx_bytes(host: Host) -> int:
    """Bytes received so far on `host`'s veth (its only way to the other hosts)."""
    out = run(["ip", "-n", host.ns, "-j", "-s", "link", "show", "dev", host.veth]).stdout
    return json.loads(out)[0]["stats64"]["rx"]["bytes"]


def status(host: Host) -> dict[str, tuple[str, str]]:
    """`zfabric status` run in `host`'s namespace: {node id prefix: (address, state)}."""
    p = run(netns_exec(host.ns, sys.executable, "-m", "zfabric.node", "status"), env=host.env)
    rows = {}
    for line in p.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{12}", parts[0]):
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def states(host: Host, hosts: list[Host]) -> dict[str, str]:
    """How `host`'s node sees each of `hosts`: {name: alive/suspect/dead/...}."""
    rows = status(host)
    return {h.name: rows.get(h.node_id[:12], ("", "missing"))[1] for h in hosts}


# -- nodes --------------------------------------------------------------------------------------

def read_records(temp_dir: str) -> list[dict]:
    folder = os.path.join(temp_dir, "nodes")
    out = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return out
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                pass
    return out


def start_node(topo: Topology, host: Host, *, join: str | None = None,
               resources: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "zfabric.node", "start"]
    cmd += ["--address", join, "--cluster-key", copy_key(topo, host)] if join else ["--head"]
    cmd += ["--host", host.ip, "--port", "0", "--num-cpus", "1",
            "--object-store-memory", str(256 << 20)]
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    try:
        proc = run(netns_exec(host.ns, *cmd), timeout=START_TIMEOUT, env=host.env, check=False)
    finally:  # whatever happened, remember the node if it left a record
        records = read_records(host.temp_dir)
        if records:
            host.record = records[0]
            host.pid, host.node_id = records[0]["pid"], records[0]["node_id"]
    assert proc.returncode == 0, (
        f"`zfabric start` in {host.ns} exited {proc.returncode}:\n"
        f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    m = re.fullmatch(rf"address: tcp://{re.escape(host.ip)}:(\d+)", first)
    assert m, f"node in {host.ns} printed {first!r} first, expected address: tcp://{host.ip}:PORT"
    host.address = f"tcp://{host.ip}:{m.group(1)}"
    if not join:
        topo.key = host.record["cluster_key"]
    assert len(records) == 1, f"{host.temp_dir}/nodes holds {len(records)} records: {records}"
    assert host.record["address"] == host.address, host.record


def copy_key(topo: Topology, host: Host) -> str:
    """The cluster key, copied to `host` as a user copies it to another machine."""
    path = os.path.join(host.temp_dir, "cluster.key")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(topo.key, "rb") as src, os.fdopen(fd, "wb") as dst:
            dst.write(src.read())
    return path


def stop_nodes(hosts: list[Host]) -> list[str]:
    """Stop the nodes by the PIDs in their records: SIGTERM all of them (in parallel),
    then SIGKILL whatever is left of each node and its children after STOP_GRACE;
    remove session/store dirs left behind. Returns problems worth reporting."""
    problems = []
    families: dict[int, tuple[Host, list[psutil.Process]]] = {}
    for host in hosts:
        pids = {r["pid"] for r in read_records(host.temp_dir)}
        pids |= {host.pid} if host.pid else set()
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if "zfabric.node" not in " ".join(proc.cmdline()):
                    continue        # not ours any more (recycled pid)
                families[pid] = (host, [proc] + proc.children(recursive=True))
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                continue
    everyone = [p for _, family in families.values() for p in family]
    _, alive = psutil.wait_procs(everyone, timeout=STOP_GRACE)
    if alive:
        for pid, (host, family) in families.items():
            left = [p.pid for p in family if p in alive]
            if left:
                problems.append(f"node {pid} in {host.ns}: {left} still running "
                                f"{STOP_GRACE:g} s after SIGTERM; killed")
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
    for host in hosts:
        for record in read_records(host.temp_dir) + ([host.record] if host.record else []):
            for key in ("session_dir", "store_dir"):
                path = record.get(key)
                if path and os.path.exists(path):
                    problems.append(f"node in {host.ns} left {key} {path} behind")
                    shutil.rmtree(path, ignore_errors=True)
    return problems


@contextlib.contextmanager
def logs_on_failure(topo: Topology):
    """Print every node.log (shown with the failure) if the block raises."""
    try:
        yield
    except BaseException:
        print(node_logs(topo))
        raise


def node_logs(topo: Topology) -> str:
    """The node.log and workers' stderr of every session still on disk (for failure messages)."""
    out = []
    for h in topo.hosts.values():
        for root, _, files in os.walk(h.temp_dir):
            for name in files:
                if name.endswith((".log", ".err")):
                    path = os.path.join(root, name)
                    with open(path, errors="replace") as f:
                        tail = f.read()[-4000:]
                    if tail.strip():
                        out.append(f"--- {h.ns}: {path}\n{tail}")
    return "\n".join(out)


# -- a driver inside a namespace ----------------------------------------------------------------

DRIVER = textwrap.dedent("""
    import json, sys, time, traceback
    import numpy as np
    import zfabric as zf

    MARK = "@@zf@@ "
    info = zf.init(address="auto")

    @zf.remote(num_cpus=1)
    def where(duration):
        time.sleep(duration)
        return zf.get_runtime_context().get_node_id()

    @zf.remote(num_cpus=1, resources={"c_only": 1})
    def make_big(n, seed):
        arr = np.random.default_rng(seed).random(n)
        return {"node": zf.get_runtime_context().get_node_id(), "sum": float(arr.sum()),
                "array": arr}

    def op_info():
        return {k: info[k] for k in ("node_id", "address", "node_ip_address")}

    def op_nodes():
        return [{k: n[k] for k in ("NodeID", "Alive", "Address", "NodeManagerAddress",
                                    "Resources")} for n in zf.nodes()]

    def op_tasks(n, duration, timeout):
        return zf.get([where.remote(duration) for _ in range(n)], timeout=timeout)

    @zf.remote(num_cpus=1)
    def square(i, duration):
        time.sleep(duration)
        return i * i, zf.get_runtime_context().get_node_id()

    def op_squares(n, duration):
        # a get without a timeout: it must come back by itself
        out = zf.get([square.remote(i, duration) for i in range(n)])
        return {"values": [v for v, _ in out], "nodes": [node for _, node in out]}

    KEPT = []   # what op_big got, until op_release: its store file stays put meanwhile

    def op_big(n, seed, timeout):
        t0 = time.monotonic()
        ref = make_big.remote(n, seed)
        out = zf.get(ref, timeout=timeout)
        took = time.monotonic() - t0
        KEPT.append((ref, out))
        arr = out["array"]
        same = bool(np.array_equal(arr, np.random.default_rng(seed).random(n)))
        return {"node": out["node"], "sum_there": out["sum"], "sum_here": float(arr.sum()),
                "nbytes": int(arr.nbytes), "identical": same,
                "writeable": bool(arr.flags.writeable), "seconds": took}

    def op_release():
        KEPT.clear()

    OPS = {"info": op_info, "nodes": op_nodes, "tasks": op_tasks, "big": op_big,
           "release": op_release, "squares": op_squares}
    print(MARK + json.dumps({"ok": "ready"}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = {"ok": OPS[req.pop("op")](**req)}
        except BaseException as e:
            reply = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(MARK + json.dumps(reply), flush=True)
    zf.shutdown()
""")


class Driver:
    """`python -c DRIVER` inside a namespace: one JSON request per line, one reply per line."""

    MARK = "@@zf@@ "

    def __init__(self, topo: Topology, host: Host):
        self.host = host
        self.stderr_path = os.path.join(host.temp_dir, f"driver-{len(topo.drivers)}.err")
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                netns_exec(host.ns, sys.executable, "-u", "-c", DRIVER),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                env=host.env, cwd=REPO)
        topo.drivers.append(self.proc)   # the finalizer stops it by PID whatever happens
        self._buf = b""
        assert self._reply(timeout=30) == "ready"

    def _stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()[-4000:]

    def _reply(self, timeout: float):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if not text.startswith(self.MARK):
                    continue          # anything a task printed
                reply = json.loads(text[len(self.MARK):])
                if "error" in reply:
                    raise AssertionError(f"driver in {self.host.ns}: {reply['error']}\n"
                                         f"{reply.get('traceback', '')}")
                return reply["ok"]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"driver in {self.host.ns} did not answer within "
                                     f"{timeout:g} s; stderr:\n{self._stderr()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"driver in {self.host.ns} exited "
                                         f"({self.proc.wait(5)}); stderr:\n{self._stderr()}")
                self._buf += chunk

    def call(self, op: str, *, wait: float = 30.0, **kwargs):
        """Ask the driver to run `op(**kwargs)`; wait at most `wait` s for the answer."""
        self.ask(op, **kwargs)
        return self._reply(wait)

    def ask(self, op: str, **kwargs) -> None:
        """Ask the driver to run `op(**kwargs)` without waiting (see `answer`)."""
        self.proc.stdin.write((json.dumps({"op": op, **kwargs}) + "\n").encode())
        self.proc.stdin.flush()

    def answer(self, wait: float):
        """The answer to the last `ask`; fails if none comes within `wait` s."""
        return self._reply(wait)

    def nodes(self) -> dict[str, dict]:
        return {n["NodeID"]: n for n in self.call("nodes", wait=10)}

    def alive(self) -> set[str]:
        return {nid for nid, n in self.nodes().items() if n["Alive"]}

    def tasks(self, n: int, duration: float = 0.2, timeout: float = 30.0) -> list[str]:
        return self.call("tasks", wait=timeout + 5, n=n, duration=duration, timeout=timeout)

    def close(self) -> None:
        """Let it shut down cleanly (stdin closed); kill it by PID if it does not."""
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


# -- fixtures -----------------------------------------------------------------------------------

def teardown(topo: Topology) -> list[str]:
    """Undo everything, whatever state it is in; return what was left behind."""
    problems = []
    for proc in topo.drivers:
        try:
            stop_process(proc)
        except Exception as e:  # noqa: BLE001 - keep tearing down
            problems.append(f"driver {proc.pid}: {e}")
    problems += stop_nodes(list(topo.hosts.values()))
    for ns in topo.namespaces:   # anything still inside our namespaces is ours: kill by PID
        p = run(["ip", "netns", "pids", ns], check=False)
        stray = [int(x) for x in p.stdout.split()]
        if stray:
            problems.append(f"processes left in {ns}: {stray}")
            for pid in stray:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            procs = []
            for pid in stray:
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
            _, alive = psutil.wait_procs(procs, timeout=10)
            if alive:
                problems.append(f"processes in {ns} survived SIGKILL: {alive}")
    for ns in topo.namespaces:
        p = run(["ip", "netns", "del", ns], check=False)
        if p.returncode != 0:
            problems.append(f"ip netns del {ns}: {p.stderr.strip()}")
    for h in topo.hosts.values():
        shutil.rmtree(h.temp_dir, ignore_errors=True)
    listed = run(["ip", "netns", "list"], check=False).stdout
    problems += [f"namespace {ns} still exists" for ns in topo.namespaces if ns in listed]
    problems += [f"{h.temp_dir} still exists" for h in topo.hosts.values()
                 if os.path.exists(h.temp_dir)]
    problems += [f"/dev/shm/zfabric-{h.node_id} still exists" for h in topo.hosts.values()
                 if h.node_id and os.path.exists(f"/dev/shm/zfabric-{h.node_id}")]
    return problems


@contextlib.contextmanager
def three_hosts():
    """The three-namespace topology with one node per host (C's with the resource
    `c_only`), torn down on exit whatever happens; AssertionError if the teardown
    left anything behind. Needs root and `ip` (see `check_privileges`)."""
    suffix = secrets.token_hex(3)
    subnet = secrets.randbelow(254) + 1
    topo = Topology(suffix=suffix, subnet=subnet, bridge_ns=f"zf-br-{suffix}",
                    bridge=f"br-{suffix}")
    try:
        for i, name in enumerate("abc", start=1):
            topo.hosts[name] = Host(
                name=name, ns=f"zf-{name}-{suffix}", ip=f"10.231.{subnet}.{i}",
                veth=f"v{name}-{suffix}", port=f"p{name}-{suffix}",
                temp_dir=tempfile.mkdtemp(prefix=f"zfmh-{name}{suffix}-", dir="/tmp"))
        build_topology(topo)
        a, b, c = (topo.hosts[n] for n in "abc")
        wait_reachable(a, [b, c])
        start_node(topo, a)
        start_node(topo, b, join=a.address)
        start_node(topo, c, join=a.address, resources={"c_only": 1})
        yield topo
    except BaseException:
        print(node_logs(topo))      # shown by pytest with the failure
        raise
    finally:
        problems = teardown(topo)
        if problems:                # also when setup failed (the assert below is skipped)
            print("multi-host teardown left things behind:", *problems, sep="\n  ")
    assert not problems, "multi-host teardown left things behind:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def cluster():
    """The three-namespace topology with one node per host; torn down at module end."""
    check_privileges()
    with three_hosts() as topo:
        yield topo


@pytest.fixture
def driver(cluster):
    """A driver inside namespace A, attached to A's node (address="auto")."""
    d = Driver(cluster, cluster.hosts["a"])
    # each test starts from a healthy cluster, whatever the previous one did
    want = {h.node_id for h in cluster.hosts.values()}
    try:
        with logs_on_failure(cluster):
            wait_until("all three nodes alive in A's view", lambda: want <= d.alive(), 20)
        yield d
    finally:
        d.close()
