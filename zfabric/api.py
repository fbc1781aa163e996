"""The driver-side API: init/shutdown/remote/get/wait/put/cancel and friends.

Everything here validates its input and then talks to the process's
connection to its node (`node/client.py`, reached through
`client.current()`), so the same calls work in a driver and inside a task.
"""
from __future__ import annotations

import atexit
import inspect
import json
import logging
import numbers
import os
import shutil
import threading

import cloudpickle

from . import compat, serialization
from . import options as opts_mod
from .config import ADDRESS_ENV, Config
from . import ids
from .node import client as client_mod
from .node import embedded
from .node import loglisten
from .node import launch as node_mod
from .node import puts as node_puts
from .node import runtime_env as renv
from .node import store as node_store
from .ref import DepMarker, ObjectRef
from .util import scheduling_strategies

_lock = threading.RLock()
_state: dict = {"client": None, "proc": None, "info": None, "embedded": False, "logs": None}


# -- init / shutdown ---------------------------------------------------------------------

def init(address: str | None = None, *, num_cpus: float | None = None,
         num_gpus: int | None = None, resources: dict | None = None,
         object_store_memory: int | None = None, ignore_reinit_error: bool = False,
         cluster_key: str | None = None, log_to_driver: bool = True,
         logging_level: int | str = logging.INFO, logging_format: str | None = None,
         configure_logging: bool = True, namespace: str | None = None,
         runtime_env: dict | None = None, include_dashboard: bool | None = None,
         dashboard_host: str | None = None, dashboard_port: int | None = None,
         **ray_kwargs) -> dict:
    """Connect this process to zfabric.

    address=None: start an embedded single-node cluster (it goes away at
    shutdown). "auto": attach to the node `zfabric start` started on this
    machine. "tcp://H:P": attach to the node on this machine listening there,
    or else start an embedded node that joins the cluster at H:P
    (ConnectionError if nobody answers there within `join_timeout`).

    log_to_driver: what this driver's tasks print (on any node) appears in
    this process's stdout/stderr, prefixed "(function pid=.. node=..)", lines
    repeated across workers folded (ZFABRIC_DEDUP_LOGS=0: not); with False,
    nothing does. Either way every worker's output stays in its node's
    session dir, logs/worker-{id}.out and .err.
    num_gpus: the GPUs this node offers (default 0), declared, not detected
    (as with Ray): tasks that ask for `num_gpus` get ids 0..num_gpus-1.
    cluster_key: the path of the cluster key file, to join a cluster on other
    machines (default: ZFABRIC_CLUSTER_KEY, else the key of a node of that
    cluster on this machine). AuthenticationError if the cluster refuses it.
    logging_level, logging_format: of this process's "zfabric" logger, unless
    configure_logging=False (then zfabric leaves logging alone); until shutdown.
    namespace: kept in the info and get_runtime_context(); no other effect.
    Ray's other init arguments are accepted with one warning each
    (zfabric.compat.NoEffectWarning); any other is a TypeError.
    runtime_env: every task's env (working_dir...: docs/runtime-env.md).
    Returns the info dict; its keys also read as attributes (as on Ray's RayContext).
    """
    compat.accept_ray_init_kwargs(ray_kwargs)
    namespace = compat.check_namespace(namespace)
    compat.configure_logging(configure_logging, logging_level, logging_format)
    with _lock:
        if _state["client"] is not None:
            if ignore_reinit_error:
                return compat.InitInfo(_state["info"])
            raise RuntimeError("zfabric is already initialized; call zf.shutdown() first "
                               "or pass ignore_reinit_error=True")
        if client_mod.current_or_none() is not None:
            raise RuntimeError("zf.init() cannot be called inside a task")
        config = _config_with_key(cluster_key)
        resources = _node_resources(num_cpus, num_gpus, resources, object_store_memory)
        env_spec = renv.check(runtime_env)
        dashboard = node_mod.dashboard_options(include_dashboard, dashboard_host, dashboard_port)
        address = address if address is not None else os.environ.get(ADDRESS_ENV) or None
        proc, info = _node_for(config, address, num_cpus, resources, object_store_memory,
                               dashboard)
        client = client_mod.Client(info["ipc"], "driver", connect_timeout=config.node_start_timeout)
        client_mod.set_current(client)
        logs = _listen(client, info["ipc"], config, proc) if log_to_driver else None
        _state.update(client=client, proc=proc, embedded=proc is not None, logs=logs,
                      info=_info_of(info, namespace))
        _start_job_env(env_spec, client)
        return compat.InitInfo(_state["info"])


def _info_of(info: dict, namespace: str | None) -> dict:
    """What init() returns, from the node's record."""
    return {"node_id": info["node_id"], "node_ip_address": info["host"],
            "address": info["address"], "object_store_address": info["store_dir"],
            "session_dir": info["session_dir"], "namespace": namespace,
            "dashboard_url": info.get("dashboard_url")}


def _node_for(config: Config, address: str | None, num_cpus, resources: dict,
              object_store_memory, dashboard: tuple | None):
    """(process or None, info): the node on this machine to attach to, or an
    embedded one started for this driver (alone, or joining `address`)."""
    info = None if address is None else _find_node(config, address)
    if info is None:
        return _start_embedded(config, address, num_cpus, resources, object_store_memory,
                               dashboard)
    if num_cpus is not None or resources or object_store_memory is not None:
        raise ValueError("num_cpus, num_gpus, resources and object_store_memory describe "
                         "a new node; they cannot be given when attaching to one "
                         "(address=...)")
    return None, info


def _config_with_key(cluster_key) -> Config:
    config = Config.from_env()
    if cluster_key is None:
        return config
    if not isinstance(cluster_key, (str, os.PathLike)):
        raise TypeError(f"cluster_key must be the path of a key file, got "
                        f"{type(cluster_key).__name__}")
    return config.replace(cluster_key=os.path.abspath(cluster_key))


def _node_resources(num_cpus, num_gpus, resources, object_store_memory) -> dict:
    """Check what init() says a new node offers; its resources, "GPU" included."""
    if num_cpus is not None:
        opts_mod.check_number("num_cpus", num_cpus)
    resources = opts_mod.check_resources(resources or {})
    if num_gpus is not None:
        opts_mod.check_gpus("num_gpus", num_gpus, whole=True)
        if num_gpus:
            resources["GPU"] = float(num_gpus)
    if object_store_memory is not None and (
            not isinstance(object_store_memory, numbers.Integral)
            or isinstance(object_store_memory, bool) or object_store_memory <= 0):
        raise ValueError(f"object_store_memory must be a positive int, got {object_store_memory!r}")
    return resources


def _start_job_env(spec, client) -> None:
    """Pack and put the job's runtime_env; if that fails (a working_dir over the
    size limit, a full store), disconnect: init() leaves nothing behind."""
    try:
        renv.start_job(spec, client)
    except BaseException:
        shutdown()
        raise


def _listen(client, endpoint: str, config: Config, proc):
    """The driver's log listener (node/loglisten.py); if it cannot start, init fails whole."""
    try:
        return loglisten.start(client, endpoint, config)
    except BaseException:
        client.close(shutdown_node=proc is not None, reason="init failed")
        client_mod.set_current(None)
        raise


def _start_embedded(config: Config, address: str | None, num_cpus, resources: dict,
                    object_store_memory, dashboard: tuple | None):
    """Start this driver's own node, alone or joining the cluster at `address`
    (AuthenticationError / ConnectionError before anything starts if that
    cluster does not admit us). Returns (process, info)."""
    if address:
        config = node_mod.prepare_join(config, address)
    try:
        return node_mod.spawn_node(   # (forked from this process where that is safe)
            config, num_cpus=float(num_cpus if num_cpus is not None else os.cpu_count() or 1),
            resources=resources, object_store_memory=object_store_memory,
            host=_embedded_host(config.host, address), port=config.port, embedded=True,
            join=[address] if address else [], dashboard=dashboard,
            start=embedded.start(config))
    except node_mod.NodeStartError as e:
        if address:
            raise ConnectionError(f"could not join the cluster at {address}: {e}") from None
        raise RuntimeError(f"could not start a zfabric node: {e}") from None


def _embedded_host(host: str, address: str | None) -> str:
    """Where an embedded node listens: ZFABRIC_HOST, except that a node joining
    a cluster on another machine must be reachable from it: a loopback host
    then becomes this machine's address on the route to that cluster (one
    interface, not every one)."""
    if address and node_mod.is_loopback(host):
        remote = address.removeprefix("tcp://").rpartition(":")[0].strip("[]")
        if not node_mod.is_loopback(remote):
            return node_mod.route_address(remote)
    return host


def _find_node(config: Config, address: str) -> dict | None:
    """The record of the node on this machine to attach to; None: start one
    that joins `address` (no node here listens there)."""
    nodes = node_mod.find_local_nodes(config)
    if address == "auto":
        if not nodes:
            raise ConnectionError("no zfabric node is running on this machine: start one with "
                                  "`python -m zfabric.node start --head`, or call zf.init() "
                                  "without an address for a local one")
        return nodes[0]
    if not isinstance(address, str) or not address.startswith("tcp://"):
        raise ValueError(f"address must be None, 'auto' or 'tcp://HOST:PORT', got {address!r}")
    node_mod.check_address(address)
    for info in nodes:
        if info["address"] == address:
            return info
    return None


def shutdown() -> None:
    """Disconnect; stop the embedded node (if init started one) and remove its files."""
    with _lock:
        client = _state["client"]
        if client is None:
            return
        proc = _state["proc"]
        renv.end_job()
        if _state["logs"] is not None:
            _state["logs"].close()
        client.close(shutdown_node=proc is not None, reason="driver called shutdown()")
        client_mod.set_current(None)
        if proc is not None:
            try:
                node_mod.wait_exit(proc, timeout=10)
            except Exception:  # subprocess.TimeoutExpired: do not leave it behind
                proc.kill()
                proc.wait()
            # a node that died (or was killed) could not remove its files: do it for it
            info = _state["info"]
            node_store.remove_dir(info["object_store_address"])
            shutil.rmtree(info["session_dir"], ignore_errors=True)
        _state.update(client=None, proc=None, info=None, embedded=False, logs=None)
        compat.restore_logging()


def is_initialized() -> bool:
    return _state["client"] is not None or client_mod.current_or_none() is not None


atexit.register(shutdown)


def _client() -> client_mod.Client:
    return client_mod.current()


# -- remote functions ----------------------------------------------------------------------

class RemoteFunction:
    """A function to run as a task: call `.remote(...)`, or `.options(...).remote(...)`."""

    _signature = compat.NOT_READ   # read at the first .remote(); .options() shares it

    def __init__(self, function, options: dict):
        self._function = function
        self._options = {**opts_mod.OPTION_DEFAULTS, **options}
        self._name = self._options["name"] or getattr(function, "__qualname__", "task")
        self._blob: bytes | None = None
        self._fn_id: bytes | None = None
        self._retry_blob: bytes | None = None
        self._resources: dict | None = None
        self._task_opts: dict = {}
        self.__wrapped__ = function
        self.__name__ = getattr(function, "__name__", "task")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__doc__ = getattr(function, "__doc__", None)
        self.__module__ = getattr(function, "__module__", None)

    def __getstate__(self) -> dict:   # shipped into a task: read the signature there
        return {k: v for k, v in self.__dict__.items() if k != "_signature"}

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self._name}() cannot be called directly; "
                        f"use {self.__name__}.remote(...)")

    def options(self, **options) -> "RemoteFunction":
        options = opts_mod.validate_options(options)
        derived = RemoteFunction(self._function, {**self._options, **options})
        derived._blob, derived._fn_id = self._blob, self._fn_id
        derived._signature = self._signature
        return derived

    def _prepare(self) -> None:
        if self._blob is None:
            try:
                blob = cloudpickle.dumps(self._function)
            except Exception as e:
                raise TypeError(f"could not serialize remote function {self._name}(): "
                                f"{type(e).__name__}: {e}") from None
            self._fn_id = ids.function_id(blob)
            self._blob = blob
        if self._resources is None:
            opts = self._options
            res = dict(opts["resources"] or {})
            if opts["num_cpus"]:
                res["CPU"] = float(opts["num_cpus"])
            if opts["num_gpus"]:
                res["GPU"] = float(opts["num_gpus"])
            self._task_opts = scheduling_strategies.task_opts(opts["scheduling_strategy"])
            self._resources = res
            retry = opts["retry_exceptions"]
            self._retry_blob = (b"" if retry is False else
                                cloudpickle.dumps(True if retry is True else tuple(retry)))

    def remote(self, *args, **kwargs):
        """Submit a call; its ObjectRef(s). The arguments are checked against
        the function's signature first: TypeError at once if it cannot take them."""
        client = _client()
        if self._signature is compat.NOT_READ:
            self._signature = compat.signature_of(self._function)
        compat.check_call(self._name, self._signature, args, kwargs)
        self._prepare()
        deps, contained, args_blob, keep = _serialize_args(self._name, self._function, args,
                                                           kwargs, client)
        opts = self._options
        env_opts, env_deps, env_keep = renv.for_task(opts["runtime_env"], client)
        refs = client.submit(
            name=self._name, fn_id=self._fn_id, fn_blob=self._blob,
            num_returns=opts["num_returns"], resources=self._resources,
            max_retries=opts["max_retries"], retry_exceptions=opts["retry_exceptions"] is not False,
            retry_blob=self._retry_blob, deps=deps + env_deps if env_deps else deps,
            contained=contained, args_blob=args_blob,
            opts={**self._task_opts, **env_opts} if env_opts else self._task_opts)
        del keep, env_keep  # the refs to arguments put in the store live until Submit is sent
        n = opts["num_returns"]
        if n == 1:
            return refs[0]
        if n == 0:
            return None
        return refs

    def __repr__(self) -> str:
        return f"<zfabric remote function {self._name}>"


def _serialize_args(name: str, function, args: tuple, kwargs: dict, client):
    """(deps, contained, args_blob, keep): top-level ObjectRefs become DepMarkers.

    `keep` holds the ObjectRefs the blob names; the caller keeps it until the
    Submit is sent, or a ref change could reach the node first and free them.
    """
    if not args and not kwargs:
        return [], [], b"", ()
    deps: list[bytes] = []
    keep: list = []

    def mark(value):
        if type(value) is ObjectRef:
            deps.append(value._id)
            keep.append(value)
            return DepMarker(len(deps) - 1)
        return value

    margs = [mark(a) for a in args]
    mkwargs = {k: mark(v) for k, v in kwargs.items()}
    try:
        ser, large = node_puts.serialize_args(margs, mkwargs, client.inline_threshold)
    except Exception as e:
        raise _argument_error(name, function, args, kwargs, e) from None
    if ser is None:   # large arguments go to the store, pickled once, and travel as refs
        ser = node_puts.put_large(client, margs, mkwargs, large, mark, keep)
    return deps, ser.contained, ser.to_bytes(), keep


def _argument_error(name, function, args, kwargs, error) -> TypeError:
    try:
        params = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        params = []
    for i, a in enumerate(args):
        try:
            serialization.serialize(a)
        except Exception as e:
            label = f"'{params[i]}'" if i < len(params) else f"#{i}"
            return TypeError(f"argument {label} (position {i}) of {name}() cannot be "
                             f"serialized: {type(e).__name__}: {e}")
    for k, v in kwargs.items():
        try:
            serialization.serialize(v)
        except Exception as e:
            return TypeError(f"argument '{k}' of {name}() cannot be serialized: "
                             f"{type(e).__name__}: {e}")
    return TypeError(f"the arguments of {name}() cannot be serialized: "
                     f"{type(error).__name__}: {error}")


def remote(*args, **options):
    """Decorator: `@zf.remote` or `@zf.remote(num_cpus=..., ...)`."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @zf.remote or @zf.remote(option=value, ...)")
    options = opts_mod.validate_options(options)
    return lambda function: _make_remote(function, options)


def _make_remote(function, options: dict) -> RemoteFunction:
    if inspect.isclass(function):
        raise compat.not_supported(compat.NO_ACTORS, f"@remote on the class {function.__name__}")
    if not callable(function):
        raise TypeError(f"@zf.remote takes a function, got {function!r}")
    return RemoteFunction(function, options)


# -- get / wait / put / cancel -------------------------------------------------------------------

def _check_timeout(timeout) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")


def get(refs, *, timeout: float | None = None):
    """The value of an ObjectRef, or the values of a list of them (same order)."""
    _check_timeout(timeout)
    single = type(refs) is ObjectRef
    if single:
        items = [refs]
    elif isinstance(refs, (list, tuple)):
        items = list(refs)
        for r in items:
            if type(r) is not ObjectRef:
                raise TypeError(f"get() takes an ObjectRef or a list of ObjectRefs; the list "
                                f"holds a {type(r).__name__}")
    else:
        raise TypeError(f"get() takes an ObjectRef or a list of ObjectRefs, "
                        f"got {type(refs).__name__}")
    if not items:
        return []
    values = _client().get_values([r._id for r in items], timeout)
    return values[0] if single else values


def check_refs(refs, caller: str) -> list:
    """`refs` as a list, checked as zf.wait checks it (TypeError, ValueError)."""
    if type(refs) is ObjectRef or not isinstance(refs, (list, tuple)):
        raise TypeError(f"{caller}() takes a list of ObjectRefs, got {type(refs).__name__}")
    refs = list(refs)
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"{caller}() takes a list of ObjectRefs; the list holds a "
                            f"{type(r).__name__}")
    if len({r._id for r in refs}) != len(refs):
        raise ValueError(f"{caller}() got the same ObjectRef more than once")
    return refs


def wait(refs, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list, list]:
    """(ready, not_ready) once num_returns refs are ready or timeout passes."""
    refs = check_refs(refs, "wait")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, got {num_returns!r}")
    if num_returns <= 0:
        raise ValueError(f"num_returns must be >= 1, got {num_returns}")
    _check_timeout(timeout)
    if not refs:
        return [], []
    if num_returns > len(refs):
        raise ValueError(f"num_returns ({num_returns}) is larger than the number of "
                         f"ObjectRefs ({len(refs)})")
    ready_ids = _client().wait_some([r._id for r in refs], num_returns, timeout)
    ready, not_ready = [], []
    for r in refs:
        (ready if r._id in ready_ids and len(ready) < num_returns else not_ready).append(r)
    return ready, not_ready


def put(value) -> ObjectRef:
    """Store a value; returns its ObjectRef."""
    if type(value) is ObjectRef:
        raise TypeError("put() of an ObjectRef is not allowed: pass the ObjectRef itself")
    try:
        return _client().put(value)
    except (TypeError, AttributeError, ValueError) as e:
        if isinstance(e, TypeError) and "serialize" in str(e):
            raise
        try:
            serialization.serialize(value)
        except Exception as se:
            raise TypeError(f"put() could not serialize the value: "
                            f"{type(se).__name__}: {se}") from None
        raise


def cancel(ref, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces `ref` (queued, waiting or running)."""
    if type(ref) is not ObjectRef:
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    _client().cancel(ref._id, bool(force), bool(recursive))


# -- cluster information ----------------------------------------------------------------------

def nodes() -> list[dict]:
    return _client().request("nodes")


def cluster_resources() -> dict:
    return _client().request("resources")["total"]


def available_resources() -> dict:
    return _client().request("resources")["available"]


def timeline(filename: str | None = None):
    """Chrome trace events of finished tasks; written to `filename` if given."""
    events = _client().request("timeline")
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None


class RuntimeContext:
    """Where the calling code runs: `get_node_id()`, `get_task_id()`."""

    def __init__(self, client):
        self._client = client

    def get_node_id(self) -> str:
        return self._client.node_id.hex()

    def get_task_id(self) -> str | None:
        tid = self._client.current_task_id
        if tid is not None:
            return tid.hex()
        if self._client.role == "driver":
            return _driver_task_id(self._client)
        return None

    def get_namespace(self) -> str | None:
        """init(namespace=...) in the driver; None in tasks (it has no meaning here)."""
        info = _state["info"] if self._client is _state["client"] else None
        return info["namespace"] if info else None

    @property
    def namespace(self) -> str | None:
        return self.get_namespace()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()


_driver_ids: dict[int, str] = {}


def _driver_task_id(client) -> str:
    key = id(client)
    if key not in _driver_ids:
        _driver_ids[key] = ids.new_task_id().hex()
    return _driver_ids[key]


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_client())


def get_gpu_ids() -> list[int]:
    """The ids of the GPUs given to the calling task (its `num_gpus`; they are also
    in CUDA_VISIBLE_DEVICES); [] in the driver and in tasks without GPUs."""
    return list(_client().current_gpus)
