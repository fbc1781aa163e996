"""Every message zfabric sends, and the only code that builds or parses frames.
(The messages between nodes, the log listener's and the chunk pulls are
declared in protocol_peers.py and re-exported here: import every message
from this module.)

A message travels as one ZeroMQ frame: a kind byte naming the message class,
then its fields as a msgpack array in declared order. Payload fields
(`FRAMES`, then a variable list `VAR_FRAMES`) are declared last; they hold
inline object blobs and error records, all below the inline threshold
(bulk object data moves through the store, never through these messages).

`decode` (protocol_codec.py, re-exported here) checks the kind, the arity,
every field's type and then the message's `check()` (built from
protocol_checks.py: ids, bounds, finite amounts, addresses, code that hashes
to its function id) before a message reaches the node; whatever the bytes, it
returns a checked message or raises `ProtocolError`, nothing else (the node
counts and drops it). Nothing here is ever unpickled: pickled user data rides
in payload frames and is opened only by the process that runs or gets it.

Task options that travel with a task ride in `opts` (Submit, Spill,
Execute): a dict left empty when a task has none, each key checked by
`protocol_checks.TASK_OPTS`:

    "strategy"  (Submit, Spill, Execute) the scheduling strategy: "SPREAD", or
                {"node": node id, "soft": bool} for node affinity
    "gpus"      (Execute only) the GPU ids the executing node gave the task
    "env"       (Submit, Spill, Execute) the task's runtime_env: package hashes,
                their object ids, env vars (node/runtime_env.py; env_problem)
    "job"       (Submit, Spill, Execute) bytes, `ids.job_id`: the driver whose job
                the task is, where its output goes (set by the submitting client;
                a nested task inherits its parent's)
    "lease"     (Submit only) the leased worker that ran the task (core/leases.py)

Who sends what (client = a driver or a worker on the node's machine):

    client -> node   Hello Submit Subscribe Put Refs Cancel Blocked Unblocked
                     TaskDone Revoked (workers) Request Shutdown Goodbye
                     LeaseAsk LeaseReturn, TaskDone (drivers: a leased worker's report)
    node -> client   Welcome ObjectReady PutReply Reply Execute Revoke (workers) LeaseGrant
                     LeaseEnd (drivers), or a Batch of them when several are due at once
    driver <-> leased worker  Execute ->, <- TaskDone (a Unix socket in the session dir)
    node -> node     Gossip (membership rows + GCS version vector; a join is a Gossip
                     asking for a reply), GcsUpdate, Spill, Refuse (spillback),
                     SpillCheck, TaskResult, Cancel, FreeObjects, LogLines -- each over
                     the sender's DEALER to the receiver's scheduler ROUTER
    listener <-> node  a driver's log listener (node/loglisten.py): Listen ->,
                     <- LogLines (its job's task output)
    puller -> holder PullChunk, on the holder's object ROUTER; the answer is a Chunk
                     header frame followed by the raw bytes as a second frame
                     (`encode_chunk` / `decode_chunk`): bulk data is never packed
"""
from __future__ import annotations

from dataclasses import field
from enum import IntEnum

from . import protocol_checks as c
from .ids import OBJECT_ID_SIZE
from .protocol_checks import is_node_id, is_oid, is_tid, text
from .protocol_codec import (  # noqa: F401  (re-exported: the wire's one face)
    ProtocolError, decode, encode, message, registry)


class ObjectState(IntEnum):
    """Where an object's value is (Put, ObjectReady, Execute, TaskDone, Spill...)."""
    PENDING = 0   # its task has not finished
    INLINE = 1    # the payload is the serialized value, kept in node memory
    STORE = 2     # a file in a node's store dir
    ERROR = 3     # the payload is an error record (zfabric/records.py)


class TaskStatus(IntEnum):
    """How a task ended (TaskDone, TaskResult)."""
    OK = 0
    ERROR = 1
    CANCELLED = 2


# -- handshake ----------------------------------------------------------------

@message(1)
class Hello:
    role: str              # "driver" | "worker" | "tool"
    pid: int
    worker_id: str | None  # set by workers: the id the node spawned them with

    def check(self) -> str:
        if self.role not in ("driver", "worker", "tool") or not 0 < self.pid <= c.MAX_PID:
            return "bad role or pid"
        return "" if text(self.worker_id) else "worker id too long"


@message(2)
class Welcome:
    node_id: bytes
    store_dir: str
    session_dir: str
    address: str
    config: str            # the node's Config as JSON
    node_pid: int

    def check(self) -> str:
        if not is_node_id(self.node_id) or not c.count(self.node_pid, c.MAX_PID):
            return "bad node id or pid"
        if not text(self.store_dir, self.session_dir, self.address) or len(self.config) > 1 << 20:
            return "bad dirs, address or config"
        return ""


# -- tasks ----------------------------------------------------------------------

@message(3, frames=("fn_blob", "args_blob", "retry_blob"), trailer=("opts",))
class Submit:
    task_id: bytes
    name: str
    fn_id: bytes
    num_returns: int
    resources: dict        # name -> float
    max_retries: int
    retry_exceptions: bool
    depth: int
    parent: bytes          # task id of the submitting task (b"" for a driver)
    deps: list             # ObjectIDs passed at the top level: resolved before run
    contained: list        # ObjectIDs nested in the arguments: kept alive
    fn_blob: bytes         # cloudpickled function; empty if the node has fn_id
    args_blob: bytes
    retry_blob: bytes      # cloudpickled tuple of exception types, or empty
    opts: dict = field(default_factory=dict)   # task options that travel (TASK_OPTS)

    def check(self) -> str:
        if self.max_retries < -1 or not (self.parent == b"" or is_tid(self.parent)):
            return "bad max_retries or parent"
        if not c.amounts(self.resources, nonneg=True):
            return "resources must map names to finite amounts >= 0"
        if not (c.oids(self.deps) and c.oids(self.contained)):
            return "deps and contained must be object ids"
        return c.spec_problem(self) or c.submitted_opts_problem(self.opts)


@message(4, frames=("fn_blob", "args_blob", "retry_blob"), var_frames="dep_payloads",
         trailer=("opts",))
class Execute:
    task_id: bytes
    name: str
    fn_id: bytes
    num_returns: int
    depth: int
    dep_ids: list
    dep_states: list       # ObjectState per dep (INLINE payload here, STORE: mmap it)
    fn_blob: bytes
    args_blob: bytes
    retry_blob: bytes
    dep_payloads: list
    opts: dict = field(default_factory=dict)

    def check(self) -> str:
        return c.deps_problem(self) or c.spec_problem(self)


@message(5, var_frames="payloads")
class TaskDone:
    task_id: bytes
    status: int            # TaskStatus
    retryable: bool        # the error may be retried (retry_exceptions matched)
    states: list           # ObjectState per return
    sizes: list
    contained: list        # list of lists of ObjectIDs, per return
    start: float           # the worker took the task: its arguments are fetched from here
    end: float             # the function returned (or raised)
    fetched: float         # the arguments were fetched: the function ran from here to `end`
    stored: float          # the results were stored (serialized, written) after `end`
    payloads: list         # per return: inline blob, or b"" (STORE), or error record

    def check(self) -> str:
        if not is_tid(self.task_id) or not c.finite(self.start, self.end, self.fetched,
                                                    self.stored):
            return "bad task id or times"
        return c.returns_problem(self)


@message(6)
class Cancel:
    oid: bytes
    force: bool
    recursive: bool

    def check(self) -> str:
        return "" if len(self.oid) == OBJECT_ID_SIZE else "bad object id"


@message(19)
class Revoke:
    """(node -> worker) Do not start this prefetched task; say Revoked if you had not."""
    task_id: bytes

    def check(self) -> str:
        return "" if is_tid(self.task_id) else "bad task id"


@message(20)
class Revoked:
    """(worker -> node) The prefetched task was dropped unstarted."""
    task_id: bytes

    def check(self) -> str:
        return "" if is_tid(self.task_id) else "bad task id"


@message(7)
class Blocked:
    task_id: bytes

    def check(self) -> str:
        return "" if is_tid(self.task_id) else "bad task id"


@message(8)
class Unblocked:
    task_id: bytes

    def check(self) -> str:
        return "" if is_tid(self.task_id) else "bad task id"


# -- objects ----------------------------------------------------------------------

@message(9)
class Subscribe:
    ids: list

    def check(self) -> str:
        return "" if c.oids(self.ids) else "ids must be object ids"


@message(10, frames=("payload",))
class ObjectReady:
    """(node -> client) An object's value, pushed to its task's submitter or sent to a
    subscriber. State PENDING (to the submitter only): the value is in another
    node's store; a Subscribe has it brought here."""
    oid: bytes
    state: int
    size: int
    payload: bytes         # inline blob or error record; empty for STORE

    def check(self) -> str:
        ok = is_oid(self.oid) and self.state in c.STATES and c.count(self.size, 1 << 62)
        return "" if ok else "bad object id, state or size"


@message(11, frames=("payload",))
class Put:
    oid: bytes
    state: int             # INLINE (payload is the blob) or STORE (file written)
    size: int
    contained: list
    req_id: int            # 0: no reply wanted
    payload: bytes

    def check(self) -> str:
        if not is_oid(self.oid) or not c.oids(self.contained) or not c.count(self.size, 1 << 62):
            return "bad object id, contained ids or size"
        return "" if self.state in c.STATES else "bad state"


@message(12)
class PutReply:
    req_id: int
    error: str             # "" on success

    def check(self) -> str:
        return "" if text(self.error) else "error too long"


@message(13)
class Refs:
    incs: list
    decs: list

    def check(self) -> str:
        return "" if c.oids(self.incs) and c.oids(self.decs) else "bad object ids"


# -- queries and control -------------------------------------------------------------

@message(14)
class Request:
    req_id: int
    what: str              # "nodes" | "resources" | "timeline" | "status" | "memory"
                           # | "tasks" | "errors" (the dashboard's: core/activity.py)

    def check(self) -> str:
        return "" if len(self.what) <= 100 else "bad query"


@message(15)
class Reply:
    req_id: int
    data: object
    error: str

    def check(self) -> str:
        return "" if text(self.error) else "error too long"


@message(16)
class Shutdown:
    """Stop the node (its embedded driver leaving, or `zfabric stop`)."""
    reason: str

    def check(self) -> str:
        return "" if text(self.reason) else "reason too long"


@message(17)
class Goodbye:
    """A client detaches: drop its references and cancel its pending tasks."""
    reason: str

    def check(self) -> str:
        return "" if text(self.reason) else "reason too long"


@message(32)
class LeaseAsk:
    """(driver -> node) Lease me an idle worker for direct tasks (core/leases.py)."""
    workers: int

    def check(self) -> str:
        return "" if self.workers == 1 else "a lease is of one worker"


@message(33)
class LeaseGrant:
    """(node -> driver) Worker `wid` is yours; its Executes go to `endpoint`
    (ipc://PATH: the worker's direct line listens at PATH, node/direct.py)."""
    wid: str
    endpoint: str

    def check(self) -> str:
        return "" if c.is_wid(self.wid) and c.is_ipc(self.endpoint) else "bad worker or endpoint"


@message(34)
class LeaseEnd:
    """(node -> driver) Your lease of `wid` ends: "recall" (give it back) or "died"."""
    wid: str
    why: str

    def check(self) -> str:
        return "" if c.is_wid(self.wid) and self.why in ("recall", "died") else "bad lease end"


@message(35)
class LeaseReturn:
    """(driver -> node) I send `wid` nothing more; my notices went before."""
    wid: str

    def check(self) -> str:
        return "" if c.is_wid(self.wid) else "bad worker id"


@message(18)
class Batch:
    """Several encoded messages for one client, sent as one frame (in order)."""
    messages: list

    def check(self) -> str:
        if len(self.messages) > c.MAX_IDS or not all(
                type(m) is bytes and m[:1] != self.KIND_BYTE for m in self.messages):
            return "a batch holds encoded messages (and no batches)"
        return ""


# -- between nodes, the log listener, pulls: protocol_peers.py ------------------------

from .protocol_peers import (  # noqa: E402,F401  (re-exported: the wire's one face)
    Gossip, GcsUpdate, Spill, SpillCheck, Refuse, TaskResult, FreeObjects, LogLines,
    Listen, PullChunk, Chunk, MAX_CHUNK, encode_chunk, decode_chunk)

MESSAGES = registry()
