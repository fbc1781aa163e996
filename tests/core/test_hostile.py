"""Hostile input: any bytes decode or raise ProtocolError; a fabric fed nonsense
refuses it (counted, warned once per sender), keeps its state whole, and
still computes what its honest clients asked for."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.core import rejects
from zfabric.core.tasks import Functions, TaskState
from zfabric.core.timeline import pack_batch
from zfabric.ids import function_id
from zfabric.testing import hostile
from zfabric.testing.sim import Work
from tests.harness.world import DRIVER, FN, FN_BLOB, INLINE, MB, World, rid, tid

pytestmark = pytest.mark.timeout(120)
HOSTILE = settings(deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MALLORY = b"m" * 16                 # an authenticated node that is no member
STRANGER = b"stranger-client"       # a local client that is neither the driver nor a worker
# Messages only a node sends a client, or a node another node: nonsense from a client.
NOT_FROM_CLIENTS = (p.Welcome, p.Execute, p.ObjectReady, p.PutReply, p.Reply, p.Revoke,
                    p.Batch, p.Gossip, p.GcsUpdate, p.Spill, p.SpillCheck, p.Refuse,
                    p.TaskResult, p.FreeObjects, p.PullChunk, p.Chunk)
NOT_FROM_PEERS = (p.Hello, p.Welcome, p.Submit, p.Execute, p.TaskDone, p.Revoke, p.Revoked,
                  p.Blocked, p.Unblocked, p.Subscribe, p.ObjectReady, p.Put, p.PutReply,
                  p.Refs, p.Request, p.Reply, p.Shutdown, p.Goodbye, p.Batch, p.PullChunk,
                  p.Chunk)


# -- decoding -------------------------------------------------------------------------

@HOSTILE
@given(hostile.frames())
def test_any_frame_decodes_to_a_checked_message_or_raises_protocol_error(data):
    try:
        msg = p.decode(data)
    except p.ProtocolError:
        return
    assert type(msg) in p.MESSAGES.values()
    assert p.decode(p.encode(msg)) == msg


@pytest.mark.parametrize("cls", list(p.MESSAGES.values()), ids=lambda c: c.__name__)
@settings(HOSTILE, max_examples=25)
@given(data=st.data())
def test_every_message_the_strategies_build_round_trips(cls, data):
    msg = data.draw(hostile.message(cls, hostile.Known(task_ids=[tid(1)], node_ids=[MALLORY])))
    assert p.decode(p.encode(msg)) == msg


@pytest.mark.parametrize("data", [
    bytes([k]) + bomb for k in (3, 21, 24) for bomb in (
        b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
        b"\x91" * 100_000 + b"\xc0", b"\xc7\x01\x05x")])
def test_msgpack_bombs_are_refused(data):
    with pytest.raises(p.ProtocolError):
        p.decode(data)


def test_fields_past_their_bounds_are_refused():
    nan, inf = float("nan"), float("inf")
    submit = p.Submit(tid(1), "f", FN, 1, {"CPU": 1}, 0, False, 0, b"", [], [], FN_BLOB, b"", b"")
    assert p.decode(p.encode(submit)) == submit
    for change in ({"resources": {"CPU": nan}}, {"resources": {"CPU": inf}},
                   {"resources": {"CPU": -1}}, {"num_returns": 10_001}, {"depth": -1},
                   {"name": "x" * 70_000}, {"parent": b"short"}, {"deps": [b"short"]},
                   {"fn_blob": b"other code"}, {"fn_id": b"F" * 15}):
        fields = {n: getattr(submit, n) for n in p.Submit.__slots__} | change
        with pytest.raises(p.ProtocolError):
            p.decode(p.encode(p.Submit(**fields)))
    for bad in (p.Hello("root", 1, None), p.Hello("driver", 0, None),
                p.TaskDone(tid(1), 0, False, [1], [1], [[]], nan, 1.0, 0.0, 1.0, [b"x"]),
                p.TaskDone(tid(1), 7, False, [1], [1], [[]], 0.0, 1.0, 0.0, 1.0, [b"x"]),
                p.TaskDone(tid(1), 0, False, [9], [1], [[]], 0.0, 1.0, 0.0, 1.0, [b"x"]),
                p.GcsUpdate(b"short", []), p.SpillCheck(b"short", []),
                p.FreeObjects(b"short", []), p.Gossip(MALLORY, [], {b"short": 1}, False),
                p.Execute(tid(1), "f", FN, 1, 0, [rid(1)], [1], b"", b"", b"", []),
                p.Blocked(b"short"), p.ObjectReady(rid(1), 9, 0, b"")):
        with pytest.raises(p.ProtocolError):
            p.decode(p.encode(bad))


def test_function_code_travels_content_addressed():
    """Code that does not hash to its id is refused, in every message that carries
    code; a second copy of a function never replaces the first."""
    other = b"another function"
    for msg in (p.Submit(tid(1), "f", FN, 1, {}, 0, False, 0, b"", [], [], other, b"", b""),
                p.Execute(tid(1), "f", FN, 1, 0, [], [], other, b"", b"", []),
                p.Spill(MALLORY, "", tid(1), "f", FN, 1, {}, 0, False, 0, False, [], [], [], [],
                        other, b"", b"", [])):
        with pytest.raises(p.ProtocolError, match="does not match"):
            p.decode(p.encode(msg))
    functions = Functions()
    functions.add(FN, FN_BLOB)
    functions.add(FN, other)
    assert functions.code[FN] == FN_BLOB


# -- refusals: counted, warned once per sender ----------------------------------------------

def logs(effects) -> list[str]:
    return [e.text for e in effects if type(e) is fx.Log]


def test_rejections_are_counted_and_warned_once_per_sender():
    world = World([{"CPU": 1}])
    fabric = world.nodes[0].fabric
    out = fabric.handle(ev.MessageRejected("tcp://6.6.6.6:1", "malformed", "bad kind"), 1.0)
    assert len(logs(out)) == 1 and "malformed" in logs(out)[0]
    assert logs(fabric.handle(ev.MessageRejected("tcp://6.6.6.6:1", "malformed", "x"), 1.0)) == []
    assert len(logs(fabric.handle(ev.MessageRejected("tcp://6.6.6.6:1", "unauthenticated",
                                                     "bad key"), 1.0))) == 1
    for n in range(rejects.MAX_SOURCES + 10):   # many senders: memory stays bounded
        fabric.handle(ev.MessageRejected(f"tcp://6.6.{n}.1:1", "malformed", "x"), 1.0)
    assert len(fabric.rejections._warned) == rejects.MAX_SOURCES
    stats = fabric.stats
    assert stats["rejected_malformed"] == rejects.MAX_SOURCES + 12
    assert stats["rejected_unauthenticated"] == 1 and stats["rejected_nonsense"] == 0
    world.sim.send(0, STRANGER, p.Gossip(MALLORY, [], {}, False))   # a node's message
    world.sim.send(0, STRANGER, p.Execute(tid(1), "f", FN, 1, 0, [], [], b"", b"", b"", []))
    assert stats["rejected_nonsense"] == 2
    status = world.nodes[0].fabric.views.answer("status")["nodes"][0]["stats"]
    assert (status["rejected_malformed"], status["rejected_unauthenticated"],
            status["rejected_nonsense"]) == (rejects.MAX_SOURCES + 12, 1, 2)


def two_nodes() -> World:
    world = World([{"CPU": 1}, {"CPU": 1}])
    world.converge()
    return world


def nonsense_after(world: World, node: int, event) -> int:
    fabric = world.nodes[node].fabric
    before = fabric.stats["rejected_nonsense"]
    world.sim.handle(node, event)
    return fabric.stats["rejected_nonsense"] - before


def test_a_peer_cannot_speak_for_another_node():
    world = two_nodes()
    n0, n1 = world.nodes
    members = set(n0.fabric.membership.members)
    row = [MALLORY, "tcp://6.6.6.6:1", 0, 1, 0, {}]
    assert nonsense_after(world, 0, ev.PeerMessage(n1.node_id, p.Gossip(MALLORY, [row], {},
                                                                          True))) == 1
    assert nonsense_after(world, 0, ev.PeerMessage(n1.node_id, p.GcsUpdate(n0.node_id, [
        ["d", n0.node_id, [[1, "loc", rid(1), 5]]]]))) == 1
    assert set(n0.fabric.membership.members) == members
    # records about our own shard, written by a peer, change nothing
    assert nonsense_after(world, 0, ev.PeerMessage(n1.node_id, p.GcsUpdate(n1.node_id, [
        ["d", n0.node_id, [[10_000, "loc", rid(1), 5]]]]))) == 0
    assert n0.fabric.gcs.lookup("loc", rid(1)) == {}


def test_answers_about_tasks_never_sent_there_are_refused():
    world = two_nodes()
    n0, n1 = world.nodes
    plan = world.submit(1, duration=1.0)
    world.sim.run(0.05)
    assert n0.scheduler.tasks[plan.task_id].state == TaskState.RUNNING
    result = p.TaskResult(n1.node_id, plan.task_id, 0, [INLINE], [1], [[]], [b"forged"])
    assert nonsense_after(world, 0, ev.PeerMessage(n1.node_id, result)) == 1
    refuse = p.Refuse(n1.node_id, plan.task_id, {"CPU": 1})
    assert nonsense_after(world, 0, ev.PeerMessage(n1.node_id, refuse)) == 1
    cancel = p.Cancel(rid(1), True, True)   # our task: not the peer's to cancel
    assert nonsense_after(world, 0, ev.PeerMessage(n1.node_id, cancel)) == 1
    assert world.run_until_finished([plan], 5)
    world.check_result(plan)


def test_a_client_cannot_seal_or_replace_what_is_not_its_own():
    world = World([{"CPU": 1}])
    n0 = world.nodes[0]
    plan = world.submit(1, duration=1.0)
    world.sim.run(0.05)
    task = n0.scheduler.tasks[plan.task_id]
    bad = [p.Put(rid(1), INLINE, 6, [], 0, b"forged"),          # a task's pending return
           p.Submit(plan.task_id, "f", FN, 1, {}, 0, False, 0, b"", [], [], b"", b"", b""),
           p.TaskDone(plan.task_id, 0, False, [INLINE], [6], [[]], 0.0, 1.0, 0.0, 1.0, [b"forged"]),
           p.Blocked(plan.task_id), p.Revoked(plan.task_id), p.Hello("worker", 1, "w1"),
           p.Cancel(rid(99), False, False), p.Refs([], [rid(1)])]
    for msg in bad:
        assert nonsense_after(world, 0, ev.ClientMessage(STRANGER, msg)) == 1, msg
    assert n0.scheduler.tasks[plan.task_id] is task and not task.blocked
    assert n0.scheduler.objects.get(rid(1)).state == 0   # still pending
    assert world.run_until_finished([plan], 5)
    world.check_result(plan)


def test_a_spill_cannot_take_over_our_objects():
    world = two_nodes()
    n0, n1 = world.nodes
    plan = world.submit(1, duration=0.01)
    assert world.run_until_finished([plan], 5)
    spill = p.Spill(n1.node_id, "", plan.task_id, "f", FN, 1, {"CPU": 1}, 0, False, 0, False,
                    [], [], [], [], b"", b"", b"", [])
    world.sim.handle(0, ev.PeerMessage(n1.node_id, spill))   # refused (Refuse), not run
    assert plan.task_id not in n0.scheduler.tasks
    assert any(type(e.msg) is p.Refuse for e in n0.effects(fx.PeerSend))
    entry = n0.scheduler.objects.get(rid(1))
    assert entry.owner_node is None and entry.payload == b"v" + rid(1)
    assert entry.holders == {DRIVER}


def test_malformed_views_from_peers_do_not_break_queries():
    """Found by this suite: a peer's GCS "node" record or gossiped resources that
    are not maps, or timeline batches of garbage, made `status`, `nodes`,
    `resources` and `timeline` raise out of Fabric.handle (and `memory` must not
    either, whatever a peer's objects table holds)."""
    world = two_nodes()
    n0, n1 = world.nodes
    n1.fabric.gcs.put("node", n1.node_id, 7)
    n1.fabric.gcs.put("tl", "1", [[1, 2], "x", None, ["f", b"t", "w1", 0.0, float("inf"), 0,
                                                       0.0, 1.0, 7]])
    n1.fabric.gcs.put("tl", "2", "not a batch")
    n1.fabric.gcs.put("tl", "3", b"\xc1 not msgpack")
    n1.fabric.gcs.put("tl", "4", pack_batch([[1, 2], "x", ["f", b"t", "w1", 0.0, 1.0, 0]]))
    n1.fabric.gcs.put("obj", b"o" * 20, {"size": "big"})
    n1.fabric.gcs.put("obj", "five", {"size": 1})
    n1.fabric.membership.set_info({"total": [1, 2], "available": "x", "demands": [[1, 2], 3]})
    world.sim.run(0.5)
    assert n0.fabric.gcs.get("node", n1.node_id, shard=n1.node_id) == 7
    for what in ("status", "nodes", "resources", "timeline", "memory"):
        out = n0.fabric.handle(ev.ClientMessage(DRIVER, p.Request(1, what)), world.sim.time)
        (reply,) = [e.msg for e in out if type(e) is fx.Send]
        assert reply.error == "", (what, reply.error)


# -- a fabric under fire -------------------------------------------------------------------

class HostileWorld(World):
    """A World whose fake workers also run the tasks strangers submit (junk values)."""

    def program(self, sim, i, ex):
        if ex.task_id not in self.plans:
            return Work(0.01, tuple((INLINE, 0, b"junk") for _ in range(ex.num_returns)))
        return super().program(sim, i, ex)


CLIENT_KINDS = [c for c in p.MESSAGES.values() if c not in (p.Shutdown, p.Cancel)]


@settings(HOSTILE, max_examples=6)
@given(st.data())
def test_a_fabric_fed_hostile_messages_still_computes_the_right_values(data):
    world = HostileWorld([{"CPU": 2}, {"CPU": 1}], seed=3)
    world.converge()
    sim, (n0, n1) = world.sim, world.nodes
    plans = [world.submit(1, duration=0.2, returns=("i", 300_000)),
             world.submit(2, duration=0.1, cpu=1),
             world.submit(3, deps=[rid(1, 1)], returns=("i",)),
             world.submit(4, node=1, client=b"driver-2", returns=(2 * MB,))]
    sim.run(0.05)
    known = hostile.Known.of_fabric(n0.fabric)
    known.node_ids += [n1.node_id, MALLORY]
    expected = {0: 0, 1: 0}   # nonsense sure to be refused, per node
    for step in range(data.draw(st.integers(10, 30), label="steps")):
        to = data.draw(st.sampled_from([0, 0, 1]), label="node")
        if data.draw(st.booleans(), label="peer"):
            msg = data.draw(hostile.messages(known), label="peer message")
            sender = data.draw(st.sampled_from([MALLORY, world.nodes[1 - to].node_id]))
            expected[to] += type(msg) in NOT_FROM_PEERS
            sim.handle(to, ev.PeerMessage(sender, p.decode(p.encode(msg))))
        else:
            msg = data.draw(hostile.messages(known, CLIENT_KINDS), label="client message")
            expected[to] += type(msg) in NOT_FROM_CLIENTS
            sim.handle(to, ev.ClientMessage(STRANGER, p.decode(p.encode(msg))))
        if step % 8 == 0:
            plans.append(world.submit(10 + step, duration=0.05))
        sim.run(0.01)
    assert world.run_until_finished(plans, 30), [pl.n for pl in plans if not world.finished(pl)]
    for plan in plans:
        world.check_result(plan)
    assert not sim.violations, sim.violations
    for i in (0, 1):
        assert world.nodes[i].fabric.stats["rejected_nonsense"] >= expected[i]


def test_a_forwarded_task_with_a_dep_not_ready_unpins_only_what_it_pinned():
    """A Spill whose first argument is not ready (a hostile or confused peer)
    fails the task; its other arguments, objects this node knows, keep their
    pins as they were (each is pinned when adopted, and unpinned once)."""
    world = HostileWorld([{"CPU": 2}, {"CPU": 1}], seed=3)
    world.converge()
    sim, (n0, n1) = world.sim, world.nodes
    world.submit(1, duration=0.01, returns=("i",))
    sim.run(0.5)
    known = rid(1, 0)
    entries = n0.fabric.scheduler.objects.entries
    assert known in entries and entries[known].pins == 0
    code = b"code of a forwarded task"
    msg = p.Spill(n1.node_id, "tcp://10.0.0.1:7000", tid(99), "", function_id(code), 1, {},
                  0, False, 1, True, [b"Q" * 20, known], [0, 1], [0, 1], [[], []],
                  code, b"", b"", [b"", b"x"], {})
    sim.handle(0, ev.PeerMessage(n1.node_id, p.decode(p.encode(msg))))   # (validated)
    sim.run(0.05)
    assert n0.fabric.scheduler.stats["accepted"] == 1
    assert entries[known].pins == 0
