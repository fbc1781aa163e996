"""runtime_env, the submitting side: check what the user gave, pack it, put it in
the object store, and name it in each task's `opts["env"]`.

    zf.init(runtime_env=...)      check() -> start_job(spec, client): packed and put once
    @zf.remote(runtime_env=...)   check(): paths made absolute, nothing read yet
    .options(runtime_env=...)     check()
    f.remote(...)                 for_task(spec, client) -> (opts, extra deps, refs to keep)

Keys: `working_dir` (a directory: the task runs in it and imports from it),
`py_modules` (package directories, .py files or imported modules: importable
in the task), `env_vars` (str -> str, set while the task runs) and `excludes`
(.gitignore lines, see node/packaging.py). A task's runtime_env is merged over
the job's as Ray does: each key it gives replaces the job's, but `env_vars`
are merged (the task's win). A task submitted from inside a task inherits
its parent's env as its job env. `pip`, `conda`, `uv`, `container` and
`image_uri` are refused: zfabric installs nothing (there may be no package
index to install from).

Each directory or module is one package: a deterministic zip named by its
sha256 (node/packaging.py), put in the store once per process and content
(the ObjectRef is kept until `end_job`, so tasks can always fetch it). A
task carries its packages as extra top-level dependencies: the node's usual
fetch path (pulls between nodes, spilling, restoring) brings them to the node
that runs it before it starts, and the worker unpacks each once per node
(node/task_env.py). The descriptor in `opts["env"]`
(protocol_checks.env_problem):

    {"wd": sha256 hex, "mods": [sha256 hex, ...], "vars": {name: value},
     "pkgs": {sha256 hex: object id}}      every key optional; pkgs names each package's object

Repacking: `check` resolves paths but reads nothing; a spec is packed at its
first `.remote()` per connection and remembered on the spec (a decorated
function packs once). A new spec of the same paths (`f.options(runtime_env=X)`
in a loop) scans the files again (stat only) and packs again only if a size,
mtime or mode changed.
"""
from __future__ import annotations

import os
import sys
import threading
import types
import weakref

from ..protocol_checks import ENV_MAX_MODULES, ENV_MAX_VARS, MAX_TEXT
from ..ref import ObjectRef

KEYS = ("working_dir", "py_modules", "env_vars", "excludes")
REFUSED = ("pip", "conda", "uv", "container", "image_uri")


class EnvSpec:
    """A checked runtime_env: absolute paths, nothing read yet."""

    def __init__(self, working_dir, py_modules, env_vars, excludes):
        self.working_dir: str | None = working_dir
        self.py_modules: tuple | None = py_modules     # ((path, member prefix), ...)
        self.env_vars: dict | None = env_vars
        self.excludes: tuple = excludes
        self._parts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __reduce__(self):   # shipped inside a task (a remote function it calls): packed anew there
        return (EnvSpec, (self.working_dir, self.py_modules, self.env_vars, self.excludes))

    def __repr__(self) -> str:
        return (f"EnvSpec(working_dir={self.working_dir!r}, py_modules={self.py_modules!r}, "
                f"env_vars={self.env_vars!r}, excludes={self.excludes!r})")


# -- checking what the user gave -----------------------------------------------------------

def check(runtime_env) -> EnvSpec | None:
    """The checked form of a runtime_env dict (None if it is None or empty);
    ValueError, saying what is wrong, for anything else."""
    if runtime_env is None:
        return None
    if isinstance(runtime_env, EnvSpec):
        return runtime_env
    if not isinstance(runtime_env, dict):
        raise ValueError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
    for key in runtime_env:
        if key in REFUSED:
            raise ValueError(
                f"runtime_env {key!r} is not supported: zfabric installs no packages (these "
                f"machines may have no package index); install them on every node instead, "
                f"or ship your own code with 'working_dir' / 'py_modules'")
        if key not in KEYS:
            raise ValueError(f"unknown runtime_env key {key!r}; zfabric supports "
                             f"{', '.join(KEYS)}")
    given = {k: v for k, v in runtime_env.items() if v is not None}
    if not given:
        return None
    excludes = _check_excludes(given.get("excludes", ()))
    wd = given.get("working_dir")
    wd = _check_working_dir(wd) if wd is not None else None
    mods = given.get("py_modules")
    mods = _check_py_modules(mods) if mods is not None else None
    env_vars = given.get("env_vars")
    env_vars = _check_env_vars(env_vars) if env_vars is not None else None
    return EnvSpec(wd, mods, env_vars, excludes)


def _local_path(value, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"runtime_env {what} must be a path, got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or "://" in path:
        raise ValueError(f"runtime_env {what} {path!r}: zfabric ships local files only, "
                         "not URIs; give a local path")
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise ValueError(f"runtime_env {what} {path!r} does not exist")
    return path


def _check_working_dir(value) -> str:
    path = _local_path(value, "working_dir")
    if not os.path.isdir(path):
        raise ValueError(f"runtime_env working_dir {path!r} is not a directory")
    return path


def _check_py_modules(value) -> tuple:
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"runtime_env py_modules must be a list, got {type(value).__name__}")
    if len(value) > ENV_MAX_MODULES:
        raise ValueError(f"runtime_env py_modules: at most {ENV_MAX_MODULES} entries")
    out, names = [], {}
    for item in value:
        if isinstance(item, types.ModuleType):
            item = _module_path(item)
        path = _local_path(item, "py_modules entry")
        if os.path.isdir(path):
            name, prefix = os.path.basename(path), os.path.basename(path) + "/"
        elif path.endswith(".py"):
            name, prefix = os.path.basename(path)[:-3], ""
        elif path.endswith(".whl"):
            raise ValueError(f"runtime_env py_modules entry {path!r}: a wheel needs pip, "
                             "which zfabric does not run; give the package's directory")
        else:
            raise ValueError(f"runtime_env py_modules entry {path!r} is neither a package "
                             "directory nor a .py file")
        if name in names:
            raise ValueError(f"runtime_env py_modules: {names[name]!r} and {path!r} are "
                             f"both imported as {name!r}")
        names[name] = path
        out.append((path, prefix))
    return tuple(out)


def _module_path(module: types.ModuleType) -> str:
    paths = list(getattr(module, "__path__", None) or ())
    if len(paths) == 1:
        return paths[0]
    file = getattr(module, "__file__", None)
    if paths or not file:
        raise ValueError(f"runtime_env py_modules: module {module.__name__!r} has no single "
                         "directory or file to ship (a namespace package?)")
    return file


def _check_env_vars(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"runtime_env env_vars must be a dict of str to str, got "
                         f"{type(value).__name__}")
    if len(value) > ENV_MAX_VARS:
        raise ValueError(f"runtime_env env_vars: at most {ENV_MAX_VARS} variables")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"runtime_env env_vars must map str to str; got {k!r}: {v!r}")
        if not k or "=" in k or "\0" in k or "\0" in v or len(k) > MAX_TEXT or len(v) > MAX_TEXT:
            raise ValueError(f"runtime_env env_vars: {k!r} is not a valid variable "
                             "(a name without '=' or NUL, a value without NUL, each "
                             f"at most {MAX_TEXT} characters)")
    return dict(value)


def _check_excludes(value) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(x, str) for x in value):
        raise ValueError(f"runtime_env excludes must be a list of .gitignore patterns (str), "
                         f"got {value!r}")
    return tuple(value)


# -- packing and putting ---------------------------------------------------------------------

class _Packages:
    """One connection's packages: what was packed from where, and the ObjectRefs
    that keep them in the store while the connection lasts."""

    def __init__(self):
        self.made: dict[tuple, tuple] = {}      # (path, prefix, excludes) -> (signature, sha)
        self.refs: dict[str, ObjectRef] = {}    # sha -> the package's object
        self.lock = threading.Lock()

    def package(self, client, path: str, prefix: str, excludes: tuple, label: str) -> str:
        from . import packaging   # (only for a working_dir or py_modules)
        limit = client.config.runtime_env_max_bytes
        rules = packaging.Rules(excludes)
        entries = packaging.scan(path, rules, limit, label, prefix)
        sig = packaging.signature(entries)
        key = (path, prefix, excludes)
        with self.lock:
            made = self.made.get(key)
            if made is not None and made[0] == sig and made[1] in self.refs:
                return made[1]
        data = packaging.pack(entries, limit, f"{label} {path!r}")
        sha = packaging.digest(data)
        with self.lock:
            if sha not in self.refs:
                self.refs[sha] = client.put(data, in_store=True)
            self.made[key] = (sig, sha)
        return sha


_packages: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # client -> _Packages
_packages_lock = threading.Lock()   # (two threads must not make two books for one client)
_job: dict = {"client": None, "desc": None}


def _packages_of(client) -> _Packages:
    with _packages_lock:
        packages = _packages.get(client)
        if packages is None:
            packages = _packages[client] = _Packages()
        return packages


def _part(spec: EnvSpec, client) -> dict:
    """The descriptor of what `spec` itself gives (packed and put on first use)."""
    part = spec._parts.get(client)
    if part is not None:
        return part
    packages = _packages_of(client)
    part, pkgs = {}, {}
    if spec.working_dir is not None:
        sha = packages.package(client, spec.working_dir, "", spec.excludes, "working_dir")
        part["wd"] = sha
    if spec.py_modules is not None:
        part["mods"] = [packages.package(client, path, prefix, spec.excludes, "py_modules entry")
                        for path, prefix in spec.py_modules]
    for sha in [part.get("wd")] + part.get("mods", []):
        if sha is not None:
            pkgs[sha] = packages.refs[sha].binary()
    if spec.env_vars is not None:
        part["vars"] = dict(spec.env_vars)
    part["pkgs"] = pkgs
    spec._parts[client] = part
    return part


def merge(base: dict | None, part: dict | None) -> dict:
    """A task's env over its job's: keys replace, env_vars merge (the task's win)."""
    if not part:
        return dict(base or {})
    if not base:
        return {k: v for k, v in part.items() if k != "pkgs" or v}
    desc = {k: v for k, v in base.items() if k != "pkgs"}
    for key in ("wd", "mods"):
        if key in part:
            desc[key] = part[key]
    if "vars" in part:
        desc["vars"] = {**base.get("vars", {}), **part["vars"]}
    known = {**base.get("pkgs", {}), **part.get("pkgs", {})}
    pkgs = {sha: known[sha] for sha in [desc.get("wd")] + list(desc.get("mods", ())) if sha}
    if pkgs:
        desc["pkgs"] = pkgs
    return desc


# -- the job's env, and each task's ------------------------------------------------------------

def start_job(spec: EnvSpec | None, client) -> None:
    """The env of every task this process submits (init(runtime_env=...)): packed now."""
    _job.update(client=client, desc=_part(spec, client) if spec is not None else None)


def end_job() -> None:
    """The driver disconnected: its packages may go."""
    client = _job["client"]
    _job.update(client=None, desc=None)
    if client is not None:
        with _packages_lock:
            _packages.pop(client, None)


_TASK_ENV = f"{__package__}.task_env"


def job_env(client) -> dict | None:
    """The env a task submitted here runs in unless it names its own: the running
    task's in a worker, else the job's."""
    # (task_env holds the running task's env; only a worker imports it, so not loaded:
    # no task runs in this process)
    task_env = sys.modules.get(_TASK_ENV)
    current = task_env.current() if task_env is not None else None
    if current is not None:
        return current
    return _job["desc"] if _job["client"] is client else None


def for_task(spec: EnvSpec | None, client) -> tuple[dict, list, list]:
    """(opts, package object ids to add to the task's deps, ObjectRefs to keep
    until the Submit is sent) for a task with `spec` (None: the job's env)."""
    base = job_env(client)
    if spec is None and not base:   # (every task of a job without an env)
        return {}, [], []
    desc = merge(base, _part(spec, client) if spec is not None else None)
    if not desc:
        return {}, [], []
    oids = list(desc.get("pkgs", {}).values())
    return {"env": desc}, oids, [ObjectRef(oid, client) for oid in oids]
