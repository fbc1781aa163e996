"""protocol.py: every message round-trips; malformed input is refused, never crashes."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import protocol as p


def sample(cls):
    values = {"bytes": b"\x01" * 16, "str": "s", "int": 3, "float": 1.5, "bool": True,
              "list": [b"a", b"b"], "dict": {"CPU": 1.0}, "bytes | None": None,
              "str | None": "w1", "object": {"k": [1, 2]}}
    kwargs = {}
    for name, hint in cls.__annotations__.items():
        if name in cls.FRAMES:
            kwargs[name] = b"payload-" + name.encode()
        elif name == cls.VAR_FRAMES:
            kwargs[name] = [b"x", b"yy"]
        else:
            kwargs[name] = values[hint]
    return cls(**kwargs)


@pytest.mark.parametrize("cls", list(p.MESSAGES.values()), ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    msg = sample(cls)
    assert p.decode(p.encode(msg)) == msg


def test_wrong_field_type_is_refused():
    frames = p.encode(p.Cancel(b"x" * 20, True, False))
    frames[1] = msgpack.packb(["not bytes", True, False])
    with pytest.raises(p.ProtocolError, match="oid"):
        p.decode(frames)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_arbitrary_frames_never_crash_decode(frames):
    try:
        p.decode(frames)
    except p.ProtocolError:
        pass
