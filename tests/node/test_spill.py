"""A real node whose store is full spills objects to disk and brings them back
(node/spiller.py, core/capacity.py): puts over capacity succeed, every value
reads back equal, tasks get spilled arguments, freeing removes spill files,
`status --json` and `memory` show what is spilled, and a full disk gives a
clear ObjectStoreFullError on a node that keeps working."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import zfabric as zf
from zfabric.core import events as ev
from zfabric.exceptions import ObjectStoreFullError
from zfabric.node import client as client_mod
from zfabric.node import spiller as spiller_mod
from zfabric.testing import LocalCluster

from tests.harness.polling import wait_until

MiB = 2 ** 20
N = MiB   # float64s: 8 MiB per array


def array(i: int) -> np.ndarray:
    return np.full(N, i, dtype=np.float64)


@zf.remote
def total(a) -> float:
    return float(a.sum())


def own_status() -> dict:
    status = client_mod.current().request("status")
    return next(r for r in status["nodes"] if r["NodeID"] == status["self"])


def test_the_spiller_moves_bytes_and_reports_every_outcome(tmp_path):
    store_dir, spill_dir = tmp_path / "store", tmp_path / "spill"
    store_dir.mkdir()
    a, b = b"A" * 20, b"B" * 20
    (store_dir / a.hex()).write_bytes(b"a" * 1000)
    (store_dir / b.hex()).write_bytes(b"b" * 1000)
    broken = {"on": False}

    def copy(src, dst, **kw):
        if broken["on"]:
            raise OSError(28, "No space left on device")
        spiller_mod.copy_file(src, dst, **kw)

    spiller = spiller_mod.Spiller(str(store_dir), str(spill_dir), chunk=300, copy=copy)
    try:
        def outcomes(n):
            events = []
            deadline = time.monotonic() + 10
            while len(events) < n:
                assert time.monotonic() < deadline, events
                events += spiller.take_events()
                time.sleep(0.01)
            return events

        spiller.spill(a)
        assert outcomes(1) == [ev.ObjectSpilled(a)]
        assert (spill_dir / a.hex()).read_bytes() == b"a" * 1000
        assert (store_dir / a.hex()).exists()           # the loop deletes it (DeleteObject)
        (store_dir / a.hex()).unlink()
        spiller.restore(a)
        spiller.delete(a)                               # after the restore, in order
        assert outcomes(1) == [ev.ObjectRestored(a)]
        assert (store_dir / a.hex()).read_bytes() == b"a" * 1000
        broken["on"] = True
        spiller.spill(b)
        [failed] = outcomes(1)
        assert type(failed) is ev.SpillFailed and "No space left" in failed.error
        assert str(spill_dir) in failed.error
        assert sorted(os.listdir(spill_dir)) == []      # no partial file left
        broken["on"] = False
        spiller.restore(b)                              # never spilled: its file is not there
        [lost] = outcomes(1)
        assert type(lost) is ev.RestoreFailed and lost.lost
    finally:
        spiller.close()
    assert not spill_dir.exists()


def test_forty_puts_over_capacity_spill_and_come_back(fresh):
    info = zf.init(num_cpus=1, object_store_memory=200 * MiB)
    spill_dir = os.path.join(info["session_dir"], "spill")
    refs = [zf.put(array(i)) for i in range(40)]       # 320 MiB, all alive
    wait_until(lambda: own_status()["spilled_objects"] >= 15, "15 objects spilled")
    assert own_status()["spilled_bytes"] >= 15 * 8 * MiB
    assert len(os.listdir(spill_dir)) >= 15
    # the oldest were spilled (a generator: no loop variable keeps a ref alive)
    assert all(np.array_equal(zf.get(r), array(i)) for i, r in enumerate(refs))
    assert zf.get(total.remote(refs[0])) == 0.0          # a spilled argument
    assert zf.get([total.remote(refs[i]) for i in (1, 2, 39)]) == [N * 1.0, N * 2.0, N * 39.0]
    del refs
    wait_until(lambda: not os.listdir(spill_dir), "spill files removed once freed")
    wait_until(lambda: own_status()["spilled_bytes"] == 0 and own_status()["store_used"] == 0,
               "nothing left in the books")


def test_a_full_disk_gives_a_clear_error_and_the_node_keeps_working(fresh, monkeypatch):
    disk = tempfile.mkdtemp(prefix="zfabric-tiny-disk-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", disk],
                             capture_output=True).returncode == 0
    try:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        monkeypatch.setenv("ZFABRIC_SPILL_DIR", disk)
        zf.init(num_cpus=1, object_store_memory=50 * MiB)
        refs, error = [], None
        for i in range(20):
            try:
                refs.append(zf.put(array(i)))
            except ObjectStoreFullError as e:
                error = e
                if "being copied to disk" not in str(e):
                    break   # (else every unpinned object was still on its way to disk)
                wait_until(lambda: own_status()["spill_error"], "the spills fail")
        assert error is not None, "puts never failed with a 1 MiB disk"
        assert "No space left on device" in str(error) and disk in str(error)
        status = own_status()
        assert status["spilled_bytes"] == 0 and "No space left" in status["spill_error"]
        assert all(np.array_equal(zf.get(r), array(i)) for i, r in enumerate(refs))  # no loss
        assert zf.get(total.remote(refs[0])) == 0.0     # the node works
        del refs[2:]                                     # room without spilling again
        wait_until(lambda: own_status()["store_used"] < 3 * 8 * MiB, "refs freed")   # 2 left
        ref = zf.put(array(99))
        assert np.array_equal(zf.get(ref), array(99))
        assert np.array_equal(zf.get(refs[1]), array(1))
        del ref, refs
        zf.shutdown()
        assert os.listdir(disk) == []                    # the node's spill dir went with it
    finally:
        if mounted:
            subprocess.run(["umount", disk], check=True)
        os.rmdir(disk)


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zfabric.node", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_json_and_memory_show_spilled_bytes(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("ZFABRIC_TEMP_DIR", str(tmp_path))   # the CLI finds the node there
    env = dict(os.environ)
    with LocalCluster(nodes=1, num_cpus=1, object_store_memory=40 * MiB):
        zf.init(address="auto")
        refs = [zf.put(array(i)) for i in range(8)]     # 64 MiB in a 40 MiB store
        wait_until(lambda: own_status()["spilled_objects"] >= 3, "3 objects spilled")
        out = _cli(env, "status", "--json")
        assert out.returncode == 0, out.stderr
        row = json.loads(out.stdout)["nodes"][0]
        assert row["spilled_bytes"] >= 3 * 8 * MiB and row["spilled_objects"] >= 3
        assert row["store_used"] <= 48 * MiB and row["store_capacity"] == 40 * MiB
        memory = _cli(env, "memory")
        assert memory.returncode == 0, memory.stderr
        assert f"{row['spilled_objects']} objects spilled to disk" in memory.stdout
        assert np.array_equal(zf.get(refs[0]), array(0))
        del refs
        zf.shutdown()
