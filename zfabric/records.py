"""Error records: the form in which an error travels between processes.

A task that raises, a worker that crashes, a store that is full: each
becomes an error record, a msgpack map that a node keeps as the failed
object's payload and sends on to whoever gets the object. The caller's
side turns it back into an exception (`serialization.error_from_record`).

    {"type": exception class name, "message": str, "traceback": str,
     "function": the task's name, "exc": the cloudpickled exception or None,
     "exc_error": why "exc" is None (the exception does not pickle), or "",
     "system": the zfabric exception class name for errors zfabric raises
               itself (else None), "context": ["an input of g() could not
               be computed", ...] (outermost last)}

Nothing here pickles or unpickles: nodes build and extend records without
ever opening user data (`exc` is opened only by the process that gets it).
"""
from __future__ import annotations

import msgpack


def make(type_name: str, message: str, *, traceback: str = "", function: str = "",
         exc: bytes | None = None, system: str | None = None, exc_error: str = "") -> bytes:
    """An error record (`exc`: the pickled exception, already serialized)."""
    return msgpack.packb({
        "type": type_name, "message": message, "traceback": traceback,
        "function": function, "exc": exc, "exc_error": exc_error, "system": system,
        "context": [],
    })


def system_error_record(cls: type, message: str, function_name: str = "") -> bytes:
    """An error zfabric itself raises (a crash, a cancel, a full store...):
    `cls` is one of zfabric.exceptions."""
    return make(cls.__name__, message, function=function_name, system=cls.__name__)


def error_with_context(record: bytes, context: str) -> bytes:
    """The same error, noting that it reached a task through an argument."""
    data = fields(record)
    data["context"] = list(data.get("context") or []) + [context]
    return msgpack.packb(data)


def fields(record: bytes) -> dict:
    """The record's fields, as `make` wrote them."""
    return msgpack.unpackb(record)
