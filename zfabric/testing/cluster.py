"""LocalCluster: several real zfabric nodes on one machine, for tests and benchmarks.

    with LocalCluster(nodes=3, num_cpus=1) as cluster:   # waits until all are up
        zf.init(address=cluster.address)                 # attach to the first node
        h = cluster.add_node(num_cpus=2, resources={"gpu": 1})
        cluster.kill_node(h)       # SIGKILL the node and its workers: no goodbye
        cluster.zygote_pid(h), cluster.child_pids(h)   # what runs under a node, to kill in tests
        cluster.own_status(h)["stats"]                 # a node's own status row, its counters
        cluster.remove_node(h)     # graceful stop

Each node is its own process (started like `zfabric start`), with its own
ports, session dir and store dir, so objects really move between stores.
The nodes share a cluster key the cluster writes to a temp dir of its own
(`key_path`; Config.cluster_key if given), or none with `insecure=True`.
Every process the cluster starts is stopped by PID when it closes, also when
the test fails; a killed node's files are removed for it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import psutil

from ..config import Config
from ..node import auth, forking
from ..node import launch
from ..node import store
from ..node.client import Client


@dataclass
class NodeHandle:
    """A node the cluster started."""
    node_id: str        # hex, as zf.nodes() shows it
    address: str        # tcp://host:port: its scheduler socket, what --address takes
    pid: int
    info: dict = field(repr=False)
    proc: object = field(repr=False)


class LocalCluster:
    def __init__(self, nodes: int = 1, *, num_cpus: float = 1, resources: dict | None = None,
                 object_store_memory: int | None = None, config: Config | None = None,
                 host: str = "127.0.0.1", up_timeout: float = 30.0, insecure: bool = False):
        self.config = config or Config.from_env()
        self.host = host
        self.insecure = insecure
        self._key_dir = None
        if not insecure and not self.config.cluster_key:   # one key for all its nodes
            self._key_dir = tempfile.mkdtemp(prefix="zfabric-key-")
            path = os.path.join(self._key_dir, auth.KEY_FILE_NAME)
            auth.create(path)
            self.config = self.config.replace(cluster_key=path)
        self.up_timeout = up_timeout
        self._handles: list[NodeHandle] = []
        try:
            for _ in range(nodes):
                self.add_node(num_cpus=num_cpus, resources=resources,
                              object_store_memory=object_store_memory)
        except BaseException:
            self.shutdown()
            raise

    # -- the nodes -------------------------------------------------------------------

    @property
    def nodes(self) -> list[NodeHandle]:
        """Handles of the nodes still started (not killed or removed)."""
        return list(self._handles)

    @property
    def key_path(self) -> str | None:
        """The cluster key file its nodes share (None with insecure=True)."""
        return None if self.insecure else self.config.cluster_key

    @property
    def address(self) -> str:
        """The address of the first node still started (what zf.init takes)."""
        if not self._handles:
            raise RuntimeError("the cluster has no node left")
        return self._handles[0].address

    def add_node(self, *, num_cpus: float = 1, resources: dict | None = None,
                 object_store_memory: int | None = None, wait: bool = True,
                 join: str | None = None) -> NodeHandle:
        """Start a node that joins the cluster (the first one starts it), through
        the first node's address or `join` (any address of a node of it)."""
        join = [join] if join else [self._handles[0].address] if self._handles else []
        proc, info = launch.spawn_node(
            self.config, num_cpus=num_cpus, resources=dict(resources or {}),
            object_store_memory=object_store_memory, host=self.host, port=0,
            embedded=False, join=join, insecure=self.insecure)
        handle = NodeHandle(info["node_id"], info["address"], info["pid"], info, proc)
        self._handles.append(handle)
        if wait:
            self.wait_for_nodes()
        return handle

    def kill_node(self, handle: NodeHandle) -> None:
        """SIGKILL a node and every process under it, as if its machine died."""
        self._forget(handle)
        try:
            children = psutil.Process(handle.pid).children(recursive=True)
        except psutil.Error:
            children = []
        for pid in [handle.pid] + [c.pid for c in children]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        handle.proc.wait()
        for child in children:
            _reap(child)
        self._remove_files(handle)

    def remove_node(self, handle: NodeHandle, timeout: float = 10.0) -> None:
        """Stop a node gracefully: it tells its peers it leaves and cleans up."""
        try:
            handle.proc.send_signal(signal.SIGTERM)
            handle.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_node(handle)
            return
        self._forget(handle)
        self._remove_files(handle)

    def _forget(self, handle: NodeHandle) -> None:
        if handle not in self._handles:
            raise ValueError(f"node {handle.node_id[:12]} is not started by this cluster")
        self._handles.remove(handle)

    def _remove_files(self, handle: NodeHandle) -> None:
        store.remove_dir(handle.info["store_dir"])
        shutil.rmtree(handle.info["session_dir"], ignore_errors=True)
        try:
            os.unlink(os.path.join(launch.node_records_dir(self.config),
                                   f"{handle.node_id}.json"))
        except FileNotFoundError:
            pass

    # -- what runs under a node -------------------------------------------------------

    def child_pids(self, handle: NodeHandle) -> list[int]:
        """PIDs of the live processes under a node (its zygote, the workers the
        zygote forked, and whatever their tasks started), not the node itself;
        [] if the node is gone."""
        try:
            children = psutil.Process(handle.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [c.pid for c in children if _running(c)]

    def zygote_pids(self, handle: NodeHandle) -> list[int]:
        """PIDs of a node's worker fork servers (its children named
        `zfabric-zygote`): none before the first spawn or right after one
        died, and two once one died (the one that forks and a spare)."""
        try:
            children = psutil.Process(handle.pid).children()
        except psutil.Error:
            return []
        pids = []
        for child in children:
            try:
                if child.name() == forking.ZYGOTE_NAME and _running(child):
                    pids.append(child.pid)
            except psutil.Error:
                pass
        return pids

    def zygote_pid(self, handle: NodeHandle) -> int | None:
        """PID of the fork server that forked a node's workers (of its
        `zygote_pids`, the one with children), or None if none has any."""
        for pid in self.zygote_pids(handle):
            try:
                if any(_running(c) for c in psutil.Process(pid).children()):
                    return pid
            except psutil.Error:
                pass
        return None

    # -- waiting ---------------------------------------------------------------------

    def wait_for_nodes(self, timeout: float | None = None) -> None:
        """Wait until every started node sees every other one alive."""
        want = {h.node_id for h in self._handles}
        deadline = time.monotonic() + (timeout or self.up_timeout)
        for handle in list(self._handles):
            while True:
                alive = {n["NodeID"] for n in self.query(handle, "nodes") if n["Alive"]}
                if want <= alive:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {handle.node_id[:12]} sees {len(want & alive)} "
                                       f"of the {len(want)} nodes after {self.up_timeout:g} s")
                time.sleep(0.05)

    def query(self, handle: NodeHandle, what: str):
        """Ask one node a question (`nodes`, `resources`, `status`, `timeline`)."""
        client = Client(handle.info["ipc"], "tool", connect_timeout=10.0)
        try:
            return client.request(what)
        finally:
            client.close()

    def own_status(self, handle: NodeHandle) -> dict:
        """That node's own row of its `status` (live figures, and `stats`: its counters)."""
        status = self.query(handle, "status")
        return next(n for n in status["nodes"] if n["NodeID"] == status["self"])

    # -- closing ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every node still started (gracefully, then by force)."""
        handles, self._handles = self._handles, []
        for h in handles:
            try:
                h.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for h in handles:
            try:
                h.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._handles.append(h)
                self.kill_node(h)
                continue
            self._remove_files(h)
        if self._key_dir is not None:
            shutil.rmtree(self._key_dir, ignore_errors=True)
            self._key_dir = None

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap(proc: psutil.Process) -> None:
    try:
        proc.wait(timeout=5)
    except psutil.Error:
        pass
