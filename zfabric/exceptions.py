"""zfabric's exceptions. Every one derives from `ZFabricError`.

`TaskError` is what `get` raises when a task raised. It is built on the
caller's side from the error record a worker sent (see `records.py`) and is *also* an instance of the original exception's
class, so `except ValueError:` around `zf.get` works as it would around the
call itself. `.cause` holds the original exception with its attributes;
`.traceback_str` the remote traceback. An exception that cannot travel
(it does not pickle in the worker, or does not unpickle here) arrives as a
`TaskError` whose `.cause` is an `UnserializableException` holding its type
name, message and traceback as text. A cause class that refuses to be
subclassed gives a plain `TaskError`, with one warning per class saying why.

Code written for Ray catches `RayError` and `RayTaskError`: they are other
names for `ZFabricError` and `TaskError`. `NotSupportedError` is what the
Ray interfaces zfabric does not have (actors, placement groups) raise.
"""
from __future__ import annotations

import logging

log = logging.getLogger("zfabric.exceptions")


class ZFabricError(Exception):
    """Base class of every zfabric error."""


class TaskError(ZFabricError):
    """A task raised. Also an instance of the original exception's class."""

    def __init__(self, function_name: str = "", traceback_str: str = "",
                 cause: BaseException | None = None, cause_type_name: str = "",
                 message: str = ""):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.cause_type_name = cause_type_name or (type(cause).__name__ if cause else "")
        self.message = message or (str(cause) if cause is not None else "")
        Exception.__init__(self, self._text())

    def _text(self) -> str:
        head = f"task {self.function_name}() failed"
        if self.cause_type_name:
            head += f" with {self.cause_type_name}: {self.message}"
        if self.traceback_str:
            head += "\n\nRemote traceback:\n" + self.traceback_str.rstrip()
        return head

    def __str__(self) -> str:
        return self._text()

    def __reduce__(self):  # unpickles as an instance of the cause's class too
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause,
                                      self.cause_type_name, self.message))

    def as_instanceof_cause(self) -> "TaskError":
        """Return an error that is both a TaskError and an instance of the cause's class."""
        cause = self.cause
        if isinstance(cause, TaskError):  # a task re-raised another task's error
            return cause.as_instanceof_cause()
        if cause is None or isinstance(cause, UnserializableException):
            return self
        cause_cls = type(cause)
        derived = _derived_class(cause_cls)
        if derived is None:
            return self
        try:  # lets C-level state (e.g. OSError.errno) come from the cause's args
            err = derived.__new__(derived, *cause.args)
            cause_cls.__init__(err, *cause.args)
        except Exception:
            err = derived.__new__(derived)
        try:
            err.__dict__.update(vars(cause))  # the cause's attributes, as they were
        except TypeError:
            pass
        TaskError.__init__(err, self.function_name, self.traceback_str, cause,
                           self.cause_type_name, self.message)
        err.__cause__ = cause
        return err


def _rebuild_task_error(function_name, traceback_str, cause, cause_type_name, message):
    return TaskError(function_name, traceback_str, cause, cause_type_name,
                     message).as_instanceof_cause()


_derived_cache: dict[type, type | None] = {}


def _derived_class(cause_cls: type) -> type | None:
    if cause_cls in _derived_cache:
        return _derived_cache[cause_cls]
    try:
        derived = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls), {
            "__init__": TaskError.__init__,
            "__str__": TaskError.__str__,
            "__reduce__": TaskError.__reduce__,
            "__getattr__": lambda self, name: getattr(self.__dict__["cause"], name),
            "__module__": cause_cls.__module__,
        })
        derived.__qualname__ = derived.__name__
    except Exception as e:  # a layout conflict (some C types), a class that refuses subclasses
        log.warning("%s from a task is raised as a plain TaskError, not also as a %s: "
                    "its class cannot be subclassed (%s: %s)", cause_cls.__name__,
                    cause_cls.__name__, type(e).__name__, e)
        derived = None
    _derived_cache[cause_cls] = derived
    return derived


class UnserializableException(ZFabricError):
    """The `.cause` of a TaskError whose exception could not travel to the caller:
    its class name (`type_name`), `message` and `traceback_str`, as text."""

    def __init__(self, type_name: str, message: str, traceback_str: str = "", why: str = ""):
        self.type_name, self.message, self.traceback_str, self.why = (
            type_name, message, traceback_str, why)
        text = f"the task's exception {type_name}: {message} is not serializable"
        super().__init__(text + (f" ({why})" if why else ""))

    def __reduce__(self):
        return (UnserializableException,
                (self.type_name, self.message, self.traceback_str, self.why))


class NotSupportedError(ZFabricError, NotImplementedError):
    """A Ray interface zfabric does not have: actors, placement groups."""


class GetTimeoutError(ZFabricError, TimeoutError):
    """`get` (or a blocking wait) timed out."""


class WorkerCrashedError(ZFabricError):
    """The worker running a task died and the task ran out of retries."""


class NodeDiedError(ZFabricError):
    """The node a task or object lived on is gone."""


class ObjectLostError(ZFabricError):
    """An object's every copy is gone and it cannot be rebuilt."""


class TaskCancelledError(ZFabricError):
    """The task was cancelled with `zf.cancel`."""


class ObjectStoreFullError(ZFabricError):
    """The object store cannot hold the object."""


class AuthenticationError(ZFabricError):
    """A peer or client does not hold the cluster key."""


# Ray's names for the same errors, so that `except ray.exceptions.RayTaskError:`
# runs unchanged after `import zfabric as ray`.
RayError = ZFabricError
RayTaskError = TaskError


# Names an error record can carry for errors zfabric itself raised (no user
# exception to unpickle). Used by serialization.error_from_record.
SYSTEM_ERRORS = {cls.__name__: cls for cls in (
    WorkerCrashedError, NodeDiedError, ObjectLostError, TaskCancelledError,
    ObjectStoreFullError, GetTimeoutError)}
