"""Values <-> bytes: cloudpickle protocol 5 with out-of-band buffers.

One layout serves both places an object lives: inside a message (objects up
to `Config.inline_threshold`) and in a store file (`node/store.py`):

    offset 0   header  <4sHHIIQQ  magic "ZFO1", version, flags, nbuf,
                                  crc32(header+table), pickle_len, total_len
    offset 32  table   nbuf x <QQ (offset, length) of each buffer
    then       the pickle stream
    then       each out-of-band buffer, starting at a multiple of 64

`deserialize(view)` unpickles with the buffers pointing *into* `view`: when
`view` is a read-only mmap, numpy arrays come back as zero-copy read-only
views of shared memory.

The pickler writes into a `_Sink` that keeps what it is handed: a large
bytes, bytearray or str inside the value is kept by reference, not copied,
so a big value is copied once, into its store file (`store.write`), however
it is pickled. `serialize(value, limit)` gives up (None) as soon as the
pickle passes `limit` bytes: what it costs to find a value too big to
travel inline is bounded by the limit, not by the value.

While a value is serialized, every ObjectRef pickled inside it is noted
(`ObjectRef.__reduce__` calls `note_ref`) so the node can keep those objects
alive as long as the containing one: `Serialized.contained`.

Errors travel as error records (zfabric/records.py: msgpack around an
optional cloudpickled exception); this module makes one from an exception
and turns one back into the exception `get` raises.
"""
from __future__ import annotations

import pickle
import struct
import threading
import traceback
import zlib

import cloudpickle

from . import exceptions, records

MAGIC = b"ZFO1"
VERSION = 1
_HEADER = struct.Struct("<4sHHIIQQ")
_ENTRY = struct.Struct("<QQ")
HEADER_SIZE = _HEADER.size  # 32
ALIGN = 64  # out-of-band buffers start on a cache line (what numpy's SIMD loops like)

_SIMPLE = (type(None), bool, int, float, str, bytes)
_SIZED = (str, bytes)
_IN_PLACE = 1 << 16   # a bytes or str this long is pickled by reference (_Sink), not copied
_PLAIN_TYPES = set(_SIMPLE)   # pickled by the C pickler (register_plain adds to them)
_PLAIN_MAX = 32               # elements of a tuple, list or dict checked for that
_local = threading.local()


class CorruptObjectError(ValueError):
    """A blob or store file does not hold a valid zfabric object."""


def note_ref(oid: bytes) -> None:
    """Called by ObjectRef.__reduce__: record a ref pickled inside a value."""
    refs = getattr(_local, "refs", None)
    if refs is not None:
        refs.append(oid)


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


_NO_LIMIT = 1 << 62


class _TooBig(Exception):
    """The pickle passed the limit it was given (serialize(value, limit))."""


class _Sink:
    """The pickler's output: the pieces it writes, kept as they are (a large
    bytes object inside the value is handed over whole, and not copied)."""
    __slots__ = ("pieces", "size", "limit", "buffers")

    def __init__(self, limit: int | None):
        self.pieces: list = []
        self.size = 0          # pickle bytes + out-of-band buffer bytes so far
        self.limit = _NO_LIMIT if limit is None else limit
        self.buffers: list = []

    def write(self, data) -> int:
        kind = type(data)
        if kind is not bytes and kind is not bytearray:
            data = bytes(data)   # (a view of memory the pickler reuses: keep a copy)
        self.size += len(data)
        if self.size > self.limit:
            raise _TooBig
        self.pieces.append(data)
        return len(data)

    def buffer(self, buf) -> None:
        raw = buf.raw()
        self.size += raw.nbytes
        if self.size > self.limit:
            raise _TooBig
        self.buffers.append(raw)


class Serialized:
    """A value's pickle stream (a list of bytes-like pieces), its out-of-band
    buffers and the refs inside it."""
    __slots__ = ("pickle", "pickle_len", "buffers", "contained", "offsets", "size")

    def __init__(self, pieces: list, buffers: list, contained: list[bytes]):
        self.pickle = pieces
        self.pickle_len = plen = len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))
        self.buffers = buffers
        self.contained = contained
        pos = HEADER_SIZE + _ENTRY.size * len(buffers) + plen
        offsets = []
        for buf in buffers:
            pos = _align(pos)
            offsets.append(pos)
            pos += buf.nbytes
        self.offsets = offsets
        self.size = pos

    def header(self) -> bytes:
        plen, size, nbuf = self.pickle_len, self.size, len(self.buffers)
        if not nbuf:   # (a small value's: no table)
            return _HEADER.pack(MAGIC, VERSION, 0, 0, zlib.crc32(
                _HEADER.pack(MAGIC, VERSION, 0, 0, 0, plen, size)), plen, size)
        table = b"".join(_ENTRY.pack(off, buf.nbytes)
                         for off, buf in zip(self.offsets, self.buffers))
        draft = _HEADER.pack(MAGIC, VERSION, 0, nbuf, 0, plen, size)
        crc = zlib.crc32(table, zlib.crc32(draft))
        return _HEADER.pack(MAGIC, VERSION, 0, nbuf, crc, plen, size) + table

    def pieces(self) -> list:
        """The whole blob as contiguous bytes-like pieces, in order: the header,
        the pickle, then each buffer after the zero bytes that align it."""
        out = [self.header(), *self.pickle]
        pos = HEADER_SIZE + _ENTRY.size * len(self.buffers) + self.pickle_len
        for off, buf in zip(self.offsets, self.buffers):
            if off > pos:
                out.append(bytes(off - pos))
            out.append(buf)
            pos = off + buf.nbytes
        return out

    def to_bytes(self) -> bytes:
        head = self.header()
        if not self.buffers:
            pieces = self.pickle
            return head + pieces[0] if len(pieces) == 1 else b"".join([head, *pieces])
        out = bytearray(self.size)   # (zeros between the pieces: the alignment padding)
        pos = len(head)
        out[:pos] = head
        for piece in self.pickle:
            out[pos:pos + len(piece)] = piece
            pos += len(piece)
        for off, buf in zip(self.offsets, self.buffers):
            out[off:off + buf.nbytes] = buf
        return bytes(out)


def register_plain(cls: type) -> None:
    """Let the C pickler write instances of `cls` (an importable class whose
    pickle holds only plain values), as it writes ints and short strings."""
    _PLAIN_TYPES.add(cls)


def _plain(value, depth: int = 2) -> bool:
    """Does the C pickler write `value` as cloudpickle would? Plain values (short
    str and bytes), and tuples, lists and str-keyed dicts of them up to `depth`
    levels, each at most _PLAIN_MAX long: a task's arguments `([1, 'a'], {})`
    are; a function, an instance of a class of the driver's script, or an
    ObjectRef inside them are not (cloudpickle writes those by value, or
    notes the ref)."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return kind not in _SIZED or len(value) < _IN_PLACE
    if not depth or kind not in (tuple, list, dict) or len(value) > _PLAIN_MAX:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, depth - 1) for k, v in value.items())
    return all(_plain(v, depth - 1) for v in value)


def serialize(value, limit: int | None = None) -> Serialized | None:
    """Pickle `value` (cloudpickle, protocol 5, out-of-band buffers; plain values
    with the C pickler, which writes them the same); None if `limit` is given
    and the value's serialized size would pass it (found after pickling at
    most about `limit` bytes)."""
    if _plain(value):
        ser = Serialized([pickle.dumps(value, 5)], [], [])
        return None if limit is not None and ser.size > limit else ser
    sink = _Sink(limit)
    outer = getattr(_local, "refs", None)
    _local.refs = refs = []
    try:
        cloudpickle.Pickler(sink, protocol=5, buffer_callback=sink.buffer).dump(value)
    except _TooBig:
        return None
    finally:
        _local.refs = outer
    ser = Serialized(sink.pieces, sink.buffers, refs)
    return None if limit is not None and ser.size > limit else ser


def dumps(value) -> bytes:
    """serialize(value).to_bytes(): the inline form."""
    return serialize(value).to_bytes()


def parse_header(view) -> tuple[int, list[tuple[int, int]], int, int]:
    """Validate a blob's header; return (pickle_offset, buffer table, pickle_len, total)."""
    if len(view) < HEADER_SIZE:
        raise CorruptObjectError("object is shorter than its header")
    magic, version, _flags, nbuf, crc, plen, total = _HEADER.unpack_from(view, 0)
    if magic != MAGIC or version != VERSION:
        raise CorruptObjectError("not a zfabric object (bad magic or version)")
    table_end = HEADER_SIZE + _ENTRY.size * nbuf
    if table_end > len(view) or total > len(view):
        raise CorruptObjectError("object is truncated")
    draft = _HEADER.pack(magic, version, _flags, nbuf, 0, plen, total)
    if not nbuf:   # (a small value's: no table)
        if zlib.crc32(draft) != crc:
            raise CorruptObjectError("object header checksum mismatch")
        if table_end + plen > total:
            raise CorruptObjectError("object layout points outside the object")
        return table_end, [], plen, total
    if zlib.crc32(view[HEADER_SIZE:table_end], zlib.crc32(draft)) != crc:
        raise CorruptObjectError("object header checksum mismatch")
    table = [_ENTRY.unpack_from(view, HEADER_SIZE + i * _ENTRY.size) for i in range(nbuf)]
    if table_end + plen > total or any(off + n > total for off, n in table):
        raise CorruptObjectError("object layout points outside the object")
    return table_end, table, plen, total


def deserialize(blob):
    """Unpickle a blob (bytes, or a memoryview of an mmap for zero copy)."""
    view = memoryview(blob)
    start, table, plen, _total = parse_header(view)
    if not table:
        return pickle.loads(view[start:start + plen])
    return pickle.loads(view[start:start + plen], buffers=[view[off:off + n] for off, n in table])


# -- errors -----------------------------------------------------------------

def error_record(exc: BaseException, function_name: str, tb_text: str | None = None) -> bytes:
    """Describe an exception raised by a task, for `get` to re-raise elsewhere."""
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    why = ""
    try:
        pickled = cloudpickle.dumps(exc)
        pickle.loads(pickled)  # an exception that cannot round-trip travels as text
    except Exception as e:
        pickled, why = None, f"it does not pickle and unpickle: {type(e).__name__}: {e}"
    return records.make(type(exc).__name__, str(exc), traceback=tb_text,
                        function=function_name, exc=pickled, exc_error=why)


def error_from_record(record: bytes) -> BaseException:
    """The exception `get` raises for an error record."""
    data = records.fields(record)
    context = data.get("context") or []
    system = data.get("system")
    if system:
        cls = exceptions.SYSTEM_ERRORS.get(system, exceptions.ZFabricError)
        msg = data["message"]
        if context:
            msg = f"{context[-1]}: {msg}"
        return cls(msg)
    tb_text = data.get("traceback", "")
    if data.get("exc") is not None:
        try:
            cause = pickle.loads(data["exc"])
        except Exception as e:
            cause = exceptions.UnserializableException(
                data["type"], data["message"], tb_text,
                f"it does not unpickle here: {type(e).__name__}: {e}")
    else:
        cause = exceptions.UnserializableException(data["type"], data["message"], tb_text,
                                                   data.get("exc_error") or "")
    message = data["message"]
    if context:
        message = "; ".join(reversed(context)) + f" ({data['type']}: {message})"
    err = exceptions.TaskError(data.get("function", ""), tb_text, cause, data["type"], message)
    return err.as_instanceof_cause()


def error_of_object(oid: bytes, record: bytes) -> BaseException:
    """The exception a get of a failed object raises: its record's, or a clear
    ZFabricError if the record (bytes from the node: any flaw is its) does not read."""
    try:
        return error_from_record(record)
    except Exception as e:
        return exceptions.ZFabricError(f"object {oid.hex()} failed, and its error record "
                                       f"cannot be read ({type(e).__name__}: {e})")


__all__ = ["Serialized", "serialize", "dumps", "deserialize", "parse_header",
           "error_record", "error_from_record", "error_of_object", "note_ref", "CorruptObjectError"]
