"""The scheduler's unit harness: a bare `Scheduler`, its driver and its workers.

No sockets and no processes: `Node` wraps a bare `Scheduler`, plays the
driver and the workers by handing it protocol messages, and runs
`Scheduler.validate()` after every step. The workers are
`zfabric.testing.fakes.FakeWorker`s, fed every Execute and Revoke the
scheduler sends them; the reports a test makes them send are built by them.
`summary()` turns effects into short tuples so that each test can state the
whole list it expects.

Used by tests/core/test_scheduler.py, test_queues.py, test_workers.py,
test_workers_prefetch.py, test_objects.py and test_timeline.py.
"""
from __future__ import annotations

from zfabric import protocol as p
from zfabric import serialization
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.core import resources as rs
from zfabric.protocol import ObjectState
from zfabric.core.scheduler import Scheduler
from zfabric.core.workers import workers_for
from zfabric.testing.fakes import FakeWorker

NODE_ID = b"N" * 16
DRIVER = b"driver-1"
OTHER = b"driver-2"
FN = b"F" * 16
FN_BLOB = b"cloudpickled function"
INLINE, STORE, ERROR = int(ObjectState.INLINE), int(ObjectState.STORE), int(ObjectState.ERROR)


def tid(n: int) -> bytes:
    return b"T" + n.to_bytes(15, "big")


def rid(n: int, i: int = 0) -> bytes:
    """Return object `i` of task `n`: the task id and a 4-byte big-endian index."""
    return tid(n) + i.to_bytes(4, "big")


def num(task_id: bytes) -> int:
    return int.from_bytes(task_id[1:16], "big")


def put_id(n: int) -> bytes:
    return b"P" + n.to_bytes(15, "big") + (0x80000000).to_bytes(4, "big")


def submit_msg(n: int, *, deps=(), num_returns=1, cpu=1.0, resources=None, max_retries=3,
               retry_exceptions=False, depth=0, parent=None, contained=(),
               fn_blob=FN_BLOB, name="f") -> p.Submit:
    demand = {"CPU": cpu} if cpu else {}
    demand.update(resources or {})
    return p.Submit(tid(n), name, FN, num_returns, demand, max_retries, retry_exceptions,
                    depth, tid(parent) if parent else b"", list(deps), list(contained),
                    fn_blob, b"args-%d" % n, b"")


def user_error(text: str = "boom") -> bytes:
    try:
        raise ValueError(text)
    except ValueError as e:
        return serialization.error_record(e, "f")


def summary(effects: list) -> list[tuple]:
    out = []
    for e in effects:
        kind = type(e)
        if kind is fx.Send:
            m = e.msg
            if isinstance(m, p.Execute):
                out.append(("execute", e.to.decode(), num(m.task_id)))
            elif isinstance(m, p.ObjectReady):
                out.append(("ready", e.to, m.oid, ObjectState(m.state).name))
            elif isinstance(m, p.Welcome):
                out.append(("welcome", e.to))
            elif isinstance(m, p.Revoke):
                out.append(("revoke", e.to.decode(), num(m.task_id)))
            elif isinstance(m, p.PutReply):
                out.append(("put_reply", m.req_id, m.error != ""))
            elif isinstance(m, p.Reply):
                out.append(("reply", m.req_id, m.error != ""))
            else:
                out.append(("send", e.to, type(m).__name__))
        elif kind is fx.SpawnWorker:
            out.append(("spawn", e.worker_id))
        elif kind is fx.StopWorker:
            out.append(("stop", e.worker_id))
        elif kind is fx.KillWorker:
            out.append(("kill", e.worker_id))
        elif kind is fx.InterruptWorker:
            out.append(("interrupt", e.worker_id, num(e.task_id)))
        elif kind is fx.DeleteObject:
            out.append(("unstore" if e.spilled else "delete", e.oid))
        elif kind is fx.SpillObject:
            out.append(("spill", e.oid))
        elif kind is fx.RestoreObject:
            out.append(("restore", e.oid))
        elif kind is fx.DeleteSpilled:
            out.append(("delete_spilled", e.oid))
        elif kind is fx.WatchClient:
            out.append(("watch", e.client, e.pid))
        elif kind is fx.StopNode:
            out.append(("stop_node",))
        elif kind is fx.Publish:
            pass  # GCS entries (locations, owned objects): tests/sim/
        elif kind is fx.Log:
            out.append(("log", e.level))
        elif kind is fx.Nonsense:
            out.append(("nonsense",))
        else:
            raise AssertionError(f"unexpected effect {e!r}")
    return out


def only(effects: list, kind: type) -> list:
    return [e.msg for e in effects if type(e) is fx.Send and isinstance(e.msg, kind)]


def error_for(effects: list, oid: bytes) -> BaseException:
    """The exception `get` would raise for `oid`, from its ObjectReady in `effects`."""
    msgs = [m for m in only(effects, p.ObjectReady) if m.oid == oid]
    assert len(msgs) == 1, msgs
    assert msgs[0].state == ERROR, msgs[0]
    return serialization.error_from_record(msgs[0].payload)


class Node:
    """A bare Scheduler, with helpers that play its driver and workers.

    `workers` holds a FakeWorker per worker the scheduler spawned and that has
    not exited; each gets the Executes and Revokes sent to it. A report for a
    worker id the scheduler never spawned (a stranger) comes from a fresh fake.
    """

    def __init__(self, cpus: float = 1, resources: dict | None = None, *,
                 num_workers: int | None = None, max_workers: int = 8,
                 store_capacity: int = 1000, idle_worker_timeout: float = 10.0,
                 hello: bool = True, prefetch: float = 0.0):
        self.s = Scheduler(
            node_id=NODE_ID, resources={"CPU": cpus, **(resources or {})},
            store_capacity=store_capacity,
            num_workers=workers_for(cpus) if num_workers is None else num_workers,
            max_workers=max_workers, idle_worker_timeout=idle_worker_timeout,
            timeline_capacity=100, prefetch_max_task_seconds=prefetch)
        self.now = 0.0
        self.workers: dict[str, FakeWorker] = {}
        self.started = self.s.start(self.now)
        self.s.validate()
        self._to_workers(self.started)
        if hello:
            for e in self.started:
                self.hello(e.worker_id)
            self.send(DRIVER, p.Hello("driver", 4242, None))

    # events --------------------------------------------------------------------
    def handle(self, event) -> list:
        out = self.s.handle(event, self.now)
        self.s.validate()
        if type(event) is ev.WorkerExited:
            gone = self.workers.pop(event.worker_id, None)
            if gone is not None:
                gone.alive = False
        self._to_workers(out)
        return out

    def _to_workers(self, effects: list) -> None:
        """The fake workers get what the scheduler sends them (the answers a test
        wants, such as Revoked, it sends itself)."""
        for e in effects:
            if type(e) is fx.SpawnWorker:
                self.workers[e.worker_id] = FakeWorker(e.worker_id)
            elif type(e) is fx.Send:
                worker = self.workers.get(e.to.decode(errors="replace"))
                if worker is not None:
                    worker.receive(e.msg)

    def worker(self, wid: str) -> FakeWorker:
        return self.workers.get(wid) or FakeWorker(wid)

    def report(self, wid: str, n: int, msg: p.TaskDone) -> list:
        """Worker `wid` sends its report `msg` of task `n`; if `n` is what it runs,
        it goes on with the next task it holds."""
        worker = self.worker(wid)
        if worker.current_id == tid(n):
            worker.finish(msg)
            worker.start_next()
        out = self.send(worker.client, msg)
        for revoked in worker.take_given_back():   # (pipelined tasks it could not start)
            out += self.send(worker.client, revoked)
        return out

    def send(self, client: bytes, msg) -> list:
        return self.handle(ev.ClientMessage(client, msg))

    def hello(self, wid: str) -> list:
        worker = self.worker(wid)
        return self.send(worker.client, worker.hello(1000))

    def submit(self, n: int, client: bytes = DRIVER, **kw) -> list:
        return self.send(client, submit_msg(n, **kw))

    def done(self, wid: str, n: int, payloads=None, states=None, sizes=None,
             contained=None, took: float = 1.0) -> list:
        """Worker `wid` reports task `n` finished OK."""
        nret = self.s.tasks[tid(n)].spec.num_returns if tid(n) in self.s.tasks else 1
        payloads = [b"value-%d-%d" % (n, i) for i in range(nret)] if payloads is None else payloads
        msg = self.worker(wid).done(tid(n), payloads=payloads, states=states, sizes=sizes,
                                    contained=contained, start=1.0, end=1.0 + took)
        return self.report(wid, n, msg)

    def fail(self, wid: str, n: int, record: bytes, retryable: bool = False) -> list:
        msg = self.worker(wid).failed(tid(n), record, retryable=retryable, start=1.0, end=2.0)
        return self.report(wid, n, msg)

    def report_cancelled(self, wid: str, n: int) -> list:
        """Worker `wid` reports task `n` stopped by its interrupt (TaskCancelledError)."""
        return self.report(wid, n, self.worker(wid).cancelled(tid(n), start=1.0, end=2.0))

    def exit(self, wid: str, code: int | None = -9) -> list:
        return self.handle(ev.WorkerExited(wid, code))

    def cancel(self, n: int, force: bool = False, recursive: bool = True,
               client: bytes = DRIVER) -> list:
        return self.send(client, p.Cancel(rid(n), force, recursive))

    def put(self, oid: bytes, *, state=INLINE, size=None, payload=b"put-value",
            contained=(), req_id=0, client: bytes = DRIVER) -> list:
        if state == STORE:
            payload = b""
        size = len(payload) if size is None else size
        return self.send(client, p.Put(oid, state, size, list(contained), req_id, payload))

    def refs(self, incs=(), decs=(), client: bytes = DRIVER) -> list:
        return self.send(client, p.Refs(list(incs), list(decs)))

    def cpu(self) -> float:
        return self.s.pool.available.get(rs.CPU, 0) / rs.UNIT

