"""Chains of quick tasks on one embedded node: each link waits for the one before.

The node sends a link to the worker making its argument before that link
ends (pipelining, core/scheduler.py); the worker runs it on the value it made
itself, or gives it back if that value failed. These tests check what a user
sees: the values, the errors and the retries of a chain are those of tasks run
one after the other.
"""
from __future__ import annotations

import numpy as np
import pytest

import zfabric as zf
from zfabric.node import client

from tests.harness.functions import inc

pytestmark = pytest.mark.timeout(60)


def stat(name: str) -> int:
    """A counter of the node's scheduler, as `python -m zfabric.node status --json` shows it."""
    return client.current().request("status")["nodes"][0]["stats"][name]


def chain(fn, first, links: int):
    ref = fn.remote(first)
    for _ in range(links - 1):
        ref = fn.remote(ref)
    return ref


def test_a_long_chain_is_pipelined_and_gives_the_right_value(cluster):
    zf.get([inc.remote(i) for i in range(10)])   # the node learns that inc is quick
    before = stat("pipelined")
    assert zf.get(chain(inc, 0, 500)) == 500
    assert stat("pipelined") - before > 100


def test_a_failing_link_fails_the_rest_of_the_chain(cluster):
    @zf.remote
    def step(x):
        if x == 150:
            raise ValueError(f"link {x} broke")
        return x + 1

    zf.get([step.remote(i) for i in range(10)])
    last = chain(step, 0, 300)
    with pytest.raises(ValueError, match="link 150 broke"):
        zf.get(last, timeout=30)
    assert zf.get(chain(step, 200, 50)) == 250   # the node and its workers go on


def test_a_link_retried_after_an_error_is_waited_for(cluster, tmp_path):
    flag = tmp_path / "failed-once"

    @zf.remote(retry_exceptions=[KeyError], max_retries=2)
    def flaky(x):
        if x == 120 and not flag.exists():
            flag.write_text("x")
            raise KeyError("first try")
        return x + 1

    zf.get([flaky.remote(i) for i in range(10)])
    assert zf.get(chain(flaky, 0, 250), timeout=30) == 250
    assert flag.exists()


def test_a_chain_of_large_values_passes_them_through_the_store(cluster):
    @zf.remote
    def grow(a):
        return np.append(a, len(a))

    zf.get([grow.remote(np.zeros(1)) for _ in range(5)])
    first = np.arange(40_000, dtype=np.float64)          # 320 KB: kept in the store
    out = zf.get(chain(grow, first, 40))
    assert len(out) == 40_040 and out[-1] == 40_039 and out[39_999] == 39_999
