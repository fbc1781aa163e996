"""Membership of one node: who is in the cluster, and whether each is alive.

The fabric (core/fabric.py) owns a `Membership` and is its only caller:

    fabric --tick(now)----------> Membership --> [(node_id, address)]: send rows() to each,
                                                 and [Change] (timeouts: SUSPECT, DEAD)
    fabric --merge(rows, now)---> Membership --> [Change]  rows from a peer's gossip or a join reply
    fabric --leave()------------> Membership --> rows, sent once to every peer on a graceful stop
    fabric --take_forgotten()---> Membership --> members that left long ago and are forgotten

Changes go on to the scheduler as PeerUp / PeerSuspect / PeerDown (a DEAD
peer's tasks are resubmitted); a forgotten member's GCS shard is dropped.
`info` is the opaque view each node gossips about itself (resources, queue
length, object address...).

Failure detection is gossip-style heartbeating with SWIM incarnations:
- each round (gossip_interval) we bump our heartbeat and push our digest,
  one row per known member, to `fanout` peers chosen round-robin;
- a peer whose (incarnation, heartbeat) has not advanced, directly or through
  others, for failure_timeout/2 is SUSPECT, for failure_timeout DEAD. SUSPECT
  is our own opinion: a SUSPECT in someone's row is never adopted;
- DEAD and LEFT are final for an incarnation. Only the member itself raises
  its incarnation, when it hears it is suspected or dead (it refutes, i.e.
  rejoins), and only a higher incarnation revives it. A DEAD verdict carrying
  an older heartbeat than we know is not adopted: after a partition heals,
  each side's verdicts about nodes the other side still heard from do not
  make those nodes die everywhere for a moment;
- every `dead_probe_rounds` rounds one DEAD member also gets our digest, the
  DEAD members taken in turn along the gossip cycle, so each is probed at
  least once every `dead_probe_rounds` * (number of DEAD members) rounds: if
  it is alive behind a healed partition, it learns it was declared dead and
  rejoins. This goes on for good, also when every peer is DEAD (we are
  alone): nothing else would bring a node cut off from all its peers back;
- a message from a member we hold DEAD is answered with our rows at once
  (`answers`: the caller sends them), so that it learns it was declared dead
  and rejoins without waiting for our next probe: after a heal, whichever
  side declared whom dead, the first message across the cut starts the
  refutation;
- a gap longer than `pause_threshold` between our own ticks (we were
  paused) restarts the peers' silence clocks instead of counting against them.

Above `deltas_above` members (config gossip_deltas_above) what a round
sends and how silence is timed change: bounded delta rows and asking each
target for an answer (core/gossip.py, `gossip_rows` / `wants_reply`), and
the answer across a healed cut carries every live row (`answer_rows`). The
rules above hold in both modes but one: there a DEAD verdict about a member
we hold alive is never adopted at once, whatever its heartbeat, but checked
with the member itself (core/gossip.py `doubt`; `merge`'s `sender` is the
member a message came from: it spoke).

A row (wire form, msgpack-safe) is [node_id, address, incarnation, heartbeat,
state, info]. Pure: time and randomness come in as arguments; `now` must not
decrease between calls.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from enum import IntEnum

from .. import ids
from ..ids import NODE_ID_SIZE
from .gossip import Deltas


class MemberState(IntEnum):
    ALIVE = 0
    SUSPECT = 1   # silent for failure_timeout/2, in our own view
    DEAD = 2      # silent for failure_timeout, declared by us or someone: final for the incarnation
    LEFT = 3      # stopped gracefully: final for the incarnation


ALIVE, SUSPECT, DEAD, LEFT = MemberState
LIVE = (ALIVE, SUSPECT)
GONE = (DEAD, LEFT)

# Counters in a row above this are malformed: msgpack carries 64 bits, and a
# refutation adds one to an incarnation it was told.
MAX_COUNTER = 2**63 - 2


class Member:
    __slots__ = ("node_id", "address", "incarnation", "heartbeat", "state", "info", "heard")

    def __init__(self, node_id: bytes, address: str, incarnation: int, heartbeat: int,
                 state: MemberState, info: dict, heard: float):
        self.node_id = node_id
        self.address = address          # "tcp://host:port" of its control socket
        self.incarnation = incarnation
        self.heartbeat = heartbeat
        self.state = state
        self.info = info                # its gossiped view, as of (incarnation, heartbeat)
        self.heard = heard              # local time (incarnation, heartbeat) last advanced

    def row(self) -> list:
        return [self.node_id, self.address, self.incarnation, self.heartbeat,
                int(self.state), self.info]

    def __repr__(self) -> str:
        return (f"Member({ids.short(self.node_id)}, {self.state.name}, "
                f"inc={self.incarnation}, hb={self.heartbeat}, heard={self.heard})")


@dataclass(frozen=True, slots=True)
class Change:
    """A member's state changed in our view. ALIVE also for a member newly
    learned of, or revived with a higher incarnation."""
    node_id: bytes
    state: MemberState
    address: str
    info: dict


class Membership:
    def __init__(self, node_id: bytes, address: str, info: dict, *, now: float,
                 rng: random.Random, failure_timeout: float = 3.0,
                 gossip_interval: float = 0.2, fanout: int = 3, dead_probe_rounds: int = 10,
                 pause_threshold: float | None = None, forget_left_after: float | None = None,
                 deltas_above: int | None = None, news_rows: int = 8, sync_rows: int = 4):
        assert len(node_id) == NODE_ID_SIZE and fanout >= 1 and dead_probe_rounds >= 1
        self.rng = rng
        # Above this many members (any state, us included) gossip carries deltas
        # and failure detection probes (core/gossip.py); None: never.
        self.deltas_above = deltas_above
        self.delta = Deltas(self, news_rows=news_rows, sync_rows=sync_rows)
        self.failure_timeout = failure_timeout
        # A caller that ticks often (the node: every few tens of ms) sets this:
        # a longer gap between two of our ticks means we were paused.
        self.pause_threshold = pause_threshold
        # A member that left gracefully is gossiped (so everyone learns it left)
        # for this long, then forgotten: only its id is kept, to ignore stale
        # rows about it (node ids are never reused). Without it, every driver
        # that ever joined with an embedded node would stay in every gossip.
        self.forget_left_after = forget_left_after
        self.forgotten: set[bytes] = set()
        self._newly_forgotten: list[bytes] = []   # for take_forgotten()
        self.gossip_interval = gossip_interval
        self.fanout = fanout
        self.dead_probe_rounds = dead_probe_rounds
        self.me = Member(node_id, address, 0, 0, ALIVE, dict(info), now)
        self.members: dict[bytes, Member] = {node_id: self.me}
        self.rounds = 0                      # gossip rounds so far
        self.malformed = 0                   # rows skipped by merge
        self._last_round: float | None = None
        self._checked = now                  # time of the last timeout check
        self._next_info: dict | None = None  # set_info's view, for the next heartbeat
        # Gossip order: every peer (any state) in one random cycle, walked
        # `fanout` live ones per round, skipping the others. The cycle is not
        # reshuffled after each walk as in SWIM: any reshuffle lets a peer
        # picked early in one walk come last in the next, 2*n/fanout - 1
        # rounds apart, while a fixed cycle visits every live peer in every
        # ceil(n/fanout) consecutive rounds -- the bound the failure timeout
        # is sized against. A newcomer goes in at a random place.
        self._ring: list[bytes] = []
        self._next = 0                       # index in _ring of the next candidate
        self._next_dead = 0                  # index in _ring where the next probe search starts
        self.probe_round = False             # did the last tick() make a round that probes the dead?
        # Our probe rounds' phase, from our id: nodes that started together
        # (or healed together) do not all probe the dead in the same round.
        self._probe_phase = int.from_bytes(node_id[:4], "big") % dead_probe_rounds

    # -- our own state ------------------------------------------------------

    def set_info(self, info: dict) -> None:
        """Our own view. It goes out with our next heartbeat, so that one
        (incarnation, heartbeat) always carries one info."""
        self._next_info = dict(info)

    def leave(self) -> list:
        """Mark ourselves LEFT (graceful stop); returns the rows to send to every peer
        (with deltas on, our own row: every peer gets it)."""
        self.me.state = LEFT
        return [self.me.row()] if self.delta.active else self.rows()

    # -- queries ------------------------------------------------------------

    def rows(self) -> list[list]:
        return [m.row() for m in self.members.values()]

    def gossip_rows(self, target: bytes) -> list[list]:
        """The rows a gossip to `target` carries: all of them, or with deltas on
        (above `deltas_above` members) a bounded few (core/gossip.py)."""
        return self.delta.rows_for(target) if self.delta.active else self.rows()

    def answer_rows(self, sender: bytes, rows) -> list[list]:
        """The rows an answer to `sender`'s gossip (`rows`, already merged)
        carries. With deltas on, to a member we hold DEAD or one whose rows
        hold us DEAD -- the two sides of a healed cut -- every live row we
        hold (`catch_up`): push-pull, so that each contact across the cut
        teaches a node all the other side still beats, in one message
        instead of 8 news rows at a time -- up to CATCH_UPS_PER_ROUND (3)
        such answers a round. Otherwise gossip_rows(sender)."""
        if self.delta.active and (self.answers(sender) or self.holds_us_dead(rows)) \
                and self.delta.may_catch_up():
            return self.delta.catch_up(sender)
        return self.gossip_rows(sender)

    def wants_reply(self, target: bytes) -> bool:
        """Should this round's gossip to `target` ask for an answer at once (with
        deltas on: a probe of a live peer)?"""
        return self.delta.wants_reply(target)

    def peers(self, states=LIVE) -> list[Member]:
        return [m for m in self.members.values() if m is not self.me and m.state in states]

    def answers(self, sender: bytes) -> bool:
        """Should a message from `sender` be answered with our rows at once?
        Yes if we hold it DEAD: our rows tell it so, and it refutes (rejoins)."""
        m = self.members.get(sender)
        return m is not None and m is not self.me and m.state == DEAD

    def holds_us_dead(self, rows) -> bool:
        """Do a peer's rows (its own view) hold us DEAD? Then that peer dropped
        what it ran for us, whatever our incarnation: it has not revived us."""
        if isinstance(rows, (list, tuple)):
            for row in rows:
                parsed = _parse(row)
                if parsed is not None and parsed[0] == self.me.node_id:
                    return parsed[4] == DEAD
        return False

    def alone(self) -> bool:
        """No peer is ALIVE or SUSPECT in our view (all DEAD or LEFT, or none known)."""
        return not any(m.state in LIVE for m in self.members.values() if m is not self.me)

    # -- stimuli ------------------------------------------------------------

    def take_forgotten(self) -> list[bytes]:
        """Members forgotten since the last call (their GCS shards can go)."""
        out, self._newly_forgotten = self._newly_forgotten, []
        return out

    def tick(self, now: float) -> tuple[list[tuple[bytes, str]], list[Change]]:
        """Check timeouts; once per gossip_interval, also a round: the
        (node_id, address) of each peer to send rows() to."""
        self.probe_round = False
        self.delta.update(now)
        changes = self._check_timeouts(now)
        if self.forget_left_after is not None:
            self._forget_left(now)
        if self.me.state == LEFT or (self._last_round is not None
                                     and now - self._last_round < self.gossip_interval):
            return [], changes
        self._last_round = now
        self.rounds += 1
        self.delta.catch_ups = 0
        self.me.heartbeat += 1
        self.me.heard = now
        if self._next_info is not None:
            self.me.info, self._next_info = self._next_info, None
        targets = self.delta.asked(self._walk(), now)
        targets += [m for m in self.delta.take_tell() if m not in targets]
        self.probe_round = (self.rounds + self._probe_phase) % self.dead_probe_rounds == 0
        if self.probe_round:
            dead = self._walk_dead()
            if dead is not None and dead not in targets:
                targets.append(dead)
        return [(m.node_id, m.address) for m in targets], changes

    def merge(self, rows: list, now: float, sender: bytes | None = None) -> list[Change]:
        """Rows from a peer's gossip or a join reply (from `sender`, if given: a
        message from it shows it alive); malformed ones are counted and skipped."""
        if not isinstance(rows, (list, tuple)):
            self.malformed += 1
            return []
        parsed_rows = []
        for row in rows:
            parsed = _parse(row)
            if parsed is None:
                self.malformed += 1
            else:
                parsed_rows.append(parsed)
        me = self.me.node_id
        # Rows that hold us DEAD come from across a cut: their verdicts about
        # our side are stale (with deltas on, not even worth checking).
        across = any(p[0] == me and p[4] == DEAD for p in parsed_rows)
        changes = []
        for parsed in parsed_rows:
            if parsed[0] == me:
                change = self._merge_self(*parsed[2:5])
            else:
                change = self._merge_peer(*parsed, now, across)
            if change is not None:
                changes.append(change)
        if sender is not None and sender != me:
            self.delta.answered(sender, now)
        return changes

    # -- rules --------------------------------------------------------------

    def _check_timeouts(self, now: float) -> list[Change]:
        stalled = now - self._checked
        paused = self.pause_threshold is not None and stalled > self.pause_threshold
        if paused:
            # We were not running (a stopped process, a long pause): what we
            # could not hear meanwhile is not the peers' silence. Start their
            # clocks again rather than declare everyone dead at once.
            for m in self.peers():
                m.heard = min(now, m.heard + stalled)
        self._checked = now
        changes = []
        if self.delta.active:   # only the peers we asked are timed (core/gossip.py)
            for m, dead in self.delta.check(now, stalled if paused else 0.0):
                m.state = DEAD if dead else SUSPECT
                changes.append(_change(m))
            return changes
        for m in self.peers():
            silent = now - m.heard
            if silent > self.failure_timeout:
                m.state = DEAD
            elif silent > self.failure_timeout / 2 and m.state == ALIVE:
                m.state = SUSPECT
            else:
                continue
            changes.append(_change(m))
        return changes

    def _merge_self(self, incarnation: int, heartbeat: int, state: MemberState) -> Change | None:
        me = self.me
        if me.state == LEFT or incarnation < me.incarnation:
            return None
        if state != ALIVE:
            # Suspected, declared dead, or (confused) said to have left, at our
            # incarnation or a later one: refute by rejoining above it.
            me.incarnation = incarnation + 1
            return _change(me)
        # Only a confused peer has us ALIVE ahead of ourselves: move past it,
        # so that our next heartbeat is news to everyone.
        if incarnation > me.incarnation:
            me.incarnation = incarnation + 1
        elif heartbeat > me.heartbeat:
            me.heartbeat = heartbeat
        return None

    def _merge_peer(self, node_id: bytes, address: str, incarnation: int, heartbeat: int,
                    state: MemberState, info: dict, now: float, across: bool = False
                    ) -> Change | None:
        if state == SUSPECT:
            state = ALIVE   # the sender's suspicion; ours comes from our own timer
        if node_id in self.forgotten:
            return None     # it left long ago: this row is stale
        m = self.members.get(node_id)
        if m is None:
            # A DEAD/LEFT newcomer is recorded too, so stale gossip cannot add it later.
            m = self.members[node_id] = Member(node_id, address, incarnation, heartbeat,
                                               state, info, now)
            self._insert(node_id)
            if state != ALIVE:
                return None
            self.delta.changed(node_id)
            return _change(m)
        if incarnation > m.incarnation:
            before = m.state
            m.address, m.incarnation, m.heartbeat = address, incarnation, heartbeat
            m.state, m.info, m.heard = state, info, now
            self.delta.changed(node_id)
            return _change(m) if m.state != before else None
        if incarnation < m.incarnation:
            return None
        if m.state == DEAD and state == ALIVE and heartbeat > m.heartbeat:
            self.delta.still_beats(node_id)   # it never heard it died: tell it
        # Same incarnation. DEAD and LEFT are final; LEFT may still refine DEAD
        # (it stopped on purpose), so that all views end up agreeing.
        if m.state == LEFT or (m.state == DEAD and state != LEFT):
            return None
        if state == DEAD and (heartbeat < m.heartbeat or self.delta.active):
            # A verdict older than what we know: it was heard of after the
            # declarer's last news (the declarer was cut off, not it). It
            # refutes when the verdict reaches it; we need not drop it meanwhile.
            # With deltas on, the heartbeats we know are seldom fresh, newer or
            # older than a verdict's: we check every verdict with the member
            # itself (core/gossip.py), but for one from across a cut.
            if not across:
                self.delta.doubt(node_id, [node_id, address, incarnation, heartbeat,
                                           int(state), info], now)
            return None
        newer = heartbeat > m.heartbeat
        if newer:
            m.heartbeat, m.info, m.heard = heartbeat, info, now
        if state in GONE:
            m.state = state
            if state == LEFT:
                m.heard = now   # (for a LEFT member: when we learned it left)
            self.delta.changed(node_id)
            return _change(m)
        if newer and m.state == SUSPECT:
            m.state = ALIVE   # evidence of life clears suspicion
            return _change(m)
        return None

    # -- gossip order -------------------------------------------------------

    def _forget_left(self, now: float) -> None:
        for m in [m for m in self.members.values() if m.state == LEFT and m is not self.me
                  and now - m.heard > self.forget_left_after]:
            del self.members[m.node_id]
            i = self._ring.index(m.node_id)
            del self._ring[i]
            self._next = _after_removal(self._next, i, len(self._ring))
            self._next_dead = _after_removal(self._next_dead, i, len(self._ring))
            self.forgotten.add(m.node_id)
            self._newly_forgotten.append(m.node_id)
            self.delta.forget(m.node_id)

    def _insert(self, node_id: bytes) -> None:
        i = self.rng.randint(0, len(self._ring))
        self._ring.insert(i, node_id)
        if i < self._next:
            self._next += 1   # keep the same candidate next
        if i < self._next_dead:
            self._next_dead += 1

    def _walk(self) -> list[Member]:
        """The next `fanout` live peers along the cycle (all of them if fewer)."""
        want = min(self.fanout, len(self.peers()))
        picked: list[Member] = []
        while len(picked) < want:
            m = self.members[self._ring[self._next]]
            self._next = (self._next + 1) % len(self._ring)
            if m.state in LIVE:
                picked.append(m)
        return picked

    def _walk_dead(self) -> Member | None:
        """The next DEAD member along the cycle after the last one probed, or None."""
        n = len(self._ring)
        for k in range(n):
            i = (self._next_dead + k) % n
            m = self.members[self._ring[i]]
            if m.state == DEAD:
                self._next_dead = (i + 1) % n
                return m
        return None

    # -- invariants ---------------------------------------------------------

    def validate(self) -> None:
        me = self.me
        assert self.members[me.node_id] is me and me.state in (ALIVE, LEFT), me
        for node_id, m in self.members.items():
            assert m.node_id == node_id and len(node_id) == NODE_ID_SIZE, m
            assert isinstance(m.state, MemberState) and isinstance(m.address, str), m
            assert 0 <= m.incarnation <= MAX_COUNTER + 1 and 0 <= m.heartbeat, m
            assert isinstance(m.info, dict) and all(isinstance(k, str) for k in m.info), m
            if m is not me and m.state in LIVE and not self.delta.active:
                # As of the last timeout check; merges since then only advance `heard`.
                assert self._checked - m.heard <= self.failure_timeout, m
                if m.state == SUSPECT:
                    assert self._checked - m.heard > self.failure_timeout / 2, m
        assert sorted(self._ring) == sorted(n for n in self.members if n != me.node_id)
        assert not self.forgotten & set(self.members)
        assert 0 <= self._next < max(1, len(self._ring))
        assert 0 <= self._next_dead < max(1, len(self._ring))
        assert self.malformed >= 0
        self.delta.validate()


def _after_removal(index: int, removed: int, length: int) -> int:
    """A cursor into the ring after the entry at `removed` went (`length`: the new length)."""
    if removed < index:
        index -= 1
    return 0 if index >= length else index


def _change(m: Member) -> Change:
    return Change(m.node_id, m.state, m.address, m.info)


def _is_address(address) -> bool:
    """tcp://HOST:PORT: a row with anything else would make every node that
    gossips to it try to connect to garbage."""
    return isinstance(address, str) and _is_address_str(address)


@functools.lru_cache(maxsize=4096)   # (every row names an address: most repeat)
def _is_address_str(address: str) -> bool:
    if not address.startswith("tcp://") or len(address) > 300:
        return False
    host, sep, port = address[6:].rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535
                and not any(c.isspace() for c in host))


_STATES = tuple(MemberState)   # by value: 0, 1, 2, 3


def _parse(row) -> tuple | None:
    """(node_id, address, incarnation, heartbeat, state, info) of a well-formed row, else None."""
    if not isinstance(row, (list, tuple)) or len(row) != 6:
        return None
    node_id, address, incarnation, heartbeat, state, info = row
    if not (isinstance(node_id, bytes) and len(node_id) == NODE_ID_SIZE
            and _is_address(address)
            and type(incarnation) is int and 0 <= incarnation <= MAX_COUNTER
            and type(heartbeat) is int and 0 <= heartbeat <= MAX_COUNTER
            and type(state) is int and 0 <= state < len(_STATES)
            and isinstance(info, dict) and all(isinstance(k, str) for k in info)):
        return None
    return node_id, address, incarnation, heartbeat, _STATES[state], dict(info)
