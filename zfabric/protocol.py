"""Every message zfabric sends, and the only code that builds or parses frames.

A message travels as one ZeroMQ frame: a kind byte naming the message class,
then its fields as a msgpack array in declared order. Payload fields
(`FRAMES`, then a variable list `VAR_FRAMES`) are declared last; they hold
inline object blobs and error records, all below the inline threshold
(bulk object data moves through the store, never through these messages).

`decode` checks the kind, the arity and every field's type before a
message reaches the node; anything malformed raises `ProtocolError` (the node
counts and drops it). Nothing here is ever unpickled: pickled user data rides
in payload frames and is opened only by the process that runs or gets it.

Who sends what (client = a driver or a worker on the node's machine):

    client -> node   Hello Submit Subscribe Put Refs Cancel Blocked Unblocked
                     TaskDone Revoked (workers) Request Shutdown Goodbye
    node -> client   Welcome ObjectReady PutReply Reply Execute Revoke (workers), or
                     a Batch of them when several are due at once
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import msgpack

NUM = (int, float)
OPT_BYTES = (bytes, type(None))
OPT_STR = (str, type(None))
ANY = object  # any msgpack value (already safe once decoded)


class ProtocolError(ValueError):
    """A message that does not match its schema."""


_REGISTRY: dict[int, type] = {}


def message(kind: int, frames: tuple[str, ...] = (), var_frames: str | None = None):
    """Class decorator: register a dataclass as wire message `kind`.

    `frames` and `var_frames` name the bytes-like payload fields; they are
    declared last, in that order, so a message is built positionally.
    """
    def wrap(cls):
        cls = dataclass(slots=True)(cls)
        names = [f.name for f in fields(cls)]
        payload = list(frames) + ([var_frames] if var_frames else [])
        header = tuple(n for n in names if n not in payload)
        if list(header) + payload != names:
            raise RuntimeError(f"{cls.__name__}: payload fields must come last")
        cls.KIND = kind
        cls.KIND_BYTE = bytes([kind])
        cls.HEADER = header
        cls.FRAMES = frames
        cls.VAR_FRAMES = var_frames
        hints = cls.__annotations__
        cls.TYPES = tuple(_TYPE_OF[hints[n]] for n in header)
        cls.CHECKS = tuple((i, n, t) for i, (n, t) in enumerate(zip(header, cls.TYPES))
                           if t is not ANY)
        cls.ARITY = len(names)
        if kind in _REGISTRY:
            raise RuntimeError(f"message kind {kind} registered twice")
        _REGISTRY[kind] = cls
        return cls
    return wrap


_TYPE_OF = {
    "bytes": bytes, "str": str, "int": int, "float": NUM, "bool": bool,
    "list": list, "dict": dict, "bytes | None": OPT_BYTES, "str | None": OPT_STR,
    "object": ANY,
}

_packer = msgpack.Packer(use_bin_type=True)
_pack = _packer.pack


def encode(msg) -> bytes:
    """A message as one frame: kind byte + msgpack array of its fields.

    Payloads here are small (objects above the inline threshold never travel
    in control messages), so one frame beats one zmq send call per field.
    """
    cls = type(msg)
    return cls.KIND_BYTE + _pack([getattr(msg, n) for n in cls.__slots__])


def decode(data: bytes):
    """The message in one frame; ProtocolError if it does not match its schema."""
    if len(data) < 2 or data[0] not in _REGISTRY:
        raise ProtocolError(f"unknown message kind {bytes(data[:1])!r}")
    cls = _REGISTRY[data[0]]
    try:
        values = msgpack.unpackb(memoryview(data)[1:], raw=False, use_list=True,
                                 strict_map_key=False)
    except Exception as e:
        raise ProtocolError(f"{cls.__name__}: undecodable message ({e})") from None
    if type(values) is not list or len(values) != cls.ARITY:
        raise ProtocolError(f"{cls.__name__}: expected a list of {cls.ARITY} fields")
    for i, name, want in cls.CHECKS:
        if not isinstance(values[i], want):
            raise ProtocolError(f"{cls.__name__}.{name}: expected {want}, "
                                f"got {type(values[i]).__name__}")
    nheader = len(cls.HEADER)
    for i in range(nheader, nheader + len(cls.FRAMES)):
        if not isinstance(values[i], bytes):
            raise ProtocolError(f"{cls.__name__}.{cls.__slots__[i]}: expected bytes")
    if cls.VAR_FRAMES is not None:
        last = values[-1]
        if type(last) is not list or not all(isinstance(b, bytes) for b in last):
            raise ProtocolError(f"{cls.__name__}.{cls.VAR_FRAMES}: expected a list of bytes")
    msg = cls(*values)
    check = getattr(cls, "check", None)
    if check is not None:
        problem = check(msg)
        if problem:
            raise ProtocolError(f"{cls.__name__}: {problem}")
    return msg


MAX_RETURNS = 10_000


def _ids(values, size: int) -> bool:
    return all(type(v) is bytes and len(v) == size for v in values)


# -- handshake ----------------------------------------------------------------

@message(1)
class Hello:
    role: str              # "driver" | "worker" | "tool"
    pid: int
    worker_id: str | None  # set by workers: the id the node spawned them with


@message(2)
class Welcome:
    node_id: bytes
    store_dir: str
    session_dir: str
    address: str
    config: str            # the node's Config as JSON
    node_pid: int


# -- tasks ----------------------------------------------------------------------

@message(3, frames=("fn_blob", "args_blob", "retry_blob"))
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

    def check(self) -> str:
        if len(self.task_id) != 16 or not 0 <= self.num_returns <= MAX_RETURNS:
            return "bad task id or num_returns"
        if self.max_retries < -1 or self.depth < 0 or len(self.fn_id) != 16:
            return "bad max_retries, depth or function id"
        for k, v in self.resources.items():
            if type(k) is not str or isinstance(v, bool) or not isinstance(v, NUM) or v < 0:
                return "resources must map names to amounts >= 0"
        if not (_ids(self.deps, 20) and _ids(self.contained, 20)):
            return "deps and contained must be object ids"
        return ""


@message(4, frames=("fn_blob", "args_blob", "retry_blob"), var_frames="dep_payloads")
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


@message(5, var_frames="payloads")
class TaskDone:
    task_id: bytes
    status: int            # TaskStatus
    retryable: bool        # the error may be retried (retry_exceptions matched)
    states: list           # ObjectState per return
    sizes: list
    contained: list        # list of lists of ObjectIDs, per return
    start: float
    end: float
    payloads: list         # per return: inline blob, or b"" (STORE), or error record

    def check(self) -> str:
        n = len(self.states)
        if len(self.sizes) != n or len(self.contained) != n or len(self.payloads) < n:
            return "returns described inconsistently"
        if not all(type(c) is list and _ids(c, 20) for c in self.contained):
            return "contained must be lists of object ids"
        if not all(type(x) is int and x >= 0 for x in self.sizes + self.states):
            return "bad sizes or states"
        return ""


@message(6)
class Cancel:
    oid: bytes
    force: bool
    recursive: bool

    def check(self) -> str:
        return "" if len(self.oid) == 20 else "bad object id"


@message(19)
class Revoke:
    """(node -> worker) Do not start this prefetched task; say Revoked if you had not."""
    task_id: bytes


@message(20)
class Revoked:
    """(worker -> node) The prefetched task was dropped unstarted."""
    task_id: bytes


@message(7)
class Blocked:
    task_id: bytes


@message(8)
class Unblocked:
    task_id: bytes


# -- objects ----------------------------------------------------------------------

@message(9)
class Subscribe:
    ids: list

    def check(self) -> str:
        return "" if _ids(self.ids, 20) else "ids must be object ids"


@message(10, frames=("payload",))
class ObjectReady:
    oid: bytes
    state: int
    size: int
    payload: bytes         # inline blob or error record; empty for STORE


@message(11, frames=("payload",))
class Put:
    oid: bytes
    state: int             # INLINE (payload is the blob) or STORE (file written)
    size: int
    contained: list
    req_id: int            # 0: no reply wanted
    payload: bytes

    def check(self) -> str:
        if len(self.oid) != 20 or not _ids(self.contained, 20) or self.size < 0:
            return "bad object id, contained ids or size"
        return ""


@message(12)
class PutReply:
    req_id: int
    error: str             # "" on success


@message(13)
class Refs:
    incs: list
    decs: list

    def check(self) -> str:
        return "" if _ids(self.incs, 20) and _ids(self.decs, 20) else "bad object ids"


# -- queries and control -------------------------------------------------------------

@message(14)
class Request:
    req_id: int
    what: str              # "nodes" | "resources" | "timeline" | "status"
    arg: object


@message(15)
class Reply:
    req_id: int
    data: object
    error: str


@message(16)
class Shutdown:
    """Stop the node (its embedded driver leaving, or `zfabric stop`)."""
    reason: str


@message(17)
class Goodbye:
    """A client detaches: drop its references and cancel its pending tasks."""
    reason: str


@message(18)
class Batch:
    """Several encoded messages for one client, sent as one frame (in order)."""
    messages: list

    def check(self) -> str:
        if not all(type(m) is bytes and m[:1] != self.KIND_BYTE for m in self.messages):
            return "a batch holds encoded messages (and no batches)"
        return ""


MESSAGES = dict(_REGISTRY)
