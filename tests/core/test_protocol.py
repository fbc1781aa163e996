"""protocol.py: every message round-trips; malformed input is refused, never crashes."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import ids, protocol as p


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
        elif name in ("oid",):
            kwargs[name] = b"\x02" * 20
        elif name == "fn_id":
            kwargs[name] = ids.function_id(b"payload-fn_blob")
        elif name in ("status", "state"):
            kwargs[name] = 1
        elif name == "role":
            kwargs[name] = "driver"
        elif name == "reply_to":
            kwargs[name] = "tcp://127.0.0.1:5"
        elif name in ("sender", "owner", "task_id"):
            kwargs[name] = b"\x04" * 16
        elif name in ("deps", "contained", "ids", "incs", "decs", "dep_ids"):
            kwargs[name] = [[b"\x03" * 20]] if cls in (p.TaskDone, p.TaskResult) else [b"\x03" * 20]
        elif name == "task_ids":
            kwargs[name] = [b"\x08" * 16]
        elif name == "rows":
            kwargs[name] = [[b"\x05" * 16, "tcp://127.0.0.1:1", 0, 3, 0, {"queued": 1}]]
        elif name == "records":
            kwargs[name] = [["d", b"\x05" * 16, [[1, "t", "k", 1]]]]
        elif name == "vector":
            kwargs[name] = {b"\x05" * 16: 7}
        elif name in ("dep_states", "dep_sizes"):
            kwargs[name] = [1, 2]
        elif name == "dep_holders":
            kwargs[name] = [[], [b"\x06" * 16]]
        elif name in ("states", "sizes"):
            kwargs[name] = [1]
        elif name == "opts":
            kwargs[name] = {}
        elif name == "job":
            kwargs[name] = ids.job_id(b"\x09" * 16, b"d" * 8)
        elif name == "output":
            kwargs[name] = [["f", 12, 1, ["a line", ""], 0], ["f", 12, 2, [], 3]]
        elif name in ("workers", "wid", "endpoint", "why"):   # (worker leases)
            kwargs[name] = {"workers": 1, "wid": "w1", "endpoint": "ipc:///tmp/s/w1.sock",
                            "why": "recall"}[name]
        else:
            kwargs[name] = values[hint]
    if cls in (p.TaskDone, p.TaskResult):
        kwargs["payloads"] = [b"x"]
    if cls in (p.Spill, p.Execute):
        kwargs["dep_ids"] = [b"\x03" * 20, b"\x07" * 20]
    return cls(**kwargs)


@pytest.mark.parametrize("cls", list(p.MESSAGES.values()), ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    msg = sample(cls)
    assert p.decode(p.encode(msg)) == msg


@pytest.mark.parametrize("cls", [p.Submit, p.Execute, p.Spill], ids=lambda c: c.__name__)
def test_task_options_travel_checked_and_may_be_left_out(cls, monkeypatch):
    monkeypatch.setitem(p.c.TASK_OPTS, "colour", lambda v: v in ("red", "blue"))
    msg = sample(cls)
    assert msg.opts == {}                    # left out: no options
    msg.opts = {"colour": "red"}
    assert p.decode(p.encode(msg)).opts == {"colour": "red"}
    for bad in ({"colour": "green"}, {"shape": "round"}):
        msg.opts = bad
        with pytest.raises(p.ProtocolError, match="task option"):
            p.decode(p.encode(msg))


@pytest.mark.parametrize("cls", [p.Submit, p.Spill, p.Execute], ids=lambda c: c.__name__)
def test_strategy_and_gpu_ids_travel_checked_and_only_the_executing_node_sets_gpus(cls):
    msg = sample(cls)
    good = [{"strategy": "SPREAD"}, {"strategy": {"node": b"\x05" * 16, "soft": True}}]
    bad = [{"strategy": "DEFAULT"}, {"strategy": "spread"}, {"strategy": {"node": b"x"}},
           {"strategy": {"node": b"\x05" * 16, "soft": 1}}, {"gpus": []}, {"gpus": [-1]},
           {"gpus": ["0"]}, {"gpus": [True]}]
    if cls is p.Execute:
        good.append({"gpus": [0, 3], "strategy": "SPREAD"})
    else:
        bad.append({"gpus": [0]})   # set by the executing node, never by a submitter
    for opts in good:
        msg.opts = opts
        assert p.decode(p.encode(msg)).opts == opts
    for opts in bad:
        msg.opts = opts
        with pytest.raises(p.ProtocolError):
            p.decode(p.encode(msg))


def test_wrong_field_type_is_refused():
    data = p.Cancel.KIND_BYTE + msgpack.packb(["not bytes", True, False])
    with pytest.raises(p.ProtocolError, match="oid"):
        p.decode(data)
    data = p.Cancel.KIND_BYTE + msgpack.packb([b"short", True, False])
    with pytest.raises(p.ProtocolError, match="object id"):
        p.decode(data)


def test_chunks_and_refusals_from_peers_are_checked():
    good = p.Chunk(b"\x02" * 20, 0, 10, "")
    assert p.decode(p.encode(good)) == good
    for bad in (p.Chunk(b"\x02" * 20, -1, 10, ""), p.Chunk(b"\x02" * 20, 0, -5, ""),
                p.Chunk(b"short", 0, 1, ""),
                p.Refuse(b"\x04" * 16, b"\x04" * 16, {"CPU": "x"}),
                p.Refuse(b"\x04" * 16, b"\x04" * 16, {"CPU": float("nan")}),
                p.Refuse(b"\x04" * 16, b"\x04" * 16, {"CPU": True})):
        with pytest.raises(p.ProtocolError):
            p.decode(p.encode(bad))
    head, data = p.decode_chunk([p.encode(good), b"0123456789"])
    assert head == good and bytes(data) == b"0123456789"
    with pytest.raises(p.ProtocolError, match="length"):
        p.decode_chunk([p.encode(good), b"short"])


def test_wrong_arity_and_unknown_kind_are_refused():
    with pytest.raises(p.ProtocolError, match="fields"):
        p.decode(p.Cancel.KIND_BYTE + msgpack.packb([b"x", True]))
    with pytest.raises(p.ProtocolError, match="kind"):
        p.decode(b"\xff" + msgpack.packb([]))


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_decode(data):
    try:
        p.decode(data)
    except p.ProtocolError:
        pass


@settings(max_examples=300)
@given(st.sampled_from(sorted(p.MESSAGES)), st.lists(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=5),
              st.binary(max_size=5), st.lists(st.integers(0, 9), max_size=3)), max_size=16))
def test_arbitrary_field_values_never_crash_decode(kind, values):
    try:
        p.decode(bytes([kind]) + msgpack.packb(values))
    except p.ProtocolError:
        pass
