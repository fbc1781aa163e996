"""node/client.py and node/worker.py against a node that sends nonsense.

A fake node (a thread with a ROUTER on an ipc endpoint, where a real node's
scheduler ROUTER would be) answers the client's Hello and each message it
sends with frames the test chose. Properties:
- a frame that does not decode (garbage, a wrong kind, wrong fields, a Batch
  holding garbage) is dropped and counted in `Client.malformed`; the pump
  goes on, and a get of a real object still returns its value;
- a well-formed message that makes no sense (news of an object we hold no
  ref to, a reply nobody asked for, a second Welcome, an Execute on a driver)
  is dropped and counted in `Client.unexpected`;
- an object entry that cannot be used (an unknown state, an error record or
  inline payload that does not read) fails the get of that object only;
- a worker given an Execute whose code, arguments or retry spec do not load
  reports the task failed and runs the next one.
"""
from __future__ import annotations

import logging
import os
import random

import cloudpickle
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zfabric as zf
from zfabric import ids, serialization
from zfabric import protocol as p
from zfabric.config import Config
from zfabric.exceptions import TaskError, ZFabricError
from zfabric.node.client import Client
from zfabric.node.worker import Worker
from zfabric.protocol import ObjectState, TaskStatus
from zfabric.ref import ObjectRef
from zfabric.serialization import CorruptObjectError

from tests.harness.fake_node import FakeNode

pytestmark = pytest.mark.timeout(60)

RNG_SEED = 9


def _garbage() -> list[bytes]:
    """Frames no client should take: one of each way a frame can be wrong."""
    rng = random.Random(RNG_SEED)
    oid = ids.new_put_id()
    return [
        b"",
        b"\x00",
        b"\xff" + msgpack.packb([1, 2]),                              # unknown kind
        p.ObjectReady.KIND_BYTE + b"\xc1",                            # not msgpack
        p.ObjectReady.KIND_BYTE + msgpack.packb([oid, 1]),            # too few fields
        p.ObjectReady.KIND_BYTE + msgpack.packb([1, 1, 0, b""]),      # oid not bytes
        p.ObjectReady.KIND_BYTE + msgpack.packb({"oid": oid}),        # not an array
        p.Batch.KIND_BYTE + msgpack.packb([[p.encode(p.Batch([]))]]),  # a batch in a batch
        p.Batch.KIND_BYTE + msgpack.packb([["not bytes"]]),
    ] + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(20)]


def _inline(oid: bytes, value) -> bytes:
    blob = serialization.dumps(value)
    return p.encode(p.ObjectReady(oid, int(ObjectState.INLINE), len(blob), blob))


def _task(fn_blob: bytes, args=(), retry_blob: bytes = b"", args_blob: bytes = b"") -> p.Execute:
    fn_id = ids.function_id(fn_blob)
    args_blob = args_blob or serialization.dumps((list(args), {}))
    return p.Execute(ids.new_task_id(), "f", fn_id, 1, 0, [], [], fn_blob, args_blob,
                     retry_blob, [])


def _answer_subscribe(frames_for):
    """respond(): to a Subscribe, `frames_for(oid)` for each id it names."""
    def respond(msg):
        if type(msg) is not p.Subscribe:
            return []
        return [f for oid in msg.ids for f in frames_for(oid)]
    return respond


def test_garbage_before_welcome_and_around_an_object_is_counted_and_get_returns(
        nodes, clients, caplog):
    garbage = _garbage()
    node = nodes(before_welcome=garbage,
                 respond=_answer_subscribe(lambda oid: garbage + [_inline(oid, {"v": 42})]))
    with caplog.at_level(logging.WARNING, logger="zfabric.client"):
        client = clients(node)
        ref = ObjectRef(ids.new_put_id(), client)
        assert client.get_values([ref.binary()], timeout=10) == [{"v": 42}]
    assert client.malformed == 2 * len(garbage)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].exc_info is None and "malformed" in warnings[0].getMessage()


def test_a_batch_holding_garbage_keeps_its_good_messages(nodes, clients):
    def frames_for(oid):
        return [p.encode(p.Batch([b"\x0a\xc1", b"", _inline(oid, "kept"), b"\xee"]))]
    client = clients(nodes(respond=_answer_subscribe(frames_for)))
    ref = ObjectRef(ids.new_put_id(), client)
    assert client.get_values([ref.binary()], timeout=10) == ["kept"]
    assert client.malformed == 3


def test_messages_that_make_no_sense_are_dropped_and_counted(nodes, clients):
    stranger = ids.new_put_id()
    nonsense = [
        p.encode(p.Reply(999, "data", "")),                               # nobody asked
        p.encode(p.PutReply(998, "")),
        p.encode(p.Execute(ids.new_task_id(), "f", ids.function_id(b"code"), 1, 0, [], [],
                           b"code", b"", b"", [])),                     # on a driver
        p.encode(p.Submit(ids.new_task_id(), "f", b"\x01" * 16, 1, {}, 0, False, 0, b"",
                          [], [], b"", b"", b"")),                       # a client's message
    ]
    harmless = [_inline(stranger, "not ours"),            # no ref to it: we dropped ours
                p.encode(p.Revoke(ids.new_task_id()))]      # a task that is not waiting here
    node = nodes(respond=_answer_subscribe(lambda oid: nonsense + harmless + [_inline(oid, 7)]))
    client = clients(node)
    ref = ObjectRef(ids.new_put_id(), client)
    assert client.get_values([ref.binary()], timeout=10) == [7]
    assert (client.unexpected, client.malformed) == (len(nonsense), 0)
    assert not client.executes and not client.fn_blobs
    assert stranger not in client._ready


def test_a_second_welcome_is_ignored(nodes, clients):
    other = p.Welcome(ids.new_node_id(), "/elsewhere", "/elsewhere", "tcp://x:1",
                      Config().to_json(), 1)
    node = nodes(respond=_answer_subscribe(lambda oid: [p.encode(other), _inline(oid, 1)]))
    client = clients(node)
    ref = ObjectRef(ids.new_put_id(), client)
    assert client.get_values([ref.binary()], timeout=10) == [1]
    assert client.welcome is not other and client.welcome.node_id == node.welcome.node_id
    assert client.unexpected == 1


def test_a_reply_of_the_wrong_kind_does_not_answer_a_request(nodes, clients):
    def respond(msg):
        if type(msg) is not p.Request:
            return []
        return [p.encode(p.PutReply(msg.req_id, "")),             # the wrong kind
                p.encode(p.Reply(msg.req_id - 1, "again", "")),      # to one answered
                p.encode(p.Reply(msg.req_id, [1, 2], ""))]
    client = clients(nodes(respond=respond))
    assert client.request("nodes", timeout=10) == [1, 2]
    assert client.request("nodes", timeout=10) == [1, 2]
    assert client.unexpected == 4


def test_a_reply_after_its_request_gave_up_is_dropped(nodes, clients):
    answered = []
    node = nodes(respond=lambda msg: [p.encode(p.Reply(msg.req_id, "late", ""))]
                 if type(msg) is p.Request and answered else [])
    client = clients(node)
    with pytest.raises(zf.exceptions.GetTimeoutError):
        client.request("nodes", timeout=0.1)   # the node never answers this one
    late = node.wait_for(p.Request)
    node.push(p.encode(p.Reply(late.req_id, "too late", "")))
    answered.append(True)
    assert client.request("nodes", timeout=10) == "late"
    assert client.unexpected == 1 and not client._replies


def test_an_unusable_object_fails_only_the_get_that_asks_for_it(nodes, clients):
    bad = {}

    def frames_for(oid):
        kind = bad.get(oid)
        if kind == "pending":
            return [p.encode(p.ObjectReady(oid, int(ObjectState.PENDING), 0, b""))]
        if kind == "record":
            return [p.encode(p.ObjectReady(oid, int(ObjectState.ERROR), 0, b"\xc1junk"))]
        if kind == "pickle":
            return [p.encode(p.ObjectReady(oid, int(ObjectState.INLINE), 4, b"junk"))]
        return [_inline(oid, "fine")]
    client = clients(nodes(respond=_answer_subscribe(frames_for)))
    # (a state that is no ObjectState does not decode: protocol.py drops it as malformed)
    expected = {"pending": ZFabricError, "record": ZFabricError, "pickle": CorruptObjectError}
    for kind, error in expected.items():
        ref, good = ObjectRef(ids.new_put_id(), client), ObjectRef(ids.new_put_id(), client)
        bad[ref.binary()] = kind
        with pytest.raises(error):
            client.get_values([good.binary(), ref.binary()], timeout=10)
        assert client.get_values([good.binary()], timeout=10) == ["fine"]
    assert client.malformed == 0


def test_a_bad_welcome_is_a_connection_error(nodes, clients):
    welcome = p.Welcome(ids.new_node_id(), "/x", "/x", "tcp://x:1", "{not json", os.getpid())
    with pytest.raises(ConnectionError, match="bad Welcome"):
        clients(nodes(welcome=welcome))


def _valid_frames() -> list[bytes]:
    oid, tid = ids.new_put_id(), ids.new_task_id()
    welcome = p.Welcome(ids.new_node_id(), "/x", "/x", "tcp://x:1", "{}", 1)
    execute = _task(cloudpickle.dumps(lambda: 1))
    messages = [p.ObjectReady(oid, 1, 3, b"abc"), p.Reply(1, {"a": [1]}, ""), p.PutReply(2, ""),
                welcome, execute, p.Revoke(tid)]
    return [p.encode(m) for m in messages] + [p.encode(p.Batch([p.encode(m) for m in messages]))]


def _spliced(frame: bytes):
    """`frame` with a few of its bytes replaced, cut or added."""
    return st.tuples(st.integers(0, len(frame)), st.integers(0, 4), st.binary(max_size=4)).map(
        lambda t: frame[:t[0]] + t[2] + frame[t[0] + t[1]:])


FRAMES = st.binary(max_size=64) | st.sampled_from(_valid_frames()).flatmap(_spliced)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A worker-side client (it takes Executes too) and the fake node it talks to."""
    node = FakeNode(tmp_path_factory.mktemp("fuzz"),
                    respond=_answer_subscribe(lambda oid: [_inline(oid, "alive")]))
    client = Client(node.endpoint, "worker", identity=b"w-fuzz", worker_id="w-fuzz",
                    connect_timeout=10)
    yield client
    ref = ObjectRef(ids.new_put_id(), client)   # after all of it, the pump still works
    assert client.get_values([ref.binary()], timeout=10) == ["alive"]
    client.close()
    node.close()


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(FRAMES, min_size=1, max_size=5))
def test_no_frame_raises_out_of_the_pump(fuzzed, frames):
    client = fuzzed
    for data in frames:
        before = client.malformed + client.unexpected
        messages = client._decode(data)
        with client._cond:
            for msg in messages:
                client._on_message(msg)
        assert messages or client.malformed + client.unexpected > before


# -- the worker ----------------------------------------------------------------------------

class _Unloadable:
    """Pickles fine; raises when the worker loads it."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def _refuse_to_load():
    raise ImportError("no module named 'elsewhere'")


class _Indescribable(Exception):
    def __str__(self):
        raise RuntimeError("no words")


def _raise_indescribable():
    raise _Indescribable()


def _failed_with(done: p.TaskDone) -> BaseException:
    assert done.status == TaskStatus.ERROR, done
    return serialization.error_from_record(done.payloads[0])


@pytest.mark.parametrize("case", ["code", "unpickling", "args", "retry", "indescribable"])
def test_a_task_that_does_not_load_fails_and_the_worker_runs_the_next(nodes, clients,
                                                                      tmp_path, case):
    raising = cloudpickle.dumps(_raise_indescribable)
    bad = {
        "code": lambda: _task(b"\x80\x05not a pickle"),
        "unpickling": lambda: _task(cloudpickle.dumps(_Unloadable())),
        "args": lambda: _task(cloudpickle.dumps(lambda: 1), args_blob=b"ZFO1 not args"),
        "retry": lambda: _task(raising, retry_blob=b"\x80\x05junk"),
        "indescribable": lambda: _task(raising),
    }[case]()
    good = _task(cloudpickle.dumps(lambda x: x + 1), args=(41,))
    executes = [p.encode(bad), p.encode(good)]   # sent when the worker says Refs
    node = nodes(respond=lambda msg: executes if type(msg) is p.Refs else [])
    client = clients(node, role="worker", identity=b"w-test", worker_id="w-test")
    worker = Worker(client, str(tmp_path / "cancel"))
    client.send(p.Refs([], []))
    first = client.next_execute()
    done, _ = worker.run(first)
    assert first.task_id == bad.task_id
    error = _failed_with(done)
    assert isinstance(error, TaskError), error
    assert not done.retryable
    done, _ = worker.run(client.next_execute())
    assert done.status == TaskStatus.OK
    assert serialization.deserialize(done.payloads[0]) == 42


def test_code_that_failed_to_load_is_tried_again_for_the_next_task(nodes, clients, tmp_path):
    node = nodes()
    client = clients(node, role="worker", identity=b"w-again", worker_id="w-again")
    worker = Worker(client, str(tmp_path / "cancel"))
    ex = _task(cloudpickle.dumps(_Unloadable()))
    client.fn_blobs[ex.fn_id] = ex.fn_blob
    for _ in range(2):   # the node sends the code once: the second task has none
        done, _ = worker.run(ex)
        assert "elsewhere" in str(_failed_with(done))
        ex = p.Execute(ex.task_id, ex.name, ex.fn_id, 1, 0, [], [], b"", ex.args_blob, b"", [])


def test_a_function_that_does_not_load_on_the_worker_is_a_task_error(cluster):
    unloadable = _Unloadable()

    @zf.remote
    def f():
        return unloadable

    @zf.remote
    def g():
        return os.getpid()

    with pytest.raises(TaskError):
        zf.get(f.remote(), timeout=30)
    assert zf.get([g.remote() for _ in range(4)], timeout=30)
