"""What a test run left behind: zfabric processes, store dirs, session dirs, netns.

    python .ci/leaks.py snapshot FILE   # before the tests: what already exists
    python .ci/leaks.py check FILE      # after: fail (exit 1) on anything new

Only what appeared during the run counts, so a node the user runs on the same
machine is not mistaken for a leak. Processes are matched by their command
line running a zfabric module (nodes, zygotes, workers); store dirs are
`zfabric-*` under the store root, session dirs `session_*` under the session
root (both from zfabric's config); namespaces (`zf*`) and temp dirs
(`zfmh-*`) are the ones the multi-host tests make.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

from zfabric.config import Config


def _processes() -> dict[str, str]:
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "zfabric" in cmd and ("-m zfabric" in cmd or "zfabric.node" in cmd):
            found[f"{proc.info['pid']}@{proc.info['create_time']:.2f}"] = cmd
    return found


def _entries(root: str, prefix: str) -> list[str]:
    try:
        return sorted(os.path.join(root, n) for n in os.listdir(root) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _namespaces() -> list[str]:
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith("zf"))


def snapshot() -> dict:
    config = Config()
    return {"processes": _processes(),
            "store dirs": _entries(config.store_root, "zfabric-"),
            "session dirs": _entries(config.temp_dir, "session_"),
            "network namespaces": _namespaces(),
            # the multi-host tests' per-host session roots (tests/harness/netns.py)
            "temp dirs": _entries(tempfile.gettempdir(), "zfmh-")}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("snapshot", "check"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    what, path = argv
    if what == "snapshot":
        with open(path, "w") as f:
            json.dump(snapshot(), f)
        return 0
    with open(path) as f:
        before = json.load(f)
    # A node stopping as the last test ends may take a moment to exit: leaks are
    # what is still there after a grace period, not what is on its way out.
    for _ in range(50):
        after = snapshot()
        new = {kind: [x for x in after[kind] if x not in before[kind]] for kind in after}
        if not any(new.values()):
            print("leak check: nothing left behind")
            return 0
        time.sleep(0.2)
    for kind, items in new.items():
        for item in items:
            detail = after[kind][item] if kind == "processes" else ""
            print(f"leak check: left behind ({kind}): {item} {detail}".rstrip())
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
