"""A client's get of its own tasks' returns against a fake node: the node pushes
each return to its submitter, so the get sends no Subscribe; a return kept on
another node is announced (ObjectReady in state PENDING) and then subscribed
to by a get that wants it, whenever the notice comes; a Submit the node never
answers (it refused it) ends in an error after a pump slice, not a hung get.
"""
from __future__ import annotations

import threading

import pytest

from zfabric import ids, records, serialization
from zfabric import protocol as p
from zfabric.exceptions import ObjectLostError
from zfabric.node import client as client_mod
from zfabric.protocol import ObjectState

from tests.harness.fake_node import messages_of

pytestmark = pytest.mark.timeout(60)


def submit(client):
    """One task submitted through the client; its return's ref."""
    fn_id = ids.function_id(b"code")
    return client.submit(name="f", fn_id=fn_id, fn_blob=b"code", num_returns=1,
                         resources={"CPU": 1.0}, max_retries=0, retry_exceptions=False,
                         retry_blob=b"", deps=[], contained=[], args_blob=b"")[0]


def value_of(oid: bytes, value) -> bytes:
    blob = serialization.serialize(value).to_bytes()
    return p.encode(p.ObjectReady(oid, int(ObjectState.INLINE), len(blob), blob))


def sent(node) -> list:
    """Every message the client sent so far (the fake node's thread received)."""
    out = []
    while not node.received.empty():
        out += messages_of(node.received.get())
    return out


def test_a_get_of_a_pushed_return_sends_no_subscribe(nodes, clients):
    def respond(msg):
        return [value_of(msg.task_id + (0).to_bytes(4, "big"), "pushed")] \
            if type(msg) is p.Submit else []
    node = nodes(respond=respond)
    client = clients(node)
    ref = submit(client)
    assert client.get_values([ref.binary()], timeout=10) == ["pushed"]
    kinds = [type(m) for m in sent(node)]
    assert p.Submit in kinds and p.Subscribe not in kinds


@pytest.mark.parametrize("notice_first", [True, False])
def test_a_return_kept_elsewhere_is_subscribed_to_when_got(nodes, clients, notice_first,
                                                           monkeypatch):
    """The notice may come before the get starts or while it waits: either way the
    get subscribes (once) and takes the value the Subscribe brings. (Pump slices
    longer than the test: the Subscribe is the notice's, not a slice of silence's.)"""
    monkeypatch.setattr(client_mod, "PUMP_SLICE", 120.0)
    def respond(msg):
        return [value_of(oid, "pulled here") for oid in msg.ids] \
            if type(msg) is p.Subscribe else []
    node = nodes(respond=respond)
    client = clients(node)
    ref = submit(client)
    node.wait_for(p.Submit)
    notice = p.encode(p.ObjectReady(ref.binary(), int(ObjectState.PENDING), 5, b""))
    if notice_first:
        node.push(notice)
    got = []
    getter = threading.Thread(target=lambda: got.append(
        client.get_values([ref.binary()], timeout=20)))
    getter.start()
    if not notice_first:
        node.push(notice)
    sub = node.wait_for(p.Subscribe)
    assert sub.ids == [ref.binary()]
    getter.join(20)
    assert got == [["pulled here"]]
    assert p.Subscribe not in [type(m) for m in sent(node)]   # just the one


def test_a_notice_of_a_return_nobody_gets_sends_nothing(nodes, clients):
    node = nodes()
    client = clients(node)
    ref = submit(client)
    node.wait_for(p.Submit)
    node.push(p.encode(p.ObjectReady(ref.binary(), int(ObjectState.PENDING), 5, b"")))
    ping = client.request  # any round trip: the notice was taken before its answer
    node.respond = lambda msg: [p.encode(p.Reply(msg.req_id, {"ok": 1}, ""))] \
        if type(msg) is p.Request else []
    assert ping("status", timeout=10) == {"ok": 1}
    assert p.Subscribe not in [type(m) for m in sent(node)]


def test_a_submit_the_node_never_answers_fails_the_get_after_a_pump_slice(nodes, clients):
    """A node that refused the Submit keeps no entry: the client subscribes after a
    slice of silence and gets the node's answer that the object does not exist."""
    def respond(msg):
        if type(msg) is not p.Subscribe:
            return []
        record = records.system_error_record(ObjectLostError, "does not exist")
        return [p.encode(p.ObjectReady(oid, int(ObjectState.ERROR), 0, record))
                for oid in msg.ids]
    node = nodes(respond=respond)
    client = clients(node)
    ref = submit(client)
    with pytest.raises(ObjectLostError, match="does not exist"):
        client.get_values([ref.binary()], timeout=20)
