"""The messages between nodes, the log listener's, and the pull of chunks: part
of the wire protocol, which `protocol.py` re-exports (import them from there).

Split from protocol.py by concern, as protocol_codec.py (frames) and
protocol_checks.py (field checks) are: what travels between a node's
DEALER and a peer's scheduler ROUTER (Gossip, GcsUpdate, Spill, SpillCheck,
Refuse, TaskResult, FreeObjects, LogLines; Cancel is a client message, in
protocol.py), a driver's log listener (Listen), and between a puller and a
holder's object ROUTER (PullChunk, Chunk: `encode_chunk` / `decode_chunk`).
protocol.py's docstring says who sends what.
"""
from __future__ import annotations

from dataclasses import field

from . import protocol_checks as c
from .ids import TASK_ID_SIZE
from .protocol_checks import is_node_id, is_oid, is_tid, text
from .protocol_codec import ProtocolError, decode, encode, message


@message(21)
class Gossip:
    """Membership rows and the sender's GCS version vector (anti-entropy).

    The receiver merges the rows and answers with the GCS updates the sender
    lacks; with `reply` set (a join, or a probe) it also gossips back at once.
    """
    sender: bytes
    rows: list             # core.membership rows
    vector: dict           # {shard node id: last applied seq}
    reply: bool

    def check(self) -> str:
        if not is_node_id(self.sender) or len(self.rows) > c.MAX_ROWS or not all(
                type(r) is list for r in self.rows):
            return "bad sender or rows"
        if len(self.vector) > c.MAX_ROWS or not all(
                is_node_id(k) and type(v) is int for k, v in self.vector.items()):
            return "vector must map shard ids to sequence numbers"
        return ""


@message(22)
class GcsUpdate:
    """GCS records (deltas or a snapshot of one shard each), see core/gcs.py."""
    sender: bytes
    records: list

    def check(self) -> str:
        if not is_node_id(self.sender) or len(self.records) > c.MAX_RECORDS:
            return "bad sender or too many records"
        return "" if all(type(r) is list for r in self.records) else "records must be lists"


@message(23, frames=("fn_blob", "args_blob", "retry_blob"), var_frames="dep_payloads",
          trailer=("opts",))
class Spill:
    """A ready task forwarded by its owner to run on the receiving node.

    Arguments travel as the owner sees them: inline ones in `dep_payloads`,
    stored ones as (size, holder node ids) for the receiver to pull.
    """
    owner: bytes
    reply_to: str          # the owner's address (the receiver may not know it yet)
    task_id: bytes
    name: str
    fn_id: bytes
    num_returns: int
    resources: dict
    max_retries: int       # retries left for worker crashes on the receiving node
    retry_exceptions: bool
    depth: int
    start_now: bool        # sent for locality: refuse unless it can start at once
    dep_ids: list
    dep_states: list
    dep_sizes: list
    dep_holders: list      # per dep: holder node ids (STORE), else []
    fn_blob: bytes         # empty if the owner sent this function to the receiver before
    args_blob: bytes
    retry_blob: bytes
    dep_payloads: list
    opts: dict = field(default_factory=dict)

    def check(self) -> str:
        if not is_node_id(self.owner) or self.max_retries < -1:
            return "bad owner or max_retries"
        if not (self.reply_to == "" or c.is_address(self.reply_to)):
            return "bad reply address"
        if not c.amounts(self.resources, nonneg=True):
            return "resources must map names to finite amounts >= 0"
        n = len(self.dep_ids)
        if len(self.dep_sizes) != n or len(self.dep_holders) != n:
            return "dependencies described inconsistently"
        if not all(type(x) is int and x >= 0 for x in self.dep_sizes):
            return "bad dependency sizes"
        if not all(c.node_ids(h) for h in self.dep_holders):
            return "dependency holders must be lists of node ids"
        return (c.deps_problem(self) or c.spec_problem(self)
                or c.submitted_opts_problem(self.opts, spill=True))


@message(29)
class SpillCheck:
    """(owner -> peer) These tasks of mine should be with you; answer Refuse for
    any you do not have (its Spill or its TaskResult was lost): the owner
    then runs it again."""
    sender: bytes
    task_ids: list

    def check(self) -> str:
        if not is_node_id(self.sender):
            return "bad sender"
        return "" if c.tids(self.task_ids) else f"task ids must be {TASK_ID_SIZE} bytes"


@message(25)
class Refuse:
    """Spillback: the receiver cannot take the task now; `available` is its view."""
    sender: bytes
    task_id: bytes
    available: dict

    def check(self) -> str:
        if not is_node_id(self.sender) or not is_tid(self.task_id):
            return "bad sender or task id"
        if not c.amounts(self.available, nonneg=False):
            return "available must map resource names to numbers"
        return ""


@message(24, var_frames="payloads")
class TaskResult:
    """A spilled task ended on `sender`: its returns, as TaskDone describes them.

    A STORE return stays in the sender's store (the owner pulls it when needed).
    """
    sender: bytes
    task_id: bytes
    status: int
    states: list
    sizes: list
    contained: list        # per return: refs in its value (the owner keeps those it knows)
    payloads: list

    def check(self) -> str:
        if not is_node_id(self.sender) or not is_tid(self.task_id):
            return "bad sender or task id"
        return c.returns_problem(self)


@message(26)
class FreeObjects:
    """The owner freed these objects: drop your copies."""
    sender: bytes
    ids: list

    def check(self) -> str:
        if not is_node_id(self.sender):
            return "bad sender"
        return "" if c.oids(self.ids) else "ids must be object ids"


@message(30)
class LogLines:
    """Lines tasks printed, on their way to the driver whose job they are:
    from the node that ran them to the driver's node (peer), and from there
    to the driver's log listener. `output`: runs of lines, each [name, pid,
    stream (1 stdout, 2 stderr), lines, dropped]; `dropped`: lines of that
    worker skipped just before these (it printed faster than they travel).
    With no output: the node's answer to a Listen."""
    sender: bytes          # the node whose worker printed them
    job: bytes
    output: list

    def check(self) -> str:
        if not is_node_id(self.sender) or not c.is_job(self.job):
            return "bad sender or job"
        return c.output_problem(self.output)


@message(31)
class Listen:
    """(a driver's log listener -> its node) Send me the output of `job`'s
    tasks (`on`), or no more (`on` False). Answered by a LogLines without
    output; to `on` False, after every line the node had read for the job."""
    job: bytes
    on: bool

    def check(self) -> str:
        return "" if c.is_job(self.job) else "bad job"


MAX_CHUNK = 1 << 30


def _chunk_range_problem(msg) -> str:
    """What is wrong with the object range a PullChunk or Chunk names."""
    if not is_oid(msg.oid) or not c.count(msg.offset, 1 << 62) or not c.count(msg.length, MAX_CHUNK):
        return "bad object id, offset or length"
    return ""


@message(27)
class PullChunk:
    """(puller -> holder's object ROUTER) Send bytes [offset, offset+length) of oid."""
    oid: bytes
    offset: int
    length: int

    def check(self) -> str:
        return _chunk_range_problem(self)


@message(28)
class Chunk:
    """(holder -> puller) The header of a chunk; the bytes follow as the next frame."""
    oid: bytes
    offset: int
    length: int
    error: str             # non-empty: the holder cannot serve it (no data frame)

    def check(self) -> str:
        return _chunk_range_problem(self) or ("" if text(self.error) else "error too long")


def encode_chunk(oid: bytes, offset: int, data, error: str = "") -> list:
    """The frames answering a PullChunk: header, then the bytes (sent zero-copy)."""
    if error:
        return [encode(Chunk(oid, offset, 0, error))]
    return [encode(Chunk(oid, offset, len(data), "")), data]


def decode_chunk(frames: list):
    """(Chunk header, data buffer or None) from the frames of an answer."""
    head = decode(frames[0].bytes if hasattr(frames[0], "bytes") else frames[0])
    if type(head) is not Chunk:
        raise ProtocolError(f"expected a Chunk, got {type(head).__name__}")
    if head.error:
        return head, None
    if len(frames) != 2:
        raise ProtocolError("a Chunk needs exactly one data frame")
    data = frames[1].buffer if hasattr(frames[1], "buffer") else memoryview(frames[1])
    if data.nbytes != head.length:
        raise ProtocolError("chunk length does not match its header")
    return head, data

