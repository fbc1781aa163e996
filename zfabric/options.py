"""Task options: their defaults and the checks behind `@zf.remote(...)`,
`.options(...)` and `init()`'s node arguments.

Every option is checked where the user writes it (the decorator, `.options()`),
so a bad value raises at once with the option's name, never when the task runs.
"""
from __future__ import annotations

import numbers

from . import compat
from .node import runtime_env as renv
from .util import scheduling_strategies

OPTION_DEFAULTS = {"num_cpus": 1, "num_returns": 1, "max_retries": 3,
                    "retry_exceptions": False, "resources": None, "name": None,
                    "num_gpus": 0, "scheduling_strategy": None,
                    "runtime_env": None}


def check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_resources(resources) -> dict:
    if not isinstance(resources, dict):
        raise ValueError(f"resources must be a dict of name -> amount, got {resources!r}")
    for k, v in resources.items():
        if not isinstance(k, str):
            raise ValueError(f"resource names must be str, got {k!r}")
        if k in ("CPU", "GPU"):
            raise ValueError(f"use num_{k.lower()}s=..., not resources={{'{k}': ...}}")
        check_number(f"resource {k!r}", v)
    return {k: float(v) for k, v in resources.items()}


def check_gpus(name: str, value, whole: bool = False) -> None:
    """GPUs: a number >= 0, whole above 1 (a fraction shares one GPU), whole for a node."""
    check_number(name, value)
    if (whole or value > 1) and value != int(value):
        raise ValueError(f"{name} must be a whole number{'' if whole else ' when above 1'}, "
                         f"got {value!r}")


def validate_options(options: dict) -> dict:
    options = compat.accept_ray_task_options(options)
    unknown = set(options) - set(OPTION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; valid options are "
                         f"{sorted(OPTION_DEFAULTS)}")
    out = dict(options)
    if "num_cpus" in out:
        check_number("num_cpus", out["num_cpus"])
    if "num_gpus" in out:
        check_gpus("num_gpus", out["num_gpus"])
    if "scheduling_strategy" in out:
        scheduling_strategies.task_opts(out["scheduling_strategy"])
    if "num_returns" in out:
        n = out["num_returns"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_returns must be an int >= 0, got {n!r}")
    if "max_retries" in out:
        n = out["max_retries"]
        if isinstance(n, bool) or not isinstance(n, int) or n < -1:
            raise ValueError(f"max_retries must be an int >= -1 (-1: retry forever), got {n!r}")
    if "retry_exceptions" in out:
        r = out["retry_exceptions"]
        if not isinstance(r, bool):
            if not isinstance(r, (list, tuple)) or not all(
                    isinstance(t, type) and issubclass(t, BaseException) for t in r):
                raise ValueError("retry_exceptions must be True, False or a list of "
                                 f"exception types, got {r!r}")
    if out.get("resources") is not None:
        out["resources"] = check_resources(out["resources"])
    if out.get("name") is not None and not isinstance(out["name"], str):
        raise ValueError(f"name must be a str, got {out['name']!r}")
    if "runtime_env" in out:
        out["runtime_env"] = renv.check(out["runtime_env"])
    return out
