"""Where a task runs: the `scheduling_strategy=` task option, under Ray's names.

    @zf.remote(scheduling_strategy="SPREAD")
    def f(): ...

    from zfabric.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = zf.get_runtime_context().get_node_id()          # or zf.nodes()[i]["NodeID"]
    f.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()

- "DEFAULT" (or None): run where the task's arguments and free resources
  are: on the submitting node when it has room, else on a peer with room.
- "SPREAD": the nodes that can hold the task take turns, the submitting
  one included, even when it has room.
- `NodeAffinitySchedulingStrategy(node_id, soft=False)`: on that node (its
  hex id). Hard (soft=False): there or nowhere: if the node is dead, unknown
  or can never hold the task, or dies while the task waits or runs there,
  the task fails with `zfabric.exceptions.TaskUnschedulableError` (or
  `NodeDiedError` when its retries are spent); while the node is busy the
  task waits for it. Soft: the node is preferred; when it is dead or has no
  room, the task runs anywhere.

`task_opts` turns a strategy into the `opts` that travel with the task
(protocol.py's "strategy"); a strategy it does not know is a ValueError at
the decorator or at `.options()`, not at `.remote()`.
"""
from __future__ import annotations

from ..ids import NODE_ID_SIZE

DEFAULT = "DEFAULT"
SPREAD = "SPREAD"


class NodeAffinitySchedulingStrategy:
    """Run the task on the node `node_id` (hex, as `get_runtime_context().get_node_id()`
    and `nodes()[i]["NodeID"]` give it); `soft=True`: anywhere if that node
    cannot take it. (Ray's `_spill_on_unavailable` / `_fail_on_unavailable`
    are accepted; the behaviour is the one described above.)"""

    def __init__(self, node_id: str, soft: bool = False, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False):
        if not isinstance(node_id, str):
            raise ValueError(f"node_id must be a node's hex id (a str), got {node_id!r}")
        try:
            raw = bytes.fromhex(node_id)
        except ValueError:
            raw = b""
        if len(raw) != NODE_ID_SIZE:
            raise ValueError(f"node_id must be a node's id: {NODE_ID_SIZE * 2} hex digits, as "
                             f"get_runtime_context().get_node_id() gives it; got {node_id!r}")
        if not isinstance(soft, bool):
            raise ValueError(f"soft must be True or False, got {soft!r}")
        self.node_id = node_id.lower()
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __eq__(self, other) -> bool:
        return (type(other) is NodeAffinitySchedulingStrategy
                and (other.node_id, other.soft) == (self.node_id, self.soft))

    def __hash__(self) -> int:
        return hash((self.node_id, self.soft))

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


def task_opts(strategy) -> dict:
    """The task `opts` for a `scheduling_strategy` value ({} for the default);
    ValueError for anything else."""
    if strategy is None or (type(strategy) is str and strategy == DEFAULT):
        return {}
    if type(strategy) is str and strategy == SPREAD:
        return {"strategy": SPREAD}
    if type(strategy) is NodeAffinitySchedulingStrategy:
        return {"strategy": {"node": bytes.fromhex(strategy.node_id), "soft": strategy.soft}}
    raise ValueError(f"scheduling_strategy must be \"DEFAULT\", \"SPREAD\" or a "
                     f"NodeAffinitySchedulingStrategy(node_id, soft=...), got {strategy!r}")


__all__ = ["NodeAffinitySchedulingStrategy", "DEFAULT", "SPREAD"]
