"""What a field of a wire message may hold: the checks behind `protocol.decode`.

Every message that arrives is hostile until checked: `protocol.decode` checks
each field's type, and each message's `check()` (in protocol.py) uses these to
check what the type does not say -- id lengths, sizes >= 0, known enum
values, finite amounts, bounded strings and lists, addresses, and that a
function's code hashes to its id. Nothing here raises: each returns True/False
or a problem text ("" when fine). Limits are generous: far above anything a
real driver, worker or node sends, low enough that a message within them
cannot make the node use much more memory than the frame itself.
"""
from __future__ import annotations

import math

from .ids import (FUNCTION_ID_SIZE, JOB_ID_SIZE, NODE_ID_SIZE, OBJECT_ID_SIZE, TASK_ID_SIZE,
                  function_id)

MAX_RETURNS = 10_000           # returns of one task
MAX_IDS = 1 << 22              # ids in one Subscribe, Refs, deps...: a get() of millions of refs
MAX_TEXT = 1 << 16             # names, reasons, error texts, paths
MAX_ROWS = 1 << 16             # membership rows in one Gossip, shards in a vector
MAX_RECORDS = 1 << 16          # GCS records in one GcsUpdate
MAX_RESOURCES = 1 << 10        # resource names in one demand or view
MAX_AMOUNT = 1e15              # a resource amount (units of 1/10000 stay exact below this)
MAX_PID = 1 << 31
MAX_ADDRESS = 300
MAX_LOG_LINES = 1 << 16        # lines of task output in one LogLines

STATES = range(4)              # protocol.ObjectState values
STATUSES = range(3)            # protocol.TaskStatus values


def ids_of(values, size: int, limit: int = MAX_IDS) -> bool:
    if type(values) is not list or len(values) > limit:
        return False
    for v in values:   # (a loop: cheaper than all() for the one or two ids most lists hold)
        if type(v) is not bytes or len(v) != size:
            return False
    return True


def oids(values, limit: int = MAX_IDS) -> bool:
    return ids_of(values, OBJECT_ID_SIZE, limit)


def tids(values, limit: int = MAX_IDS) -> bool:
    return ids_of(values, TASK_ID_SIZE, limit)


def node_ids(values) -> bool:
    return ids_of(values, NODE_ID_SIZE, MAX_ROWS)


def is_tid(x) -> bool:
    return type(x) is bytes and len(x) == TASK_ID_SIZE


def is_oid(x) -> bool:
    return type(x) is bytes and len(x) == OBJECT_ID_SIZE


def is_node_id(x) -> bool:
    return type(x) is bytes and len(x) == NODE_ID_SIZE


def is_job(x) -> bool:
    return type(x) is bytes and len(x) == JOB_ID_SIZE


def text(*values) -> bool:
    """Strings (or None) no longer than MAX_TEXT."""
    return all(v is None or (type(v) is str and len(v) <= MAX_TEXT) for v in values)


def count(x, limit: int) -> bool:
    """An int in [0, limit] (never a bool)."""
    return type(x) is int and 0 <= x <= limit


def finite(*values) -> bool:
    for v in values:
        if type(v) not in (int, float) or not math.isfinite(v):
            return False
    return True


def amounts(d, *, nonneg: bool) -> bool:
    """Resource name -> finite number (>= 0 if `nonneg`; a view may be an estimate)."""
    if type(d) is not dict or len(d) > MAX_RESOURCES:
        return False
    for k, v in d.items():
        if type(k) is not str or len(k) > MAX_TEXT or type(v) not in (int, float):
            return False
        if not (v == v and abs(v) < MAX_AMOUNT) or (nonneg and v < 0):
            return False
    return True


def is_address(address) -> bool:
    """tcp://HOST:PORT: anything else would make the node connect to garbage."""
    if type(address) is not str or not address.startswith("tcp://") or len(address) > MAX_ADDRESS:
        return False
    host, sep, port = address[6:].rpartition(":")
    return bool(sep and host and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535
                and not any(c.isspace() for c in host))


def code_problem(fn_id: bytes, fn_blob: bytes) -> str:
    """A function travels content-addressed: its code, when sent, hashes to its id."""
    if len(fn_id) != FUNCTION_ID_SIZE:
        return "bad function id"
    if fn_blob and function_id(fn_blob) != fn_id:
        return "function code does not match its id"
    return ""


def spec_problem(msg) -> str:
    """What is wrong with the task fields Submit, Spill and Execute share."""
    if not is_tid(msg.task_id) or not count(msg.num_returns, MAX_RETURNS):
        return "bad task id or num_returns"
    if not count(msg.depth, 1 << 62) or not text(msg.name):
        return "bad depth or name"
    return code_problem(msg.fn_id, msg.fn_blob) or opts_problem(msg.opts)


def gpu_ids(x) -> bool:
    """opts["gpus"]: the GPU ids the executing node gave a task (Execute only)."""
    return type(x) is list and 0 < len(x) <= MAX_RESOURCES and all(
        count(i, MAX_RESOURCES) for i in x)


def strategy(x) -> bool:
    """opts["strategy"]: "SPREAD", or {"node": node id, "soft": bool} (node affinity).
    ("DEFAULT" never travels: a task without the key has it.)"""
    if x == "SPREAD":
        return True
    return (type(x) is dict and len(x) == 2 and is_node_id(x.get("node"))
            and type(x.get("soft")) is bool)


ENV_MAX_MODULES = 64           # runtime_env py_modules of one task
ENV_MAX_VARS = 1024            # runtime_env env_vars of one task
ENV_KEYS = frozenset(("wd", "mods", "vars", "pkgs"))


def _is_sha(x) -> bool:
    return type(x) is str and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def env_problem(env) -> str:
    """What is wrong with a runtime env descriptor (opts["env"], node/runtime_env.py):
    package hashes are sha256 hex, each names its object in "pkgs", env vars are
    bounded str -> str a process can set."""
    if type(env) is not dict or not env.keys() <= ENV_KEYS:
        return "env must be a dict of wd, mods, vars, pkgs"
    pkgs = env.get("pkgs", {})
    if type(pkgs) is not dict or len(pkgs) > ENV_MAX_MODULES + 1:
        return "bad env packages"
    for sha, oid in pkgs.items():
        if not _is_sha(sha) or not is_oid(oid):
            return "env packages must map sha256 hex to object ids"
    mods = env.get("mods", [])
    if type(mods) is not list or len(mods) > ENV_MAX_MODULES:
        return "bad env modules"
    named = ([env["wd"]] if "wd" in env else []) + mods
    if not all(_is_sha(x) and x in pkgs for x in named):
        return "env working dir and modules must be packages it names"
    env_vars = env.get("vars", {})
    if type(env_vars) is not dict or len(env_vars) > ENV_MAX_VARS:
        return "bad env vars"
    for k, v in env_vars.items():
        if not (type(k) is str and type(v) is str and 0 < len(k) <= MAX_TEXT
                and len(v) <= MAX_TEXT and "=" not in k and "\0" not in k + v):
            return "env vars must be names (no '=', no NUL) to str values"
    return ""


# Task options that travel with a task (Submit, Spill, Execute `opts`): each key
# and the check of its value. An empty dict (no options) is the common case;
# a key not named here is refused.
TASK_OPTS: dict = {
    "gpus": gpu_ids, "strategy": strategy,
    "env": lambda v: not env_problem(v),   # runtime_env (node/runtime_env.py)
    "job": is_job,   # the driver the task's output goes to (ids.job_id); nested tasks inherit it
    "lease": lambda v: is_wid(v),   # a leased worker's id
}
# Keys only the executing node sets in an Execute: refused in a Submit or a Spill.
EXECUTE_ONLY_OPTS = ("gpus",)


def is_wid(x) -> bool:
    """A worker id (core/workers.py names them "w1", "w2", ...)."""
    return type(x) is str and 0 < len(x) <= 32


def is_ipc(x) -> bool:
    """An ipc endpoint (a socket file in a session dir: local clients only)."""
    return type(x) is str and x.startswith("ipc:///") and len(x) <= MAX_TEXT


def submitted_opts_problem(opts: dict, spill: bool = False) -> str:
    """What is wrong with the `opts` of a Submit or a Spill, beyond `opts_problem`
    ("lease": a driver's notice of a task it ran on its leased worker, never spilled)."""
    for key in EXECUTE_ONLY_OPTS + (("lease",) if spill else ()):
        if key in opts:
            return f"task option {key!r} is set by the executing node, never by a submitter"
    return ""


def opts_problem(opts: dict) -> str:
    """What is wrong with a task's `opts` ("" when fine)."""
    for key, value in opts.items():
        check = TASK_OPTS.get(key)
        if check is None:
            return f"unknown task option {str(key)[:40]!r}"
        if not check(value):
            return f"bad task option {key!r}"
    return ""


def output_problem(output) -> str:
    """What is wrong with the runs of task output a LogLines carries: each
    [name, pid, stream (1 stdout, 2 stderr), lines, dropped]."""
    if type(output) is not list or len(output) > MAX_LOG_LINES:
        return "output must be a list of runs"
    total = 0
    for run in output:
        if type(run) is not list or len(run) != 5:
            return "a run of output is [name, pid, stream, lines, dropped]"
        name, pid, stream, lines, dropped = run
        if not (type(name) is str and len(name) <= MAX_TEXT and count(pid, MAX_PID)
                and type(stream) is int and stream in (1, 2) and count(dropped, 1 << 62)
                and type(lines) is list):
            return "bad name, pid, stream or dropped count in a run of output"
        total += len(lines)
        if total > MAX_LOG_LINES:
            return "too many lines"
        for line in lines:
            if type(line) is not str or len(line) > MAX_TEXT:
                return "lines must be strings"
    return ""


def returns_problem(msg) -> str:
    """What is wrong with a task's returns as TaskDone and TaskResult describe them."""
    n = len(msg.states)
    if n > MAX_RETURNS or msg.status not in STATUSES:
        return "bad status or too many returns"
    if len(msg.sizes) != n or len(msg.contained) != n or len(msg.payloads) < n:
        return "returns described inconsistently"
    for contained in msg.contained:
        if not oids(contained):
            return "contained must be lists of object ids"
    for x in msg.sizes:
        if type(x) is not int or x < 0:
            return "bad sizes"
    for x in msg.states:
        if type(x) is not int or not 0 <= x <= 3:
            return "bad states"
    return ""


def deps_problem(msg) -> str:
    """What is wrong with the arguments a Spill or an Execute carries."""
    n = len(msg.dep_ids)
    if not oids(msg.dep_ids) or len(msg.dep_states) != n or len(msg.dep_payloads) != n:
        return "dependencies described inconsistently"
    for x in msg.dep_states:
        if type(x) is not int or not 0 <= x <= 3:
            return "bad dependency states"
    return ""
