"""zfabric.util: the Python interfaces people already use, on zfabric tasks, and
helpers beside the core API as Ray has them in `ray.util`.

    Executor(max_workers=None)   a concurrent.futures.Executor      (executor.py)
    Pool(processes=None)         a drop-in multiprocessing.Pool     (pool.py)
    register_joblib()            joblib's backend "zfabric"        (joblib_backend.py)
    progress(refs)               zf.get(refs) with a progress bar  (progress.py)
    as_completed(refs)           refs as they finish (also zfabric.as_completed)

joblib and tqdm are optional (extras [joblib] and [progress]): they are
imported only when register_joblib() or progress() is called.
Each is imported from its module when first used.
`placement_group` and its friends (placement_group.py) raise
NotSupportedError: zfabric has no placement groups.
"""
import importlib

_WHERE = {"as_completed": "completed", "Executor": "executor", "Pool": "pool",
          "register_joblib": "joblib_backend", "progress": "progress",
          "placement_group": "placement_group", "get_placement_group": "placement_group",
          "remove_placement_group": "placement_group",
          "placement_group_table": "placement_group",
          "get_current_placement_group": "placement_group"}

__all__ = ["Executor", "Pool", "register_joblib", "progress", "as_completed",
           "placement_group", "get_placement_group", "remove_placement_group",
           "placement_group_table", "get_current_placement_group"]


def __getattr__(name: str):
    """The names above, each imported from its module on first use (so that
    `import zfabric` does not import multiprocessing, joblib's glue...)."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
