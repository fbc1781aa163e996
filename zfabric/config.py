"""Every default, interval, size and environment variable of zfabric, in one place.

`Config` is a frozen record. `Config.from_env(**overrides)` starts from the
defaults, applies `ZFABRIC_*` environment variables, then explicit overrides.
The node process receives its config as JSON on the command line
(`Config.to_json` / `Config.from_json`), so a node and its workers always
agree on it. Nothing else in the package reads the environment for settings.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, fields

ENV_PREFIX = "ZFABRIC_"
SPILL_DIR_NAME = "spill"   # a node's spill dir in its session dir (Config.spill_dir empty)
LOG_DIR_NAME = "logs"      # its workers' stdout/stderr files, in its session dir
ADDRESS_ENV = "ZFABRIC_ADDRESS"


@dataclass(frozen=True)
class Config:
    # -- where things live ---------------------------------------------------
    # Root of session dirs (sockets, logs, node records, keys); empty: one per
    # user, {tmp}/zfabric-sessions-{uid}. Mode 0700, so that no other local
    # user can reach a node's ipc socket.
    temp_dir: str = ""
    # tmpfs under which each node makes its store dir `zfabric-{node_id}`.
    store_root: str = "/dev/shm"

    # -- objects -------------------------------------------------------------
    # Objects whose serialized size is at most this travel inside messages
    # and live in the node's memory; larger ones are files in the store.
    # 100 KiB: below it a message copy is cheaper than a file + mmap.
    inline_threshold: int = 100 * 1024
    # Default store capacity as a fraction of RAM when object_store_memory
    # is not given.
    object_store_fraction: float = 0.3
    # Where a node spills objects to disk when its store is full: a dir of its
    # own, `{spill_dir}/zfabric-spill-{node_id}`; empty: `{session dir}/spill`
    # (SPILL_DIR_NAME). Removed when the node stops.
    spill_dir: str = ""
    # Bytes copied per sendfile call when spilling or restoring an object: one
    # call per 64 MiB keeps the copy in the kernel and the thread responsive.
    spill_copy_chunk: int = 64 << 20
    # A freed object's store file of at least 1 MiB is kept this long for the
    # next large object written on the node (a put, a task's return, a pull)
    # to reuse its pages: writing into new tmpfs pages costs 3-5x a memory
    # copy, into kept ones ~1.6x. At most store_recycle_bytes of files are
    # kept (and at most a quarter of the store's capacity), none while the
    # store spills; they are not counted in its capacity. 0 turns it off.
    store_recycle_seconds: float = 10.0
    store_recycle_bytes: int = 1 << 30
    # A node's answer to `memory` lists at most this many objects, the largest:
    # one reply frame stays a few MiB however many objects a node keeps.
    memory_max_objects: int = 10_000

    # The owner of a task keeps its spec (function id, arguments, options) while
    # one of its returns is alive, to run it again if every copy of a result is
    # lost with the nodes that held it (lineage). At most this many specs and
    # bytes of spec (arguments as submitted) per node; the oldest are dropped
    # first, and their objects can no longer be rebuilt. 100 MiB: a thousand
    # tasks with arguments at the inline threshold, or a million small ones
    # (the count cap stops first).
    lineage_max_specs: int = 100_000
    lineage_max_bytes: int = 100 << 20

    # -- runtime_env (docs/runtime-env.md) -------------------------------------------
    # A working_dir or py_modules entry may hold at most this many bytes of files
    # (after excludes): 100 MiB, Ray's limit for one package. A larger one is
    # refused at init() / .remote() with its path and size; nodes refuse to
    # unpack more than this from one package.
    runtime_env_max_bytes: int = 100 << 20

    # -- node / workers ------------------------------------------------------
    # Seconds a caller waits for a node it started to answer.
    node_start_timeout: float = 30.0
    # Extra workers beyond num_cpus (started when every worker is blocked in
    # get/wait) are stopped after idling this long.
    idle_worker_timeout: float = 10.0
    # A busy worker is sent its next task before it finishes the current one
    # (so it never waits a round trip for work) when that function has run at
    # least 3 times and its slowest recent run took under this long; longer
    # tasks wait for an idle worker, so a slow task never holds a quick one back.
    prefetch_max_task_seconds: float = 0.005
    # How deep: a busy worker running a quick function is kept up to this much
    # queued work (queued tasks x that function's slowest recent run), at least
    # one task and at most `prefetch_max_depth`. A deeper queue lets the worker
    # and the node handle several tasks per wake-up (tiny tasks: 16 deep).
    prefetch_queue_seconds: float = 0.002
    prefetch_max_depth: int = 16
    # Hard cap on worker processes per node, whatever the demand.
    max_workers: int = 512
    # How often a client flushes reference-count changes when it is idle.
    ref_flush_interval: float = 0.1
    # Worker leases (core/leases.py): a driver doing sync round trips asks its node
    # for a worker and sends it tasks directly (ZFABRIC_DIRECT_TASKS=0: never); it
    # gives the worker back after sending it nothing for lease_idle_seconds.
    direct_tasks: bool = True
    lease_idle_seconds: float = 0.5
    # Node housekeeping tick (idle-worker reaping, liveness of clients).
    tick_interval: float = 0.5
    # Timeline events kept per node (oldest dropped first).
    timeline_capacity: int = 100_000
    # Seconds a graceful stop waits for workers before SIGKILL.
    stop_grace: float = 2.0
    # A worker fork server (zygote) that died is replaced at once; one that dies
    # again before it forked a worker, or cannot be started, is tried again after
    # this many seconds, doubled each time up to zygote_restart_backoff_max: a
    # zygote that cannot start never becomes a hot loop.
    zygote_restart_backoff: float = 0.1
    zygote_restart_backoff_max: float = 5.0
    # Modules each zygote imports besides the worker's own, comma-separated (e.g.
    # "numpy,pandas"): its workers start with them (a first task that uses them
    # runs sooner; each worker holds more resident memory). Empty: none, except
    # that a node init() starts for its driver preloads zfabric's API and numpy
    # if the driver imported them (node/launch.py, driver_preload); ",": none.
    zygote_preload: str = ""
    # A node init() starts is forked from its driver when the driver runs a single
    # thread and holds at most fork_embedded_node_max_rss bytes resident
    # (node/forking.py: no interpreter start, nothing imported twice; its first
    # zygote is forked from it too), else started as `python -m zfabric.node`.
    # False (ZFABRIC_FORK_EMBEDDED_NODE=0): always the latter. The bound: the
    # node, its zygote and its workers share the driver's pages as they were at
    # the fork, which stay allocated while they live (a driver that loaded a
    # dataset before init() would pin it); 256 MiB is several times a script's.
    fork_embedded_node: bool = True
    fork_embedded_node_max_rss: int = 256 << 20

    # The failures of tasks a node's workers ran that it keeps for the dashboard
    # (function, worker, time, error type, message, traceback), the oldest
    # dropped first; messages and tracebacks cut to error_text_max characters,
    # so that a huge traceback cannot fill the GCS that carries them to peers.
    error_log_capacity: int = 50
    error_text_max: int = 4096

    # -- dashboard (node/dashboard.py, docs/dashboard.md) ----------------------
    # Every node serves a read-only dashboard on dashboard_host:dashboard_port
    # (loopback by default). 8265, as Ray's: when another process holds the
    # default port, the node takes a free one (several nodes on one machine); a
    # port the user asked for that is taken stops the node with an error.
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    # The newest task runs per node the page's task stream shows.
    dashboard_stream_tasks: int = 300
    # How often the dashboard samples its node (one Request per query), and
    # how many samples it keeps for the charts (600: ten minutes).
    dashboard_sample_interval: float = 1.0
    dashboard_history: int = 600
    # The object listing (`memory`, every object the node knows) costs the loop
    # more than the rest: the dashboard asks for it this often.
    dashboard_memory_interval: float = 5.0
    # The dashboard samples its node only while someone looks: until this many
    # seconds after the last HTTP request (the page polls every few seconds, a
    # Prometheus scrape counts too); then it lets go of its connection until
    # the next request. An idle node's dashboard costs no CPU.
    dashboard_idle_after: float = 30.0

    # -- task output in the driver (node/logmon.py, node/loglisten.py) ------------
    # Each worker's stdout and stderr go to files in {session}/logs; the node
    # reads at most this many new bytes of each per read (every tick, 50 ms:
    # ~5 MB/s per worker stream reaches the driver).
    log_read_bytes: int = 256 << 10
    # A file more than this many bytes behind is skipped ahead to its last
    # log_read_bytes; the driver is told how many lines it missed (the file
    # keeps them): a task that prints without pause cannot flood the cluster.
    log_max_behind: int = 4 << 20
    # The driver folds a line that several workers print within this many
    # seconds into one, with a count ("[repeated 7x across cluster]");
    # ZFABRIC_DEDUP_LOGS=0 prints every line.
    dedup_logs: bool = True
    log_dedup_window: float = 5.0

    # -- network -------------------------------------------------------------
    # The cluster key file (see docs/security.md): TCP between nodes is
    # authenticated and encrypted with it. Empty: a first node writes a new key
    # to cluster.key in its session dir; a joining node looks for the key of a
    # node of the same cluster on this machine.
    cluster_key: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    # Port of the object socket (chunk pulls); 0 picks a free one.
    object_port: int = 0

    # -- cluster: membership and gossip -----------------------------------------
    # A gossip round (heartbeat + view) every this many seconds, to `gossip_fanout`
    # peers; a peer not heard of for failure_timeout/2 is suspected, for
    # failure_timeout declared dead. 3 s: long enough that a busy node is not
    # declared dead, short enough that its tasks are retried soon.
    gossip_interval: float = 0.1
    gossip_fanout: int = 3
    failure_timeout: float = 3.0
    # A node with nothing to do -- no message but gossip, no worker output, no
    # process or transfer event for `idle_after` seconds, not joining -- ticks,
    # and so gossips, this often instead (at most failure_timeout/6: its peers
    # still hear from it three times before they would suspect it): 16 idle
    # nodes on one machine then use a few % of a core, not a third. Work does
    # not wait for a tick (a message wakes the loop), and the first sign of it
    # brings the short tick back at once.
    idle_gossip_interval: float = 0.5
    idle_after: float = 2.0
    # A node keeps probing the members it declared dead, and its seeds while it
    # sees no live peer, once every this many gossip rounds (one dead member per
    # probe, in turn): the slow rate at which a node cut off from some or all
    # of its peers finds them again after the cut heals (10 rounds: 1 s).
    dead_probe_rounds: int = 10
    # Above this many members (any state), a gossip carries a bounded few rows
    # (changes, its heartbeat, a slice of the rest) instead of every row, and
    # failure detection asks each gossip target for an answer instead of
    # waiting for relayed heartbeats (core/gossip.py): every row in every
    # message costs O(N) bytes, megabytes a second per node at 1,000 nodes.
    gossip_deltas_above: int = 32
    # Seconds a joining node tries to reach the address it was given.
    join_timeout: float = 10.0
    # A node that left gracefully is listed (nodes(), status) and gossiped for
    # this long, then forgotten, so that every driver that ever joined with an
    # embedded node does not stay in every gossip message for good.
    forget_left_after: float = 300.0
    # GCS deltas kept per shard for peers that fall behind (older: a snapshot).
    gcs_log_capacity: int = 10_000
    # Each node's GCS shard lives on it and on this many nodes after it on a
    # consistent-hash ring of the live members (core/ring.py): with up to
    # gcs_replicas + 1 nodes every node holds every shard; beyond, a node holds
    # gcs_replicas + 1 shards, whatever the cluster's size.
    gcs_replicas: int = 3

    # -- cluster: spillover ------------------------------------------------------
    # Tasks forwarded to a peer beyond what it can run at once, per slot, while
    # the local queue is longer than the cluster can start: the peer's next task
    # is already there when one ends (no round trip idle).
    spill_depth: int = 1
    # A queued task whose function runs on average in under this long is not
    # forwarded while a worker here runs one like it: it would start here within
    # moments, and forwarding it and its result costs the two nodes more than
    # running it (0: spill any task that waits).
    spill_min_task_seconds: float = 0.0002
    # After a refusal (spillback), leave that peer alone this long.
    refuse_backoff: float = 0.2
    # A task whose arguments on one peer total at least this many bytes runs
    # there (if it can start now) instead of pulling them.
    locality_min_bytes: int = 1 << 20

    # -- cluster: object transfer --------------------------------------------------
    # Pulls move objects in chunks of this size, `pull_window` chunks in flight
    # (credits): 32 MiB in flight kept a loopback pull of 100 MB ~10% faster
    # than 16 (the holder keeps sending while we write a chunk to the store).
    chunk_size: int = 4 << 20
    pull_window: int = 8
    # A chunk not answered in this long: ask another holder.
    chunk_timeout: float = 10.0

    def __post_init__(self):
        if not self.temp_dir:   # the user's own, decided when the config is made
            object.__setattr__(self, "temp_dir", os.path.join(
                tempfile.gettempdir(), f"zfabric-sessions-{os.getuid()}"))

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Config":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls(**json.loads(text))


def _parse(f: dataclasses.Field, raw: str):
    kind = type(f.default)
    if kind is bool:   # (bool("0") is True)
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"environment variable {ENV_PREFIX}{f.name.upper()}={raw!r} "
                         "is not a valid bool (1/0, true/false, yes/no, on/off)")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {ENV_PREFIX}{f.name.upper()}={raw!r} "
                         f"is not a valid {kind.__name__}") from None
