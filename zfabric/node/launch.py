"""How callers start a node and find the ones on this machine (the light half of node.py).

`spawn_node(...)` (used by `zf.init()` for an embedded node, by `zfabric
start` and by `testing.LocalCluster`) runs `python -m zfabric.node _serve
...` (or has embedded.py fork the node from its driver) and waits until the node has bound its sockets and its pre-started
workers are up; it answers on a pipe with a JSON record (address, ipc
endpoint, session and store dirs) or with the one-line reason it could not
start. `find_local_nodes` reads the records of the nodes `zfabric start`
started here; `prepare_join` checks, before anything starts, that a cluster
admits us; `dashboard_options` checks init()'s dashboard arguments.

A driver imports this module, never node.py: what a node runs (the state
machines, the loop, the dashboard's server) is imported by the node process
alone, so `import zfabric` stays cheap.
"""
from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import time

from ..config import Config
from ..exceptions import AuthenticationError
from . import pids

# (see driver_preload) zfabric.api: what tasks call (zf.get, zf.remote...); a node
# process never imports it itself, and a node `zfabric start` started leaves it to
# each worker's first task that uses it
DRIVER_PRELOAD = ("zfabric.api", "numpy")


class NodeStartError(RuntimeError):
    """A node could not start; the message is one line for the user."""


def node_records_dir(config: Config) -> str:
    return os.path.join(config.temp_dir, "nodes")


# -- starting a node from another process ----------------------------------------------------

def spawn_node(config: Config, *, num_cpus: float, resources: dict,
               object_store_memory: int | None, host: str, port: int,
               embedded: bool, join: list[str] = (),
               insecure: bool = False, dashboard: tuple[str, int | None] | None = ("", None),
               timeout: float | None = None, start=None) -> tuple[subprocess.Popen, dict]:
    """Start a node process and wait until it answers (and has joined the
    cluster at `join`, if given). Returns (process, info).

    The node authenticates TCP with the key file `config.cluster_key` (see
    auth.py; for a join, `prepare_join` finds and checks it first), unless
    `insecure`: then its TCP sockets are plain (--insecure-no-auth).
    `dashboard`: (host, port) the node's dashboard listens on (host "":
    `config.dashboard_host`; port None: `config.dashboard_port`, or a free port
    when that is taken); None: no dashboard. `start(cmd, ready_fd, env)`:
    how to start the process instead of exec'ing `cmd` (embedded.py forks
    it), returning a Popen-like handle; `env`: what to add to the environment."""
    private_dir(config.temp_dir)   # refused here, in one line, if another user owns it
    if embedded and not config.zygote_preload:
        config = config.replace(zygote_preload=driver_preload())
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
    env = {"PYTHONPATH": driver_path()} if embedded else {}
    try:
        if start is not None:
            proc = start(cmd, w, env)
        else:
            devnull = subprocess.DEVNULL
            proc = subprocess.Popen(
                cmd, pass_fds=(w,), stdin=devnull, env={**os.environ, **env},
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


def driver_path() -> str:
    """PYTHONPATH for a node this driver starts: its workers import what the
    driver can (functions pickled by reference)."""
    paths = [os.path.abspath(x or os.curdir) for x in sys.path if os.path.isdir(x or os.curdir)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(dict.fromkeys(paths))


def driver_preload() -> str:
    """What the zygotes of a node this driver starts preload (config.zygote_preload):
    the modules of DRIVER_PRELOAD this driver imported, which its tasks most
    likely use too (they were pickled here): so each worker does not import
    them at its first task."""
    return ",".join(m for m in DRIVER_PRELOAD if m in sys.modules)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout), woken by the process's exit through a pidfd (Popen.wait
    with a timeout polls, up to 50 ms late); subprocess.TimeoutExpired if it lives on."""
    exited = pids.wait_for_exit(proc.pid, timeout)
    if exited is None:   # reaped already, or no pidfd here
        return proc.wait(timeout)
    if not exited:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


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


def prepare_join(config: Config, address: str, insecure: bool = False) -> Config:
    """Before a node is started to join the cluster at `address`: the config it
    needs (with the key file found), once a handshake showed that cluster admits
    it. AuthenticationError (no key, or one it refuses) or ConnectionError
    (nothing answers) otherwise: nothing was started, nothing changed."""
    import zmq

    from . import auth   # (its handshake probe needs zmq's monitor: not for every driver)
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
    import psutil
    try:
        proc = psutil.Process(pid)
        return ("zfabric.node" in " ".join(proc.cmdline()) and proc.uids().real == os.getuid()
                and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, ValueError):
        return False


def dashboard_options(include, host, port) -> tuple | None:
    """init()'s include_dashboard, dashboard_host and dashboard_port, checked:
    spawn_node's `dashboard` ((host, port), or None for none)."""
    if include is not None and not isinstance(include, bool):
        raise TypeError(f"include_dashboard must be None, True or False, got {include!r}")
    if host is not None and (not isinstance(host, str) or not host):
        raise TypeError(f"dashboard_host must be a host name or address, got {host!r}")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                             or not 0 <= port <= 65535):
        raise ValueError(f"dashboard_port must be None or a port (0-65535), got {port!r}")
    return None if include is False else (host or "", port)   # "": config.dashboard_host
