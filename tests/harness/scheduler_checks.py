"""The checks of tests/core/test_scheduler_stateful.py (its docstring lists what
they check): `CheckedModel.step` hands the scheduler one event, applies its
effects to the model (`absorb`), and checks them against the scheduler;
`check_cancel` checks what a cancel step did to the tasks it could reach.
"""
from __future__ import annotations

from zfabric import protocol as p
from zfabric.core import effects as fx
from zfabric.core import resources as rs
from zfabric.protocol import ObjectState
from zfabric.core.tasks import TaskState
from zfabric.core.workers import PREFETCH_MIN_RUNS, WorkerState

from .scheduler_model import (ERROR, FUNCTIONS, INLINE, PREFETCH_DEPTH, PREFETCH_QUEUE, STORE,
                              WATCHER, MTask, MWorker, SchedulerModel, record_of)

PENDING = int(ObjectState.PENDING)


class CheckedModel(SchedulerModel):
    """The model, checked against the scheduler after every step."""

    # -- one step: handle, then check everything --------------------------------------------

    def step(self, event, *, expect=None, cancel_step=False, gone=None, store_reported=(),
             put_expect=None, interrupts=(), revokes=()) -> list:
        """Hand the scheduler one event and check everything. `expect` names the outcome
        of the tasks the event is about; `interrupts` and `revokes` are the
        InterruptWorker and Revoke it must cause (outside cancel steps)."""
        self.broken = True
        s = self.s
        before_store = {oid for oid, e in s.objects.entries.items() if e.state == ObjectState.STORE}
        used_before = self.room()
        dead_before = set(self.dead)
        out = s.handle(event, self.now)
        s.validate()
        seen = self.absorb(out, dead_before - {gone}, cancel_step)
        if not cancel_step:
            assert not seen["kills"]
            assert seen["interrupts"] == set(interrupts), (seen["interrupts"], interrupts)
            assert seen["revokes"] == set(revokes), (seen["revokes"], revokes)
        self.check(seen, expect or {}, cancel_step, gone, before_store, used_before,
                   set(store_reported), put_expect)
        self.broken = False
        return out

    def absorb(self, effects: list, dead_before: set[bytes], cancel_step: bool) -> dict:
        """Apply the effects to the model, checking each as it comes (in order: a
        dispatch must fit what is in use at that point)."""
        seen = {"ready": {}, "deletes": [], "replies": {}, "logs": [], "kills": set(),
                "interrupts": set(), "revokes": set()}
        freed_spills = []
        for e in effects:
            kind = type(e)
            if kind is fx.SpawnWorker:
                assert e.worker_id not in self.spawned, e
                self.spawned.add(e.worker_id)
                self.workers[e.worker_id] = MWorker(e.worker_id)
            elif kind is fx.Send:
                assert e.to not in dead_before, f"{type(e.msg).__name__} sent to gone client {e.to}"
                msg = e.msg
                if isinstance(msg, p.Execute):
                    self.on_execute(e.to, msg)
                elif isinstance(msg, p.ObjectReady):
                    self.on_ready(e.to, msg, seen)
                elif isinstance(msg, p.Revoke):
                    w = self.workers[e.to.decode()]
                    assert msg.task_id in w.nqueue, "Revoke of a task not prefetched there"
                    if cancel_step:
                        self.tasks[msg.task_id].cancel_flag = True
                    w.fake.deliver(msg)
                    seen["revokes"].add((w.wid, msg.task_id))
                elif isinstance(msg, p.PutReply):
                    assert msg.req_id not in seen["replies"]
                    seen["replies"][msg.req_id] = msg.error
                elif isinstance(msg, p.Welcome):
                    pass
                else:
                    raise AssertionError(f"unexpected message {msg!r}")
            elif kind is fx.KillWorker:
                w = self.workers[e.worker_id]
                assert w.nrun is not None and not w.stopping, e
                w.doomed = True     # it may still answer what it read, but starts nothing
                self.tasks[w.nrun].cancel_flag = True
                seen["kills"].add(e.worker_id)
            elif kind is fx.InterruptWorker:
                w = self.workers[e.worker_id]
                assert w.nrun == e.task_id, e
                self.tasks[e.task_id].cancel_flag = True
                seen["interrupts"].add((e.worker_id, e.task_id))
            elif kind is fx.StopWorker:
                w = self.workers[e.worker_id]
                assert w.hello and w.nrun is None and not w.nqueue, e
                assert not w.doomed and not w.stopping, e
                w.stopping = True
                w.c.held.clear()            # the node dropped its references
                self.dead.add(w.c.client)
            elif kind is fx.DeleteObject:
                assert not e.spilled, "no spill is ever reported done here"
                seen["deletes"].append(e.oid)
            elif kind is fx.SpillObject:   # (this model's disk never answers: spills stay under way)
                entry = self.s.objects.get(e.oid)
                if entry is None:   # freed later in this same step (a client gone, its refs
                    freed_spills.append(e.oid)   # with it): its DeleteObject follows
                else:
                    assert entry.state == ObjectState.STORE and entry.local and entry.pins == 0, e
                seen.setdefault("spills", []).append(e.oid)
            elif kind is fx.WatchClient:
                pass
            elif kind is fx.Publish:
                seen.setdefault("published", []).append((e.table, e.key))
            elif kind is fx.Log:
                seen["logs"].append(e.level)
            elif kind is fx.Nonsense:   # (a refused message changes nothing: checked below)
                seen.setdefault("nonsense", []).append(e.reason)
            else:
                raise AssertionError(f"unexpected effect {e!r}")
        # a spill the node starts and a free that overtakes it in one step: the spiller copies
        # a file that then goes (the core drops the copy when the spill reports back)
        assert all(oid in seen["deletes"] for oid in freed_spills), (freed_spills, seen["deletes"])
        return seen

    def on_execute(self, to: bytes, ex: p.Execute) -> None:
        wid = to.decode()
        w = self.workers.get(wid)
        assert w is not None, f"Execute to unknown worker {wid}"
        assert w.hello and not w.doomed and not w.stopping, (
            f"Execute to {wid}: hello={w.hello} doomed={w.doomed} stopping={w.stopping}")
        t = self.tasks[ex.task_id]
        assert t.live and t.running_on is None and t.assigned_to is None, \
            "task sent to a worker while it runs or waits on another"
        if w.nrun is None:      # an idle worker: the task starts now
            assert not w.nqueue
            for name, amount in t.demand.items():
                assert self.in_use.get(name, 0) + amount <= self.total.get(name, 0), (
                    "over-committed", name, self.in_use, t.demand, self.total)
            self.node_start(w, t)
        else:                   # prefetched behind the running task
            running = self.tasks[w.nrun]
            assert self.prefetch > 0, "prefetch while disabled"
            assert not running.blocked and not running.cancel_flag
            assert rs.shape(running.demand) == rs.shape(t.demand), "prefetch of another shape"
            ahead = [running] + [self.tasks[q] for q in w.nqueue]
            for task in ahead:
                runs, peak = self.fn_times.get(task.fn_id, (0, 0.0))
                assert runs >= PREFETCH_MIN_RUNS and peak < self.prefetch, (
                    "prefetch behind a function not known to be quick", runs, peak)
            if w.nqueue:   # a second or later: within the depth and the queue's seconds
                assert len(w.nqueue) < PREFETCH_DEPTH, ("prefetched too deep", w.nqueue)
                work = sum(self.fn_times[q.fn_id][1] for q in ahead[1:])
                assert work < PREFETCH_QUEUE * self.prefetch, ("too much work queued", work)
            w.nqueue.append(t.tid)
            t.assigned_to = wid
        expected_blob = b"" if w.fake.knows(t.fn_id) else FUNCTIONS[t.fn_id]
        w.fake.take(ex)
        assert ex.dep_ids == t.spec_deps and ex.depth == t.depth
        assert ex.num_returns == len(t.returns)
        made_ahead = set()   # pipelined: PENDING arguments made by the tasks before it here
        if w.nrun is not None and w.nrun != t.tid:
            for tid in [w.nrun] + w.nqueue[:-1]:
                made_ahead.update(self.tasks[tid].returns)
        assert all(s in (INLINE, STORE) or (s == PENDING and oid in made_ahead)
                   for oid, s in zip(ex.dep_ids, ex.dep_states)), (ex.dep_states, made_ahead)
        for oid, state, payload in zip(ex.dep_ids, ex.dep_states, ex.dep_payloads):
            entry = self.s.objects.get(oid)
            assert entry is not None and int(entry.state) == state
            assert payload == (entry.payload if state == INLINE else b"")
        assert ex.fn_blob == expected_blob

    def on_ready(self, to: bytes, msg: p.ObjectReady, seen: dict) -> None:
        tid = self.return_of.get(msg.oid)
        if tid is not None and self.tasks[tid].owner == to:
            self.ready_count[msg.oid] += 1
            assert self.ready_count[msg.oid] == 1, "return sealed twice"
            seen["ready"][msg.oid] = msg
            if msg.state == ERROR:
                self.err_record[msg.oid] = msg.payload
        else:
            assert to == WATCHER, f"ObjectReady to {to} that never asked"
            assert msg.oid in self.watch_pending, "ObjectReady the watcher is not waiting for"
            self.watch_pending.discard(msg.oid)

    # -- the checks ---------------------------------------------------------------------------

    def check(self, seen, expect, cancel_step, gone, before_store, used_before,
              store_reported, put_expect) -> None:
        s = self.s
        for oid, e in s.objects.entries.items():   # errors sealed where the owner cannot see
            if e.state == ObjectState.ERROR:
                self.err_record.setdefault(oid, e.payload)
        # logs: the simulation is faithful, so nothing should look odd to the scheduler
        assert not seen["logs"], f"unexpected logs: {seen['logs']}"

        # tasks: none lost, none unknown, each ends exactly once with the right outcome
        in_table = set(s.tasks)
        live = {t.tid for t in self.live_tasks()}
        assert in_table <= live, "scheduler has tasks nobody submitted"
        for tid in live - in_table:
            t = self.tasks[tid]
            t.live = False
            assert t.running_on is None and t.assigned_to is None, \
                "a running or prefetched task left the table"
            kind = expect.get(tid)   # (one given back to wait for an argument may end
            if kind == "waiting":    # through that argument: a stored value refused)
                kind = None
            self.check_ended(t, seen, kind, cancel_step, gone, used_before)
        for tid, kind in expect.items():
            if kind == "requeue":
                assert tid in s.tasks
                assert s.tasks[tid].state in (TaskState.QUEUED, TaskState.RUNNING,
                                              TaskState.ASSIGNED)
            elif kind == "waiting":   # (given back before its argument was made)
                pass                   # (still there, or ended through it: above)
            else:
                assert tid not in s.tasks, f"task expected to end ({kind}) is still there"
        for t in self.live_tasks():
            assert all(self.ready_count[oid] == 0 for oid in t.returns), "sealed before its end"
            st_ = s.tasks[t.tid]
            assert (st_.state == TaskState.RUNNING) == (t.running_on is not None)
            assert (st_.state == TaskState.ASSIGNED) == (t.assigned_to is not None)
            if t.running_on is not None or t.assigned_to is not None:
                assert st_.worker == (t.running_on or t.assigned_to)
            for oid in t.spec_deps:
                assert oid in s.objects, "argument of a pending task was freed"

        # workers: the node's view is what the model predicts, and agrees with the workers
        model_workers = {wid for wid, w in self.workers.items() if not w.stopping}
        assert set(s.pool.workers) == model_workers, (set(s.pool.workers), model_workers)
        executing = []
        for wid in model_workers:
            sw, mw = s.pool.workers[wid], self.workers[wid]
            assert (sw.task.spec.task_id if sw.task else None) == mw.nrun
            assert [t.spec.task_id for t in sw.queue] == mw.nqueue
            assert (sw.state == WorkerState.STARTING) == (not mw.hello)
            current, local = mw.fake.current_id, mw.fake.local_ids
            books = (wid, mw.__dict__, mw.fake.__dict__)
            if current is not None:
                executing.append(current)
            if mw.doomed:
                continue
            executing += local
            # between tasks, the node already counts the next one as running; and it
            # has not heard yet of the pipelined tasks the worker gave back
            given = [r.task_id for r in mw.fake.given_back]
            fake_seq = given + ([current] if current is not None else []) + local
            assert ([mw.nrun] if mw.nrun is not None else []) + mw.nqueue == fake_seq, books
        assert len(executing) == len(set(executing)), "a task is on two workers at once"
        idle = {w.wid for w in s.pool.idle}
        assert len(idle) == len(s.pool.idle), "a worker is idle twice"
        assert idle == {w.wid for w in self.workers.values()
                        if w.hello and w.nrun is None and not w.doomed and not w.stopping}

        # resources: exactly total minus what runs and is not blocked
        for name, total in self.total.items():
            assert s.pool.available.get(name, 0) == total - self.in_use.get(name, 0), (
                name, s.pool.available, self.in_use)
            if name != rs.CPU:
                assert s.pool.available[name] >= 0
        assert all(v == 0 for k, v in s.pool.available.items() if k not in self.total)

        # work-conserving: an idle worker never sits beside a queued task that fits
        queued_fit = [t for t in s.tasks.values()
                      if t.state == TaskState.QUEUED and rs.fits(s.pool.available, t.demand)]
        if queued_fit:
            assert not s.pool.idle, "idle worker left beside a queued task that fits"
            if len(s.pool.workers) < self.max_workers:
                assert any(w.state == WorkerState.STARTING for w in s.pool.workers.values()), (
                    "a queued task fits the free resources but no worker is starting for it")

        # objects: held ones exist; what leaves the store is deleted once
        for c in self.clients().values():
            for oid in c.held:
                assert oid in s.objects, f"object held by {c.client} was freed"
        for oid in self.watch_pending:
            e = s.objects.get(oid)
            assert e is not None and e.state == ObjectState.PENDING
        after_store = {oid for oid, e in s.objects.entries.items() if e.state == ObjectState.STORE}
        deletes = seen["deletes"]
        assert len(deletes) == len(set(deletes)), "object deleted twice in one step"
        assert not set(deletes) & self.deleted, "object deleted twice"
        assert before_store - after_store <= set(deletes), "store object dropped without delete"
        assert set(deletes) <= before_store | store_reported, "DeleteObject of a non-store object"
        for oid in deletes:   # freed, or a result refused for want of room (kept as an error)
            e = s.objects.get(oid)
            assert e is None or e.state == ObjectState.ERROR, e.state
        self.deleted |= set(deletes)
        assert 0 <= s.objects.store_used - s.objects.table.spilling_bytes <= self.capacity

        # puts
        if put_expect is not None:
            req, refused = put_expect
            if req:
                assert set(seen["replies"]) == {req}
                assert (seen["replies"][req] != "") == refused
            else:
                assert not seen["replies"]
        else:
            assert not seen["replies"]

    def check_ended(self, t: MTask, seen, kind, cancel_step, gone, used_before) -> None:
        owner_silent = t.owner in self.dead and t.owner != gone
        msgs = [seen["ready"].get(oid) for oid in t.returns]
        if owner_silent:
            assert all(m is None for m in msgs)
            return
        # the owner is told of each return it still holds, and of no other (an owner
        # going away now: of those it held, as its tasks are cancelled before its refs go)
        holder = self.clients().get(t.owner)
        held = self.gone_held if t.owner == gone else holder.held if holder else set()
        for oid, m in zip(t.returns, msgs):
            assert (m is not None) == (oid in held), (
                "a held return of an ended task was not sealed" if oid in held
                else "a dropped return sent to its owner")
            if m is None:
                self.unpushed.add(oid)
        if not msgs:
            return
        if kind == "ok":
            reported, sizes = self.reported
            accepted = 0
            for oid, m, state, size in zip(t.returns, msgs, reported, sizes):
                if m is None:   # dropped: the node's entry, if something still pins it
                    entry = self.s.objects.get(oid)
                    if entry is None:
                        continue
                    m = p.ObjectReady(oid, int(entry.state), entry.size, entry.payload)
                if m.state == ERROR:
                    rec = record_of(m.payload)
                    assert state == STORE and rec["system"] == "ObjectStoreFullError", rec
                    committed, movable = used_before
                    # (necessary: the returns accepted before it may have been movable too)
                    assert size > self.capacity or (
                        committed + accepted + size - self.capacity > movable)
                else:
                    assert m.state == state
                    if state == STORE:
                        accepted += size
            return
        msgs = [m for m in msgs if m is not None]
        if not msgs:
            return
        assert all(m.state == ERROR for m in msgs)
        payload = msgs[0].payload
        assert all(m.payload == payload for m in msgs)
        rec = record_of(payload)
        if kind == "user":
            assert payload == self.user_record
        elif kind == "cancelled":
            assert rec["system"] == "TaskCancelledError" and not rec["context"], rec
        elif kind == "crashed":
            assert rec["system"] == "WorkerCrashedError" and not rec["context"], rec
            assert t.max_retries >= 0 and t.attempts == t.max_retries + 1
        elif kind is None and cancel_step:
            assert rec["system"] == "TaskCancelledError", rec
        else:
            assert kind is None, kind
            # failed through an argument: the argument's error, with one more context line
            assert rec["context"], rec
            if all(d in self.err_record for d in t.spec_deps):
                bases = [record_of(self.err_record[d]) for d in t.spec_deps]
                assert any({k: v for k, v in rec.items() if k != "context"}
                           == {k: v for k, v in b.items() if k != "context"}
                           and rec["context"][:-1] == b["context"] for b in bases), rec

    def check_cancel(self, out: list, roots: list[bytes], reach: set[bytes], force: bool,
                     before: dict) -> None:
        """`before`: task id -> (running_on, assigned_to, cancel_flag) before the step."""
        kills = {e.worker_id for e in out if type(e) is fx.KillWorker}
        interrupts = {(e.worker_id, e.task_id) for e in out if type(e) is fx.InterruptWorker}
        revokes = {(e.to.decode(), e.msg.task_id) for e in out
                   if type(e) is fx.Send and isinstance(e.msg, p.Revoke)}
        running = {before[t][0]: t for t in reach if before[t][0] is not None}
        assigned = {(before[t][1], t) for t in reach if before[t][1] is not None}
        assert revokes <= {(w, t) for w, t in assigned if not before[t][2]}
        if force:
            assert not interrupts and kills <= set(running)
        else:
            assert not kills
            assert interrupts <= {(w, t) for w, t in running.items() if not before[t][2]}
        for tid in roots:       # the task named is always reached
            if tid not in reach:
                continue
            on, at, flagged = before[tid]
            if on is not None:
                if force:
                    assert on in kills
                elif not flagged:
                    assert (on, tid) in interrupts
            elif at is not None:
                assert flagged or (at, tid) in revokes
                assert self.tasks[tid].live, "a prefetched task ended before its worker answered"
            else:
                assert not self.tasks[tid].live, "a cancelled queued/waiting task is still pending"
