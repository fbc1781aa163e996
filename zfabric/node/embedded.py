"""How a driver's own node starts: forked from the driver where that is safe.

`zf.init()` without an address starts a node for its driver with
`launch.spawn_node(..., embedded=True, start=start(config))`. When the
driver runs a single thread and holds at most `fork_embedded_node_max_rss`
resident (forking.safe_to_fork) and the config's `fork_embedded_node` is on,
the node is forked from the driver: it has the
driver's imports already and skips an interpreter's start, and it forks its
own first zygote in turn (node/__main__.py), so `init()` takes a little over half
of the time it takes with exec (bench/startup_split.py). Otherwise it is `python -m zfabric.node
_serve ...`, exactly as `zfabric start` runs a node. Either way the node
runs the same code (`node.__main__.main`) on the same arguments.

This module is imported by api.py alone: it sits above launch.py and the
node's own modules, so that starting a node by fork imports no cycle.
"""
from __future__ import annotations

from ..config import Config
from . import forking


def start(config: Config):
    """`spawn_node`'s `start` for a node embedded in this process: fork it, or
    None (exec it) when forking is off or not safe here."""
    if config.fork_embedded_node and forking.safe_to_fork(config.fork_embedded_node_max_rss):
        return _fork
    return None


def _fork(cmd: list[str], ready_fd: int, env: dict) -> forking.Forked:
    return forking.fork(lambda: _serve(cmd[3:]), args=cmd, keep_fds=(ready_fd,), env=env)


def _serve(argv: list[str]) -> int:
    """The forked node's life: what `python -m zfabric.node ARGV` runs."""
    from .__main__ import main
    return main(argv)
