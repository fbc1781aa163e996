"""runtime_env, the worker's side: the node's package cache, and entering and
leaving a task's env in a worker process that runs many tasks.

    Execute(opts["env"] = {"wd", "mods", "vars", "pkgs"})   (node/runtime_env.py)
      -> TaskEnv.enter(ex): each package unpacked once per node into
         {session}/runtime_env/{sha256}/; sys.path, cwd, os.environ set
      -> the task runs (its function is loaded inside the env)
      -> TaskEnv.leave(): env vars and cwd restored

A package reaches the node as one of the task's dependencies (the scheduler
fetched it before the task started). The first worker that needs it checks
that its bytes hash to its name, unpacks it (node/packaging.py: no member
outside the package) into a temporary dir and renames that into place: a
worker racing it either wins the rename or finds the finished dir, never a
half-unpacked one. Later tasks find the dir and never read the object.

Per task: the working dir is the cwd (and on sys.path); `env_vars` and
PYTHONPATH (the env's dirs first, for subprocesses) are set, and put back
after the task. Per env: the dirs go on sys.path while consecutive tasks
share the env; when a task of another env (or none) comes, they leave
sys.path, and every module imported from them leaves sys.modules, so tasks
of different envs never see each other's code (`on_switch` tells the worker
to forget functions it loaded inside the old env).
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys

from .. import serialization
from ..protocol import ObjectState
from . import packaging, store

CACHE_DIR_NAME = "runtime_env"

_current: dict = {"desc": None}   # the running task's env (tasks it submits inherit it)


def current() -> dict | None:
    """The env descriptor of the task this process runs now (None: none, or not a worker)."""
    return _current["desc"]


class EnvError(RuntimeError):
    """A task's runtime env could not be set up on this node."""


class TaskEnv:
    def __init__(self, session_dir: str, store_dir: str, limit: int, on_switch=None):
        self.cache = os.path.join(session_dir, CACHE_DIR_NAME)
        self.store_dir = store_dir
        self.limit = limit
        self.on_switch = on_switch       # (old key) the env on sys.path changed
        self.key: tuple | None = None    # (wd sha, mods shas) on sys.path now
        self.dirs: list[str] = []        # what we put on sys.path for it
        self.base_cwd = os.getcwd()
        self._saved: dict[str, str | None] = {}

    # -- a task's env ----------------------------------------------------------------------

    def enter(self, ex) -> None:
        """Set up the env of the task `ex` (an Execute); EnvError if it cannot be."""
        desc = ex.opts.get("env") or None
        _current["desc"] = desc
        if desc is None:
            if self.key is not None:
                self._switch(None, [])
            return
        wd, mods = desc.get("wd"), tuple(desc.get("mods", ()))
        key = (wd, mods) if wd or mods else None
        if key != self.key:
            self._switch(key, [self._unpacked(sha, ex) for sha in ((wd,) if wd else ()) + mods])
        env_vars = dict(desc.get("vars", {}))
        if self.dirs:
            old = os.environ.get("PYTHONPATH")
            env_vars["PYTHONPATH"] = os.pathsep.join(self.dirs + ([old] if old else []))
        self._saved = {k: os.environ.get(k) for k in env_vars}
        os.environ.update(env_vars)
        if wd:
            os.chdir(self.dirs[0])

    def leave(self) -> None:
        """Put back what the task's env changed for this task alone."""
        _current["desc"] = None
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved = {}
        try:
            os.chdir(self.base_cwd)
        except OSError:   # the dir we started in is gone: stay where we are
            pass

    # -- the env on sys.path ---------------------------------------------------------------

    def _switch(self, key: tuple | None, dirs: list[str]) -> None:
        old_key, old = self.key, self.dirs
        if old:
            for d in old:
                if d in sys.path:
                    sys.path.remove(d)
                sys.path_importer_cache.pop(d, None)
            for name in [n for n, m in list(sys.modules.items()) if _under(m, old)]:
                del sys.modules[name]
        self.key, self.dirs = key, dirs
        sys.path[0:0] = dirs
        importlib.invalidate_caches()
        if self.on_switch is not None and old_key is not None:
            self.on_switch(old_key)

    # -- the node's cache ------------------------------------------------------------------

    def _unpacked(self, sha: str, ex) -> str:
        """The dir package `sha` is unpacked in, unpacking it first if no worker did."""
        final = os.path.join(self.cache, sha)
        if os.path.isdir(final):
            return final
        data = self._package_bytes(sha, ex)
        if packaging.digest(data) != sha:
            raise EnvError(f"runtime_env package {sha[:12]} arrived with other content "
                           "(its bytes do not hash to its name)")
        os.makedirs(self.cache, 0o700, exist_ok=True)
        tmp = os.path.join(self.cache, f".{sha}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)   # left by a dead worker with our pid
        try:
            packaging.unpack(data, tmp, self.limit)
            os.rename(tmp, final)
        except packaging.PackageError as e:
            raise EnvError(f"runtime_env package {sha[:12]}: {e}") from None
        except OSError:
            if not os.path.isdir(final):   # (else another worker's rename won the race)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _package_bytes(self, sha: str, ex) -> bytes:
        oid = ex.opts["env"].get("pkgs", {}).get(sha)
        try:
            i = ex.dep_ids.index(oid)
        except ValueError:
            raise EnvError(f"runtime_env package {sha[:12]} is not among the task's "
                           "dependencies") from None
        if ex.dep_states[i] == ObjectState.INLINE:
            data = serialization.deserialize(ex.dep_payloads[i])
        else:
            data = store.read(self.store_dir, oid)
        if not isinstance(data, bytes):
            raise EnvError(f"runtime_env package {sha[:12]} is not a package "
                           f"(a {type(data).__name__})")
        return data


def _under(module, dirs: list[str]) -> bool:
    """Was `module` imported from one of `dirs`?"""
    paths = [getattr(module, "__file__", None)] + list(getattr(module, "__path__", None) or ())
    for path in paths:
        if isinstance(path, str) and any(path.startswith(d + os.sep) for d in dirs):
            return True
    return False
