"""Puts: a value into the node's store (or inline), and a task's large arguments.

    driver/worker (Client)                                   node
    ----------------------                                   ----
    put(value): pickle once --> store file (.tmp, pwritev, rename)
                Put(oid, STORE, size, contained, req_id) -->  ObjectDirectory.put
                <-- PutReply ("" or why the store is full: ObjectStoreFullError)

    f.remote(big): each large argument pickled once --> store file
                Put(oid, STORE, size, contained, req_id=0) --> (no reply)
                Submit(deps=[oid, ...]) ---------------------> (same socket, after it)

A value is pickled once (serialization.py keeps large pieces by reference)
and its bytes are copied once, into the store file. `zf.put` waits for the
node's answer, so that a full store raises `ObjectStoreFullError` at the
put. A task's argument does not wait: its Put leaves on the same ordered
socket as the Submit that names it, so the node has sealed the object
before it reads the Submit; if the store cannot take it, the node makes the
object an `ObjectStoreFullError`, which the task's refs then raise (an
input that could not be computed).

Called by Client.put (zfabric.put, runtime_env packages) and by api's
`RemoteFunction.remote` for arguments too large to travel inline.
"""
from __future__ import annotations

from .. import protocol as p
from .. import serialization
from ..exceptions import ObjectStoreFullError
from ..ids import new_put_id
from ..protocol import ObjectState
from ..ref import DepMarker, ObjectRef
from . import store


def put(client, value, in_store: bool = False) -> ObjectRef:
    """Put a value; a small one travels inline unless `in_store` (then it is a
    store file even when small: runtime_env packages, which every task of an
    env names, need not ride in each task's messages)."""
    return put_serialized(client, serialization.serialize(value), in_store=in_store)


def put_serialized(client, ser: serialization.Serialized, *, in_store: bool = False,
                   wait: bool = True) -> ObjectRef:
    """Put a serialized value. `wait=False`: do not wait for the node's answer
    (a store object the node cannot take becomes an ObjectStoreFullError)."""
    oid = new_put_id()
    if ser.size <= client.inline_threshold and not in_store:
        blob = ser.to_bytes()
        ref = ObjectRef(oid, client)
        client.hold(oid, (ObjectState.INLINE, len(blob), blob))
        client.send(p.Put(oid, int(ObjectState.INLINE), len(blob), ser.contained, 0, blob))
        return ref
    size = store.write(client.store_dir, oid, ser)
    if not wait:
        ref = ObjectRef(oid, client)
        client.hold(oid, None)
        client.send(p.Put(oid, int(ObjectState.STORE), size, ser.contained, 0, b""))
        return ref
    reply = client.call(lambda req: p.Put(oid, int(ObjectState.STORE), size, ser.contained,
                                          req, b""), p.PutReply, None)
    if reply.error:
        raise ObjectStoreFullError(reply.error)
    ref = ObjectRef(oid, client)
    client.hold(oid, (ObjectState.STORE, size, b""))
    return ref


def serialize_args(margs: list, mkwargs: dict, threshold: int):
    """(Serialized, {}) of (margs, mkwargs) if it fits inline; else (None, {position
    or keyword: Serialized}) of the arguments whose pickle is larger than
    `threshold`. Each large argument is pickled once (put_large writes that
    pickle): an array, bytes or str known to be large by its length is not
    tried inline; another (a long list...) costs a pickle of at most
    `threshold` bytes of the whole before its own."""
    for value in (margs if not mkwargs else [*margs, *mkwargs.values()]):
        kind = type(value)
        if (len(value) > threshold if kind in _SIZED else
                kind.__name__ == "ndarray" and value.nbytes > threshold):
            break
    else:
        ser = serialization.serialize((margs, mkwargs), threshold)
        if ser is not None:
            return ser, {}
    large = {}
    for key, value in [*enumerate(margs), *mkwargs.items()]:
        if type(value) is not DepMarker:
            ser = serialization.serialize(value)
            if ser.size > threshold:
                large[key] = ser
    return None, large


_SIZED = frozenset((bytes, bytearray, str))   # (and numpy arrays: known large by length)


def put_large(client, margs: list, mkwargs: dict, large: dict, mark, keep: list):
    """Put each large argument (without waiting) and put its ObjectRef in its
    place (`mark`: a DepMarker, the ref listed in the task's deps); keep the
    refs in `keep` until the Submit is sent. The Serialized arguments."""
    for key, ser in large.items():
        ref = put_serialized(client, ser, wait=False)
        keep.append(ref)
        if type(key) is int:
            margs[key] = mark(ref)
        else:
            mkwargs[key] = mark(ref)
    return serialization.serialize((margs, mkwargs))
