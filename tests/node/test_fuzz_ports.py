"""A real node's TCP ports under fuzzing: raw TCP, and ZeroMQ sockets of every
type, plain, with a CURVE key pair of their own, and with the cluster key.

One node (LocalCluster, CURVE on) serves the whole module; each test fires
volleys drawn by hypothesis (zfabric.testing.portfuzz) at its scheduler and
object ports, waits until the node counted what it had to drop, and checks
what it counted, that it answered no one without the key, and that it is
alive. Then: the answer check is shown to see answers (a node without
authentication), a stranger's oversized handshake frame is refused, and
the last test runs tasks on the fuzzed node.
"""
from __future__ import annotations

import numpy as np
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import zfabric as zf
from zfabric import ids
from zfabric import protocol as p
from zfabric.node import auth, sockets
from zfabric.testing import LocalCluster
from zfabric.testing import hostile
from zfabric.testing import portfuzz as pf

pytestmark = pytest.mark.timeout(60)

# Derandomized: the same volleys every run. No shrinking: each example is a
# volley at a real node, and the failing one is printed as it was drawn.
FUZZ = settings(max_examples=5, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SENDERS = {k for k in pf.SOCKET_TYPES if k not in pf.LISTEN_ONLY}


class Fuzzing:
    """The node under fire, a context for our sockets, and its counters."""

    def __init__(self, cluster: LocalCluster, ctx: zmq.Context):
        self.cluster = cluster
        self.ctx = ctx
        info = cluster.nodes[0].info
        self.target = pf.Target(info["address"], info["object_address"],
                                auth.read(cluster.key_path))

    def stats(self) -> dict:
        return self.cluster.own_status(self.cluster.nodes[0])["stats"]

    def fire(self, shots) -> pf.Report:
        report = pf.fire(self.ctx, self.target, shots, self.stats)
        self.assert_alive()
        assert report.settled, (
            f"the node's counters grew by {({c: report.grew(c) for c in pf.COUNTERS})}, "
            f"not the {report.expected} it had to count")
        return report

    def assert_alive(self) -> None:
        proc = psutil.Process(self.cluster.nodes[0].pid)
        assert proc.status() != psutil.STATUS_ZOMBIE, "the node died"


@pytest.fixture(scope="module")
def node():
    with LocalCluster(nodes=1, num_cpus=1) as cluster:
        ctx = zmq.Context()
        try:
            yield Fuzzing(cluster, ctx)
        finally:
            ctx.destroy(0)


def flat(volleys: list) -> list:
    return [shot for volley in volleys for shot in volley]


@FUZZ
@given(data=st.data())
def test_raw_bytes_greetings_and_hangups_are_counted_and_never_answered(node, data):
    shots = flat(data.draw(st.lists(pf.volleys(modes=()), min_size=1, max_size=3)))
    report = node.fire(shots)
    assert report.answered_unauthenticated == []
    assert report.grew("rejected_unauthenticated") >= report.expected["rejected_unauthenticated"]
    assert report.grew("rejected_malformed") == report.grew("rejected_nonsense") == 0


@FUZZ
@given(data=st.data())
def test_sockets_of_every_type_without_the_key_reach_nothing(node, data):
    shots = data.draw(pf.volleys(modes=pf.UNAUTHENTICATED, raw=False))
    report = node.fire(shots)
    assert {kind for _mode, kind in report.sent} == SENDERS
    assert report.answered_unauthenticated == []
    # every ZeroMQ connection was refused at the handshake, and counted
    zmtp = sum(1 for s in shots if s.kind != "STREAM")
    assert report.grew("rejected_unauthenticated") >= zmtp
    assert report.grew("rejected_malformed") == report.grew("rejected_nonsense") == 0


@FUZZ
@given(data=st.data())
def test_with_the_cluster_key_garbage_reaches_the_decoder_and_is_counted(node, data):
    shots = data.draw(pf.volleys(modes=("cluster key",), raw=False))
    report = node.fire(shots)
    assert {kind for _mode, kind in report.sent} == SENDERS - {"STREAM"}
    # exactly what does not decode was counted (DEALER, REQ and ROUTER get
    # through; the other types fail ZMTP's socket-type check)
    assert_counted_what_did_not_decode(report)


@FUZZ
@given(data=st.data())
def test_with_the_cluster_key_hostile_messages_leave_the_node_serving(node, data):
    """hostile.py's frames from a key holder (valid messages naming this node,
    mutated, oversize, msgpack bombs): what does not decode is counted, the
    rest is handled or refused as nonsense, and the node lives on (the last
    test runs tasks on it)."""
    me = node.cluster.nodes[0]
    known = hostile.Known(node_ids=[bytes.fromhex(me.node_id)], addresses=[me.address])
    shots = data.draw(pf.volleys(frame=hostile.frames(known), modes=("cluster key",),
                                 types=sorted(pf.REACH_ROUTER), raw=False, per_socket=8))
    report = node.fire(shots)
    assert report.sent
    assert_counted_what_did_not_decode(report)


def test_with_the_cluster_key_what_only_clients_send_is_refused_as_nonsense(node):
    """A key holder's Submit, Shutdown and Goodbye on the peer port (only local
    clients send those) are refused and counted as nonsense: nothing is
    submitted, the node does not stop."""
    blob = b"not even a pickle"
    submit = p.Submit(ids.new_task_id(), "f", ids.function_id(blob), 1, {}, 0, False, 0, b"",
                      [], [], blob, b"", b"")
    frames = [[p.encode(m)] for m in (submit, p.Shutdown("fuzz"), p.Goodbye("fuzz"))]
    before = node.stats()
    shot = pf.Shot("peer", "cluster key", "DEALER", frames,
                   ids.new_node_id() + sockets.PEER_SUFFIX)
    report = pf.fire(node.ctx, node.target, [shot], node.stats,
                     until=lambda r: r.grew("rejected_nonsense") >= len(frames))
    node.assert_alive()
    assert report.grew("rejected_nonsense") == len(frames)
    assert report.grew("rejected_malformed") == 0
    assert node.stats()["submitted"] == before["submitted"]


def assert_counted_what_did_not_decode(report: pf.Report) -> None:
    least = report.expected["rejected_malformed"]
    assert least <= report.grew("rejected_malformed") <= \
        least + report.uncertain["rejected_malformed"]



def test_the_answer_check_is_not_blind():
    """A node without authentication (insecure=True) answers a plain pull
    request, and the report says so: "answered nobody" above means something."""
    with LocalCluster(nodes=1, num_cpus=1, insecure=True) as cluster:
        info = cluster.nodes[0].info
        target = pf.Target(info["address"], info["object_address"], None)
        pull = p.encode(p.PullChunk(ids.return_ids(ids.new_task_id(), 1)[0], 0, 10))
        ctx = zmq.Context()
        try:
            report = pf.fire(ctx, target, [pf.Shot("object", "plain", "DEALER", [[pull]])],
                             lambda: {}, timeout=30,
                             until=lambda report: report.answered_unauthenticated)
        finally:
            ctx.destroy(0)
    assert [(port, mode, kind) for port, mode, kind, _ in report.answered_unauthenticated] \
        == [("object", "plain", "DEALER")]


BIG = 64 << 20


@pytest.mark.parametrize("port", ["object", "peer"])
def test_a_stranger_cannot_make_the_node_buffer_a_huge_handshake_frame(node, port):
    # without a limit the node takes in all of it (and holds it until the
    # handshake times out): memory anyone who reaches the port can fill. The
    # ports' limits (sockets.OBJECT_REQUEST_MAX, PEER_FRAME_MAX) cut off a
    # frame that claims more, before the handshake.
    accepted = pf.oversize_accepted(node.target, port, claim=1 << 30, send=BIG)
    node.assert_alive()
    assert accepted < BIG, f"the {port} port took in {accepted >> 20} MiB before any handshake"


def test_the_node_still_runs_tasks_afterwards(node, fresh):
    node.assert_alive()
    zf.init(address=node.cluster.address)

    @zf.remote
    def square(x):
        return x * x

    @zf.remote
    def total(a):
        return int(a.sum())

    assert zf.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]
    big = np.arange(1_000_000, dtype=np.int64)   # 8 MB: far above the inline threshold
    assert zf.get(total.remote(big)) == int(big.sum())
    assert zf.get(total.remote(zf.put(big))) == int(big.sum())
    node.assert_alive()
