"""zfabric: a peer-to-peer task fabric for Python on ZeroMQ.

    import zfabric as zf
    zf.init()

    @zf.remote
    def square(x):
        return x * x

    print(zf.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]

The public names (init, remote, get...) are loaded from their modules on first
use (zfabric.api and friends): a node process, which imports this package too
(every `zfabric.node.*` module is inside it), does not load the driver's API
(tests/test_layering.py checks it). In a driver, `import zfabric` and its first
public name together cost what an eager import would.
"""
import importlib

__version__ = "0.1.0"

from . import exceptions  # noqa: E402

_API = ("available_resources", "cancel", "cluster_resources", "get", "get_gpu_ids",
        "get_runtime_context", "init", "is_initialized", "nodes", "put", "remote", "shutdown",
        "timeline", "wait")
# public name -> (module, name in it)
_LAZY = {**{name: (".api", name) for name in _API},
         # Ray's actor calls: NotSupportedError
         **{name: (".compat", name) for name in ("get_actor", "kill", "method")},
         "ObjectRef": (".ref", "ObjectRef"),
         "ObjectID": (".ref", "ObjectRef"),   # Ray's other name for it
         "as_completed": (".util.completed", "as_completed"),
         "util": (".util", None)}

__all__ = ["init", "shutdown", "is_initialized", "remote", "get", "wait", "put", "cancel",
           "nodes", "cluster_resources", "available_resources", "timeline",
           "get_runtime_context", "get_gpu_ids", "as_completed", "ObjectRef", "ObjectID",
           "exceptions", "util", "__version__", "get_actor", "kill", "method"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module, __name__)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
