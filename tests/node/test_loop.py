"""The node loop after its split (node/loop.py and the modules it drives).

- every effect that leaves the fabric has exactly one handler in the loop's table;
- a send to a peer that fails becomes an event the fabric counts and warns of
  once per address until it is heard from (pure: FabricSim; real: a NodeLoop
  with real sockets, never run, sending to an address it cannot use);
- the loop asks the fabric, never reads its state machines.
"""
from __future__ import annotations

import logging
import pathlib
import re
import socket
import time

import pytest
import zmq

from zfabric import protocol as p
from zfabric.config import Config
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.core.fabric import build as build_fabric
from zfabric.node import sockets
from zfabric.node.logmon import LogMonitor
from zfabric.node.loop import NodeLoop
from zfabric.node.peers import Batcher
from zfabric.testing.sim import FabricSim

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parents[2] / "zfabric"
NODE_ID = b"N" * 16
MSG = p.FreeObjects(NODE_ID, [b"o" * 20])


# -- a NodeLoop with real sockets, not running ------------------------------------------

@pytest.fixture
def loop(tmp_path):
    ctx = sockets.context()
    router = sockets.client_router(ctx, f"ipc://{tmp_path}/node.sock")
    peer_router, _ = sockets.peer_router(ctx, "127.0.0.1", 0, None)
    object_router, object_ep = sockets.object_router(ctx, "127.0.0.1", 0, None)
    info = {"node_id": NODE_ID.hex(), "pid": 1, "address": "tcp://127.0.0.1:1",
            "object_address": object_ep, "host": "127.0.0.1", "port": 1}
    fabric = build_fabric(Config(temp_dir=str(tmp_path)), node_id=NODE_ID,
                          resources={"CPU": 0}, store_capacity=1 << 20, info=info,
                          seeds=[], now=0.0)
    node_loop = NodeLoop(fabric, ctx=ctx, client_router=router, peer_router=peer_router,
                         object_router=object_router, key=None, gate=None, watches=[],
                         node_id=NODE_ID, ipc_endpoint=f"ipc://{tmp_path}/node.sock",
                         session_dir=str(tmp_path), store_dir=str(tmp_path / "store"),
                         spill_dir=str(tmp_path / "spill"), spill_copy_chunk=1 << 20,
                         recycle=(0, 0.0), tick_interval=0.05, stop_grace=1.0,
                         logs=LogMonitor(str(tmp_path / "logs"), 1 << 16, 1 << 20))
    yield node_loop
    node_loop.stop_workers()
    node_loop.close()
    for sock in (router, peer_router, object_router):
        sock.close(0)
    ctx.term()


@pytest.fixture
def refused_address():
    """A local TCP port bound but not listening: connections to it are refused,
    and nothing else can take it while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


def warnings_about(caplog, address: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and address in r.getMessage()]


# -- the effect table -------------------------------------------------------------------

def effect_types() -> set[type]:
    return {obj for obj in vars(fx).values()
            if isinstance(obj, type) and hasattr(obj, "_fields")
            and obj.__module__ == fx.__name__}


def test_every_effect_that_leaves_the_fabric_has_a_handler(loop):
    """Effects documented "(scheduler -> fabric)" never reach the loop; every other
    one must have its handler, or the node would stop on the first one made."""
    internal = {t for t in effect_types() if (t.__doc__ or "").startswith("(scheduler -> fabric)")}
    assert internal == {fx.Fetch, fx.CancelFetch, fx.Publish, fx.FreeCopies, fx.Nonsense}
    assert set(loop.effect_handlers) == effect_types() - internal


def test_an_unknown_effect_stops_the_loop_loudly(loop):
    with pytest.raises(TypeError, match="unknown effect"):
        loop.execute([ev.Tick()])


# -- failed peer sends, in the fabric alone ---------------------------------------------

def test_fabric_counts_failed_peer_sends_and_warns_once_per_address():
    sim = FabricSim([{"CPU": 1}])
    node = sim.nodes[0]
    stats = node.fabric.stats
    sim.handle(0, ev.PeerUnreachable("tcp://10.9.9.9:7000", 3, "Invalid argument"))
    sim.handle(0, ev.PeerUnreachable("tcp://10.9.9.9:7000", 2, "Invalid argument"))
    sim.handle(0, ev.PeerSendBlocked("tcp://10.9.9.9:7000", 1))
    sim.handle(0, ev.PeerSendBlocked("tcp://10.9.9.8:7000", 4))
    assert {k: v for k, v in stats.items() if k.startswith("peer_")} == \
        {"peer_unreachable": 2, "peer_send_blocked": 2, "peer_messages_dropped": 10}
    warnings = [text for _, level, text in node.logs if level == "warning"]
    assert len(warnings) == 2
    assert "cannot reach peer tcp://10.9.9.9:7000: Invalid argument" in warnings[0]
    assert "dropped 3 message(s)" in warnings[0]
    assert "peer tcp://10.9.9.8:7000 is not taking messages" in warnings[1]
    assert not [e for _, e in node.trace if type(e) is not fx.SpawnWorker]   # nothing retried


def test_a_peer_is_warned_of_again_once_it_was_heard_from():
    sim = FabricSim([{"CPU": 1}, {"CPU": 1}])
    assert sim.run_until(sim.converged, 5.0)
    a, b = sim.nodes

    def warnings():
        return [text for _, level, text in a.logs if level == "warning" and b.address in text]

    sim.handle(0, ev.PeerSendBlocked(b.address, 1))
    sim.handle(0, ev.PeerSendBlocked(b.address, 1))
    assert len(warnings()) == 1
    sim.run(1.0)   # b gossips to a: heard from
    sim.handle(0, ev.PeerSendBlocked(b.address, 1))
    assert len(warnings()) == 2
    assert a.fabric.stats["peer_send_blocked"] == 3


def test_fabric_answers_what_the_loop_asks():
    sim = FabricSim([{"CPU": 1}, {"CPU": 1}], late=[1])
    a, b = sim.nodes
    assert not a.fabric.ready()        # its worker has not said hello yet
    assert not a.fabric.joining()      # no seeds: a cluster of its own
    sim.run(0.5)
    assert a.fabric.ready()
    sim.start_node(1)
    assert b.fabric.joining() and not b.fabric.ready()
    assert sim.run_until(b.fabric.ready, 5.0)
    assert not b.fabric.joining()
    assert not a.fabric.expects_chunk(b.node_id, b"o" * 20, 0, 10)


# -- failed peer sends, through a real NodeLoop -----------------------------------------

def test_a_peer_address_that_cannot_be_connected_is_an_event(loop, caplog):
    caplog.set_level(logging.WARNING, logger="zfabric.node")
    bad = "tcp://127.0.0.1"   # no port: zmq refuses to connect to it
    loop.execute([fx.PeerSend(bad, MSG), fx.PeerSend(bad, MSG)])
    loop._flush_sends()
    assert {k: v for k, v in loop.fabric.stats.items() if k.startswith("peer_")} == \
        {"peer_unreachable": 1, "peer_send_blocked": 0, "peer_messages_dropped": 2}
    loop.execute([fx.PeerSend(bad, MSG)])
    loop._flush_sends()
    assert loop.fabric.stats["peer_unreachable"] == 2
    assert len(warnings_about(caplog, bad)) == 1


def test_a_join_address_that_cannot_be_connected_is_an_event(loop, caplog):
    caplog.set_level(logging.WARNING, logger="zfabric.node")
    loop.execute([fx.JoinSend("tcp://127.0.0.1", MSG)])
    assert loop.fabric.stats["peer_unreachable"] == 1
    assert len(warnings_about(caplog, "tcp://127.0.0.1")) == 1


def test_a_peer_that_takes_nothing_is_an_event_once_its_queue_is_full(loop, caplog,
                                                                      refused_address):
    """Frames to a peer that never answers queue up to the high-water mark; the
    next one is refused, dropped and reported, never blocking the loop."""
    caplog.set_level(logging.WARNING, logger="zfabric.node")
    stats = loop.fabric.stats
    for _ in range(10 * sockets.PEER_HWM):
        loop.execute([fx.PeerSend(refused_address, MSG)])
        loop._flush_sends()
        if stats["peer_send_blocked"]:
            break
    assert stats["peer_send_blocked"] == 1 and stats["peer_messages_dropped"] == 1
    for _ in range(3):
        loop.execute([fx.PeerSend(refused_address, MSG)])
        loop._flush_sends()
    assert stats["peer_send_blocked"] == 4
    assert len(warnings_about(caplog, refused_address)) == 1
    loop.execute([fx.ForgetPeer(b"P" * 16, refused_address)])   # a fresh socket: room again
    loop.execute([fx.PeerSend(refused_address, MSG)])
    loop._flush_sends()
    assert stats["peer_send_blocked"] == 4


# -- the loop asks; it never reads the state machines -----------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "node").glob("*.py")) + [ROOT / "testing" / "cluster.py"],
                         ids=lambda path: path.name)
def test_the_shell_never_reads_the_fabrics_state_machines(path):
    assert not re.search(r"fabric\.(scheduler|membership|gcs|transfers)\b", path.read_text())


# -- the zygote's life, in the fabric alone ---------------------------------------------

def test_fabric_counts_zygote_deaths_restarts_and_failed_starts_and_says_so():
    sim = FabricSim([{"CPU": 1}])
    node = sim.nodes[0]
    sim.handle(0, ev.ZygoteStarted(100, restart=False))
    sim.handle(0, ev.ZygoteDied(-9, 2, 0.0))
    sim.handle(0, ev.ZygoteStarted(101, restart=True))
    sim.handle(0, ev.ZygoteDied(3, 0, 0.1))
    sim.handle(0, ev.ZygoteStartFailed("OSError: [Errno 24] Too many open files", 0.2))
    stats = node.fabric.stats
    assert (stats["zygote_deaths"], stats["zygote_restarts"],
            stats["zygote_start_failures"]) == (2, 1, 1)
    status = node.fabric.views.answer("status")   # what `status --json` shows
    assert status["nodes"][0]["stats"]["zygote_restarts"] == 1
    logged = [(level, text) for _, level, text in node.logs]
    assert ("warning", "the worker fork server (zygote) died (killed by signal 9); its 2 "
            "worker(s) were killed and their tasks go back to the queue; a new one starts "
            "on the next spawn, in 0 s at the earliest") in logged
    assert any(level == "error" and "Too many open files" in text and "0.2 s" in text
               for level, text in logged)


# -- frame sizes to peers ---------------------------------------------------------------

def test_a_turns_messages_to_a_peer_are_split_into_frames_under_the_batch_limit():
    batcher = Batcher()
    msgs = [p.FreeObjects(NODE_ID, [bytes([i]) * 20]) for i in range(10)]
    for m in msgs:
        batcher.put("peer", m)
    size = len(p.encode(msgs[0]))
    frames = batcher.take(max_bytes=3 * size)
    assert [count for _, _, count in frames] == [3, 3, 3, 1]
    decoded = []
    for _, frame, _ in frames:
        msg = p.decode(frame)
        decoded += [p.decode(m) for m in msg.messages] if type(msg) is p.Batch else [msg]
    assert decoded == msgs                       # all of them, in order


def test_a_message_over_the_peer_frame_limit_is_dropped_and_reported(loop, monkeypatch):
    monkeypatch.setattr(sockets, "PEER_FRAME_MAX", 1000)
    monkeypatch.setattr(sockets, "PEER_BATCH_BYTES", 500)   # the small one in a frame of its own
    big = p.FreeObjects(NODE_ID, [bytes([i]) * 20 for i in range(100)])   # > 2,000 bytes
    loop.execute([fx.PeerSend("tcp://127.0.0.1:9", big), fx.PeerSend("tcp://127.0.0.1:9", MSG)])
    loop._flush_sends()
    assert loop.fabric.stats["peer_unreachable"] == 1        # the big one, not the small one
    assert loop.fabric.stats["peer_messages_dropped"] == 1


# -- the idle tick ------------------------------------------------------------------------

def test_an_idle_node_ticks_slowly_and_the_first_sign_of_work_brings_the_short_tick_back(loop):
    """Nothing to do for idle_after seconds: the loop ticks (and so gossips) every
    idle interval, not every tick_interval; a client message, a process event or
    worker output is work; gossip alone is not."""
    loop.idle_tick = (0.5, 2.0)
    loop.on_ready = None                           # its workers are up (none: CPU 0)
    now = time.monotonic()
    assert loop._next_tick(now) == 0.5             # nothing happened yet: idle
    loop.dispatch(ev.ClientGone(b"c" * 8))         # an event from the process shell
    assert loop._next_tick(time.monotonic()) == loop.tick_interval
    assert loop._next_tick(time.monotonic() + 2.5) == 0.5
    loop._worker_output([(b"j" * 16, "f", 1, 1, ["hello"], 0)])   # a worker printed
    assert loop._next_tick(time.monotonic()) == loop.tick_interval

    ctx = zmq.Context()
    peer = ctx.socket(zmq.DEALER)
    try:   # a peer's gossip arrives on the peer ROUTER: not work
        loop._worked = float("-inf")
        peer.setsockopt(zmq.IDENTITY, b"P" * 16 + sockets.PEER_SUFFIX)
        peer.connect(loop.peer_router.getsockopt(zmq.LAST_ENDPOINT).decode())
        peer.send(p.encode(p.Gossip(b"P" * 16, [], {}, False)))
        assert loop.peer_router.poll(5000)
        loop._drain_router(loop.peer_router, peer=True)
        assert loop._next_tick(time.monotonic()) == 0.5
    finally:
        peer.close(0)
        ctx.term()
    loop.on_ready = lambda: None                   # still starting: never idle
    assert loop._next_tick(time.monotonic()) == loop.tick_interval
