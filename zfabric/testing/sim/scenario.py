"""A chaos scenario: a cluster, its drivers' work, its faults, as plain data.

`chaos.py` runs a `Scenario` on a FabricSim and checks what came back;
this module only says what happens and when, and what every object's
value must be:

    Scenario      nodes (resources), drivers (the node each is attached to),
                  ops (what each driver does, by time), faults (by time),
                  net (LinkFaults' probabilities while faults last), quiet
                  (when the faults end: the network heals and calms down)
    generate()    a random Scenario from a `Chooser`: `SeedChooser` (one
                  random.Random(seed)) or any object with the same three
                  methods (tests/sim/test_chaos_sim.py wraps hypothesis' draw)
    value()       the value a task's return must have: a hash of the task, the
                  return's index and the values of its arguments, so a wrong
                  argument anywhere upstream shows as a wrong value here

A scenario is JSON (`to_json` / `from_json`): a failing one can be printed
and replayed exactly (`python -m zfabric.testing.sim.chaos --scenario ...`).

Ops, per driver, at their time (`[time, driver, kind, ...]`):
    ["submit", n, deps, returns, duration, cpu, max_retries]  task n; deps are
        object keys [n, k]; returns: per return "i" (INLINE) or a STORE size
    ["put", n, ret]      object [n, 0] put by the driver ("i" or a STORE size)
    ["drop", [n, k]]     the driver drops its ref
    ["get", [n, k]]      the driver asks for the value (Subscribe)
    ["cancel", [n, k], force]   the driver cancels task n (recursively)
    ["borrow", [n, k]]   the driver takes a ref to an object another driver of
                         its node holds (Refs), as a ref passed between them
Faults (`[time, kind, ...]`):
    ["worker", node, r]        the r-th (mod count) worker of the node dies
    ["zygote", node]           every worker of the node dies at once
    ["crash", node]            the node dies silently
    ["leave", node]            the node stops gracefully (its peers are told)
    ["restart", node]          a crashed node's machine starts a new node
    ["cut", island, one_way, seconds]   the island is cut off (one way: only
                                        what it sends is lost), then healed
    ["driver", d]              driver d dies (ClientGone)
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

from ... import ids

MB = 1 << 20
FN_BLOB = b"code"
FN = ids.function_id(FN_BLOB)   # a function's id is the hash of its code
STORE_SIZES = (200_000, 5 * MB, 5 * MB, 50 * MB)
DURATIONS = (0.02, 0.1, 0.3, 1.0)


def tid(n: int) -> bytes:
    return b"T" + n.to_bytes(ids.TASK_ID_SIZE - 1, "big")


def pid(n: int) -> bytes:
    """The object id of put n (not the return of any task)."""
    return b"P" + n.to_bytes(ids.TASK_ID_SIZE - 1, "big") + ids.PUT_INDEX_FLAG.to_bytes(4, "big")


def oid_of(key, puts) -> bytes:
    n, k = key
    return pid(n) if n in puts else ids.object_id(tid(n), k)


def value(task_id: bytes, k: int, args: list[bytes]) -> bytes:
    """The value of return k of a task, given the values of its arguments."""
    h = hashlib.blake2b(task_id + k.to_bytes(4, "big"), digest_size=12)
    for a in args:
        h.update(len(a).to_bytes(4, "big") + a)
    return b"v" + h.digest()


def put_value(oid: bytes) -> bytes:
    return b"p" + hashlib.blake2b(oid, digest_size=12).digest()


@dataclass
class Scenario:
    seed: int
    nodes: list                 # resources of each node
    drivers: list               # node index of each driver
    ops: list = field(default_factory=list)
    faults: list = field(default_factory=list)
    net: dict = field(default_factory=dict)   # LinkFaults keyword arguments
    quiet: float = 0.0          # seconds after the start when the faults are over

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Scenario":
        data = json.loads(text)
        data["net"] = {k: tuple(v) if isinstance(v, list) else v
                       for k, v in data["net"].items()}
        return cls(**data)

    @property
    def puts(self) -> set[int]:
        return {op[3] for op in self.ops if op[2] == "put"}


class SeedChooser:
    """The choices of `generate`, from one random.Random(seed)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options):
        return self.rng.choice(list(options))

    def subset(self, options, most: int) -> list:
        options = list(options)
        return self.rng.sample(options, min(len(options), self.integer(0, most)))


def generate(seed: int, c) -> Scenario:
    """A random scenario: 2-4 nodes, 1-3 drivers with up to 24 ops in all, up to
    5 faults during the first seconds, a lossy network maybe."""
    nodes = [{"CPU": c.pick([1, 1, 2])} for _ in range(c.integer(2, 4))]
    drivers = [c.integer(0, len(nodes) - 1) for _ in range(c.pick([1, 1, 2, 3]))]
    sc = Scenario(seed, nodes, drivers)
    _ops(sc, c)
    sc.quiet = round(max([op[0] for op in sc.ops] + [0.0]) + 0.5, 2)
    _faults(sc, c)
    sc.net = {"loss": c.pick([0.0, 0.0, 0.0, 0.01, 0.05]),
              "duplicate": c.pick([0.0, 0.0, 0.0, 0.02]),
              "reorder": c.pick([0.0, 0.0, 0.0, 0.05]),
              "spike": c.pick([0.0, 0.0, 0.05]), "spike_delay": (0.0, 0.3)}
    return sc


def _ops(sc: Scenario, c) -> None:
    """The drivers' ops, interleaved in time order: each uses only objects it
    holds at that moment (made, put or borrowed from a driver of its node)."""
    held: list[list] = [[] for _ in sc.drivers]
    n, t = 0, 0.0
    for _ in range(c.integer(1, 12 * len(sc.drivers))):
        t = round(t + c.pick([0.0, 0.0, 0.05, 0.2, 0.5]), 2)
        d = c.integer(0, len(sc.drivers) - 1)
        mine = held[d]
        lent = [key for e, keys in enumerate(held) if e != d and sc.drivers[e] == sc.drivers[d]
                for key in keys if key not in mine]
        kind = c.pick(["submit"] * 6 + ["put", "drop", "get", "cancel", "borrow"])
        if kind in ("drop", "get", "cancel") and not mine or kind == "borrow" and not lent:
            kind = "submit"
        if kind in ("submit", "put"):
            n += 1
        if kind == "submit":
            deps = c.subset(mine, 2)
            returns = [c.pick(["i", "i", *STORE_SIZES]) for _ in range(c.pick([0, 1, 1, 1, 2, 3]))]
            sc.ops.append([t, d, "submit", n, deps, returns, c.pick(DURATIONS),
                           c.pick([1, 1, 0.5]), c.pick([0, 1, 3, 3, 3])])
            mine += [[n, k] for k in range(len(returns))]
        elif kind == "put":
            sc.ops.append([t, d, "put", n, c.pick(["i", *STORE_SIZES])])
            mine.append([n, 0])
        elif kind == "borrow":
            key = c.pick(lent)
            mine.append(key)
            sc.ops.append([t, d, "borrow", key])
        elif kind == "drop":
            key = c.pick(mine)
            mine.remove(key)
            sc.ops.append([t, d, "drop", key])
        elif kind == "get":
            sc.ops.append([t, d, "get", c.pick(mine)])
        else:
            sc.ops.append([t, d, "cancel", c.pick(mine), c.pick([False, True])])


def _faults(sc: Scenario, c) -> None:
    n = len(sc.nodes)
    crashed: set[int] = set()
    t = 0.0
    for _ in range(c.integer(0, 5)):
        t = round(t + c.pick([0.1, 0.3, 0.6, 1.0]), 2)
        kind = c.pick(["worker", "worker", "zygote", "crash", "leave", "restart", "cut", "driver"])
        node = c.integer(0, n - 1)
        if kind == "worker":
            sc.faults.append([t, "worker", node, c.integer(0, 3)])
        elif kind == "zygote":
            sc.faults.append([t, "zygote", node])
        elif kind in ("crash", "leave") and len(crashed) < n - 1 and node not in crashed:
            crashed.add(node)
            sc.faults.append([t, kind, node])
        elif kind == "restart" and crashed:
            node = c.pick(sorted(crashed))
            crashed.discard(node)
            sc.faults.append([t, "restart", node])
        elif kind == "cut" and n > 1:
            sc.faults.append([t, "cut", node, c.pick([False, True]), c.pick([0.3, 1.0, 2.0])])
        elif kind == "driver":
            sc.faults.append([t, "driver", c.integer(0, len(sc.drivers) - 1)])
    ends = [f[0] + (f[4] if f[1] == "cut" else 0.0) for f in sc.faults]
    sc.quiet = round(max([sc.quiet, *ends]) + 0.01, 2)
