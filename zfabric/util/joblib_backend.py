"""joblib's backend "zfabric": `Parallel` batches run as zfabric tasks.

    register_joblib()  -->  joblib.register_parallel_backend("zfabric", ZFabricBackend)
    Parallel(n_jobs=-1)(delayed(f)(i) ...) --> joblib's batches (BatchedCalls)
        --> ZFabricBackend.submit --> Dispatcher --> Future, done callback --> joblib

joblib sizes the batches (AutoBatchingMixin: batches grow until one takes
about 0.2 s), so tiny calls travel many to a task. joblib is imported only
here, and only when register_joblib() is called (extra [joblib]).
"""
from __future__ import annotations

from .. import api
from .dispatch import Dispatcher

_registered: list = []
_run_batch_remote: list = []


def _run_batch(batch):
    """(on a worker) One joblib batch: its calls' results, as a list."""
    return batch()


def register_joblib() -> None:
    """Register joblib's parallel backend "zfabric".

    Then `with joblib.parallel_config(backend="zfabric"): Parallel(n_jobs=-1)(...)`
    runs each batch of calls as a task on the cluster (`zf.init()` is called
    first if zfabric is not initialized). n_jobs=-1 means the cluster's CPUs
    (read when the Parallel call starts), -2 one fewer, and so on; a positive
    n_jobs bounds the batches in flight. ImportError if joblib is missing.
    """
    try:
        import joblib
        from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase
    except ImportError as e:
        raise ImportError("register_joblib() needs joblib: pip install 'zfabric[joblib]'"
                          ) from e
    if not _registered:
        _registered.append(_backend_class(AutoBatchingMixin, ParallelBackendBase))
    joblib.register_parallel_backend("zfabric", _registered[0])


def _cluster_cpus() -> int:
    if not api.is_initialized():
        api.init()
    return max(1, int(api.cluster_resources().get("CPU", 1)))


def _backend_class(AutoBatchingMixin, ParallelBackendBase) -> type:
    """The backend class, built on joblib's bases (imported only when registering)."""

    class ZFabricBackend(AutoBatchingMixin, ParallelBackendBase):
        """Runs joblib's batches as zfabric tasks, at most n_jobs in flight."""

        default_n_jobs = -1
        supports_retrieve_callback = True
        supports_timeout = True
        supports_return_generator = True
        uses_threads = False
        supports_sharedmem = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._dispatcher = None

        def effective_n_jobs(self, n_jobs):
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            if n_jobs is None:
                n_jobs = self.default_n_jobs
            if n_jobs < 0:
                return max(_cluster_cpus() + 1 + n_jobs, 1)
            return n_jobs

        def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
            n_jobs = self.effective_n_jobs(n_jobs)
            self.parallel = parallel
            self._dispatcher = Dispatcher(n_jobs)
            return n_jobs

        def submit(self, func, callback=None):
            if not _run_batch_remote:
                _run_batch_remote.append(api.remote(name="joblib-batch")(_run_batch))
            future = self._dispatcher.submit(_run_batch_remote[0], (func,), {})
            if callback is not None:
                future.add_done_callback(callback)
            return future

        def retrieve_result_callback(self, future):
            return future.result()

        def abort_everything(self, ensure_ready=True):
            if self._dispatcher is not None:
                self._dispatcher.cancel_queued()
                self._dispatcher.cancel_inflight()
            if ensure_ready:
                self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

        def terminate(self):
            self._dispatcher = None
            self.reset_batch_stats()

    return ZFabricBackend
