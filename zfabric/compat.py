"""What code written for Ray's task API expects of `import zfabric as ray`.

`api.py` calls in here; nothing else does:

    init(**ray_kwargs)   -> accept_ray_init_kwargs: Ray's arguments that mean
                            nothing here are accepted with one warning each
                            (NoEffectWarning), any other one is a TypeError
    init(logging_level=, configure_logging=, logging_format=)
                         -> configure_logging: the driver's "zfabric" logger
    init(namespace=)     -> check_namespace: kept, with one warning
    init() returns       -> InitInfo: a dict, also read as Ray's RayContext
    @remote(...), .options(...)
                         -> accept_ray_task_options: Ray's options without
                            meaning here, the same way as init's
    f.remote(...)        -> check_call: the arguments against the function's
                            signature, a TypeError at once (as a call would)
    get_actor, kill, method, @remote on a class, util.placement_group
                         -> not_supported: one NotSupportedError line

A warning is given once per process for each argument, however often
`init` is called. The tables below are the one place to say which of Ray's
`init` arguments and task options are accepted without meaning, and why.
"""
from __future__ import annotations

import inspect
import logging
import sys
import warnings

from .exceptions import NotSupportedError


class NoEffectWarning(UserWarning):
    """An argument Ray gives a meaning to has none in zfabric; it was accepted."""


# Ray 2.x's ray.init arguments that mean nothing here: name -> (Ray's default, why).
# Passing Ray's default says nothing and warns nothing.
RAY_INIT_WITHOUT_MEANING: dict[str, tuple[object, str]] = {
    "local_mode": (False, "tasks always run in worker processes"),
    "job_config": (None, "zfabric has no jobs"),
    "logging_config": (None, "configure the logging of tasks inside them"),
    "labels": (None, "zfabric nodes have no labels; use resources"),
    "storage": (None, "zfabric has no cluster-wide storage"),
    "enable_resource_isolation": (False, "zfabric does not use cgroups"),
    "system_reserved_cpu": (None, "zfabric does not use cgroups"),
    "system_reserved_memory": (None, "zfabric does not use cgroups"),
    "allow_multiple": (False, "a process connects to one cluster"),
    "object_spilling_directory": (None, "set ZFABRIC_SPILL_DIR instead"),
    "_system_config": (None, "set ZFABRIC_* variables instead (see zfabric.config)"),
    "_enable_object_reconstruction": (False, "zfabric always rebuilds lost objects "
                                             "from lineage"),
    "_plasma_directory": (None, "the store is in /dev/shm (ZFABRIC_STORE_ROOT)"),
    "_node_ip_address": (None, "set ZFABRIC_HOST instead"),
    "_driver_object_store_memory": (None, "drivers have no store of their own"),
    "_memory": (None, "zfabric has no memory resource"),
    "_redis_username": (None, "zfabric has no Redis"),
    "_redis_password": (None, "zfabric has no Redis; the cluster key authenticates"),
    "_temp_dir": (None, "set ZFABRIC_TEMP_DIR instead"),
    "_metrics_export_port": (None, "zfabric exports no metrics port"),
    "_tracing_startup_hook": (None, "zfabric has no tracing hooks"),
    "_node_name": (None, "nodes are named by their id"),
    "_skip_env_hook": (False, "zfabric has no runtime env hooks"),
    "_cgroup_path": (None, "zfabric does not use cgroups"),
}

# Ray 2.x's task options that mean nothing here, the same way.
RAY_TASK_OPTIONS_WITHOUT_MEANING: dict[str, tuple[object, str]] = {
    "memory": (None, "zfabric has no memory resource; use resources= for a custom one"),
    "max_calls": (0, "a worker runs any number of tasks"),
    "accelerator_type": (None, "zfabric does not know accelerator types; use resources="),
    "label_selector": (None, "zfabric nodes have no labels; use resources="),
    "enable_task_events": (True, "zfabric always keeps its timeline"),
    "_metadata": (None, "zfabric has no task metadata"),
}

_warned: set[str] = set()


def warn_once(argument: str, why: str, stacklevel: int = 3, where: str = "init") -> None:
    """One NoEffectWarning per argument and process."""
    if (where, argument) in _warned:
        return
    _warned.add((where, argument))
    warnings.warn(f"{where}({argument}=...) has no effect in zfabric: {why}",
                  NoEffectWarning, stacklevel=stacklevel + 1)


def accept_ray_init_kwargs(kwargs: dict) -> None:
    """Warn once about each of Ray's init arguments that means nothing here;
    TypeError for one that is neither Ray's nor ours (as Python would)."""
    unknown = [k for k in kwargs if k not in RAY_INIT_WITHOUT_MEANING]
    if unknown:
        raise TypeError(f"init() got an unexpected keyword argument {unknown[0]!r}")
    for name, value in kwargs.items():
        default, why = RAY_INIT_WITHOUT_MEANING[name]
        if not _is_default(value, default):
            warn_once(name, why)


def accept_ray_task_options(options: dict) -> dict:
    """The options without Ray's task options that mean nothing here (one
    warning for each passed with another value than Ray's default)."""
    if not any(k in RAY_TASK_OPTIONS_WITHOUT_MEANING for k in options):
        return options
    kept = {}
    for name, value in options.items():
        if name not in RAY_TASK_OPTIONS_WITHOUT_MEANING:
            kept[name] = value
        elif not _is_default(value, RAY_TASK_OPTIONS_WITHOUT_MEANING[name][0]):
            warn_once(name, RAY_TASK_OPTIONS_WITHOUT_MEANING[name][1], stacklevel=4,
                      where="remote")
    return kept


def _is_default(value, default) -> bool:
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # an odd value whose == raises is not the default
        return False


def check_namespace(namespace) -> str | None:
    """A namespace is kept (init's info, get_runtime_context().namespace) and
    otherwise means nothing: it groups Ray jobs and named actors."""
    if namespace is None:
        return None
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    warn_once("namespace", "it groups jobs and named actors, which zfabric does not have; "
                           "it is kept in get_runtime_context().namespace", stacklevel=3)
    return namespace


class InitInfo(dict):
    """What init() returns: a dict of zfabric's keys that also reads as Ray's
    RayContext: `.dashboard_url`, `.address_info`, any key as an attribute."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"init() info has no {name!r}") from None

    @property
    def address_info(self) -> dict:
        return dict(self)


# -- the driver's logging ---------------------------------------------------------------------

LOGGER = "zfabric"
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s -- %(message)s"


class _DriverHandler(logging.StreamHandler):
    """Prints zfabric's records to stderr, unless the application configured
    logging itself (the root logger has handlers): then those show them."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            self.stream = sys.stderr   # looked up each time: it may have been replaced
            super().emit(record)


_saved: dict = {}   # what configure_logging changed, to put back at shutdown


def check_level(level) -> int:
    """A logging level: an int, or a name such as "info" (as Ray takes it)."""
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if isinstance(number, int):
            return number
    elif isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        return level
    raise ValueError(f"logging_level must be a logging level (e.g. logging.INFO or "
                     f"'info'), got {level!r}")


def configure_logging(enabled: bool, level, logging_format: str | None) -> None:
    """enabled: the "zfabric" logger of this process gets `level` and a handler
    to stderr (`logging_format`) that stays quiet once the application has
    handlers of its own. Not enabled: zfabric leaves logging alone (and takes
    back a handler an earlier init added)."""
    level = check_level(level)
    if logging_format is not None and not isinstance(logging_format, str):
        raise TypeError(f"logging_format must be a str, got {type(logging_format).__name__}")
    logger = logging.getLogger(LOGGER)
    if not enabled:
        restore_logging()
        return
    if not _saved:
        _saved.update(level=logger.level, handler=_DriverHandler())
        logger.addHandler(_saved["handler"])
    _saved["handler"].setFormatter(logging.Formatter(logging_format or DEFAULT_FORMAT))
    logger.setLevel(level)


def restore_logging() -> None:
    """Undo configure_logging (at shutdown): the logger's level, our handler."""
    if _saved:
        logger = logging.getLogger(LOGGER)
        logger.removeHandler(_saved["handler"])
        logger.setLevel(_saved["level"])
        _saved.clear()


# -- what zfabric does not have -------------------------------------------------------------------

NO_ACTORS = ("zfabric has no actors ({what}): it runs tasks only; keep state in the "
             "driver, or pass it from task to task as arguments and results")
NO_PLACEMENT_GROUPS = ("zfabric has no placement groups: give tasks resources "
                       "(num_cpus=, resources=) instead")


def not_supported(template: str, what: str) -> NotSupportedError:
    return NotSupportedError(template.format(what=what))


def get_actor(name: str, namespace: str | None = None):
    """Ray's named actors: zfabric has none (NotSupportedError)."""
    raise not_supported(NO_ACTORS, f"get_actor({name!r})")


def kill(actor, *, no_restart: bool = True):
    """Ray's actor kill: zfabric has no actors (NotSupportedError); a task is
    cancelled with zfabric.cancel."""
    raise not_supported(NO_ACTORS, "kill(); zfabric.cancel(ref) cancels a task")


def method(*args, **kwargs):
    """Ray's actor method decorator: zfabric has no actors (NotSupportedError)."""
    raise not_supported(NO_ACTORS, "@method")


def placement_group(*args, **kwargs):
    """Ray's placement groups: zfabric has none (NotSupportedError)."""
    raise NotSupportedError(NO_PLACEMENT_GROUPS)


# -- a call's arguments against the function's signature ------------------------------------------

NOT_READ = object()   # a RemoteFunction's signature before its first call

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def signature_of(function):
    """What a call of `function` is checked against, or None when its signature
    cannot be read (some builtins): then nothing is checked. A decorated
    function is checked as its wrapper (what a direct call would check).

    (signature, fewest, most positional arguments): a call with positional
    arguments only, between the two, needs no `bind` (~7 us a call)."""
    try:
        signature = inspect.signature(function, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    positional = [p for p in params if p.kind in _POSITIONAL]
    fewest = sum(p.default is p.empty for p in positional)
    most = (float("inf") if any(p.kind is p.VAR_POSITIONAL for p in params)
            else len(positional))
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params):
        fewest = most + 1   # a required keyword: no call without keywords passes, bind says why
    return signature, fewest, most


def check_call(name: str, shape, args: tuple, kwargs: dict) -> None:
    """TypeError at `.remote()` for arguments the function could not take."""
    if shape is None:
        return
    signature, fewest, most = shape
    if not kwargs and fewest <= len(args) <= most:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{name}(): {e}") from None
