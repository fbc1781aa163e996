"""node/forking.py and node/embedded.py: a driver's own node is forked from it
when the driver runs one thread, and its first zygote from the node; the
forked node holds nothing of its driver (descriptors, buffered output,
logging, signal handlers, warning filters); a driver with threads, or more
resident than the bound, or with ZFABRIC_FORK_EMBEDDED_NODE=0, gets an
exec'd node. Each driver is a fresh
interpreter, so that what it runs (threads, handlers) is what the test says.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.node.test_node_lifecycle import env_with, reaper, temp_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)

SHOW = textwrap.dedent("""
    import json, os, sys, psutil
    import zfabric as zf

    def show(info):
        me = psutil.Process()
        [node] = me.children()
        [zygote] = [p for p in node.children() if p.name() == "zfabric-zygote"]
        return {"node": node.pid, "node_name": node.name(), "node_cmd": node.cmdline(),
                "me_cmd": me.cmdline(), "zygote_parent": zygote.ppid(),
                "zygote_cmd": zygote.cmdline(),
                "workers": sorted(w.name() for w in zygote.children()),
                "stdin": os.readlink(f"/proc/{node.pid}/fd/0"),
                "node_files": [f.path for f in node.open_files()],
                "caught": int([l for l in open(f"/proc/{node.pid}/status")
                               if l.startswith("SigCgt:")][0].split()[1], 16),
                "session_dir": info["session_dir"]}

    @zf.remote
    def add(a, b):
        return a + b
""")


def run_driver(code: str, temp_dir: str, reaper, **env) -> tuple[dict, str]:
    """Run `code` (after SHOW) in a fresh interpreter; returns the JSON it
    printed last and its whole stdout."""
    proc = subprocess.Popen([sys.executable, "-c", SHOW + textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env_with(temp_dir), **env})
    reaper.append(proc.pid)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), out


def test_a_single_threaded_driver_forks_its_node_and_the_node_its_zygote(temp_dir, reaper):
    seen, _ = run_driver("""
        held = open(os.path.join(os.environ["ZFABRIC_TEMP_DIR"], "held-by-driver"), "w")
        info = zf.init(num_cpus=2)
        assert zf.get(add.remote(1, 2)) == 3
        seen = show(info)
        zf.shutdown()
        print(json.dumps(seen))
    """, temp_dir, reaper)
    assert seen["node_name"] == "zfabric-node"
    assert seen["node_cmd"] == seen["me_cmd"]                    # forked: the driver's image
    assert seen["zygote_parent"] == seen["node"] and seen["zygote_cmd"] == seen["me_cmd"]
    assert seen["workers"] == ["zfabric-worker", "zfabric-worker"]
    assert seen["stdin"] == "/dev/null"
    assert not [f for f in seen["node_files"] if f.endswith("held-by-driver")]


@pytest.mark.parametrize("why", ["a thread runs", "it holds more than the bound",
                                 "ZFABRIC_FORK_EMBEDDED_NODE=0"])
def test_a_driver_with_threads_or_much_memory_or_with_forking_off_execs_its_node(
        temp_dir, reaper, why):
    code = """
        import threading
        stop = threading.Event()
        if os.environ.get("MAKE_THREAD"):
            threading.Thread(target=stop.wait).start()
        big = b"x" * (int(os.environ.get("HOLD_MIB", "0")) << 20)
        info = zf.init(num_cpus=1)
        assert zf.get(add.remote(2, 2)) == 4
        seen = show(info)
        zf.shutdown()
        stop.set()
        print(json.dumps(seen))
    """
    env = {"a thread runs": {"MAKE_THREAD": "1"},
           "it holds more than the bound": {"HOLD_MIB": "200",
                                            "ZFABRIC_FORK_EMBEDDED_NODE_MAX_RSS": str(100 << 20)},
           "ZFABRIC_FORK_EMBEDDED_NODE=0": {"ZFABRIC_FORK_EMBEDDED_NODE": "0"}}[why]
    seen, _ = run_driver(code, temp_dir, reaper, **env)
    assert seen["node_name"] == "zfabric-node"
    assert "_serve" in seen["node_cmd"] and seen["node_cmd"] != seen["me_cmd"]
    assert seen["zygote_parent"] == seen["node"] and "_serve" in seen["zygote_cmd"]


def test_a_forked_node_keeps_nothing_of_its_drivers_state(temp_dir, reaper):
    seen, out = run_driver("""
        import logging, signal, warnings
        log_path = os.path.join(os.environ["ZFABRIC_TEMP_DIR"], "driver.log")
        logging.basicConfig(filename=log_path, level=logging.DEBUG)
        logging.getLogger("zfabric").setLevel(logging.CRITICAL)
        warnings.simplefilter("error")
        signal.signal(signal.SIGUSR1, lambda *_: None)
        print("said before init", end=" ")          # buffered (stdout is a pipe) at the fork
        info = zf.init(num_cpus=1)
        assert zf.get(add.remote(3, 4)) == 7
        seen = show(info)
        node_log = open(os.path.join(info["session_dir"], "node.log")).read()
        zf.shutdown()
        seen.update(node_log=node_log, driver_log=open(log_path).read())
        print()
        print(json.dumps(seen))
    """, temp_dir, reaper)
    assert seen["node_cmd"] == seen["me_cmd"]                    # (it was forked)
    said = out.strip().rsplit("\n", 1)[0]                        # (all but the JSON line)
    assert said.count("said before init") == 1                   # not flushed twice
    assert "up at" in seen["node_log"]                           # its own log, at its level
    assert "zfabric.node" not in seen["driver_log"]
    assert not seen["caught"] & (1 << (10 - 1))                 # SIGUSR1: default again


FORKED = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    from zfabric.node import forking

    def fails():
        raise RuntimeError("boom in the child")

    out = {"safe": forking.safe_to_fork()}
    out["returned"] = forking.fork(lambda: 3, args=["three"]).wait()
    out["none"] = forking.fork(lambda: None, args=["none"]).wait()
    out["raised"] = forking.fork(fails, args=["fails"]).wait()
    out["exited"] = forking.fork(lambda: sys.exit(5), args=["exits"]).wait()
    r, w = os.pipe()
    kept = forking.fork(lambda: os.write(w, b"x") and 0, args=["kept"], keep_fds=(w,)).wait()
    closed = forking.fork(lambda: os.write(w, b"y") and 0, args=["closed"]).wait()
    os.close(w)
    out["pipe"] = [kept, closed, os.read(r, 10).decode()]
    slow = forking.fork(lambda: time.sleep(60), args=["slow"])
    try:
        slow.wait(timeout=0.2)
    except subprocess.TimeoutExpired as e:
        out["timeout"] = e.cmd
    out["alive"] = slow.poll()
    slow.kill()
    out["killed"] = slow.wait()
    print(json.dumps(out))
""")


def test_forked_reports_exit_codes_like_popen_and_keeps_only_given_descriptors():
    proc = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["safe"] is True
    assert [out["returned"], out["none"], out["raised"], out["exited"]] == [3, 0, 1, 5]
    assert "RuntimeError: boom in the child" in proc.stderr     # its traceback, then exit 1
    assert out["pipe"] == [0, 1, "x"]                           # not kept: closed in the child
    assert out["timeout"] == ["slow"] and out["alive"] is None and out["killed"] == -9
