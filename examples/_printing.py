"""Stand-in for the lesson's ``util.printing`` helpers (``pnd`` and ``pd``).

The lesson imports ``from util.printing import pnd, pd``; that package is not
part of zfabric, so the examples import these two small functions from here.
They print exactly the lesson's lines, e.g.::

    >>> pd(4.032, prefix="Total time:")
    Total time: duration:  4.032 seconds
"""


def pnd(n, duration, prefix=""):
    """Print an integer and a time duration, with an optional prefix."""
    prefix = prefix + " " if prefix else ""
    print("{}n: {:2d}, duration: {:6.3f} seconds".format(prefix, n, duration))


def pd(duration, prefix=""):
    """Print a time duration, with an optional prefix."""
    prefix = prefix + " " if prefix else ""
    print("{}duration: {:6.3f} seconds".format(prefix, duration))
