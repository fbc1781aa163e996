"""Where a ready task runs: here, on a peer, or nowhere yet. Pure policy.

The local scheduler asks two questions, and this module answers them from
what gossip says about each peer (`PeerView`) and what the asking node
itself has sent there:

- `pick_peer`: a task cannot start here now (local resources are taken);
  which peer should it be forwarded to? A peer qualifies if its total
  resources can ever run the task, it is not backing off after a refusal,
  and our own tasks there leave room: at most its total (what it can run at
  once) while the local queue is short, and `depth` times more while the
  local queue is longer than the cluster can run at once — so a peer always
  has its next task at hand when one ends and never waits a round trip,
  yet no peer sits on a backlog while the owner runs dry at the end.
  Among those: most argument bytes held there (locality), then the most
  free resources by its last gossip, then the fewest of our tasks there.
- `accepts`: a peer received a forwarded task; take it, or refuse
  (spillback) so the owner places it elsewhere?
- `by_strategy`: a ready task of ours carries a scheduling strategy (its
  `opts["strategy"]`, set by `scheduling_strategy=`): where does it go?
  "SPREAD": the nodes that can hold it take turns (`spread_turn`), this
  one included, even when this one has room. Node affinity {"node": id,
  "soft": bool}: to that node; when it is dead, unknown or can never hold
  the task, a hard affinity fails the task (TaskUnschedulableError) and a
  soft one goes the default way; while that peer is suspect or backing off
  after a refusal (or, soft, has no room by its gossip), a hard one waits
  (is parked) and a soft one goes the default way. Tasks without a strategy
  ("DEFAULT") never come here.

Amounts are in resource units (core/resources.py).
"""
from __future__ import annotations

from . import resources as rs


class PeerView:
    """One peer as the local scheduler sees it."""
    __slots__ = ("node_id", "address", "total", "available", "inflight",
                 "ours", "refused_until", "known_fns", "suspect")

    def __init__(self, node_id: bytes, address: str):
        self.node_id = node_id
        self.address = address
        self.total: dict[str, int] = {}       # by its gossip
        # free resources: its last gossip, less what we sent it since, plus what
        # came back since (the next gossip replaces the estimate)
        self.available: dict[str, int] = {}
        self.inflight: dict[str, int] = {}    # demand of our tasks forwarded there, not ended
        self.ours = 0                         # how many of our tasks are there
        self.refused_until = 0.0              # it refused a task: leave it alone till then
        self.known_fns: set[bytes] = set()    # functions we sent it the code of
        self.suspect = False                  # not heard of lately: send it nothing new

    def update(self, info: dict) -> bool:
        """Take a newer gossiped view (`info` as a node publishes it); False
        (and nothing changed) if it is malformed."""
        try:
            total = rs.to_units(info.get("total", {}))
            available = rs.to_units(info.get("available", {}))
        except (TypeError, ValueError, AttributeError, OverflowError):
            return False
        self.total, self.available = total, available
        return True

    def sent(self, demand: dict[str, int]) -> None:
        """One of our tasks went there."""
        rs.release(self.inflight, demand)   # (adds: inflight counts what is out)
        rs.acquire(self.available, demand)
        self.ours += 1

    def came_back(self, demand: dict[str, int]) -> None:
        """One of our tasks there ended, was refused, or is retried elsewhere."""
        rs.acquire(self.inflight, demand)
        rs.release(self.available, demand)
        self.ours -= 1

    def room(self, demand: dict[str, int], depth: int) -> bool:
        """May one more task of `demand` go there, with `depth` tasks queued per slot?"""
        if not rs.feasible(self.total, demand):
            return False
        for name, amount in demand.items():
            limit = self.total.get(name, 0) * (1 + depth)
            if self.inflight.get(name, 0) + amount > limit:
                return False
        return True


def pick_peer(peers, demand: dict[str, int], now: float, *, depth: int,
              arg_bytes: dict[bytes, int] | None = None) -> PeerView | None:
    """The peer a task that cannot start here should go to, or None (it waits here)."""
    best = None
    best_key = None
    for view in peers:
        if view.suspect or view.refused_until > now or not view.room(demand, depth):
            continue
        free = sum(view.available.get(k, 0) for k in demand)
        key = ((arg_bytes or {}).get(view.node_id, 0), free, -view.ours, view.node_id)
        if best_key is None or key > best_key:
            best, best_key = view, key
    return best


def holder_with_room(peers, demand: dict[str, int], now: float,
                     arg_bytes: dict[bytes, int], min_bytes: int) -> PeerView | None:
    """Locality: the peer holding the most of a task's argument bytes (at least
    `min_bytes`), if it can start the task now by its last gossip."""
    best = None
    best_bytes = min_bytes - 1
    for view in peers:
        held = arg_bytes.get(view.node_id, 0)
        if held <= best_bytes or view.suspect or view.refused_until > now \
                or not view.room(demand, 0):
            continue
        if not rs.fits(view.available, demand):
            continue
        best, best_bytes = view, held
    return best


def accepts(available: dict[str, int], total: dict[str, int], queued: int,
            demand: dict[str, int], depth: int) -> bool:
    """Does a node take a forwarded task? If it can start it now, or if its
    queue is shorter than `depth` tasks per CPU; never if it can never run it."""
    if not rs.feasible(total, demand):
        return False
    if rs.fits(available, demand):
        return True
    cpus = total.get(rs.CPU, 0) // rs.UNIT
    return queued < depth * max(cpus, 1)


def queue_is_deep(queued: int, cluster_total: dict[str, int]) -> bool:
    """Is there more work here than the whole cluster can start at once?"""
    return queued > cluster_total.get(rs.CPU, 0) // rs.UNIT


# -- scheduling strategies -----------------------------------------------------------

SPREAD = "SPREAD"
DEFAULT, HERE, PEER, PARK, FAIL = "default", "here", "peer", "park", "fail"


def hard_affinity_to(opts: dict, node_id: bytes) -> bool:
    """Must a task with these `opts` run on `node_id` and nowhere else?"""
    strategy = opts.get("strategy") if opts else None
    return type(strategy) is dict and not strategy["soft"] and strategy["node"] == node_id


def by_strategy(strategy, demand: dict[str, int], now: float, *, here: bytes,
                local_total: dict[str, int], peers: dict, dead, depth: int,
                spread_turn: int, nested_refs: bool) -> tuple[str, object]:
    """Where a ready task of ours with a strategy goes: (verdict, detail), where
    the verdict is DEFAULT (the usual way: queued here, spilled when busy), HERE
    (queued here and kept here), PEER (detail: the PeerView to forward it to),
    PARK (it waits; asked again on a tick) or FAIL (detail: why, for the error).
    `nested_refs`: refs nested in its arguments are known here only, so SPREAD
    and soft affinity keep it the default way."""
    if strategy == SPREAD:
        return _spread(demand, now, here, local_total, peers, depth, spread_turn, nested_refs)
    node, soft = strategy["node"], strategy["soft"]
    if node == here:
        if rs.feasible(local_total, demand):
            return (DEFAULT if soft else HERE), None
        return (DEFAULT, None) if soft else (FAIL, "it can never fit on that node (its "
                                             f"resources: {rs.from_units(local_total)})")
    view = peers.get(node)
    if view is None:
        if soft:
            return DEFAULT, None
        return FAIL, ("that node died" if node in dead else "no such node is alive in "
                      "this cluster")
    if not rs.feasible(view.total, demand):
        return (DEFAULT, None) if soft else (FAIL, "it can never fit on that node (its "
                                             f"resources: {rs.from_units(view.total)})")
    if soft and (nested_refs or not rs.fits(view.available, demand)):
        return DEFAULT, None
    if view.suspect or view.refused_until > now:
        return (DEFAULT, None) if soft else (PARK, None)
    return PEER, view


def _spread(demand, now, here, local_total, peers, depth, turn, nested_refs):
    """SPREAD: the nodes that can hold the task now take turns, this one too."""
    nodes = [here] if rs.feasible(local_total, demand) else []
    if not nested_refs:
        nodes += [v.node_id for v in peers.values() if not v.suspect
                  and v.refused_until <= now and v.room(demand, depth)]
    if not nodes:
        return DEFAULT, None
    nodes.sort()
    target = nodes[turn % len(nodes)]
    return (DEFAULT, None) if target == here else (PEER, peers[target])
