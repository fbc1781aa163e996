"""How a wire message becomes one frame and back: the codec behind protocol.py.

A message is a `structs.struct` class registered with `@message(kind, ...)`: one kind
byte, then its fields as a msgpack array in declared order. `decode` checks
the kind, the arity and every field's type, then the message's own `check()`
(built from protocol_checks.py), and returns a checked message or raises
`ProtocolError`, nothing else. The messages themselves, and who sends which,
are in protocol.py, which re-exports `encode`, `decode` and `ProtocolError`.
"""
from __future__ import annotations

import msgpack

from .structs import struct

NUM = (int, float)
OPT_BYTES = (bytes, type(None))
OPT_STR = (str, type(None))
ANY = object  # any msgpack value (already safe once decoded)


class ProtocolError(ValueError):
    """A message that does not match its schema."""


_REGISTRY: dict[int, type] = {}


def message(kind: int, frames: tuple[str, ...] = (), var_frames: str | None = None,
            trailer: tuple[str, ...] = ()):
    """Class decorator: make `cls` a struct (structs.py) and register it as wire
    message `kind`.

    `frames` and `var_frames` name the bytes-like payload fields; they are
    declared after the header fields, in that order, so a message is built
    positionally. `trailer` names header fields with defaults declared after
    the payloads (`opts`): a message that does not need them leaves them out.
    """
    def wrap(cls):
        cls = struct(cls)
        names = list(cls._fields)
        payload = list(frames) + ([var_frames] if var_frames else [])
        header = tuple(n for n in names if n not in payload and n not in trailer)
        if list(header) + payload + list(trailer) != names:
            raise RuntimeError(f"{cls.__name__}: fields must be header, payloads, trailer")
        cls.KIND_BYTE = bytes([kind])
        cls.HEADER = header
        cls.FRAMES = frames
        cls.VAR_FRAMES = var_frames
        hints = cls.__annotations__
        checked = [(i, n) for i, n in enumerate(names) if n not in payload]
        cls.CHECKS = tuple((i, n, _TYPE_OF[hints[n]]) for i, n in checked
                           if _TYPE_OF[hints[n]] is not ANY)
        cls.VAR_INDEX = len(header) + len(frames) if var_frames else None
        cls.ARITY = len(names)
        cls.TYPES_OK = _types_check(cls)
        if "check" not in cls.__dict__:
            raise RuntimeError(f"{cls.__name__}: every message checks its fields (check())")
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

def _types_check(cls):
    """A function of a message's decoded field list: True if every field has its
    type (the fields `decode` checks one by one, in one compiled expression: the
    path of every message that is fine; the loop then says what is wrong)."""
    env, terms = {}, []
    for i, _name, want in cls.CHECKS:
        env[f"t{i}"] = want
        terms.append(f"isinstance(v[{i}], t{i})")
    n = len(cls.HEADER)
    terms += [f"type(v[{i}]) is bytes" for i in range(n, n + len(cls.FRAMES))]
    if cls.VAR_INDEX is not None:
        terms.append(f"type(v[{cls.VAR_INDEX}]) is list and "
                     f"all(type(b) is bytes for b in v[{cls.VAR_INDEX}])")
    exec(f"def types_ok(v):\n    return {' and '.join(terms) or 'True'}\n", env)
    return env["types_ok"]


_packer = msgpack.Packer(use_bin_type=True)
_pack = _packer.pack
_unpackb = msgpack.unpackb
SMALL_FRAME = 4096   # a frame up to this long is copied to be decoded, not viewed


def encode(msg) -> bytes:
    """A message as one frame: kind byte + msgpack array of its fields.

    Payloads here are small (objects above the inline threshold never travel
    in control messages), so one frame beats one zmq send call per field.
    (The fields come as one tuple, `_values`: msgpack writes a tuple as an array.)
    """
    cls = type(msg)
    return cls.KIND_BYTE + _pack(cls._values(msg))


def decode(data: bytes):
    """The message in one frame; ProtocolError if it does not match its schema."""
    cls = _REGISTRY.get(data[0]) if len(data) > 1 else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {bytes(data[:1])!r}")
    try:   # (msgpack >= 1.0: str as str, arrays as lists; a small frame's copy is cheaper
        # than a view of it)
        values = _unpackb(data[1:] if len(data) <= SMALL_FRAME else memoryview(data)[1:],
                          strict_map_key=False)
    except Exception as e:
        raise ProtocolError(f"{cls.__name__}: undecodable message ({e})") from None
    if type(values) is not list or len(values) != cls.ARITY:
        raise ProtocolError(f"{cls.__name__}: expected a list of {cls.ARITY} fields")
    if not cls.TYPES_OK(values):
        _type_problem(cls, values)
    msg = cls(*values)
    try:
        problem = cls.check(msg)
    except Exception as e:   # (a check must not raise; if one does, the message is refused)
        problem = f"unreadable ({type(e).__name__})"
    if problem:
        raise ProtocolError(f"{cls.__name__}: {problem}")
    return msg


def _type_problem(cls, values: list) -> None:
    """Raise the ProtocolError naming the first field of the wrong type."""
    for i, name, want in cls.CHECKS:
        if not isinstance(values[i], want):
            raise ProtocolError(f"{cls.__name__}.{name}: expected {want}, "
                                f"got {type(values[i]).__name__}")
    nheader = len(cls.HEADER)
    for i in range(nheader, nheader + len(cls.FRAMES)):
        if not isinstance(values[i], bytes):
            raise ProtocolError(f"{cls.__name__}.{cls.__slots__[i]}: expected bytes")
    if cls.VAR_INDEX is not None:
        var = values[cls.VAR_INDEX]
        if type(var) is not list or not all(isinstance(b, bytes) for b in var):
            raise ProtocolError(f"{cls.__name__}.{cls.VAR_FRAMES}: expected a list of bytes")
    raise ProtocolError(f"{cls.__name__}: a field of the wrong type")


def registry() -> dict[int, type]:
    """Every registered message class by kind."""
    return dict(_REGISTRY)
