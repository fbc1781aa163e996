"""Lesson cell In[2]: start the fabric and look at what ``init`` returns.

    python examples/00_init.py

Prints the dict ``ray.init()`` returns (node id, addresses, session
directory...). The lesson's cell also passes ``ignore_reinit_error=True``, so
calling ``init`` a second time in the same process is harmless; this script
does so to show it.
"""
import os
import sys
from pprint import pprint

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, like the lesson's sys.path.append('..')
import zfabric as ray  # noqa: E402


def main():
    info = ray.init(num_cpus=8, ignore_reinit_error=True)
    try:
        pprint(dict(info))
        ray.init(num_cpus=8, ignore_reinit_error=True)  # a second init: no error
        print("is_initialized:", ray.is_initialized())
    finally:
        ray.shutdown()
    print("after shutdown, is_initialized:", ray.is_initialized())


if __name__ == "__main__":
    main()
