"""core/transfer.py: pulls in a small simulated world, and a few worked examples.

The machine plays the node shell and the network around one `Transfers`:
holders that serve every object (some of them doomed: they may answer with
an error, be declared dead, or hang so their chunks time out), a network that
delivers responses in any order, duplicates some and carries stray chunks,
and a receiver buffer per pull where a chunk is written when `expects()` says
it answers an outstanding request. It keeps its own books of each pull
(holders known in order, holders failed, requests outstanding, chunks
counted) and checks after every step:

- every request goes to the pull's current holder (the first known one not
  failed), never to a failed one; it is chunk-aligned, inside [0, size), of
  length min(chunk_size, size - offset), and not already counted or in flight;
- in flight per pull is exactly min(window, chunks not yet counted);
- a chunk counts (expects() and bytes_received) exactly when it answers an
  outstanding request at the current holder; late, duplicate and stray
  chunks, and chunks after cancel or done, count for nothing;
- when a holder fails, the chunks it owed are re-requested in the same step
  from the next holder;
- PullDone comes once per pull, with the buffer equal to the payload and
  every byte counted once; PullFailed comes once, only when every known
  holder failed, and none of them was one that never fails;
- start() on an object being pulled returns [] and starts nothing;
- `Transfers.validate()` holds.

At teardown it fails the doomed holders still in use and delivers the rest,
so every pull ends: done if it knew a holder that never fails.
"""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zfabric.core.transfer import (LAST_HOLDER_RETRIES, ChunkRequest, PullDone, PullFailed,
                                   Transfers)

TIMEOUT = 10.0
A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
OID, OID2, OID3 = b"o" * 20, b"p" * 20, b"q" * 20
STRANGER = b"s" * 20   # an object nobody pulls


class MPull:
    """One pull of one object, as the model sees it."""

    def __init__(self, size: int, holders: list[bytes]):
        self.known = list(dict.fromkeys(holders))
        self.failed: set[bytes] = set()
        self.inflight: dict[int, float] = {}   # offset -> sent_at, all at current()
        self.counted: set[int] = set()
        self.buffer = bytearray(size)
        self.retries = 0   # late chunks asked again of the last holder

    def current(self) -> bytes | None:
        return next((h for h in self.known if h not in self.failed), None)


class MObject:
    def __init__(self, oid: bytes, payload: bytes):
        self.oid = oid
        self.payload = payload
        self.pull: MPull | None = None
        self.outcomes: list[str] = []


class TransferMachine(RuleBasedStateMachine):

    @initialize(data=st.data())
    def setup(self, data):
        self.cs = data.draw(st.integers(1, 5), label="chunk_size")
        self.window = data.draw(st.integers(1, 4), label="window")
        self.t = Transfers(chunk_size=self.cs, window=self.window, chunk_timeout=TIMEOUT)
        self.holders = [bytes([ord("A") + i]) * 16 for i in range(data.draw(st.integers(2, 4)))]
        self.doomed = set(data.draw(st.lists(st.sampled_from(self.holders), unique=True),
                                    label="doomed"))
        self.dead: set[bytes] = set()
        self.hung: set[bytes] = set()
        self.objects = []
        for oid in [OID, OID2][:data.draw(st.integers(1, 2))]:
            size = data.draw(st.one_of(st.just(0), st.just(1),
                                       st.integers(1, 8).map(lambda k: k * self.cs),
                                       st.integers(0, 12 * self.cs)), label="size")
            self.objects.append(MObject(oid, data.draw(st.binary(min_size=size, max_size=size))))
        self.network: list[tuple[bytes, bytes, int, int]] = []   # chunk responses on their way
        self.now = 0.0
        self.started = self.merged = self.counted_bytes = 0
        for obj in self.objects:
            self.start_pull(obj, data.draw(st.permutations(self.holders), label="holders"))

    # -- the model's side of each step ---------------------------------------------

    def chunks(self, size: int) -> dict[int, int]:
        return {o: min(self.cs, size - o) for o in range(0, size, self.cs)}

    def fail(self, obj: MObject, holder: bytes, owed: dict) -> None:
        """The model's prediction: `holder` is dropped from obj's pull now."""
        p = obj.pull
        if p is None or holder not in p.known or holder in p.failed:
            return
        if holder == p.current():
            owed[obj.oid] = set(p.inflight)
            p.inflight.clear()
        p.failed.add(holder)

    def apply(self, results: list, owed: dict | None = None) -> None:
        asked: dict[bytes, set[int]] = {}
        by_oid = {o.oid: o for o in self.objects}
        for r in results:
            obj = by_oid[r.oid]
            p = obj.pull
            assert p is not None, f"{r} for an object no pull wants"
            size = len(obj.payload)
            if isinstance(r, ChunkRequest):
                assert r.holder == p.current() and r.holder not in p.failed | self.dead, r
                assert self.chunks(size).get(r.offset) == r.length, (r, size)
                assert r.offset not in p.counted and r.offset not in p.inflight, r
                p.inflight[r.offset] = self.now
                asked.setdefault(r.oid, set()).add(r.offset)
                if r.holder not in self.hung:
                    self.network.append((r.holder, r.oid, r.offset, r.length))
            elif isinstance(r, PullDone):
                assert r.size == size and bytes(p.buffer) == obj.payload
                assert sum(self.chunks(size)[o] for o in p.counted) == size
                obj.pull = None
                obj.outcomes.append("done")
            else:
                assert isinstance(r, PullFailed), r
                assert p.current() is None, "failed with a holder left"
                assert all(h in self.doomed for h in p.known), "failed with a holder that never fails"
                assert r.oid.hex() in r.reason and all(h.hex() in r.reason for h in p.known)
                obj.pull = None
                obj.outcomes.append("failed")
        for oid, offsets in (owed or {}).items():
            if by_oid[oid].pull is not None:
                assert offsets <= asked.get(oid, set()), "a failed holder's chunks not re-requested"
        for obj in self.objects:
            p = obj.pull
            assert self.t.pulling(obj.oid) == (p is not None)
            if p is not None:
                left = len(self.chunks(len(obj.payload))) - len(p.counted)
                assert len(p.inflight) == min(self.window, left), "credits not all used"

    def deliver(self, holder: bytes, oid: bytes, offset: int, length: int) -> None:
        obj = next((o for o in self.objects if o.oid == oid), None)
        p = obj.pull if obj else None
        expected = (p is not None and holder == p.current() and offset in p.inflight
                    and self.chunks(len(obj.payload))[offset] == length)
        assert self.t.expects(holder, oid, offset, length) == expected
        if expected:   # the shell writes the chunk, then tells the machine
            p.buffer[offset:offset + length] = obj.payload[offset:offset + length]
            del p.inflight[offset]
            p.counted.add(offset)
            self.counted_bytes += length
        before = self.t.statistics()["bytes_received"]
        results = self.t.on_chunk(holder, oid, offset, length, self.now)
        assert self.t.statistics()["bytes_received"] - before == (length if expected else 0)
        if not expected:
            assert results == []
        self.apply(results)

    def start_pull(self, obj: MObject, holders: list[bytes]) -> None:
        before = self.t.statistics()
        results = self.t.start(obj.oid, len(obj.payload), holders, self.now)
        if obj.pull is not None:   # merged into the pull in progress
            assert results == [] and self.t.statistics()["pulls_started"] == before["pulls_started"]
            self.merged += 1
            obj.pull.known += [h for h in holders if h not in obj.pull.known]
        else:
            self.started += 1
            obj.pull = MPull(len(obj.payload), holders)
        self.apply(results)

    # -- rules ------------------------------------------------------------------------

    @rule(data=st.data())
    def start(self, data):
        """Another task needs the object (merged), or the pull ended and it is needed again."""
        alive = [h for h in self.holders if h not in self.dead]
        holders = st.lists(st.sampled_from(alive), max_size=5) if alive else st.just([])
        self.start_pull(data.draw(st.sampled_from(self.objects)), data.draw(holders, label="holders"))

    @precondition(lambda self: self.network)
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver_one(self, data, duplicate):
        i = data.draw(st.integers(0, len(self.network) - 1), label="which")
        response = self.network[i] if duplicate else self.network.pop(i)
        self.deliver(*response)

    @rule(data=st.data())
    def stray_chunk(self, data):
        oid = data.draw(st.sampled_from([o.oid for o in self.objects] + [STRANGER]))
        self.deliver(data.draw(st.sampled_from(self.holders)), oid,
                     data.draw(st.integers(0, 8 * self.cs)), data.draw(st.integers(0, self.cs + 1)))

    @precondition(lambda self: self.doomed)
    @rule(data=st.data())
    def error_reply(self, data):
        holder = data.draw(st.sampled_from(sorted(self.doomed)))
        obj = data.draw(st.sampled_from(self.objects))
        owed: dict = {}
        self.fail(obj, holder, owed)
        self.apply(self.t.on_error(holder, obj.oid, "object not found", self.now), owed)

    @precondition(lambda self: self.doomed - self.dead)
    @rule(data=st.data())
    def holder_dead(self, data):
        holder = data.draw(st.sampled_from(sorted(self.doomed - self.dead)))
        self.dead.add(holder)
        owed: dict = {}
        for obj in self.objects:
            self.fail(obj, holder, owed)
        self.apply(self.t.on_holder_dead(holder, self.now), owed)

    @precondition(lambda self: self.doomed - self.hung - self.dead)
    @rule(data=st.data())
    def holder_hangs(self, data):
        """It stops answering: what it owes never arrives, so it will time out."""
        holder = data.draw(st.sampled_from(sorted(self.doomed - self.hung - self.dead)))
        self.hung.add(holder)
        self.network = [r for r in self.network if r[0] != holder]

    @rule(jump=st.booleans())
    def tick(self, jump):
        if jump:   # time passes; every holder that still answers has answered by now
            self.now += TIMEOUT + 1
            pending, self.network = self.network, []
            for response in pending:
                self.deliver(*response)
        owed: dict = {}
        for obj in self.objects:
            p = obj.pull
            late = {o for o, t in p.inflight.items() if self.now - t > TIMEOUT} if p else set()
            if not late:
                continue
            if {h for h in p.known if h not in p.failed} == {p.current()} \
                    and p.retries < LAST_HOLDER_RETRIES:
                p.retries += 1            # the last holder is asked again for what is late
                for o in late:
                    del p.inflight[o]
                owed[obj.oid] = late
            else:
                self.fail(obj, p.current(), owed)
        self.apply(self.t.on_tick(self.now), owed)

    @rule(data=st.data(), rarely=st.integers(0, 3))
    def cancel(self, data, rarely):
        if rarely:   # cancel one time in four, so that most pulls run to their end
            return
        obj = data.draw(st.sampled_from(self.objects))
        self.t.cancel(obj.oid)
        if obj.pull is not None:
            obj.pull = None
            obj.outcomes.append("cancelled")
        self.apply([])

    @invariant()
    def valid(self):
        if hasattr(self, "t"):
            self.t.validate()

    def teardown(self):
        if not hasattr(self, "t"):
            return
        for obj in self.objects:
            for _ in range(10_000):
                p = obj.pull
                if p is None:
                    break
                holder = p.current()
                if holder in self.doomed:
                    owed: dict = {}
                    self.fail(obj, holder, owed)
                    self.apply(self.t.on_error(holder, obj.oid, "gone", self.now), owed)
                else:
                    owing = [i for i, r in enumerate(self.network)
                             if r[0] == holder and r[1] == obj.oid and r[2] in p.inflight]
                    assert owing, "a holder that never fails owes nothing, yet the pull waits"
                    self.deliver(*self.network.pop(owing[0]))
                self.t.validate()
            assert obj.pull is None, "a pull never ended"
        s = self.t.statistics()
        assert s["pulls_active"] == 0 and s["pulls_started"] == self.started
        assert s["pulls_merged"] == self.merged and s["bytes_received"] == self.counted_bytes
        assert s["pulls_done"] == sum(o.outcomes.count("done") for o in self.objects)
        assert s["pulls_failed"] == sum(o.outcomes.count("failed") for o in self.objects)


TransferMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50,
                                             deadline=None)
test_transfer_state_machine = TransferMachine.TestCase


# -- worked examples ---------------------------------------------------------------------

def requests(results) -> list[tuple]:
    return [(r.holder, r.offset, r.length) for r in results]


def test_window_refills_in_order():
    t = Transfers(chunk_size=10, window=2)
    assert requests(t.start(OID, 45, [A], 0.0)) == [(A, 0, 10), (A, 10, 10)]
    assert requests(t.on_chunk(A, OID, 10, 10, 1.0)) == [(A, 20, 10)]   # out of order is fine
    assert requests(t.on_chunk(A, OID, 0, 10, 1.0)) == [(A, 30, 10)]
    assert requests(t.on_chunk(A, OID, 20, 10, 1.0)) == [(A, 40, 5)]
    assert t.on_chunk(A, OID, 30, 10, 1.0) == []                        # nothing left to ask
    assert t.on_chunk(A, OID, 30, 10, 1.0) == []                        # a duplicate
    assert t.on_chunk(A, OID, 40, 10, 1.0) == []                        # a wrong length
    t.validate()
    assert t.on_chunk(A, OID, 40, 5, 1.0) == [PullDone(OID, 45)]
    assert not t.pulling(OID) and t.on_chunk(A, OID, 40, 5, 1.0) == []  # late, after done
    assert t.statistics()["bytes_received"] == 45


def test_a_chunk_that_times_out_moves_the_pull_to_the_next_holder():
    t = Transfers(chunk_size=10, window=2, chunk_timeout=5.0)
    t.start(OID, 30, [A, B], 0.0)
    assert requests(t.on_chunk(A, OID, 0, 10, 1.0)) == [(A, 20, 10)]
    assert t.on_tick(5.0) == []                        # (A, 10) is 5 s old: not yet
    assert requests(t.on_tick(5.5)) == [(B, 10, 10), (B, 20, 10)]
    t.validate()
    assert not t.expects(A, OID, 10, 10) and t.on_chunk(A, OID, 10, 10, 6.0) == []
    assert t.on_chunk(B, OID, 20, 10, 6.0) == []
    assert t.on_chunk(B, OID, 10, 10, 6.0) == [PullDone(OID, 30)]
    s = t.statistics()
    assert s["resourced"] == 1 and s["bytes_received"] == 30 and s["pulls_done"] == 1


def test_the_last_holder_is_asked_again_for_a_late_chunk_before_the_pull_fails():
    """(chaos seed 101) One lost request to the only holder must not lose an object
    that holder still has: the late chunk is asked again, LAST_HOLDER_RETRIES times."""
    t = Transfers(chunk_size=10, window=2, chunk_timeout=5.0)
    t.start(OID, 30, [A], 0.0)
    assert requests(t.on_chunk(A, OID, 0, 10, 1.0)) == [(A, 20, 10)]   # (A, 10) was lost
    assert requests(t.on_tick(5.5)) == [(A, 10, 10)]                    # asked again
    t.validate()
    assert t.on_chunk(A, OID, 10, 10, 6.0) == []
    assert t.on_chunk(A, OID, 20, 10, 6.0) == [PullDone(OID, 30)]
    t.start(OID2, 10, [A], 10.0)
    for k in range(LAST_HOLDER_RETRIES):
        assert requests(t.on_tick(15.5 + 5.5 * k)) == [(A, 0, 10)]
    [failed] = t.on_tick(15.5 + 5.5 * LAST_HOLDER_RETRIES)
    assert isinstance(failed, PullFailed) and "unanswered" in failed.reason


def test_size_zero_completes_at_once_and_no_holder_fails_at_once():
    t = Transfers(chunk_size=4)
    assert t.start(OID, 0, [], 0.0) == [PullDone(OID, 0)]
    [failed] = t.start(OID2, 5, [], 0.0)
    assert isinstance(failed, PullFailed) and OID2.hex() in failed.reason
    assert not t.pulling(OID) and not t.pulling(OID2)
    t.validate()


def test_last_holder_failing_fails_the_pull_with_every_reason():
    t = Transfers(chunk_size=4)
    t.start(OID, 10, [A, B], 0.0)
    t.on_error(A, OID, "object not found", 1.0)
    [failed] = t.on_holder_dead(B, 2.0)
    assert failed.reason == (f"no node holding object {OID.hex()} could serve it (tried: "
                             f"{A.hex()} (object not found), {B.hex()} (declared dead))")
    assert not t.pulling(OID) and t.on_holder_dead(A, 3.0) == []
    assert t.statistics()["pulls_failed"] == 1


def test_a_dead_holder_leaves_every_pull_it_was_in():
    t = Transfers(chunk_size=4, window=1)
    t.start(OID, 8, [A, B], 0.0)
    t.start(OID2, 8, [A, C], 0.0)
    t.start(OID3, 8, [B, A], 0.0)
    out = t.on_holder_dead(A, 1.0)
    assert out == [ChunkRequest(B, OID, 0, 4), ChunkRequest(C, OID2, 0, 4)]   # OID3 only loses a spare
    assert t.on_error(B, OID3, "gone", 1.0)[0].reason.endswith(f"{B.hex()} (gone))")
    t.validate()


def test_a_second_start_merges_and_brings_its_holders():
    t = Transfers(chunk_size=4, window=2)
    assert requests(t.start(OID, 8, [A], 0.0)) == [(A, 0, 4), (A, 4, 4)]
    assert t.start(OID, 8, [A, B], 0.5) == []
    assert t.statistics()["pulls_started"] == 1
    assert requests(t.on_error(A, OID, "gone", 1.0)) == [(B, 0, 4), (B, 4, 4)]
    assert t.start(OID, 8, [A], 1.5) == []               # a dropped holder is not taken back
    [failed] = t.on_error(B, OID, "gone", 2.0)
    assert isinstance(failed, PullFailed) and not t.pulling(OID)


def test_cancel_stops_the_pull_and_a_new_start_begins_afresh():
    t = Transfers(chunk_size=4, window=2)
    t.start(OID, 8, [A], 0.0)
    t.cancel(OID)
    assert not t.pulling(OID)
    assert t.on_chunk(A, OID, 0, 4, 1.0) == [] and t.on_tick(100.0) == []
    assert requests(t.start(OID, 8, [B], 2.0)) == [(B, 0, 4), (B, 4, 4)]
    assert t.on_chunk(A, OID, 0, 4, 2.5) == []           # the old holder's late chunk
    s = t.statistics()
    assert s["pulls_started"] == 2 and s["pulls_cancelled"] == 1 and s["bytes_received"] == 0
    t.validate()
