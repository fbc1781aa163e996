"""Every message zfabric sends, and the only code that builds or parses frames.

A message travels as ZeroMQ frames `[kind, header, *payload]`:
- `kind`: one byte naming the message class;
- `header`: the message's plain fields as a msgpack array, in declared order;
- `payload`: bytes-like fields (`FRAMES`, then a variable list `VAR_FRAMES`)
  sent as their own frames, so object data is never copied into a header.

`decode` checks the kind, the header's arity and every field's type before a
message reaches the node; anything malformed raises `ProtocolError` (the node
counts and drops it). Nothing here is ever unpickled: pickled user data rides
in payload frames and is opened only by the process that runs or gets it.

Who sends what (client = a driver or a worker on the node's machine):

    client -> node   Hello Submit Subscribe Put Refs Cancel Blocked Unblocked
                     TaskDone (workers) Request Shutdown Goodbye
    node -> client   Welcome ObjectReady PutReply Reply Execute (workers)
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
    """Class decorator: register a dataclass as wire message `kind`."""
    def wrap(cls):
        cls = dataclass(slots=True)(cls)
        names = [f.name for f in fields(cls)]
        payload = set(frames) | ({var_frames} if var_frames else set())
        cls.KIND = kind
        cls.KIND_FRAME = bytes([kind])
        cls.HEADER = tuple(n for n in names if n not in payload)
        cls.FRAMES = frames
        cls.VAR_FRAMES = var_frames
        hints = cls.__annotations__
        cls.TYPES = tuple(_TYPE_OF[hints[n]] for n in cls.HEADER)
        if kind in _REGISTRY:
            raise RuntimeError(f"message kind {kind} registered twice")
        _REGISTRY[kind] = cls
        return cls
    return wrap


_TYPE_OF = {
    "bytes": bytes, "str": str, "int": int, "float": NUM, "bool": bool,
    "list": list, "dict": dict, "bytes | None": OPT_BYTES, "str | None": OPT_STR,
    "object": ANY, "memoryview": None,
}

_pack = msgpack.Packer(use_bin_type=True).pack


def encode(msg) -> list:
    cls = type(msg)
    out = [cls.KIND_FRAME, _pack([getattr(msg, n) for n in cls.HEADER])]
    for n in cls.FRAMES:
        out.append(getattr(msg, n))
    if cls.VAR_FRAMES:
        out.extend(getattr(msg, cls.VAR_FRAMES))
    return out


def decode(frames: list):
    if len(frames) < 2:
        raise ProtocolError("message has fewer than 2 frames")
    kind = frames[0]
    if len(kind) != 1 or kind[0] not in _REGISTRY:
        raise ProtocolError(f"unknown message kind {bytes(kind[:4])!r}")
    cls = _REGISTRY[kind[0]]
    try:
        header = msgpack.unpackb(frames[1], raw=False, use_list=True,
                                 strict_map_key=False)
    except Exception as e:
        raise ProtocolError(f"{cls.__name__}: undecodable header ({e})") from None
    if type(header) is not list or len(header) != len(cls.HEADER):
        raise ProtocolError(f"{cls.__name__}: header must be a list of {len(cls.HEADER)}")
    for name, want, value in zip(cls.HEADER, cls.TYPES, header):
        if want is not ANY and not isinstance(value, want):
            raise ProtocolError(f"{cls.__name__}.{name}: expected {want}, "
                                f"got {type(value).__name__}")
    nfixed = len(cls.FRAMES)
    payload = frames[2:]
    if len(payload) < nfixed or (cls.VAR_FRAMES is None and len(payload) != nfixed):
        raise ProtocolError(f"{cls.__name__}: wrong number of payload frames")
    kwargs = dict(zip(cls.HEADER, header))
    kwargs.update(zip(cls.FRAMES, payload))
    if cls.VAR_FRAMES:
        kwargs[cls.VAR_FRAMES] = payload[nfixed:]
    return cls(**kwargs)


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


@message(6)
class Cancel:
    oid: bytes
    force: bool
    recursive: bool


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


@message(12)
class PutReply:
    req_id: int
    error: str             # "" on success


@message(13)
class Refs:
    incs: list
    decs: list


# -- queries and control -------------------------------------------------------------

@message(14)
class Request:
    req_id: int
    what: str              # "nodes" | "resources" | "timeline" | "status" | "memory"
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


MESSAGES = dict(_REGISTRY)
