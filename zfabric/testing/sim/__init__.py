"""Deterministic simulation: the core state machines of many nodes in one process.

The state machines in zfabric/core take time and randomness as arguments and
return what to send, so a test can run many of them against each other on a
network it controls, under a clock it controls. Everything random here comes
from one seed: a failing schedule of delays, losses, crashes and partitions
replays exactly, and hypothesis can shrink it.

    network.py     Clock (virtual time) and Network (in-memory datagrams with
                   delay, loss, duplication, partitions)
    membership.py  MembershipSim: N core.membership.Membership gossiping over
                   a Network: crash, leave, join, partition, heal
    links.py       LinkFaults: loss, duplication, reordering, delay spikes and
                   cuts (symmetric or one-way) on a FabricSim's links
    fabric.py      FabricSim: N whole nodes (core.fabric.Fabric) with fake
                   workers and stores, talking through the wire protocol;
                   crashes and restarts of workers, zygotes, nodes, drivers
    scale.py       MembershipWorld, GcsWorld: membership alone, the GCS alone,
                   light enough for 1,000 nodes (bench/scale_sim.py), with
                   the traffic each node sends
    scenario.py    Scenario: a cluster, its drivers' work and its faults as
                   data (JSON), generated from one seed or by hypothesis
    chaos.py       ChaosRun: plays a Scenario and checks values against a
                   model, bounded gets, convergence, refs, attempts;
                   `python -m zfabric.testing.sim.chaos --seed N` replays one

Tests import from here: `from zfabric.testing.sim import FabricSim, Work`.
"""
from .fabric import SIM_CONFIG, FabricSim, FakeWorker, Run, SimNode, Work
from .links import LinkFaults
from .membership import MembershipSim
from .network import Clock, Network, NetworkStatistics

__all__ = ["Clock", "Network", "NetworkStatistics", "LinkFaults", "MembershipSim", "SIM_CONFIG",
           "FabricSim", "FakeWorker", "Run", "SimNode", "Work"]
