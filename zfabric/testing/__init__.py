"""Tools for testing zfabric and programs built on it.

- `LocalCluster` (cluster.py): several real nodes on one machine, each its
  own process, ports and store dir.
- `sim`: the core state machines of many nodes in one process, on a seeded
  in-memory network and a virtual clock (no sockets, no threads).
- `fakes`: `FakeWorker`, what a worker process does with the messages its
  node sends it, without time or transport (the simulator's workers, and the
  scheduler tests' in tests/harness).
- `hostile`: hypothesis strategies for every wire message and for hostile
  frames (mutated, oversize, random), for fuzzing the core and the node's
  ports. It imports hypothesis (a test dependency): import it from tests
  and benchmarks only; nothing here imports it.
- `portfuzz`: hostile traffic at a real node's TCP ports (raw TCP, ZeroMQ
  sockets of every type, with and without the cluster key) and what the
  node counted of it (imports hypothesis too).
"""
from .cluster import LocalCluster, NodeHandle

__all__ = ["LocalCluster", "NodeHandle"]
