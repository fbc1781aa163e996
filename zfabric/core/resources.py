"""Resource sets: fixed-point quantities by name, and fits / acquire / release.

Quantities are kept as integers in units of 1/10000 (as Ray does), so that
ten tasks of `num_cpus=0.1` add up to exactly one CPU. A `ResourceSet` is a
plain `dict[str, int]`; the functions below never mutate their demand
argument.
"""
from __future__ import annotations

UNIT = 10_000
CPU = "CPU"
GPU = "GPU"   # whole GPUs get ids (core/gpus.py)


def to_units(amounts: dict) -> dict[str, int]:
    return {k: round(float(v) * UNIT) for k, v in amounts.items() if float(v) != 0}


def from_units(units: dict[str, int]) -> dict[str, float]:
    return {k: v / UNIT for k, v in units.items()}


def fits(available: dict[str, int], demand: dict[str, int]) -> bool:
    for name, amount in demand.items():
        if available.get(name, 0) < amount:
            return False
    return True


def feasible(total: dict[str, int], demand: dict[str, int]) -> bool:
    """Could `demand` ever run on a node with `total`?"""
    return fits(total, demand)


def acquire(available: dict[str, int], demand: dict[str, int]) -> None:
    for name, amount in demand.items():
        available[name] = available.get(name, 0) - amount


def release(available: dict[str, int], demand: dict[str, int]) -> None:
    for name, amount in demand.items():
        available[name] = available.get(name, 0) + amount


def shape(demand: dict[str, int]) -> tuple:
    """A hashable key for a demand: tasks of one shape queue FIFO together."""
    return tuple(sorted(demand.items()))
