"""node/poller.py: the node loop's poller, zmq sockets by their fds in one poll(2).

A socket's fd announces news once, not a message that waits, so what the poller
must never do is sleep while a message waits: one there before it was
registered, one left behind by a reader that took only part of what came,
one whose news a send on the same socket took in passing (a busy socket),
one that comes while it waits. Plain fds come back as they were registered.
"""
from __future__ import annotations

import os
import threading

import pytest
import zmq

from zfabric.node.poller import Poller

pytestmark = pytest.mark.timeout(60)

WAIT_MS = 10_000   # a poll that should return at once is never given this long


@pytest.fixture
def pair(tmp_path):
    """(ROUTER the poller watches, DEALER that sends to it) over ipc, as the node's."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind(f"ipc://{tmp_path}/r.sock")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"d1")
    dealer.connect(f"ipc://{tmp_path}/r.sock")
    yield router, dealer
    dealer.close(0)
    router.close(0)
    ctx.term()


def take(sock) -> list:
    """Every message waiting on `sock` (ROUTER: without the routing id)."""
    out = []
    while True:
        try:
            out.append(sock.recv_multipart(zmq.NOBLOCK)[1:])
        except zmq.Again:
            return out


def ready(poller, timeout_ms=WAIT_MS) -> list:
    return [what for what, _ in poller.poll(timeout_ms)]


def nothing_waits(poller, sock) -> bool:
    """The poller returns `sock` with no message (news that was not one, which
    its reader takes as zmq.Again) a few times at most, then sleeps."""
    for _ in range(3):
        if not ready(poller, 50):
            return True
        if take(sock):
            return False
    return False


@pytest.mark.parametrize("quiet", [False, True])
def test_a_message_there_before_registering_is_returned_at_once(pair, quiet):
    """(Its news was taken before: by the poll that saw it arrive.)"""
    router, dealer = pair
    dealer.send(b"m0")
    assert router.poll(WAIT_MS)                         # it is there, its news taken
    poller = Poller()
    poller.register(router, zmq.POLLIN, quiet=quiet)
    assert ready(poller) == [router]
    assert take(router) == [[b"m0"]]


@pytest.mark.parametrize("quiet", [False, True])
def test_a_socket_read_in_part_is_returned_again_without_new_news(pair, quiet):
    router, dealer = pair
    poller = Poller()
    poller.register(router, zmq.POLLIN, quiet=quiet)
    for i in range(3):
        dealer.send(b"m%d" % i)
    seen = []
    while len(seen) < 3:
        assert ready(poller) == [router]
        try:
            seen.append(router.recv_multipart(zmq.NOBLOCK)[1])   # one a turn
        except zmq.Again:
            pass   # (its fd fired for news that was not a message yet)
    assert seen == [b"m0", b"m1", b"m2"]
    assert nothing_waits(poller, router)


def test_a_busy_socket_sent_on_is_asked_before_every_wait(pair):
    """A send on the ROUTER may process the news of a message that came meanwhile;
    its fd will not say it again. The poller asks a busy socket anyway."""
    router, dealer = pair
    poller = Poller()
    poller.register(router, zmq.POLLIN)
    for i in range(200):
        dealer.send(b"q%d" % i)
        assert ready(poller) == [router]
        ident, msg = router.recv_multipart()
        router.send_multipart([ident, b"a" + msg])      # (news processed in passing)
        assert dealer.recv() == b"a" + msg
    assert nothing_waits(poller, router)


def test_a_message_that_comes_while_it_waits_wakes_it(pair):
    """(The poll runs in a thread of its own; only the DEALER is used here meanwhile.
    Whether the message comes before or during its wait, it is returned.)"""
    router, dealer = pair
    poller = Poller()
    poller.register(router, zmq.POLLIN)
    assert nothing_waits(poller, router)
    got = []
    waiter = threading.Thread(target=lambda: got.append(ready(poller)))
    waiter.start()
    waiter.join(0.2)
    dealer.send(b"late")
    waiter.join(WAIT_MS / 1000)
    assert got == [[router]]
    assert take(router) == [[b"late"]]


def test_plain_fds_come_back_as_registered_and_go_when_unregistered():
    r, w = os.pipe()
    try:
        poller = Poller()
        poller.register(r, zmq.POLLIN)
        assert ready(poller, 0) == []
        os.write(w, b"x")
        assert ready(poller) == [r]
        poller.unregister(r)
        assert ready(poller, 50) == []
    finally:
        os.close(r)
        os.close(w)
