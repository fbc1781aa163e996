"""zfabric: a peer-to-peer task fabric for Python on ZeroMQ.

    import zfabric as zf
    zf.init()

    @zf.remote
    def square(x):
        return x * x

    print(zf.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]
"""
__version__ = "0.1.0"

from . import exceptions, util
from .api import (available_resources, cancel, cluster_resources, get, get_runtime_context,
                  init, is_initialized, nodes, put, remote, shutdown, timeline, wait)
from .compat import get_actor, kill, method   # Ray's actor calls: NotSupportedError
from .ref import ObjectRef

ObjectID = ObjectRef   # Ray's other name for it

__all__ = ["init", "shutdown", "is_initialized", "remote", "get", "wait", "put", "cancel",
           "nodes", "cluster_resources", "available_resources", "timeline",
           "get_runtime_context", "ObjectRef", "ObjectID", "exceptions", "util", "__version__",
           "get_actor", "kill", "method"]
