"""The node process's composition root, and how callers start one.

`spawn_node(...)` (used by `zf.init()` for an embedded node and by
`zfabric start`) runs `python -m zfabric.node _serve ...` and waits until the
node has bound its sockets and its pre-started workers are up; it answers on
a pipe with a JSON record
(address, ipc endpoint, session and store dirs) or with the one-line reason
it could not start.

`serve(...)` is the node itself: make the session and store dirs, bind the
scheduler ROUTER on `ipc://{session}/node.sock` and `tcp://host:port` and the
object ROUTER on a second port, build the state machines (Scheduler,
Membership, Gcs, Transfers, composed by Fabric), join the cluster through
the given addresses, run the loop, and on the way out tell the peers we
leave, stop every worker by PID and remove the store dir and session dir.
"""
from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import time

import psutil
import zmq

from ..config import Config
from ..core.fabric import build as build_fabric
from ..ids import new_node_id
from . import sockets, store
from .loop import NodeLoop

log = logging.getLogger("zfabric.node")


class NodeStartError(RuntimeError):
    """A node could not start; the message is one line for the user."""


def default_store_capacity(config: Config) -> int:
    ram = psutil.virtual_memory().total
    try:
        shm_free = shutil.disk_usage(config.store_root).free
    except OSError:
        shm_free = ram
    return int(min(ram * config.object_store_fraction, shm_free * 0.9))


def node_records_dir(config: Config) -> str:
    return os.path.join(config.temp_dir, "nodes")


# -- starting a node from another process ----------------------------------------------------

def spawn_node(config: Config, *, num_cpus: float, resources: dict,
               object_store_memory: int | None, host: str, port: int,
               embedded: bool, log_to_driver: bool = True, join: list[str] = (),
               timeout: float | None = None) -> tuple[subprocess.Popen, dict]:
    """Start a node process and wait until it answers (and has joined the
    cluster at `join`, if given). Returns (process, info)."""
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "zfabric.node", "_serve", "--ready-fd", str(w),
           "--config", config.to_json(), "--num-cpus", repr(float(num_cpus)),
           "--resources", json.dumps(resources), "--host", host, "--port", str(port)]
    for address in join:
        cmd += ["--join", address]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(int(object_store_memory))]
    if embedded:
        cmd += ["--embedded-driver-pid", str(os.getpid())]
    if not (embedded and log_to_driver):
        cmd += ["--worker-logs"]
    devnull = subprocess.DEVNULL
    env = dict(os.environ)
    if embedded:  # workers import what the driver can (functions pickled by reference)
        paths = [os.path.abspath(x or os.curdir) for x in sys.path if os.path.isdir(x or os.curdir)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        proc = subprocess.Popen(
            cmd, pass_fds=(w,), stdin=devnull, env=env,
            stdout=None if embedded else devnull, stderr=None if embedded else devnull,
            start_new_session=not embedded)
    finally:
        os.close(w)
    try:
        line = _read_line(r, timeout or (config.node_start_timeout
                                         + (config.join_timeout if join else 0)), proc)
    finally:
        os.close(r)
    info = json.loads(line) if line else {"error": "the node process exited while starting"}
    if "error" in info:
        try:  # it removes its store and session dirs on the way out
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise NodeStartError(info["error"])
    return proc, info


def _read_line(fd: int, timeout: float, proc: subprocess.Popen) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            proc.wait()
            raise NodeStartError(f"the node did not start within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode().strip()


# -- the node process ------------------------------------------------------------------------

def serve(config: Config, *, num_cpus: float, resources: dict, object_store_memory: int | None,
          host: str, port: int, ready_fd: int | None, embedded_driver_pid: int | None,
          worker_logs: bool = False, join: list[str] = ()) -> int:
    node_id = new_node_id()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    session_dir = os.path.join(config.temp_dir, f"session_{stamp}_{os.getpid()}")
    store_dir = os.path.join(config.store_root, f"zfabric-{node_id.hex()}")
    os.makedirs(session_dir, mode=0o700)
    logging.basicConfig(filename=os.path.join(session_dir, "node.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The loop allocates many short-lived, acyclic records per task; the default
    # gen-0 threshold (700) ran a collection every few tasks.
    gc.set_threshold(50_000, 20, 20)
    answer = _Answer(ready_fd)
    ctx = sockets.context()
    router = object_router = loop = None
    record_path = None
    clean_exit = False
    try:
        store.create_dir(store_dir)
        ipc = f"ipc://{session_dir}/node.sock"
        try:
            router, bound = sockets.node_router(ctx, [ipc, f"tcp://{host}:{port}"])
        except zmq.ZMQError as e:
            raise NodeStartError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        tcp = bound[1]
        tcp_port = int(tcp.rsplit(":", 1)[1])
        try:
            object_router, object_ep = sockets.object_router(ctx, host, config.object_port)
        except zmq.ZMQError as e:
            raise NodeStartError(f"cannot listen on {host}:{config.object_port} "
                                 f"for objects: {e.strerror}") from None
        object_port = int(object_ep.rsplit(":", 1)[1])
        capacity = object_store_memory or default_store_capacity(config)
        shown = advertised_host(host)
        info = {"node_id": node_id.hex(), "pid": os.getpid(),
                "address": f"tcp://{shown}:{tcp_port}",
                "object_address": f"tcp://{shown}:{object_port}",
                "host": shown, "port": tcp_port, "ipc": ipc, "session_dir": session_dir,
                "store_dir": store_dir, "embedded": bool(embedded_driver_pid),
                "num_cpus": num_cpus, "resources": resources, "store_capacity": capacity}
        fabric = build_fabric(config, node_id=node_id, resources={"CPU": num_cpus, **resources},
                              store_capacity=capacity, info=info, seeds=list(join),
                              now=time.monotonic())
        loop = NodeLoop(fabric, router, ctx=ctx, object_router=object_router, node_id=node_id,
                        ipc_endpoint=ipc, session_dir=session_dir,
                        store_dir=store_dir, tick_interval=config.gossip_interval / 2,
                        worker_output=session_dir if worker_logs else None,
                        stop_grace=config.stop_grace, embedded_driver_pid=embedded_driver_pid,
                        on_ready=lambda: answer(info))
        with open(os.path.join(session_dir, "node.json"), "w") as f:
            json.dump(info, f)
        if not embedded_driver_pid:
            os.makedirs(node_records_dir(config), mode=0o700, exist_ok=True)
            record_path = os.path.join(node_records_dir(config), f"{node_id.hex()}.json")
            with open(record_path, "w") as f:
                json.dump(info, f)
        log.info("node %s up at %s (%s), %g CPUs", node_id.hex(), info["address"], ipc, num_cpus)
        try:
            reason = loop.run()
            loop.say_goodbye(fabric.leave())
        finally:
            loop.stop_workers()
            loop.close()
        log.info("node stopping: %s", reason)
        clean_exit = True
        if answer.fd is not None:  # stopped before it was up (e.g. nobody answered the join)
            answer({"error": fabric.join_error or f"the node stopped while starting: {reason}"})
            return 1
        return 0
    except NodeStartError as e:
        answer({"error": str(e)})
        clean_exit = True  # nothing ran: leave nothing behind
        return 1
    except BaseException:
        log.exception("node failed")
        answer({"error": "the node failed while starting; see "
                                    f"{session_dir}/node.log"})
        raise
    finally:
        if router is not None:
            router.close(0)
        if object_router is not None:
            object_router.close(0)
        ctx.term()
        store.remove_dir(store_dir)
        if record_path:
            try:
                os.unlink(record_path)
            except FileNotFoundError:
                pass
        if clean_exit:
            shutil.rmtree(session_dir, ignore_errors=True)


def check_address(address: str) -> str:
    """A node address as `--address`, ZFABRIC_ADDRESS and init() take it:
    tcp://HOST:PORT (ValueError otherwise)."""
    host, sep, port = str(address).removeprefix("tcp://").rpartition(":")
    if not str(address).startswith("tcp://") or not sep or not host or not port.isdigit() \
            or not 0 < int(port) <= 65535:
        raise ValueError(f"{address!r} is not a node address (expected tcp://HOST:PORT)")
    return address


def advertised_host(host: str) -> str:
    """The address peers reach a node bound to `host` at: for a wildcard
    (0.0.0.0, ::), this machine's address on its default route."""
    if host not in ("0.0.0.0", "::", "*", ""):
        return host
    import socket
    try:   # connecting a UDP socket sends nothing; it only picks the route
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


class _Answer:
    """Tell the process that started us that we are up, or why not; once."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def __call__(self, data: dict) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.write(fd, (json.dumps(data) + "\n").encode())
        except OSError:  # the starter is gone
            pass
        os.close(fd)


def find_local_nodes(config: Config) -> list[dict]:
    """Records of the live nodes `zfabric start` started on this machine."""
    out = []
    folder = node_records_dir(config)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if pid_is_node(info.get("pid", 0)):
            out.append(info)
        else:  # a node killed without cleaning up: forget its record
            try:
                os.unlink(path)
            except OSError:
                pass
    return out


def pid_is_node(pid: int) -> bool:
    """Is `pid` a live zfabric node process (not a recycled pid)?"""
    try:
        proc = psutil.Process(pid)
        return "zfabric.node" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False
