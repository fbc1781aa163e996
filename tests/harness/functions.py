"""Remote functions and values the API tests (tests/api/) share, and attach_to for
fixtures that keep a LocalCluster across a module."""
from __future__ import annotations

import time

import zfabric as zf


@zf.remote
def inc(x):
    return x + 1


@zf.remote
def slow(x, delay=0.3):
    time.sleep(delay)
    return x


@zf.remote
def fail(msg="boom"):
    raise ValueError(msg)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("no pickling for you")


def attach_to(cluster):
    """This driver attached to `cluster`'s first node (re-attached if it was
    attached to another cluster); returns the cluster. For fixtures that keep a
    LocalCluster across a module."""
    if zf.is_initialized() and zf.nodes()[0]["Address"] != cluster.address:
        zf.shutdown()
    if not zf.is_initialized():
        zf.init(address=cluster.address)
    return cluster
