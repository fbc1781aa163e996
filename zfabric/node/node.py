"""The node process's composition root.

How callers start one and wait for it (`spawn_node`) is in launch.py: a
driver imports that, never this module.

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
import shutil
import time

import zmq

from ..config import LOG_DIR_NAME, SPILL_DIR_NAME, Config
from ..core.fabric import build as build_fabric
from ..exceptions import AuthenticationError
from ..ids import new_node_id
from . import auth, sockets, store
from .dashboard import Dashboard, DashboardError
from .launch import (NodeStartError, advertised_host, is_loopback, node_records_dir,
                     private_dir)
from .logmon import LogMonitor
from .loop import NodeLoop
from .processes import raise_fd_limit

log = logging.getLogger("zfabric.node")


def default_store_capacity(config: Config) -> int:
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")   # (psutil: 10 ms to import)
    try:
        shm_free = shutil.disk_usage(config.store_root).free
    except OSError:
        shm_free = ram
    return int(min(ram * config.object_store_fraction, shm_free * 0.9))


# -- the node process ------------------------------------------------------------------------

def serve(config: Config, *, num_cpus: float, resources: dict, object_store_memory: int | None,
          host: str, port: int, ready_fd: int | None, embedded_driver_pid: int | None,
          join: list[str] = (), insecure: bool = False,
          dashboard: tuple[str, int | None] | None = None, zygote=None) -> int:
    """Be a node until stopped; returns the process's exit code. `zygote`: its
    first worker fork server, already started (processes.start_zygote)."""
    node = _NodeProcess(config, ready_fd)
    node.zygote = zygote
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
                        recycle=(min(config.store_recycle_bytes, info["store_capacity"] // 4),
                                 config.store_recycle_seconds),
                        tick_interval=config.gossip_interval / 2,
                        idle_tick=(max(config.gossip_interval,
                                       min(config.idle_gossip_interval,
                                           config.failure_timeout / 6)), config.idle_after),
                        logs=LogMonitor(os.path.join(node.session_dir, LOG_DIR_NAME),
                                        config.log_read_bytes, config.log_max_behind),
                        stop_grace=config.stop_grace,
                        zygote_backoff=(config.zygote_restart_backoff,
                                        config.zygote_restart_backoff_max),
                        embedded_driver_pid=embedded_driver_pid,
                        on_ready=lambda: node.answer(info),
                        zygote=node.zygote, zygote_preload=config.zygote_preload)
        node.zygote = None   # (the loop's now)
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
        raise_fd_limit()   # (per worker: a pidfd and two log files, node/logmon.py)
        # The loop allocates many short-lived, acyclic records per task; the default
        # gen-0 threshold (700) ran a collection every few tasks.
        gc.set_threshold(50_000, 20, 20)
        self.answer = _Answer(ready_fd)
        self.ctx = sockets.context()
        self.router = self.peer_router = self.object_router = self.gate = None
        self.watches: list = []
        self.record_path = None
        self.dashboard = None
        self.zygote = None   # started early, until the loop takes it (processes.start_zygote)
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
        if self.zygote is not None:
            self.zygote.close()
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
