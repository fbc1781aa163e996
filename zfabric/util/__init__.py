"""zfabric.util: the Python interfaces people already use, on zfabric tasks, and
helpers beside the core API as Ray has them in `ray.util`.

    Executor(max_workers=None)   a concurrent.futures.Executor      (executor.py)
    Pool(processes=None)         a drop-in multiprocessing.Pool     (pool.py)
    register_joblib()            joblib's backend "zfabric"        (joblib_backend.py)
    progress(refs)               zf.get(refs) with a progress bar  (progress.py)
    as_completed(refs)           refs as they finish (also zfabric.as_completed)

joblib and tqdm are optional (extras [joblib] and [progress]): they are
imported only when register_joblib() or progress() is called.
`placement_group` and its friends (placement_group.py) raise
NotSupportedError: zfabric has no placement groups.
"""
from .completed import as_completed
from .executor import Executor
from .joblib_backend import register_joblib
from .placement_group import (get_current_placement_group, get_placement_group,
                              placement_group, placement_group_table, remove_placement_group)
from .pool import Pool
from .progress import progress

__all__ = ["Executor", "Pool", "register_joblib", "progress", "as_completed",
           "placement_group", "get_placement_group", "remove_placement_group",
           "placement_group_table", "get_current_placement_group"]
