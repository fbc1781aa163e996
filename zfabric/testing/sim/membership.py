"""MembershipSim: N core.membership.Membership gossiping over a simulated Network.

Crash, leave, join, partition (symmetric or one-way), heal; every node's view is recorded and
checked after each step. Rows travel as msgpack bytes, as the node sends
them, so a row that is not msgpack-safe fails here, and no two nodes ever
share an object. Used by tests/test_membership.py.
"""
from __future__ import annotations

import math
import random

import msgpack

from ...core.membership import GONE, Change, MemberState, Membership
from ...ids import NODE_ID_SIZE
from .network import Clock, Network


class MembershipSim:
    """N `Membership` instances, numbered 0..N-1, gossiping over a `Network`.

    Each `step()` advances the clock by `step`, delivers the messages due
    (merge; a message that asks for an answer, or from a member the receiver
    holds DEAD, is answered at once with the receiver's `answer_rows` -- all
    its rows to a sender it did not know: a join -- as the fabric does), then
    ticks every running node in index order and sends each target it names
    `gossip_rows(target)`, asking for an answer if `wants_reply(target)`. After each step every running node is
    validated, and the Changes it reported are checked against its members:
    the last Change about a member states its current state, and a member
    never reported is DEAD or LEFT.

    With `bootstrap` every node starts knowing every other (as after a
    completed join); otherwise each joins through node 0's rows.
    `history` records every transition in every running node's view:
    (time, observer, subject, new state), by node index.
    """

    def __init__(self, n: int, seed: int, *, step: float = 0.05,
                 delay: tuple[float, float] = (0.0, 0.02), loss: float = 0.0,
                 duplicate: float = 0.0, bootstrap: bool = True, **config):
        self._rng = random.Random(seed)
        self.clock = Clock(step)
        self.net = Network(random.Random(self._rng.getrandbits(64)), delay=delay,
                           loss=loss, duplicate=duplicate)
        self.config = config            # keyword arguments of every Membership
        self.nodes: list[Membership] = []
        self.running: set[int] = set()
        self.index: dict[bytes, int] = {}
        self._by_address: dict[str, int] = {}
        self._told: list[dict[bytes, MemberState]] = []   # each node's Changes, last per member
        self._seen: list[dict[int, MemberState]] = []     # each node's view at the last step
        self.history: list[tuple[float, int, int, MemberState]] = []
        for i in range(n):
            self._add()
            if not bootstrap and i > 0:
                self._merge(i, self.nodes[0].rows())
        if bootstrap:
            for i in range(n):
                for j in range(n):
                    if i != j:
                        self._merge(i, self.nodes[j].rows())
        self._record()
        self.check()

    @property
    def now(self) -> float:
        return self.clock.now

    @property
    def ids(self) -> list[bytes]:
        return [m.me.node_id for m in self.nodes]

    # -- driving ------------------------------------------------------------

    def step(self) -> None:
        now = self.clock.advance()
        for src, dst, payload in self.net.deliver_due(now):
            i = self._by_address[dst]
            if i in self.running:
                rows, reply = msgpack.unpackb(payload)
                node = self.nodes[i]
                sender = self.nodes[self._by_address[src]].me.node_id
                joining = sender not in node.members
                self._merge(i, rows, sender)
                if reply or node.answers(sender):
                    back = node.rows() if joining else node.answer_rows(sender, rows)
                    self.net.send(dst, src, msgpack.packb([back, False]), now)
        for i in sorted(self.running):
            node = self.nodes[i]
            targets, changes = node.tick(now)
            self._tell(i, changes)
            full = None if node.delta.active else msgpack.packb([node.rows(), False])
            for node_id, address in targets:
                payload = full or msgpack.packb([node.gossip_rows(node_id),
                                                 node.wants_reply(node_id)])
                self.net.send(node.me.address, address, payload, now)
        self._record()
        self.check()

    def run(self, seconds: float) -> None:
        """Step for at least `seconds`."""
        for _ in range(self._steps(seconds)):
            self.step()

    def run_until(self, condition, seconds: float) -> bool:
        """Step until `condition()` holds (True) or `seconds` have passed (False)."""
        end = self.clock.ticks + self._steps(seconds)
        while not condition():
            if self.clock.ticks >= end:
                return False
            self.step()
        return True

    # -- events -------------------------------------------------------------

    def crash(self, i: int) -> None:
        """Node i stops silently: no more ticks, its incoming messages are dropped."""
        self.running.discard(i)

    def leave(self, i: int) -> None:
        """Node i stops gracefully: its leave() rows go to every live peer it knows."""
        node = self.nodes[i]
        payload = msgpack.packb([node.leave(), False])
        for m in node.peers():
            self.net.send(node.me.address, m.address, payload, self.now)
        self.running.discard(i)

    def join(self, via: int) -> int:
        """A new node that has received node `via`'s rows (a join reply); its index."""
        i = self._add()
        self._merge(i, self.nodes[via].rows())
        return i

    def partition(self, side_a, side_b) -> None:
        self.net.partition([self.nodes[i].me.address for i in side_a],
                           [self.nodes[i].me.address for i in side_b])

    def cut(self, sources, destinations) -> None:
        """One way: what a node in `sources` sends a node in `destinations` is lost."""
        self.net.cut([self.nodes[i].me.address for i in sources],
                     [self.nodes[i].me.address for i in destinations])

    def heal(self) -> None:
        self.net.heal()

    # -- views --------------------------------------------------------------

    def state(self, observer: int, subject: int) -> MemberState | None:
        m = self.nodes[observer].members.get(self.nodes[subject].me.node_id)
        return None if m is None else m.state

    def view(self, observer: int) -> dict[int, MemberState]:
        """Node observer's view of the others, by index."""
        me = self.nodes[observer].me
        return {self.index[m.node_id]: m.state
                for m in self.nodes[observer].members.values() if m is not me}

    def check(self) -> None:
        for i in self.running:
            node = self.nodes[i]
            node.validate()
            told = self._told[i]
            for node_id, m in node.members.items():
                if m is not node.me:
                    assert told.get(node_id, m.state if m.state in GONE else None) == m.state, \
                        (i, self.index[node_id], told.get(node_id), m)

    # -- internals ----------------------------------------------------------

    def _steps(self, seconds: float) -> int:
        return max(0, math.ceil(seconds / self.clock.step - 1e-9))

    def _add(self) -> int:
        i = len(self.nodes)
        node_id = self._rng.randbytes(NODE_ID_SIZE)
        address = f"tcp://node{i}.sim:7000"
        node = Membership(node_id, address, {"index": i}, now=self.now,
                          rng=random.Random(self._rng.getrandbits(64)), **self.config)
        self.nodes.append(node)
        self.index[node_id] = i
        self._by_address[address] = i
        self._told.append({})
        self._seen.append({})
        self.running.add(i)
        return i

    def _merge(self, i: int, rows, sender: bytes | None = None) -> None:
        self._tell(i, self.nodes[i].merge(rows, self.now, sender))

    def _tell(self, i: int, changes: list[Change]) -> None:
        for c in changes:
            if c.node_id != self.nodes[i].me.node_id:
                self._told[i][c.node_id] = c.state

    def _record(self) -> None:
        for i in sorted(self.running):
            seen = self._seen[i]
            for j, state in self.view(i).items():
                if seen.get(j) != state:
                    seen[j] = state
                    self.history.append((self.now, i, j, state))
