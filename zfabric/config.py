"""Every default, interval, size and environment variable of zfabric, in one place.

`Config` is a frozen record. `Config.from_env(**overrides)` starts from the
defaults, applies `ZFABRIC_*` environment variables, then explicit overrides.
The node process receives its config as JSON on the command line
(`Config.to_json` / `Config.from_json`), so a node and its workers always
agree on it. Nothing else in the package reads the environment for settings.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields

ENV_PREFIX = "ZFABRIC_"
ADDRESS_ENV = "ZFABRIC_ADDRESS"


@dataclass(frozen=True)
class Config:
    # -- where things live ---------------------------------------------------
    # Root of session dirs (sockets, logs, node records).
    temp_dir: str = "/tmp/zfabric-sessions"
    # tmpfs under which each node makes its store dir `zfabric-{node_id}`.
    store_root: str = "/dev/shm"

    # -- objects -------------------------------------------------------------
    # Objects whose serialized size is at most this travel inside messages
    # and live in the node's memory; larger ones are files in the store.
    # 100 KiB: below it a message copy is cheaper than a file + mmap.
    inline_threshold: int = 100 * 1024
    # Default store capacity as a fraction of RAM when object_store_memory
    # is not given.
    object_store_fraction: float = 0.3

    # -- node / workers ------------------------------------------------------
    # Seconds a caller waits for a node it started to answer.
    node_start_timeout: float = 30.0
    # Extra workers beyond num_cpus (started when every worker is blocked in
    # get/wait) are stopped after idling this long.
    idle_worker_timeout: float = 10.0
    # A busy worker is sent its next task before it finishes the current one
    # (so it never waits a round trip for work) when tasks of that function
    # take under this long on average; longer tasks wait for an idle worker,
    # so a slow task never holds a quick one back.
    prefetch_max_task_seconds: float = 0.005
    # Hard cap on worker processes per node, whatever the demand.
    max_workers: int = 512
    # How often a client flushes reference-count changes when it is idle.
    ref_flush_interval: float = 0.1
    # Node housekeeping tick (idle-worker reaping, liveness of clients).
    tick_interval: float = 0.5
    # Timeline events kept per node (oldest dropped first).
    timeline_capacity: int = 100_000
    # Seconds a graceful stop waits for workers before SIGKILL.
    stop_grace: float = 2.0

    # -- network -------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 0

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Config":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls(**json.loads(text))


def _parse(f: dataclasses.Field, raw: str):
    kind = type(f.default)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {ENV_PREFIX}{f.name.upper()}={raw!r} "
                         f"is not a valid {kind.__name__}") from None
