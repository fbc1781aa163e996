"""Remote functions and values the API tests (tests/api/) share."""
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
