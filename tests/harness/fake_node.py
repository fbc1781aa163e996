"""A node's scheduler ROUTER played by a thread, for tests of node/client.py and
node/worker.py without a node: `FakeNode`, and the fixtures `nodes` (start fake
nodes in tmp_path) and `clients` (connect Clients to them), each closed after
the test.
"""
from __future__ import annotations

import os
import queue
import threading

import pytest

from zfabric import ids
from zfabric import protocol as p
from zfabric.config import Config
from zfabric.node import sockets
from zfabric.node.client import Client


class FakeNode:
    """A node's scheduler ROUTER played by a thread. It answers a Hello with
    `before_welcome` frames and then `welcome`; any other message from the
    client with the frames `respond(msg)` returns, sent to the client's rx (each
    message of a Batch in turn). `received` holds what each frame decoded to."""

    def __init__(self, tmp_path, respond=lambda msg: [], before_welcome=(), welcome=None):
        self.ctx = sockets.context()
        self.endpoint = f"ipc://{tmp_path}/node.sock"
        self.router = sockets.client_router(self.ctx, self.endpoint)
        self.respond = respond
        self.before_welcome = list(before_welcome)
        self.welcome = welcome or p.Welcome(ids.new_node_id(), str(tmp_path), str(tmp_path),
                                            "tcp://127.0.0.1:1", Config().to_json(),
                                            os.getpid())
        self.received: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()   # frames push() sends the client
        self._client_rx = b""
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-node")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                while not self._outbox.empty():
                    self.router.send_multipart([self._client_rx, self._outbox.get()])
                    self._outbox.task_done()
                if not self.router.poll(10):
                    continue
                ident, frame = self.router.recv_multipart()
                msg = p.decode(frame)
                self.received.put(msg)
                self._client_rx = ident[:-1] + sockets.RX_SUFFIX
                if type(msg) is p.Hello:
                    out = self.before_welcome + [p.encode(self.welcome)]
                else:
                    out = [f for m in messages_of(msg) for f in self.respond(m)]
                for data in out:
                    self.router.send_multipart([self._client_rx, data])
        except BaseException as e:   # shown by close(): a broken fake is the test's bug
            self.errors.append(e)

    def push(self, data: bytes) -> None:
        """Send a frame to the client (from the fake node's thread); return once sent."""
        self._outbox.put(data)
        self._outbox.join()

    def wait_for(self, kind: type, timeout: float = 10.0):
        """The next message of `kind` the client sent (others are skipped; a
        Batch's messages are looked at, and the rest of that frame dropped)."""
        while True:
            for msg in messages_of(self.received.get(timeout=timeout)):
                if type(msg) is kind:
                    return msg

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.router.close(0)
        self.ctx.term()
        assert not self.errors, self.errors


@pytest.fixture
def nodes(tmp_path):
    made = []

    def start(**kw) -> FakeNode:
        made.append(FakeNode(tmp_path, **kw))
        return made[-1]
    yield start
    for node in made:
        node.close()


@pytest.fixture
def clients():
    made = []

    def connect(node: FakeNode, role: str = "driver", **kw) -> Client:
        made.append(Client(node.endpoint, role, connect_timeout=10, **kw))
        return made[-1]
    yield connect
    for client in made:
        client.close()


def messages_of(msg) -> list:
    """The messages one decoded frame holds: several for a Batch."""
    return [p.decode(m) for m in msg.messages] if type(msg) is p.Batch else [msg]
