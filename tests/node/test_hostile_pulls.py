"""node/objserver.py and node/pulls.py against a peer that sends nonsense.

The object ROUTER (ObjectServer) is fed requests by a raw DEALER; a pull
DEALER (Pulls) is answered by a raw ROUTER playing the holder. Properties:
- a request that is not one PullChunk frame is dropped, counted and handed
  to `on_reject`, and never answered; a PullChunk for an object we do not
  hold or for a range beyond it is answered with an error Chunk; requests
  after all of them are served as usual;
- an answer that is not a Chunk, or whose data disagrees with its header,
  is dropped (`malformed`) and reaches `on_reject`; a Chunk we did not ask
  for is dropped (`unexpected`: a late chunk of a cancelled pull is no
  fault); nothing of either is written, and the chunk we asked for still
  makes a whole object.
"""
from __future__ import annotations

import os

import msgpack
import pytest
import zmq

from zfabric import ids, serialization
from zfabric import protocol as p
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.node import sockets, store
from zfabric.node.objserver import ObjectServer
from zfabric.node.pulls import Pulls

pytestmark = pytest.mark.timeout(60)
WAIT_MS = 10_000


@pytest.fixture
def store_dirs(tmp_path):
    dirs = [str(tmp_path / "store"), str(tmp_path / "spill")]
    for d in dirs:
        store.create_dir(d)
    yield dirs
    for d in dirs:
        store.remove_dir(d)


@pytest.fixture
def ctx():
    context = sockets.context()
    yield context
    context.destroy(0)


def _recv(sock: zmq.Socket) -> list:
    assert sock.poll(WAIT_MS), "no answer"
    return sock.recv_multipart()


# -- the object ROUTER ------------------------------------------------------------------

def _serve_until_answered(server: ObjectServer, puller: zmq.Socket, count: int) -> list:
    """Serve until the puller has `count` answers; they are returned in order."""
    answers = []
    while len(answers) < count:
        if server.router.poll(10):
            server.serve()
        while puller.poll(0):
            answers.append(puller.recv_multipart())
    return answers


def test_the_object_server_drops_malformed_requests_and_answers_the_rest(ctx, store_dirs):
    store_dir, spill_dir = store_dirs
    value = list(range(1000))
    held = ids.new_put_id()
    size = store.write(store_dir, held, serialization.serialize(value))
    router, address = sockets.object_router(ctx, "127.0.0.1", 0, None)
    rejected = []
    server = ObjectServer(router, store_dir, spill_dir,
                          on_reject=lambda source, reason: rejected.append((source, reason)))
    puller = sockets.pull_dealer(ctx, address, None)
    garbage = [
        [b""], [b"\x00"], [b"\xc1\xc1"],
        [p.encode(p.PullChunk(held, 0, size)), b"extra frame"],        # two frames
        [p.encode(p.PullChunk(held, 0, size)), b"", b""],              # three
        [p.encode(p.PutReply(1, ""))],                                  # not a PullChunk
        [p.PullChunk.KIND_BYTE + msgpack.packb([held, -1, 10])],        # negative offset
        [p.PullChunk.KIND_BYTE + msgpack.packb([held, 0, -10])],        # negative length
        [p.PullChunk.KIND_BYTE + msgpack.packb([held, 0, p.MAX_CHUNK + 1])],  # huge
        [p.PullChunk.KIND_BYTE + msgpack.packb([b"short", 0, 10])],     # not an object id
    ]
    refused = [
        p.PullChunk(ids.new_put_id(), 0, 10),          # an object we do not hold
        p.PullChunk(held, 1 << 62, 10),                 # far beyond it
        p.PullChunk(held, size - 5, 10),                # running past its end
    ]
    for frames in garbage:
        puller.send_multipart(frames)
    for req in refused:
        puller.send(p.encode(req))
    puller.send(p.encode(p.PullChunk(held, 0, size)))

    answers = _serve_until_answered(server, puller, len(refused) + 1)
    for req, frames in zip(refused, answers):
        head, data = p.decode_chunk(frames)
        assert (head.oid, head.offset, data) == (req.oid, req.offset, None)
        assert "cannot be served" in head.error
    head, data = p.decode_chunk(answers[-1])
    assert (head.oid, head.offset, head.length, head.error) == (held, 0, size, "")
    assert serialization.deserialize(bytes(data)) == value
    assert server.malformed == len(garbage) == len(rejected)
    assert all(source and reason for source, reason in rejected)
    server.close()


# -- a pull DEALER -------------------------------------------------------------------------

def test_pulls_drop_answers_they_did_not_ask_for_and_write_the_one_they_did(ctx, store_dirs):
    store_dir, _ = store_dirs
    value = {"numbers": list(range(500))}
    blob = serialization.dumps(value)
    holder_node, oid, stranger = ids.new_node_id(), ids.new_put_id(), ids.new_put_id()
    holder, address = sockets.object_router(ctx, "127.0.0.1", 0, None)
    poller = zmq.Poller()
    rejected = []
    pulls = Pulls(ctx, poller, store_dir,
                  on_reject=lambda source, reason: rejected.append((source, reason)))
    asked = (holder_node, oid, 0, len(blob))
    assert pulls.request(fx.RequestChunk(holder_node, address, oid, 0, len(blob),
                                         len(blob))) is None
    ident, request = _recv(holder)
    assert p.decode(request) == p.PullChunk(oid, 0, len(blob))

    head = p.Chunk.KIND_BYTE
    malformed = [
        [b""], [b"\xc1"], [p.encode(p.PullChunk(oid, 0, 1))],               # not a Chunk
        [p.encode(p.Chunk(oid, 0, len(blob), ""))],                         # no data frame
        [p.encode(p.Chunk(oid, 0, len(blob), "")), blob[:10]],              # too short
        [p.encode(p.Chunk(oid, 0, 10, "")), b"x" * 10, b"extra"],           # extra frame
        [head + msgpack.packb([oid, -5, 10, ""]), b"x" * 10],               # negative offset
    ]
    unexpected = [
        [p.encode(p.Chunk(stranger, 0, 4, "")), b"junk"],                   # not pulling it
        [p.encode(p.Chunk(stranger, 0, 0, "no such object"))],              # error, ditto
        [p.encode(p.Chunk(oid, 8, 4, "")), b"junk"],                        # not this range
        [p.encode(p.Chunk(oid, 0, 4, "")), b"junk"],                        # not this length
    ]
    for frames in malformed + unexpected + [p.encode_chunk(oid, 0, blob)]:
        holder.send_multipart([ident] + frames)

    events = []
    (sock,) = (s for s, _ in poller.sockets)
    while not events:
        assert sock.poll(WAIT_MS), "no answer"
        events += pulls.receive(sock, lambda *chunk: chunk == asked)
    assert events == [ev.ChunkArrived(holder_node, oid, 0, len(blob))]
    assert (pulls.malformed, pulls.unexpected) == (len(malformed), len(unexpected))
    assert len(rejected) == len(malformed)   # a chunk we no longer want is a race, not a fault
    assert {source for source, _ in rejected} == {ids.short(holder_node)}
    pulls.seal(oid)
    assert store.read(store_dir, oid) == value
    pulls.close()
    holder.close(0)


def test_an_error_chunk_for_a_pull_in_progress_is_a_chunk_failed(ctx, store_dirs):
    store_dir, _ = store_dirs
    holder_node, oid = ids.new_node_id(), ids.new_put_id()
    holder, address = sockets.object_router(ctx, "127.0.0.1", 0, None)
    poller = zmq.Poller()
    pulls = Pulls(ctx, poller, store_dir)
    pulls.request(fx.RequestChunk(holder_node, address, oid, 0, 100, 100))
    ident, _ = _recv(holder)
    holder.send_multipart([ident] + p.encode_chunk(oid, 0, None, "gone"))
    (sock,) = (s for s, _ in poller.sockets)
    assert sock.poll(WAIT_MS)
    assert list(pulls.receive(sock, lambda *chunk: True)) == [
        ev.ChunkFailed(holder_node, oid, "gone")]
    pulls.abort(oid)
    assert not [f for f in os.listdir(store_dir) if f.endswith(".tmp")]
    pulls.close()
    holder.close(0)
