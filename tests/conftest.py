"""Shared fixtures: an embedded node per test module or per test, and leak checks."""
from __future__ import annotations

import os

import pytest

import zfabric as zf


_shared: dict = {}


@pytest.fixture
def cluster():
    """An embedded node (4 CPUs), kept across tests until one needs a fresh one."""
    info = _shared.get("info")
    if info is None or not zf.is_initialized() or zf.nodes()[0]["NodeID"] != info["node_id"]:
        if zf.is_initialized():
            zf.shutdown()
        info = _shared["info"] = zf.init(num_cpus=4)
    return info


@pytest.fixture(scope="session", autouse=True)
def _shutdown_at_end():
    yield
    zf.shutdown()


@pytest.fixture
def fresh():
    """A clean slate: tests that call init() themselves."""
    if zf.is_initialized():
        zf.shutdown()
    yield
    zf.shutdown()


def store_files(info) -> list[str]:
    try:
        return os.listdir(info["object_store_address"])
    except FileNotFoundError:
        return []
