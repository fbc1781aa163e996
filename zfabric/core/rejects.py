"""Messages the node refused: counted, and warned of once per sender.

    shell --MessageRejected("malformed" | "unauthenticated")--> Fabric --> Rejections
    scheduler --Nonsense effect (a well-formed message that makes
                no sense: nothing changed)-------------------> Fabric --> Rejections

Each refusal is counted in the fabric's `stats` (`rejected_malformed`,
`rejected_unauthenticated`, `rejected_nonsense`, shown by `status`). The
first refusal of each kind from a sender is logged as a warning; later
ones from that sender are only counted, so a hostile or broken sender
cannot flood the log. The senders remembered are capped (`MAX_SOURCES`):
past the cap one more warning says so, and new senders are only counted.
"""
from __future__ import annotations

from .. import ids
from . import effects as fx

KINDS = ("malformed", "unauthenticated", "nonsense")
MAX_SOURCES = 1024   # senders remembered as warned of (memory stays bounded)
MAX_REASON = 200     # characters of a reason quoted in a warning


def client_source(client: bytes) -> str:
    """How a refusal names a local client (its routing id)."""
    return f"local client {client[:32].hex()}"


def peer_source(node_id: bytes) -> str:
    """How a refusal names a peer node."""
    return f"node {ids.short(node_id)}"


class Rejections:
    def __init__(self, stats: dict):
        self.stats = stats
        for kind in KINDS:
            stats[f"rejected_{kind}"] = 0
        self._warned: set[tuple[str, str]] = set()
        self._full = False

    def reject(self, source: str, what: str, reason: str) -> fx.Log | None:
        """Count a refusal; the warning to log, if this one is worth one."""
        if what not in KINDS:
            what = "malformed"
        self.stats[f"rejected_{what}"] += 1
        key = (str(source)[:MAX_REASON], what)
        if key in self._warned:
            return None
        if len(self._warned) >= MAX_SOURCES:
            if self._full:
                return None
            self._full = True
            return fx.Log("warning", f"refused messages from more than {MAX_SOURCES} senders; "
                                     "refusals from new senders are counted, not logged")
        self._warned.add(key)
        return fx.Log("warning", (
            f"refused a {what} message from {key[0]}: {str(reason)[:MAX_REASON]} "
            f"(further {what} messages from it are counted in status, not logged)"))
