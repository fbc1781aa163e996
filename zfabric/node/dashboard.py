"""The node's read-only web dashboard: one page, JSON endpoints, Prometheus /metrics.

    browser --GET--> HTTP server (threads, here) --> the latest Snapshot (a lock)
                                                          ^ every dashboard_sample_interval
    sampler thread --Client "tool", Request status/tasks/errors--> NodeLoop (ipc)
                   (and "memory", the object listing, every dashboard_memory_interval)
                   while someone looks: until dashboard_idle_after after the last request

The server gets its data as a *client* of its own node, through the same
Request/Reply path as `zfabric status`: the loop stays the only owner of the
node's state, and nothing here can change it (no Request changes anything).
HTTP never reaches the loop: handlers read the last sample only, so however
many clients ask, the loop answers one set of Requests per interval, and a
slow or hostile HTTP client holds one of `MAX_CONNECTIONS` server threads for
at most `IO_TIMEOUT` seconds (dashboard_http.py), never the loop. (Answering HTTP from the poll
loop on a raw socket would put parsing, and every client's pace, inside the
loop; threads that only read a snapshot keep it out.)

Rules: GET (and HEAD) only, anything else 405; a Host header other than this
server's own host:port, localhost:port or 127.0.0.1:port is refused with 403,
so that a web page on another site cannot read it through DNS rebinding. It
binds only the host it is given (127.0.0.1 by default). Every request must
carry the dashboard's token (`?token=...`, 403 without it): a loopback port
is open to every user of the machine, and what the page shows (function
names, tracebacks) is no more theirs to read than the node's session dir.
The token is in the URL the node's record holds (0600, in the user's 0700
dir), which `init()` returns and `zfabric start`/`status` print; the page
passes it on to the endpoints it polls.

    GET /               the page (dashboard.html, next to this module: no build step)
    GET /api/nodes      the cluster's nodes, as `zfabric status --json` shows them
    GET /api/tasks      counts by state and function, the recent task stream,
                        and the sampled history behind the charts
    GET /api/errors     recent task failures with their tracebacks
    GET /api/objects    objects by node (count, bytes, spilled) and the largest ones
    GET /metrics        this node's counters and gauges, Prometheus text format

An idle node pays nothing for its dashboard: the sampler asks its node only
while someone looks (a request within `dashboard_idle_after` seconds; it
then closes its client, whose threads go with it, until the next request,
which waits for a fresh sample if the last one is stale), so the charts'
history covers the time the page was watched; the HTTP thread sleeps in
select() until a connection or `close()` wakes it (no polling interval).

`Dashboard` is made by node.py's `serve` before the loop runs (it binds at
once, so the URL goes into the node's record), started with the loop, and
closed after it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import select
import socket
import threading
import time
from collections import deque

import zmq

from ..config import Config
from ..exceptions import ZFabricError
from ..core import memview
from .client import Client

log = logging.getLogger("zfabric.dashboard")
REQUEST_TIMEOUT = 2.0    # seconds the sampler waits for its node (a missed sample: retried)
QUERIES = ("status", "tasks", "errors")
OBJECTS_SHOWN = 100      # the largest objects /api/objects lists
HISTORY_FUNCTIONS = 20   # functions whose counts each history sample keeps (the busiest)
LISTEN_BACKLOG = 16      # connections the kernel queues before we accept them
JOIN_TIMEOUT = 0.1       # seconds close() waits for the sampler (it may wait on its node)
PAGE = os.path.join(os.path.dirname(__file__), "dashboard.html")


class DashboardError(RuntimeError):
    """The dashboard could not listen where it was asked to (one line)."""


class Dashboard:
    """The HTTP server and the sampler of one node."""

    def __init__(self, config: Config, *, host: str, port: int | None, ipc: str):
        self.config = config
        self.ipc = ipc
        self.snapshot = Snapshot(config.dashboard_history)
        self.socket = _listen(host, port, fallback=port is None, default=config.dashboard_port)
        self.server = None   # made at the first connection (dashboard_http.py)
        shown = host if ":" not in host else f"[{host}]"
        self.port = self.socket.getsockname()[1]
        self.token = secrets.token_urlsafe(18)
        self.url = f"http://{shown}:{self.port}/?token={self.token}"
        names = {host, shown, "localhost", "127.0.0.1", "[::1]"}
        self.allowed_hosts = {f"{h}:{self.port}".lower() for h in names}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client: Client | None = None
        self._memory_at = float("-inf")   # when the object listing was last asked for
        self._viewed = threading.Event()  # a request came in: the sampler wakes
        self._last_view = float("-inf")   # (monotonic) when the last request came in
        self._fresh = threading.Condition()   # notified at each sample
        self._samples = 0
        self._sampled_at = float("-inf")  # (monotonic) when the last sample was taken
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def start(self) -> None:
        for target, name in ((self._serve, "dashboard-http"),
                             (self._sample_forever, "dashboard-sampler")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop serving and sampling. The node's loop has stopped: a request the
        sampler is waiting on gets no answer, so it is not waited for (the
        thread is a daemon, and its client is left to the process's exit)."""
        self._stop.set()
        self._viewed.set()
        os.write(self._wake_w, b"x")
        for t in self._threads:
            t.join(JOIN_TIMEOUT)
        if self.server is not None:
            self.server.server_close()
        else:
            self.socket.close()
        sampler = self._threads[1] if len(self._threads) > 1 else None
        if sampler is None or not sampler.is_alive():
            self._drop_client()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _serve(self) -> None:
        """Answer connections until close(): asleep in select() in between."""
        listening = self.socket
        while not self._stop.is_set():
            ready, _, _ = select.select([listening, self._wake_r], [], [])
            if listening in ready and not self._stop.is_set():
                if self.server is None:
                    from .dashboard_http import make_server
                    self.server = make_server(listening, self)
                # (what serve_forever does once the socket is readable: accept,
                # then a thread per connection)
                self.server._handle_request_noblock()

    def viewed(self) -> None:
        """A request came in (a handler's thread): keep sampling; if the last
        sample is stale (nobody looked for a while), wait for a fresh one."""
        now = time.monotonic()
        self._last_view = now
        self._viewed.set()
        if now - self._sampled_at <= 2 * self.config.dashboard_sample_interval:
            return
        with self._fresh:
            seen = self._samples
            self._fresh.wait_for(lambda: self._samples != seen or self._stop.is_set(),
                                 REQUEST_TIMEOUT)

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path` (a handler's thread, once
        it checked the Host header and the token)."""
        self.viewed()
        data, taken, history = self.snapshot.get()
        if path in ("/", "/index.html"):
            with open(PAGE, "rb") as f:
                return 200, "text/html; charset=utf-8", f.read()
        if path in API:
            return 200, "application/json", json.dumps(API[path](data, taken, history)).encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics(data).encode()
        return 404, "text/plain; charset=utf-8", b"not found\n"

    # -- sampling its node ------------------------------------------------------------

    def _sample_forever(self) -> None:
        interval = self.config.dashboard_sample_interval
        while not self._stop.is_set():
            if time.monotonic() - self._last_view > self.config.dashboard_idle_after:
                self._drop_client()   # nobody looks: no client, no requests to the loop
                self._viewed.clear()
                if time.monotonic() - self._last_view > self.config.dashboard_idle_after:
                    self._viewed.wait()
                continue
            try:
                self._sample()
            except (ConnectionError, OSError, ValueError, ZFabricError, zmq.ZMQError) as e:
                # the node is starting or stopping, or did not answer in time
                # (GetTimeoutError): the page shows the last sample and its age
                log.debug("dashboard sample failed: %s", e)
            with self._fresh:   # (a failed one too: a waiting request answers with what is)
                self._samples += 1
                self._fresh.notify_all()
            self._stop.wait(interval)

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _sample(self) -> None:
        if self._client is None:
            self._client = Client(self.ipc, "tool", connect_timeout=REQUEST_TIMEOUT)
        data = {what: self._client.request(what, timeout=REQUEST_TIMEOUT) for what in QUERIES}
        now = time.monotonic()
        if now - self._memory_at >= self.config.dashboard_memory_interval:
            # the listing costs the loop more (every object): asked for less often
            data["memory"] = self._client.request("memory", timeout=REQUEST_TIMEOUT)
            self._memory_at = now
        self.snapshot.update(data, time.time())
        self._sampled_at = now


class Snapshot:
    """The node's answers at the last sample, and a history of counts for the charts."""

    def __init__(self, history: int):
        self._lock = threading.Lock()
        self.data: dict = {}
        self.taken = 0.0
        self.history: deque = deque(maxlen=history)

    def update(self, data: dict, now: float) -> None:
        tasks = data["tasks"]
        busiest = sorted(tasks["functions"], key=lambda f: -(f["finished"] + f["failed"]
                                                             + f["running"] + f["queued"]))
        sample = {"time": now, "states": tasks["states"],
                  "functions": {f["name"]: [f["running"], f["queued"], f["finished"],
                                            f["failed"]] for f in busiest[:HISTORY_FUNCTIONS]}}
        with self._lock:
            if "memory" not in data and "memory" in self.data:
                data["memory"] = self.data["memory"]   # (the last listing, until the next)
            self.data = data
            self.taken = now
            self.history.append(sample)

    def get(self) -> tuple[dict, float, list]:
        with self._lock:
            return self.data, self.taken, list(self.history)


# -- what each endpoint answers -------------------------------------------------------

def api_nodes(data: dict, taken: float, history: list) -> dict:
    status = data.get("status") or {"self": "", "nodes": []}
    return {"sampled_at": taken, "self": status["self"], "nodes": status["nodes"]}


def api_tasks(data: dict, taken: float, history: list) -> dict:
    tasks = data.get("tasks") or {"states": {}, "functions": [], "stream": []}
    return {"sampled_at": taken, **tasks, "history": history}


def api_errors(data: dict, taken: float, history: list) -> dict:
    return {"sampled_at": taken, "errors": data.get("errors") or []}


def api_objects(data: dict, taken: float, history: list) -> dict:
    """Objects by node (from the node's `memory` listing, with each node's store
    figures from `status`) and the largest objects."""
    status = data.get("status") or {"nodes": []}
    listing = data.get("memory") or {"total": 0, "objects": []}
    groups = memview.group_by_node(listing["objects"])
    nodes = []
    for n in status["nodes"]:
        g = groups.get(n["NodeID"], {})
        nodes.append({"node_id": n["NodeID"], "alive": n["Alive"], "objects": g.get("count", 0),
                      "bytes": g.get("bytes", 0), "store_used": n.get("store_used", 0),
                      "store_capacity": n.get("store_capacity", 0),
                      "spilled_bytes": n.get("spilled_bytes", 0),
                      "spilled_objects": n.get("spilled_objects", 0)})
    largest = [{k: r[k] for k in ("object_id", "size", "state", "owner", "nodes", "spilled")}
               for r in memview.sort_records(listing["objects"], "size")[:OBJECTS_SHOWN]]
    return {"sampled_at": taken, "total": listing["total"], "listed": len(listing["objects"]),
            "nodes": nodes, "largest": largest}


API = {"/api/nodes": api_nodes, "/api/tasks": api_tasks, "/api/errors": api_errors,
       "/api/objects": api_objects}


def metrics(data: dict) -> str:
    """This node's counters and gauges in Prometheus' text format (version 0.0.4)."""
    status = data.get("status")
    if not status:
        return ""
    me = next((n for n in status["nodes"] if n["NodeID"] == status["self"]), None)
    if me is None:
        return ""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples) -> None:
        out.append(f"# HELP zfabric_{name} {help_text}")
        out.append(f"# TYPE zfabric_{name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"zfabric_{name}{{{label}}} {float(value):g}" if label
                       else f"zfabric_{name} {float(value):g}")

    for key, value in sorted(me.get("stats", {}).items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metric(f"{_name(key)}_total", "counter", f"the node's {key} counter", [({}, value)])
    metric("resources_total", "gauge", "resources this node offers",
           [({"resource": k}, v) for k, v in sorted(me.get("Resources", {}).items())])
    metric("resources_available", "gauge", "resources free on this node",
           [({"resource": k}, v) for k, v in sorted(me.get("available", {}).items())])
    for key, help_text in GAUGES:
        if isinstance(me.get(key), (int, float)):
            metric(key, "gauge", help_text, [({}, me[key])])
    alive = sum(1 for n in status["nodes"] if n["Alive"])
    metric("cluster_nodes_alive", "gauge", "nodes this node sees alive", [({}, alive)])
    return "\n".join(out) + "\n"


GAUGES = (("tasks_queued", "tasks queued or sent to a busy worker on this node"),
          ("tasks_running", "tasks running on this node's workers"),
          ("tasks_waiting", "tasks waiting for their arguments"),
          ("tasks_spilled", "tasks forwarded to peers"),
          ("workers", "worker processes"), ("idle_workers", "idle worker processes"),
          ("objects", "objects this node knows"),
          ("store_used", "bytes in the object store"),
          ("store_capacity", "object store capacity in bytes"),
          ("spilled_bytes", "bytes spilled to disk"),
          ("spilled_objects", "objects spilled to disk"))


def _name(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _listen(host: str, port: int | None, *, fallback: bool, default: int) -> socket.socket:
    """The dashboard's listening socket on host:port (None: `default`, or a free
    port if that one is taken); DashboardError if it cannot listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    want = default if port is None else port

    def bind(p: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # (as HTTPServer)
            sock.bind((host, p))
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        return sock

    try:
        return bind(want)
    except OSError as e:
        if fallback and e.errno == errno.EADDRINUSE:
            try:
                return bind(0)
            except OSError as e2:
                e = e2
        raise DashboardError(f"cannot serve the dashboard on {host}:{want}: "
                             f"{e.strerror}") from None
