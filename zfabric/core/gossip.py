"""Delta gossip and probing: how membership gossips once the cluster is large.

A `Membership` (core/membership.py) owns one `Deltas` and is its only caller.
Up to `deltas_above` members it is idle and membership works as it always
has: every round every row goes to `fanout` peers, and each peer's silence
clock runs on whatever news of its heartbeat arrives, directly or relayed.
That costs O(N) bytes a message: at 1,000 nodes, megabytes a second per node.
Above it, this module takes over three things:

- **What a round sends** (`rows_for(target)`): our own row (our heartbeat),
  the target's row as we hold it (so a member we suspect or hold dead reads
  it and refutes), up to `news_rows` *news* rows -- members whose state or
  incarnation changed in our view, each sent in about 5 log2(N) messages, the
  least sent first (SWIM's piggybacking), a verdict we only pass on last --
  and `sync_rows` rows taken in turn
  from all we know (slow anti-entropy: every row reaches every peer again,
  so a news row lost everywhere is not lost for good). Bounded whatever N.
- **Failure detection** (`check(now)`): a heartbeat no longer reaches every
  node, so silence alone proves nothing. Each gossip to a live target asks for
  an answer (`wants_reply`: the fabric's `reply`, answered with that peer's
  rows for us, which carry its heartbeat). A target whose (incarnation,
  heartbeat) has not advanced since we first asked is asked again (up to
  `fanout` such a round, in turn); SUSPECT after failure_timeout/2, DEAD after failure_timeout, as
  before; the verdict is news. Every live node asks `fanout` peers a round,
  so a crashed node is asked by about `fanout` nodes a round and declared by
  the first after failure_timeout.
- **Verdicts are checked, not believed** (`doubt`): a DEAD row about a member
  we hold alive is passed on as news, and we ask the member ourselves and
  declare it too if it has not answered DOUBT_ROUNDS round after we asked.
  The heartbeats we know are seldom fresh here -- a relay of a crashed node's
  last beats, or older than a stale verdict from across a healed cut -- so a
  verdict's heartbeat against ours says nothing of its age; an answer does.
  Everyone checks a first verdict as it spreads: a death is known everywhere
  within O(log N) rounds and a check, and a member that answers is never
  held dead for a stale verdict.

Partitions heal by the same rules as below the threshold (probing the dead,
answering the dead, refutation), with three changes, since no full table
reaches a node any more. First, push-pull across the cut (`catch_up`): a
message to a member we hold DEAD asks for an answer, and the answer to a
member held DEAD, or to rows that hold the answerer DEAD, carries every row
the answerer holds alive -- so each contact across a healed cut teaches both
ends all that the other side still beats, instead of a few news rows a
message (which made a heal O(N) rounds). Second, a row that shows a member
we hold DEAD still beating at the same incarnation (it never heard of its
death) has that member told at once (`take_tell`). Third, verdicts in rows
that hold us DEAD are neither believed nor checked: they come from across a
cut, where every verdict about our side is stale.

Pure: time comes in as arguments.
"""
from __future__ import annotations

import heapq
import math

# Each news row goes out in about NEWS_REPEAT x log2(N) messages (SWIM's lambda log N).
NEWS_REPEAT = 5
# At most this many members told a round that they are held dead (take_tell).
TELL_PER_ROUND = 3
# A member declared dead by someone is declared by us too if it has not answered
# this many rounds after we first asked it (an answer takes one round trip: in
# the fabric well within a round, in the round-based simulators two rounds).
DOUBT_ROUNDS = 1
# At most this many members whose verdict we check are asked a round.
DOUBT_ASKS_PER_ROUND = 6
# At most this many answers a round carry every live row (catch_up); more
# answers that round carry the bounded rows (our own row still refutes).
CATCH_UPS_PER_ROUND = 3
# MemberState values (core/membership.py owns the enum and sets states).
_ALIVE, _SUSPECT, _DEAD = 0, 1, 2


class Deltas:
    def __init__(self, membership, *, news_rows: int, sync_rows: int):
        self.m = membership
        self.news_rows = news_rows
        self.sync_rows = sync_rows
        self.active = False
        self.news: dict[bytes, int] = {}        # member -> messages it went out in
        self.probing: dict[bytes, float] = {}   # live peer -> when we first asked it
        self.tell: dict[bytes, None] = {}       # members held DEAD that still beat
        # A live member someone declared DEAD, whose verdict we check -> [the round
        # we first asked it (None: not yet), the verdict's row (news meanwhile:
        # others check it too), the heartbeat we knew of it then].
        self.doubted: dict[bytes, list] = {}
        self.spoke: dict[bytes, float] = {}     # member -> when a message of its own last came
        self._sync = 0                          # cursor into the gossip cycle
        self.catch_ups = 0                      # catch_up answers sent this round

    # -- the mode ---------------------------------------------------------------------

    def update(self, now: float) -> None:
        """Switch on above `deltas_above` members, off at or below it."""
        m = self.m
        active = m.deltas_above is not None and len(m.members) > m.deltas_above
        if active == self.active:
            return
        self.active = active
        if active:
            for peer in m.peers():
                if peer.state == _SUSPECT:   # keep its countdown going
                    self.probing[peer.node_id] = peer.heard
        else:
            # Back to silence clocks: the peers we did not ask start theirs now.
            for peer in m.peers():
                if peer.state == _ALIVE:
                    peer.heard = now
            self.news.clear()
            self.probing.clear()
            self.tell.clear()
            self.doubted.clear()
            self.spoke.clear()

    # -- stimuli from Membership --------------------------------------------------------

    def changed(self, node_id: bytes) -> None:
        """A member's state or incarnation changed in our view: news."""
        if self.active:
            self.news[node_id] = 0
            self.doubted.pop(node_id, None)

    def forget(self, node_id: bytes) -> None:
        """A member is forgotten (it left long ago)."""
        self.news.pop(node_id, None)
        self.probing.pop(node_id, None)
        self.tell.pop(node_id, None)
        self.doubted.pop(node_id, None)
        self.spoke.pop(node_id, None)

    def doubt(self, node_id: bytes, verdict: list, now: float) -> None:
        """Someone declared a live member of ours DEAD (`verdict`, its row). Below
        the threshold a verdict is believed unless its heartbeat is older than
        ours. Here we hear few heartbeats, and ours may be a relay of its last
        beats before a crash, still going round, or one older than a stale
        verdict from across a healed cut: its age says nothing. So we ask the
        member ourselves, and declare it dead too if it has not answered
        (`answered`) DOUBT_ROUNDS rounds after we asked; a relayed heartbeat
        does not clear the doubt. Meanwhile the verdict goes on as news, so that
        everyone checks it at once (were it passed on only by those who believe
        it, a death would spread in waves, a check each). Not if the member
        spoke to us within failure_timeout: the verdict is older than that."""
        if not self.active or node_id in self.doubted:
            return
        if now - self.spoke.get(node_id, -math.inf) < self.m.failure_timeout:
            return
        self.doubted[node_id] = [None, verdict, self.m.members[node_id].heartbeat]
        self.news[node_id] = 0

    def answered(self, node_id: bytes, now: float) -> None:
        """A message from the member itself: it is alive, whatever verdict we
        doubt; and any verdict that reaches us within failure_timeout is older
        than this (a death is declared after failure_timeout of silence)."""
        if self.active:
            self.spoke[node_id] = now
        if self.doubted.pop(node_id, None) is not None:
            self.news.pop(node_id, None)   # (the verdict we passed on)

    def still_beats(self, node_id: bytes) -> None:
        if self.active:
            self.tell[node_id] = None

    def asked(self, targets: list, now: float) -> list:
        """This round's targets, plus up to `fanout` of the probes still
        unanswered, asked again (taken in turn: many are pending only while
        peers are cut off, and asking all of them every round would multiply
        the traffic just then)."""
        if not self.active:
            return targets
        ids = {t.node_id for t in targets}
        for t in targets:
            self.probing.setdefault(t.node_id, now)
        members, again = self.m.members, []
        for node_id in self.probing:
            if len(again) == self.m.fanout:
                break
            if node_id not in ids:
                again.append(node_id)
        for node_id in again:   # to the back of the turn (insertion order)
            self.probing[node_id] = self.probing.pop(node_id)
            targets.append(members[node_id])
        return self._ask_doubted(targets)

    def _ask_doubted(self, targets: list) -> list:
        """Ask the members whose verdict we doubt: up to DOUBT_ASKS_PER_ROUND
        more than the targets a round, those not asked yet first, then again in
        turn (many are doubted at once only during a cut or after a heal)."""
        ids = {t.node_id for t in targets}
        rounds = self.m.rounds
        fresh, again = [], []
        for node_id, entry in self.doubted.items():
            if node_id in ids:
                if entry[0] is None:
                    entry[0] = rounds
            elif entry[0] is None:
                fresh.append(node_id)
            else:
                again.append(node_id)
        for node_id in (fresh + again)[:DOUBT_ASKS_PER_ROUND]:
            entry = self.doubted.pop(node_id)   # to the back of the turn (insertion order)
            self.doubted[node_id] = entry
            if entry[0] is None:
                entry[0] = rounds
            targets.append(self.m.members[node_id])
        return targets

    def take_tell(self) -> list:
        """Up to TELL_PER_ROUND members we hold DEAD that still beat."""
        out = []
        while self.tell and len(out) < TELL_PER_ROUND:
            node_id = next(iter(self.tell))
            del self.tell[node_id]
            member = self.m.members.get(node_id)
            if member is not None and member.state == _DEAD:
                out.append(member)
        return out

    def check(self, now: float, stalled: float) -> list:
        """Timeouts of the peers we asked: [(member, dead)], dead False for a
        suspicion (our opinion only: not news). The caller sets the states."""
        members, timeout = self.m.members, self.m.failure_timeout
        out = []
        for node_id, (asked, _, heartbeat) in list(self.doubted.items()):
            peer = members.get(node_id)
            if peer is None or peer.state not in (_ALIVE, _SUSPECT):
                del self.doubted[node_id]
            elif stalled:   # we were paused: its answers may be waiting for us
                self.doubted[node_id][0] = None
            elif asked is not None and self.m.rounds - asked >= DOUBT_ROUNDS:
                # Our verdict carries the heartbeat we knew when we began to
                # doubt: one relayed since may be news of life from across a
                # healed cut, and would make our verdict look fresh to its side.
                peer.heartbeat = min(peer.heartbeat, heartbeat)
                self.probing.pop(node_id, None)
                self.changed(node_id)   # (no longer doubted)
                out.append((peer, True))
        for node_id, since in list(self.probing.items()):
            peer = members.get(node_id)
            if peer is None or peer.state not in (_ALIVE, _SUSPECT) or peer.heard > since:
                del self.probing[node_id]
                continue
            if stalled:
                since = self.probing[node_id] = min(now, since + stalled)
            silent = now - since
            if silent > timeout:
                del self.probing[node_id]
                self.changed(node_id)
                out.append((peer, True))
            elif silent > timeout / 2 and peer.state == _ALIVE:
                out.append((peer, False))
        return out

    # -- what a round sends ---------------------------------------------------------------

    def wants_reply(self, target: bytes) -> bool:
        """A probe of a live peer, and any message to a member we hold DEAD
        (a probe of the dead, a tell): if it is alive, it answers with
        catch_up rows (it reads itself DEAD in ours)."""
        if not self.active:
            return False
        if target in self.probing or target in self.doubted:
            return True
        member = self.m.members.get(target)
        return member is not None and member.state == _DEAD

    def may_catch_up(self) -> bool:
        """Another catch_up answer this round? (After a heal a node is told
        by many at once; most already know what it would send but its row.)"""
        if self.catch_ups >= CATCH_UPS_PER_ROUND:
            return False
        self.catch_ups += 1
        return True

    def catch_up(self, target: bytes) -> list[list]:
        """Our own row, the target's row as we hold it, and the row of every
        member we hold alive: the answer to a member across a healed cut
        (core/membership.py `answer_rows`). Only live rows: our verdicts of
        its side are what it is refuting, and stale ones would make it doubt
        its own live peers."""
        m = self.m
        rows = [m.me.row()]
        subject = m.members.get(target)
        if subject is not None and subject is not m.me:
            rows.append(subject.row())
        for member in m.members.values():
            if member.state in (_ALIVE, _SUSPECT) and member is not m.me \
                    and member is not subject:
                rows.append(member.row())
        return rows

    def rows_for(self, target: bytes) -> list[list]:
        m = self.m
        me = m.me
        rows = [me.row()]
        picked = {me.node_id}
        subject = m.members.get(target)
        if subject is not None and subject is not me:
            rows.append(subject.row())
            picked.add(target)
        limit = NEWS_REPEAT * max(1, math.ceil(math.log2(len(m.members) + 1)))
        # The least sent first; a verdict we only pass on, after our own news.
        doubted, news = self.doubted, self.news
        for node_id in heapq.nsmallest(self.news_rows + 2, news,
                                       key=lambda n: (n in doubted, news[n])):
            if node_id in picked or len(rows) >= 2 + self.news_rows:
                continue
            member = m.members.get(node_id)
            sent = self.news[node_id] + 1
            if member is None or sent >= limit:
                del self.news[node_id]
            else:
                self.news[node_id] = sent
            if member is not None:   # (a verdict we check goes on as it came)
                check = doubted.get(node_id)
                rows.append(member.row() if check is None else check[1])
                picked.add(node_id)
        ring = m._ring
        for _ in range(min(self.sync_rows, len(ring))):
            self._sync = (self._sync + 1) % len(ring)
            node_id = ring[self._sync]
            if node_id not in picked:
                rows.append(m.members[node_id].row())
                picked.add(node_id)
        return rows

    # -- invariants -----------------------------------------------------------------------

    def validate(self) -> None:
        m = self.m
        if not self.active:
            assert not self.probing and not self.news and not self.tell and not self.doubted
            return
        for node_id in self.probing:
            assert node_id in m.members and m.members[node_id] is not m.me
        for node_id, (asked, verdict, _) in self.doubted.items():
            member = m.members[node_id]   # a live member, DEAD in a verdict at its incarnation
            assert member is not m.me and member.state in (_ALIVE, _SUSPECT), member
            assert asked is None or 0 <= m.rounds - asked <= DOUBT_ROUNDS, (asked, m.rounds)
            assert verdict[0] == node_id, verdict
            assert verdict[2] == member.incarnation and verdict[4] == _DEAD, verdict
        for peer in m.peers():
            if peer.state == _SUSPECT:   # one we asked and are still waiting for
                assert peer.node_id in self.probing, peer
