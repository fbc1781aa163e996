"""Multi-host integration: three zfabric nodes on three "hosts" (Linux network
namespaces) joined by veth pairs through a bridge, so addresses and
partitions are real.

Why: every other integration test runs its nodes on 127.0.0.1, where a node
that advertises the wrong address, binds the wrong interface or only works
over loopback still passes. Here each node can reach the others only through
its own veth and its own IP, and a partition is a link going down (packets
silently dropped at the "switch"), not a process being killed.

Topology (names get a random suffix per run; nothing is created in the root
namespace and nothing binds a root-namespace address):

    zf-a-XXXX  10.231.N.1 va-XXXX ─┐
    zf-b-XXXX  10.231.N.2 vb-XXXX ─┼─ pa/pb/pc-XXXX ── br-XXXX   (in zf-br-XXXX)
    zf-c-XXXX  10.231.N.3 vc-XXXX ─┘

One node per namespace (`python -m zfabric.node start`, 1 CPU each, --head in
A, joining A from B and C; C also offers the custom resource `c_only`), each
with its own ZFABRIC_TEMP_DIR and ZFABRIC_FAILURE_TIMEOUT=1.5. A driver runs
inside A (`ip netns exec A python ...`) and answers JSON requests on
stdin/stdout, so one driver serves a whole test and timings are not blurred
by interpreter start-up.

- test_cluster_across_hosts: A's driver sees 3 alive nodes whose addresses
  are the namespace IPs, 12 x 0.2 s tasks run on all three nodes, and
  `zfabric status` in A lists all three.
- test_large_object_crosses_veth: a ~20 MB numpy array made on C (the only
  node with `c_only`) is pulled into A's store and arrives intact.
- test_partition_and_heal: C's bridge port goes down; A declares C dead
  within failure_timeout + 2 s and tasks complete on A and B only; the port
  comes back up; C is alive again in A's view (and C sees A and B) within
  15 s, and tasks run on all three again.
- test_a_driver_on_every_host_right_after_a_heal: C is cut off for 5 s (each
  side declares the other dead); the moment the port is up again, a driver
  on each of A, B and C submits 12 tasks (a `get` without timeout); every
  driver gets every right value, and the tasks ran on all three nodes.

Skipped (with the reason) when not root, when `ip` is missing, or when a
namespace/veth/bridge cannot be created. Everything is torn down in the
fixture finalizer, also when a test fails: nodes are stopped by the PIDs in
their records (SIGTERM, then SIGKILL of the node and its children), anything
still inside our namespaces is killed by PID, the namespaces are deleted by
name (which removes the veths and the bridge), and leftover session, store
and temp dirs are removed; the finalizer then fails if anything survived.
"""
from __future__ import annotations

import os
import time

import pytest

from tests.harness.netns import (BIG_ELEMENTS, FAILURE_TIMEOUT, Driver,  # noqa: F401
                                 cluster, driver, logs_on_failure, rx_bytes, states, status,
                                 wait_until)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


# -- the tests ----------------------------------------------------------------------------------

def test_cluster_across_hosts(cluster, driver):
    with logs_on_failure(cluster):
        a, b, c = (cluster.hosts[n] for n in "abc")
        hosts = [a, b, c]

        info = driver.call("info")
        assert info["node_id"] == a.node_id, info
        assert info["address"] == a.address, info

        nodes = driver.nodes()
        assert set(nodes) == {h.node_id for h in hosts}, nodes
        for h in hosts:
            n = nodes[h.node_id]
            assert n["Alive"], n
            assert n["Address"] == h.address, (h.ns, n)
            assert n["NodeManagerAddress"] == h.ip, (h.ns, n)
            assert n["Resources"].get("CPU") == 1.0, n
        assert nodes[c.node_id]["Resources"].get("c_only") == 1.0, nodes[c.node_id]

        # 12 x 0.2 s on three 1-CPU nodes: A must spill to B and C over the veths
        t0 = time.monotonic()
        ran_on = driver.tasks(12, 0.2)
        took = time.monotonic() - t0
        assert len(ran_on) == 12
        assert set(ran_on) == {h.node_id for h in hosts}, (
            f"tasks ran on {sorted(set(ran_on))}, not on all of A/B/C "
            f"({a.node_id}, {b.node_id}, {c.node_id}) in {took:.2f} s")
        print(f"12 tasks in {took:.2f} s, per node: "
              f"{ {h.name: ran_on.count(h.node_id) for h in hosts} }")

        rows = status(a)
        assert set(rows) == {h.node_id[:12] for h in hosts}, rows
        for h in hosts:
            assert rows[h.node_id[:12]] == (h.address.removeprefix("tcp://"), "alive"), (h, rows)


def test_large_object_crosses_veth(cluster, driver):
    with logs_on_failure(cluster):
        a, c = cluster.hosts["a"], cluster.hosts["c"]
        store_a = a.record["store_dir"]
        before = set(os.listdir(store_a))
        rx_before = rx_bytes(a)

        out = driver.call("big", wait=50, n=BIG_ELEMENTS, seed=1234, timeout=45)
        assert out["node"] == c.node_id, f"make_big ran on {out['node']}, not C {c.node_id}"
        assert out["nbytes"] == BIG_ELEMENTS * 8
        assert out["identical"], "the array A received differs from the one C made"
        assert out["sum_here"] == out["sum_there"], out
        assert not out["writeable"], "get() should map A's store read-only"
        received = rx_bytes(a) - rx_before
        assert received >= BIG_ELEMENTS * 8, f"A's veth received only {received} bytes"
        # the copy A maps is a file in A's own store: it came across the veth
        new = [os.path.join(store_a, f) for f in set(os.listdir(store_a)) - before]
        sizes = [os.path.getsize(p) for p in new if os.path.isfile(p)]
        assert any(s >= BIG_ELEMENTS * 8 for s in sizes), (store_a, new, sizes)
        print(f"20 MiB from C to A in {out['seconds']:.2f} s "
              f"(A's veth received {received / 2**20:.1f} MiB)")

        # once the driver drops it, both copies go (A's pulled one, C's original)
        driver.call("release")
        name = os.path.basename(next(p for p in new if os.path.getsize(p) >= BIG_ELEMENTS * 8))
        wait_until("the 20 MiB object freed in A's and C's stores",
                   lambda: not any(os.path.exists(os.path.join(h.record["store_dir"], name))
                                   for h in (a, c)), 10)


def test_partition_and_heal(cluster, driver):
    with logs_on_failure(cluster):
        a, b, c = (cluster.hosts[n] for n in "abc")
        everyone = {a.node_id, b.node_id, c.node_id}

        cluster.cut(c)
        t_cut = time.monotonic()
        try:
            took, _ = wait_until("A's zf.nodes() shows C not alive after C's link is cut",
                                 lambda: c.node_id not in driver.alive(), FAILURE_TIMEOUT + 2,
                                 interval=0.05)
            print(f"C not alive in A's zf.nodes() {took:.2f} s after the cut")
            # the verdict, not just a suspicion: A's status says dead, B stays alive
            deadline = t_cut + FAILURE_TIMEOUT + 2
            wait_until("A declares C dead", lambda: states(a, [a, b, c]) == {
                "a": "alive", "b": "alive", "c": "dead"},
                max(0.5, deadline - time.monotonic()), interval=0.1)
            print(f"C dead in A's status {time.monotonic() - t_cut:.2f} s after the cut")
            alive = driver.alive()
            assert alive == {a.node_id, b.node_id}, f"A's view during the partition: {alive}"
            # and the other side of the cut: C declares A and B dead
            wait_until("C declares A and B dead", lambda: states(c, [a, b, c]) == {
                "a": "dead", "b": "dead", "c": "alive"}, FAILURE_TIMEOUT + 2, interval=0.1)

            ran_on = driver.tasks(8, 0.2)
            assert len(ran_on) == 8
            assert set(ran_on) == {a.node_id, b.node_id}, (
                f"during the partition tasks ran on {sorted(set(ran_on))}; expected A and B only")
        finally:
            cluster.heal(c)
        t_heal = time.monotonic()

        took, _ = wait_until("C alive again in A's view after the link heals",
                             lambda: everyone <= driver.alive(), 15, interval=0.1)
        print(f"C alive again in A's view {took:.2f} s after the heal")

        def c_sees_everyone():
            return set(states(c, [a, b, c]).values()) == {"alive"}
        wait_until("C sees all three nodes alive after the heal", c_sees_everyone,
                   max(1.0, 15 - (time.monotonic() - t_heal)), interval=0.2)

        ran_on = driver.tasks(12, 0.2)
        assert set(ran_on) == everyone, (
            f"after the heal tasks ran on {sorted(set(ran_on))}, not on all of A/B/C")


def test_a_driver_on_every_host_right_after_a_heal(cluster, driver):
    with logs_on_failure(cluster):
        a, b, c = (cluster.hosts[n] for n in "abc")
        everyone = {a.node_id, b.node_id, c.node_id}
        drivers = [driver]
        try:
            for host in (b, c):   # started (and attached) before the cut, idle until the heal
                d = Driver(cluster, host)
                drivers.append(d)
                wait_until(f"{host.name}'s driver sees all three nodes alive",
                           lambda d=d: everyone <= d.alive(), 20)
            cluster.cut(c)
            try:
                time.sleep(5.0)   # > failure_timeout: each side declares the other dead
                assert states(c, [a, b, c]) == {"a": "dead", "b": "dead", "c": "alive"}
                assert states(a, [a, b, c])["c"] == "dead"
            finally:
                cluster.heal(c)
            for d in drivers:     # at once, all three
                d.ask("squares", n=12, duration=0.2)
            ran_on = set()
            for d in drivers:
                out = d.answer(wait=60)
                assert out["values"] == [i * i for i in range(12)], (d.host.name, out)
                assert set(out["nodes"]) <= everyone, (d.host.name, out["nodes"])
                ran_on |= set(out["nodes"])
                print(f"driver on {d.host.name}: tasks ran on "
                      f"{ {h.name: out['nodes'].count(h.node_id) for h in (a, b, c)} }")
            assert ran_on == everyone, ran_on
            wait_until("every node sees all three alive", lambda: all(
                set(states(h, [a, b, c]).values()) == {"alive"} for h in (a, b, c)), 10)
        finally:
            for d in drivers[1:]:
                d.close()
