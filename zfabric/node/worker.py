"""A worker process: runs one task at a time for its node.

    node --Execute--> worker: map arguments, run the function, store results
    node <--TaskDone-- worker (small results inline, large ones in the store)

Tiny tasks come in runs: the node sends a worker running a quick function
its next tasks before it finishes (core/workers.py, prefetch), and while
more of them wait here the worker holds its TaskDones a moment to send
them in one frame (`serve_one`); anything else it sends goes after them.
A chain's next link may come before the link it waits for ends (pipelined,
core/feed.py): its Execute says PENDING for the arguments this worker
is making, and the worker hands it their values from `made` (the inline
returns of its last tasks), or gives it back (Revoked) if one failed.

Forked by the node's zygote (node/zygote.py) with its identity in the
environment. It dies with the zygote, which dies with its node
(PR_SET_PDEATHSIG) and ignores
SIGINT (Ctrl-C is for the driver). A non-force `zf.cancel` reaches it as
SIGUSR1 after the node wrote the task id to `{session}/cancel/{worker_id}`:
the handler interrupts the task only if that is the task it is running, so
a late signal cannot hit the next task. A signal that comes before the task
reaches its code (the node starts a prefetched task when the one before it
ends) is noted, and the file read again as the code starts. Interrupting
from a signal handler also breaks out of `time.sleep` and blocking I/O at
once. A task given GPU ids (the Execute's opts["gpus"]) runs with them in
CUDA_VISIBLE_DEVICES and `zf.get_gpu_ids()`; the variable is restored when
it ends.

Its stdout and stderr are files the node reads (node/logmon.py). Before a
task of another job or function than the last, it writes a marker line to
both, which names the task its lines belong to; after each task it flushes
them, so the node reads a task's lines before it forwards its result.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback

import cloudpickle

from .. import ids, records, serialization
from .. import protocol as p
from ..protocol import ObjectState, TaskStatus
from ..exceptions import TaskCancelledError
from ..ref import DepMarker
from . import client as client_mod
from . import direct, logmon, sockets, store, task_env

PR_SET_PDEATHSIG = 1


class _Interrupted(BaseException):
    """Raised into a task by a cancel; a BaseException so `except Exception` in
    user code does not swallow it."""


class Worker:
    def __init__(self, client: client_mod.Client, cancel_path: str, session_dir: str = ""):
        self.client = client
        self.cancel_path = cancel_path
        self.functions: dict[tuple, object] = {}   # (fn_id, runtime env key) -> function
        self.env_blobs: dict[bytes, bytes] = {}    # code loaded inside a runtime env
        self.env = task_env.TaskEnv(session_dir or os.path.dirname(os.path.dirname(cancel_path)),
                                    client.store_dir, client.config.runtime_env_max_bytes,
                                    on_switch=self._forget_env)
        self.in_user_code = False
        self.signalled = False   # a cancel signal came while no task ran its code
        self.marked = None   # (job, name) the last marker named; None: no job
        self.made: dict[bytes, bytes] = {}   # oid -> inline payload: _keep_made
        self.made_kept = 2 * client.config.prefetch_max_depth

    # -- cancel -----------------------------------------------------------------

    def on_cancel_signal(self, signum, frame) -> None:
        task = self.client.current_task_id
        if not self.in_user_code or task is None:
            self.signalled = True   # perhaps for the task about to start: see run()
            return
        if self._cancel_target() == task.hex():
            self.in_user_code = False
            raise _Interrupted()

    def _cancel_target(self) -> str | None:
        """The id (hex) of the task the node last asked this worker to cancel."""
        try:
            with open(self.cancel_path) as f:
                return f.read().strip()
        except OSError:
            return None

    # -- running a task ------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            self.serve_one()

    def serve_one(self) -> None:
        """Run the next task and report it. With more tasks here already (the node
        prefetched them: quick ones), the client holds the report to send it in
        one frame with the next ones (Client.report; its flush thread sends held
        reports at most `ref_flush_interval` late, whatever runs)."""
        client = self.client
        ex = client.next_execute()
        if not self._made_here(ex):
            client.send(p.Revoked(ex.task_id))   # (after the report of the task that failed)
            return
        done, result = self.run(ex)
        line = client.direct_from.pop(ex.task_id, None) if client.direct_from else None
        if line is not None:
            self._reply(line, done, result)
        else:
            self._keep_made(ex, done)
            client.report(done, result)
        del done, result  # refs inside the result die only after TaskDone is sent

    def _reply(self, line, done: p.TaskDone, result) -> None:
        """A direct task of the driver we are leased to (core/leases.py): its
        TaskDone goes straight back on the line it came on (node/direct.py). The
        node books it from the driver's notice, which may come after what we send
        the node ourselves: a result holding refs is kept until the node ends the
        lease (LeaseEnd), so the node never hears us drop a ref before it sealed
        the value holding it. A driver gone meanwhile is not told (its node
        books nothing more of it)."""
        if any(done.contained):
            self.client.lease_keep.append(result)
        try:
            direct.send(line, p.encode(done))
        except OSError:   # (closed, or stalled: it ends here, whole frames or none)
            self.client.lines.retire(line)

    def _made_here(self, ex: p.Execute) -> bool:
        """Did this worker make every argument the node sent as PENDING (a task
        pipelined behind the ones making them, core/scheduler.py)? If one of
        those failed (or was given back), the task goes back to the node."""
        if not ex.dep_ids:
            return True
        made = self.made
        return all(oid in made for oid, state in zip(ex.dep_ids, ex.dep_states)
                   if state == ObjectState.PENDING)

    def _keep_made(self, ex: p.Execute, done: p.TaskDone) -> None:
        """Remember the inline returns of a task for the tasks pipelined behind
        it: the last 2 x prefetch_max_depth of them (as many tasks as can wait
        here, or be reported but not yet heard of by the node; a task whose
        argument was dropped here goes back to the node). A return in
        the store is not kept: the node may refuse it for want of room, so a
        task behind it goes back to the node, which knows."""
        if done.status != TaskStatus.OK:
            return
        made = self.made
        for i, (state, payload) in enumerate(zip(done.states, done.payloads)):
            if state == ObjectState.INLINE:
                made[ids.object_id(ex.task_id, i)] = payload
        while len(made) > self.made_kept:
            del made[next(iter(made))]

    def _function(self, ex: p.Execute):
        """The task's function. Code that does not load fails this task (the caller
        gets the error) and stays in `fn_blobs`: the next task of it tries again.
        Code loaded inside a runtime env is kept, to load it again in another env."""
        key = self.env.key
        fn = self.functions.get((ex.fn_id, key))
        if fn is None and key is not None:   # loaded outside any env: it imported none
            fn = self.functions.get((ex.fn_id, None))
        if fn is None:
            blob = (self.client.fn_blobs.get(ex.fn_id) or ex.fn_blob
                    or self.env_blobs.get(ex.fn_id))
            if not blob:
                raise RuntimeError(f"the node sent {ex.name}() without its code")
            fn = self.functions[(ex.fn_id, key)] = cloudpickle.loads(blob)
            if key is not None:
                self.env_blobs[ex.fn_id] = blob
            self.client.fn_blobs.pop(ex.fn_id, None)
        return fn

    def _forget_env(self, key: tuple) -> None:
        """The runtime env `key` left sys.path: its functions point at its modules."""
        for k in [k for k in self.functions if k[1] == key]:
            del self.functions[k]

    def _arguments(self, ex: p.Execute):
        """The task's arguments, each dep read only where a DepMarker names it (a
        task's runtime_env packages are deps no argument names)."""
        if not ex.args_blob:
            return (), {}

        values: dict[int, object] = {}

        def value(i: int):
            if i not in values:
                state = ex.dep_states[i]
                if state == ObjectState.STORE:
                    values[i] = store.read(self.client.store_dir, ex.dep_ids[i])
                else:   # (PENDING: made here, inline: _made_here)
                    values[i] = serialization.deserialize(
                        ex.dep_payloads[i] if state == ObjectState.INLINE
                        else self.made[ex.dep_ids[i]])
            return values[i]

        args, kwargs = serialization.deserialize(ex.args_blob)
        args = [value(a.index) if type(a) is DepMarker else a for a in args]
        for k, v in kwargs.items():
            if type(v) is DepMarker:
                kwargs[k] = value(v.index)
        return args, kwargs

    def run(self, ex: p.Execute) -> tuple[p.TaskDone, object]:
        """Run a task: its TaskDone, and its result (to keep alive until sent)."""
        client = self.client
        start = time.time()
        status, retryable, result = TaskStatus.OK, False, None
        error = fetched = gpus_before = None
        try:
            self.env.enter(ex)   # (before the code loads: it may import from the env)
            fn = self._function(ex)
            args, kwargs = self._arguments(ex)
            fetched = time.time()
            job = client.job = ex.opts.get("job", b"") if ex.opts else b""
            if ((job, ex.name) if job else None) != self.marked:
                self._mark(job, ex.name)
            client.current_task_id = ex.task_id
            client.current_depth = ex.depth
            gpus_before = _use_gpus(client, ex.opts.get("gpus"))
            self.in_user_code = True
            try:
                if self.signalled:   # a cancel may have come before the task started
                    self.signalled = False
                    if self._cancel_target() == ex.task_id.hex():
                        raise _Interrupted()
                result = fn(*args, **kwargs)
            finally:
                self.in_user_code = False
            del args, kwargs
        except _Interrupted:
            status = TaskStatus.CANCELLED
        except BaseException as e:  # everything a task raises goes back to its caller
            status = TaskStatus.ERROR
            error = e
            retryable = self._retryable(ex, e)
        finally:
            client.current_task_id = None
            if client.current_gpus:
                _use_gpus(client, None, gpus_before)
            self.env.leave()
            if client.job:
                _flush_std()
        end = time.time()
        fetched = end if fetched is None else fetched   # (it failed before it ran)
        if status == TaskStatus.OK:
            try:
                states, sizes, contained, payloads = self._store_results(ex, result)
            except BaseException as e:
                status, error = TaskStatus.ERROR, e
        stored = time.time()
        if status == TaskStatus.OK:
            done = p.TaskDone(ex.task_id, int(status), False, states, sizes, contained,
                              start, end, fetched, stored, payloads)
        else:
            if status == TaskStatus.CANCELLED:
                record = records.system_error_record(
                    TaskCancelledError, f"task {ex.name}() was cancelled", ex.name)
            else:
                record = _error_record(error, ex.name)
            done = p.TaskDone(ex.task_id, int(status), retryable, [], [], [], start, end,
                              fetched, stored, [record])
        return done, result

    def _mark(self, job: bytes, name: str) -> None:
        """The lines that follow on stdout and stderr are this task's (logmon.py)."""
        _flush_std()
        line = logmon.marker(os.getpid(), job, name)
        for fd in (1, 2):
            try:
                os.write(fd, line)
            except OSError:
                pass
        self.marked = (job, name) if job else None

    def _retryable(self, ex: p.Execute, e: BaseException) -> bool:
        """Does `e` match the task's retry_exceptions? A spec that does not load
        or is not exception types matches nothing (the task fails as it is)."""
        if not ex.retry_blob:
            return False
        try:
            spec = cloudpickle.loads(ex.retry_blob)
            if spec is True:
                return isinstance(e, Exception)
            return isinstance(e, tuple(spec))
        except Exception:   # bad retry_blob: built from user types the node passes on
            return False

    def _store_results(self, ex: p.Execute, result):
        n = ex.num_returns
        if n == 0:
            values = []
        elif n == 1:
            values = [result]
        else:
            if not isinstance(result, (tuple, list)) or len(result) != n:
                got = (f"{len(result)} values" if isinstance(result, (tuple, list))
                       else f"a {type(result).__name__}")
                raise ValueError(f"task {ex.name}() declared num_returns={n} "
                                 f"but returned {got}")
            values = list(result)
        states, sizes, contained, payloads = [], [], [], []
        threshold = self.client.inline_threshold
        for i, value in enumerate(values):
            try:
                ser = serialization.serialize(value)
            except Exception as e:
                raise TypeError(f"could not serialize the return value of {ex.name}(): "
                                f"{type(e).__name__}: {e}") from e
            if ser.size <= threshold:
                blob = ser.to_bytes()
                states.append(int(ObjectState.INLINE))
                sizes.append(len(blob))
                payloads.append(blob)
            else:
                oid = ids.object_id(ex.task_id, i)
                store.write(self.client.store_dir, oid, ser)
                states.append(int(ObjectState.STORE))
                sizes.append(ser.size)
                payloads.append(b"")
            contained.append(ser.contained)
        return states, sizes, contained, payloads


CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"


def _use_gpus(client, gpus: list | None, before: str | None = None) -> str | None:
    """Give the task its GPU ids (CUDA_VISIBLE_DEVICES, get_gpu_ids()) and return
    the variable's value before; `gpus` None: put `before` back. (A task without
    GPU ids after one without: nothing to do, not even a read of the variable.)"""
    if not gpus and not client.current_gpus:
        return None
    old = os.environ.get(CUDA_VISIBLE)
    if gpus:
        os.environ[CUDA_VISIBLE] = ",".join(str(i) for i in gpus)
        client.current_gpus = list(gpus)
    elif client.current_gpus:
        client.current_gpus = []
        if before is None:
            os.environ.pop(CUDA_VISIBLE, None)
        else:
            os.environ[CUDA_VISIBLE] = before
    return old


def _flush_std() -> None:
    """Push what the task printed (still in Python's buffers) to the files."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:   # (a task may have replaced or closed them)
            pass


def _error_record(e: BaseException, name: str) -> bytes:
    """The error record of what a task raised; the bare type if the exception
    cannot even describe itself (its __str__ raises), never an exception here."""
    try:
        return serialization.error_record(e, name, _format_tb(e))
    except Exception as why:
        return records.make(type(e).__name__, "<describing it raised "
                            f"{type(why).__name__}>", function=name)


def _format_tb(e: BaseException) -> str:
    tb = e.__traceback__
    # drop the worker's own frames: start at the user's function
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main(zygote_pid: int | None = None) -> None:
    """Run a worker; forked by the zygote (node/zygote.py)."""
    parent = zygote_pid or os.getppid()
    _die_with_parent()
    if os.getppid() != parent or parent == 1:
        os._exit(0)  # our parent died before we could tie ourselves to it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass
    worker_id = os.environ["ZFABRIC_WORKER_ID"]
    endpoint = os.environ["ZFABRIC_NODE_ENDPOINT"]
    cancel_path = os.path.join(os.environ["ZFABRIC_CANCEL_DIR"], worker_id)
    session_dir = os.environ.get("ZFABRIC_SESSION_DIR", "")
    listener = None
    if session_dir:   # a driver leased this worker connects here (core/leases.py): before
        try:          # our Hello, so a driver granted us can always connect
            listener = sockets.direct_listener(direct.endpoint_path(
                ids.worker_endpoint(session_dir, worker_id)))
        except OSError as e:   # (the node grants no lease where paths are this long)
            print(f"zfabric worker {worker_id}: no endpoint for leases: {e}", file=sys.stderr)
    client = client_mod.Client(endpoint, "worker", identity=worker_id.encode(),
                               worker_id=worker_id, listener=listener)
    client_mod.set_current(client)
    worker = Worker(client, cancel_path, session_dir)
    signal.signal(signal.SIGUSR1, worker.on_cancel_signal)
    worker.serve()
