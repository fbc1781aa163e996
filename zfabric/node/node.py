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
import resource
import select
import shutil
import stat
import subprocess
import sys
import time

import psutil
import zmq

from ..config import LOG_DIR_NAME, SPILL_DIR_NAME, Config
from ..core.fabric import build as build_fabric
from ..exceptions import AuthenticationError
from ..ids import new_node_id
from . import auth, sockets, store
from .dashboard import Dashboard, DashboardError
from .logmon import LogMonitor
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
               embedded: bool, join: list[str] = (),
               insecure: bool = False, dashboard: tuple[str, int | None] | None = ("", None),
               timeout: float | None = None) -> tuple[subprocess.Popen, dict]:
    """Start a node process and wait until it answers (and has joined the
    cluster at `join`, if given). Returns (process, info).

    The node authenticates TCP with the key file `config.cluster_key` (see
    auth.py; for a join, `prepare_join` finds and checks it first), unless
    `insecure`: then its TCP sockets are plain (--insecure-no-auth).
    `dashboard`: (host, port) the node's dashboard listens on (host "":
    `config.dashboard_host`; port None: `config.dashboard_port`, or a free port
    when that is taken); None: no dashboard."""
    private_dir(config.temp_dir)   # refused here, in one line, if another user owns it
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
    if insecure:
        cmd += ["--insecure-no-auth"]
    cmd += _dashboard_flags(config, dashboard)
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


def _dashboard_flags(config: Config, dashboard: tuple[str, int | None] | None) -> list[str]:
    if dashboard is None:
        return ["--no-dashboard"]
    host, port = dashboard
    return ["--dashboard-host", host or config.dashboard_host] + (
        ["--dashboard-port", str(int(port))] if port is not None else [])


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
          join: list[str] = (), insecure: bool = False,
          dashboard: tuple[str, int | None] | None = None) -> int:
    """Be a node until stopped; returns the process's exit code."""
    node = _NodeProcess(config, ready_fd)
    try:
        key, key_path = node_key(config, node.session_dir, host, join, insecure)
        info = node.listen(host, port, key)
        info["dashboard_url"] = node.open_dashboard(dashboard, info["ipc"])
        info.update(cluster_key=key_path, auth="curve" if key is not None else "none")
        info.update(embedded=bool(embedded_driver_pid), num_cpus=num_cpus, resources=resources,
                    store_capacity=object_store_memory or default_store_capacity(config))
        fabric = build_fabric(config, node_id=node.node_id,
                              resources={"CPU": num_cpus, **resources},
                              store_capacity=info["store_capacity"], info=info,
                              seeds=list(join), now=time.monotonic())
        loop = NodeLoop(fabric, ctx=node.ctx, client_router=node.router,
                        peer_router=node.peer_router, object_router=node.object_router,
                        key=key, gate=node.gate, watches=node.watches, node_id=node.node_id, ipc_endpoint=info["ipc"],
                        session_dir=node.session_dir, store_dir=node.store_dir,
                        spill_dir=info["spill_dir"], spill_copy_chunk=config.spill_copy_chunk,
                        tick_interval=config.gossip_interval / 2,
                        logs=LogMonitor(os.path.join(node.session_dir, LOG_DIR_NAME),
                                        config.log_read_bytes, config.log_max_behind),
                        stop_grace=config.stop_grace,
                        zygote_backoff=(config.zygote_restart_backoff,
                                        config.zygote_restart_backoff_max),
                        embedded_driver_pid=embedded_driver_pid,
                        on_ready=lambda: node.answer(info))
        node.write_records(info, embedded=bool(embedded_driver_pid))
        log.info("node %s up at %s (%s), %g CPUs", info["node_id"], info["address"],
                 info["ipc"], num_cpus)
        return node.run(loop, fabric)
    except NodeStartError as e:
        node.answer({"error": str(e)})
        node.clean_exit = True  # nothing ran: leave nothing behind
        return 1
    except BaseException:
        log.exception("node failed")
        node.answer({"error": "the node failed while starting; see "
                              f"{node.session_dir}/node.log"})
        raise
    finally:
        node.clean_up()


class _NodeProcess:
    """What `serve` holds from start to exit: ids, dirs, the context and the
    ROUTERs it binds, the answer to its starter; `clean_up` lets go of all."""

    def __init__(self, config: Config, ready_fd: int | None):
        self.config = config
        self.node_id = new_node_id()
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        self.session_dir = os.path.join(config.temp_dir, f"session_{stamp}_{os.getpid()}")
        self.store_dir = os.path.join(config.store_root, f"zfabric-{self.node_id.hex()}")
        self.spill_dir = (os.path.join(config.spill_dir, f"zfabric-spill-{self.node_id.hex()}")
                          if config.spill_dir else os.path.join(self.session_dir, SPILL_DIR_NAME))
        private_dir(config.temp_dir)
        os.mkdir(self.session_dir, mode=0o700)
        logging.basicConfig(filename=os.path.join(self.session_dir, "node.log"),
                            level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _raise_fd_limit()   # (per worker: a pidfd and two log files, node/logmon.py)
        # The loop allocates many short-lived, acyclic records per task; the default
        # gen-0 threshold (700) ran a collection every few tasks.
        gc.set_threshold(50_000, 20, 20)
        self.answer = _Answer(ready_fd)
        self.ctx = sockets.context()
        self.router = self.peer_router = self.object_router = self.gate = None
        self.watches: list = []
        self.record_path = None
        self.dashboard = None
        self.clean_exit = False

    def listen(self, host: str, port: int, key: auth.ClusterKey | None) -> dict:
        """Make the store dir and bind the ROUTERs; returns the node's record so far."""
        store.create_dir(self.store_dir)
        if key is not None:   # the ZAP handler first: libzmq admits everyone while none is bound
            self.gate = auth.Gate(self.ctx, key)
        ipc = f"ipc://{self.session_dir}/node.sock"
        try:
            self.router = sockets.client_router(self.ctx, ipc)
        except zmq.ZMQError as e:
            raise NodeStartError(f"cannot listen on {ipc}: {e.strerror}") from None
        try:
            self.peer_router, peer_ep = sockets.peer_router(self.ctx, host, port, key)
        except zmq.ZMQError as e:
            raise NodeStartError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        object_port = self.config.object_port
        try:
            self.object_router, object_ep = sockets.object_router(self.ctx, host, object_port, key)
        except zmq.ZMQError as e:
            raise NodeStartError(f"cannot listen on {host}:{object_port} "
                                 f"for objects: {e.strerror}") from None
        tcp_port = int(peer_ep.rsplit(":", 1)[1])
        object_port = int(object_ep.rsplit(":", 1)[1])
        if key is not None:
            self.watches = [auth.HandshakeWatch(self.peer_router, f"tcp port {tcp_port}"),
                            auth.HandshakeWatch(self.object_router, f"tcp port {object_port}")]
        shown = advertised_host(host)
        return {"node_id": self.node_id.hex(), "pid": os.getpid(),
                "address": f"tcp://{shown}:{tcp_port}",
                "object_address": f"tcp://{shown}:{object_port}",
                "host": shown, "port": tcp_port, "ipc": ipc, "session_dir": self.session_dir,
                "store_dir": self.store_dir, "spill_dir": self.spill_dir}

    def open_dashboard(self, where: tuple[str, int | None] | None, ipc: str) -> str | None:
        """Bind the dashboard's port (it serves once `run` starts); its URL, or None."""
        if where is None:
            return None
        try:
            self.dashboard = Dashboard(self.config, host=where[0] or self.config.dashboard_host,
                                       port=where[1], ipc=ipc)
        except DashboardError as e:
            raise NodeStartError(str(e)) from None
        return self.dashboard.url

    def write_records(self, info: dict, embedded: bool) -> None:
        """node.json in the session dir; for a node not embedded in a driver, also
        the record drivers and the CLI find it by."""
        with open(os.path.join(self.session_dir, "node.json"), "w") as f:
            json.dump(info, f)
        if not embedded:
            private_dir(node_records_dir(self.config))
            self.record_path = os.path.join(node_records_dir(self.config),
                                            f"{self.node_id.hex()}.json")
            with open(self.record_path, "w") as f:
                json.dump(info, f)

    def run(self, loop: NodeLoop, fabric) -> int:
        """Run the loop; on the way out say goodbye and stop every worker."""
        if self.dashboard is not None:
            self.dashboard.start()
        try:
            reason = loop.run()
            loop.say_goodbye(fabric.leave())
        finally:
            loop.stop_workers()
            loop.close()
        log.info("node stopping: %s", reason)
        self.clean_exit = True
        if self.answer.fd is not None:  # stopped before it was up (e.g. nobody answered the join)
            self.answer({"error": fabric.join_error
                         or f"the node stopped while starting: {reason}"})
            return 1
        return 0

    def clean_up(self) -> None:
        """Close the ROUTERs and the context; remove the store dir, the node record
        and (after a clean exit) the session dir."""
        if self.dashboard is not None:
            self.dashboard.close()
        for watch in self.watches:
            watch.close()
        for sock in (self.router, self.peer_router, self.object_router, self.gate):
            if sock is not None:
                sock.close(0)
        self.ctx.term()
        store.remove_dir(self.store_dir)
        store.remove_dir(self.spill_dir)   # (the loop's spiller removes it too, when it ran)
        if self.record_path:
            try:
                os.unlink(self.record_path)
            except FileNotFoundError:
                pass
        if self.clean_exit:
            shutil.rmtree(self.session_dir, ignore_errors=True)


def _raise_fd_limit(want: int = 1 << 16) -> None:
    """Open files: up to `want` (at most the hard limit), for max_workers workers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


# -- who may talk to a node ------------------------------------------------------------------

def node_key(config: Config, session_dir: str, host: str, join, insecure: bool
             ) -> tuple[auth.ClusterKey | None, str]:
    """The key a starting node authenticates TCP with, and its file ("" for none).

    A first node uses `config.cluster_key` (made there if missing) or makes a
    new key in its session dir; a joining node needs an existing file (its
    starter found and checked it: `prepare_join`) and keeps a copy in its
    session dir, which its record names (so a later joiner on this machine
    finds a key while this node lives, whatever became of the file given). No key with `insecure`
    (warned loudly), or where libzmq has no CURVE and the node stays on
    loopback; off loopback that is refused."""
    if insecure:
        log.warning("INSECURE: --insecure-no-auth: TCP is neither authenticated nor "
                    "encrypted; anyone who reaches %s can run code as this user", host)
        return None, ""
    if not auth.curve_available():
        if join or not is_loopback(host):
            raise NodeStartError(
                "this libzmq has no CURVE support (zmq.has('curve') is False), which a cluster "
                "across machines needs to authenticate and encrypt its links; install pyzmq's "
                "wheel (it bundles a libzmq with CURVE), or pass --insecure-no-auth on a "
                "network you trust")
        log.warning("libzmq has no CURVE support: this node's loopback TCP port is not "
                    "authenticated")
        return None, ""
    own = os.path.join(session_dir, auth.KEY_FILE_NAME)
    path = config.cluster_key or own
    try:
        if join:   # a copy of our own: the file we were given may go with its node
            key = auth.write(own, auth.read(path))
            log.info("joining with the cluster key from %s (%s)", path, key.fingerprint)
            path = own
        else:
            key, created = auth.load_or_create(path)
            log.info("%s the cluster key %s (%s)", "created" if created else "using",
                     path, key.fingerprint)
    except AuthenticationError as e:
        raise NodeStartError(str(e)) from None
    except OSError as e:
        raise NodeStartError(f"cannot create the cluster key {path}: {e.strerror}") from None
    return key, os.path.abspath(path)


def prepare_join(config: Config, address: str, insecure: bool = False) -> Config:
    """Before a node is started to join the cluster at `address`: the config it
    needs (with the key file found), once a handshake showed that cluster admits
    it. AuthenticationError (no key, or one it refuses) or ConnectionError
    (nothing answers) otherwise: nothing was started, nothing changed."""
    ctx = zmq.Context()
    try:
        if insecure:
            try:
                auth.probe(ctx, address, None, timeout=config.join_timeout)
            except AuthenticationError:
                raise AuthenticationError(
                    f"the cluster at {address} requires a cluster key: leave out "
                    "--insecure-no-auth and pass --cluster-key FILE") from None
            return config
        if config.cluster_key:
            auth.probe(ctx, address, auth.read(config.cluster_key), timeout=config.join_timeout)
            return config
        found = auth.find_key_for(ctx, address, find_local_nodes(config))
        if found:
            return config.replace(cluster_key=found)
        auth.probe(ctx, address, None, timeout=config.join_timeout)
        raise AuthenticationError(
            f"the cluster at {address} runs without authentication: join it with "
            f"`python -m zfabric.node start --address {address} --insecure-no-auth` "
            "(then init(address='auto') attaches to that node)")
    finally:
        ctx.destroy(linger=0)


def private_dir(path: str) -> None:
    """Make `path` a dir only this user may enter (0700), or check that it is
    one: a dir another user made (e.g. in /tmp) is refused, not used."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, 0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NodeStartError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise NodeStartError(f"{path} belongs to another user (uid {st.st_uid}); set "
                             "ZFABRIC_TEMP_DIR to a directory of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def route_address(host: str) -> str:
    """This machine's address on the route to `host` (where a peer there reaches us)."""
    import socket
    try:   # connecting a UDP socket sends nothing; it only picks the route
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 1))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


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
    return route_address("10.255.255.255")


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
    """Is `pid` a live zfabric node process of this user (not a recycled pid)?"""
    try:
        proc = psutil.Process(pid)
        return ("zfabric.node" in " ".join(proc.cmdline()) and proc.uids().real == os.getuid()
                and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, ValueError):
        return False
