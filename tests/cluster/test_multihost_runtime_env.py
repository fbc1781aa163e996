"""runtime_env across hosts: a driver's working dir reaches nodes in other network
namespaces (the topology of tests/harness/netns.py: nodes A, B, C, one CPU each,
C alone with the resource `c_only`; the cluster key copied to B and C).

The driver runs in A, in a project dir of its own under A's temp dir, with
`init(address="auto", runtime_env={"working_dir": "."})`. The project holds
a helper module and a data file. No node can import the helper by itself:
the nodes were started in the repository with PYTHONPATH set to it, and the
project is neither. Namespaces share the file system but not the network,
so the only way the code reaches C is the package C's node pulls from A's
store over the veths.

- a task pinned to C imports the helper, reads `data/input.txt` relative to
  its cwd, and sees the env var; its cwd and the helper's file are in C's
  package cache (`{session}/runtime_env/{sha256}`), where nothing
  half-unpacked is left;
- 12 tasks spread over A, B and C all import it, and so do the tasks a task
  on C submits (they inherit its env);
- on C, a task whose own working_dir (an empty dir) replaces the job's cannot
  import it: the helper came only with the package, and left with its env.

Skipped unless root with `ip` (see tests/harness/netns.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.harness.netns import cluster, logs_on_failure, netns_exec  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

HELPER = "zf_shipped_helper"
MARK = "@@zf@@ "

DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import zfabric as zf

    HELPER, EMPTY = sys.argv[1], sys.argv[2]
    zf.init(address="auto", runtime_env={"working_dir": ".", "env_vars": {"ZF_GREETING": "hi"}})

    @zf.remote(num_cpus=1, resources={"c_only": 1})
    def on_c():
        h = __import__(HELPER)
        with open(os.path.join("data", "input.txt")) as f:
            data = f.read()
        return {"node": zf.get_runtime_context().get_node_id(), "cwd": os.getcwd(),
                "file": h.__file__, "answer": h.answer(), "data": data,
                "greeting": os.environ.get("ZF_GREETING")}

    @zf.remote(num_cpus=1)
    def anywhere(duration):
        time.sleep(duration)
        return zf.get_runtime_context().get_node_id(), __import__(HELPER).answer()

    @zf.remote(num_cpus=1, resources={"c_only": 1})
    def try_import():
        try:
            __import__(HELPER)
            return "imported"
        except ModuleNotFoundError as e:
            return str(e)

    @zf.remote(num_cpus=1, resources={"c_only": 1})
    def nested_on_c():
        # a task's tasks inherit its env; this one is submitted on C
        return zf.get([anywhere.remote(0.0) for _ in range(3)], timeout=60)

    out = {"c": zf.get(on_c.remote(), timeout=60),
           "nested": zf.get(nested_on_c.remote(), timeout=60),
           "spread": zf.get([anywhere.remote(0.2) for _ in range(12)], timeout=60),
           "without": zf.get(try_import.options(runtime_env={"working_dir": EMPTY}).remote(),
                             timeout=60)}
    print(%r + json.dumps(out), flush=True)
    zf.shutdown()
""" % MARK)


def _project(root: str) -> tuple[str, str]:
    proj, empty = os.path.join(root, "proj"), os.path.join(root, "empty")
    os.makedirs(os.path.join(proj, "data"))
    os.makedirs(empty)
    with open(os.path.join(proj, HELPER + ".py"), "w") as f:
        f.write("def answer():\n    return 42\n")
    with open(os.path.join(proj, "data", "input.txt"), "w") as f:
        f.write("shipped with the task\n")
    return proj, empty


def test_working_dir_reaches_a_node_in_another_namespace(cluster):
    a, b, c = (cluster.hosts[n] for n in "abc")
    with logs_on_failure(cluster):
        proj, empty = _project(os.path.join(a.temp_dir, "driver-project"))
        for h in (a, b, c):   # nobody could import the helper without the package
            assert proj not in h.env["PYTHONPATH"].split(os.pathsep)
        p = subprocess.run(netns_exec(a.ns, sys.executable, "-c", DRIVER, HELPER, empty),
                           cwd=proj, env=a.env, capture_output=True, text=True, timeout=100,
                           stdin=subprocess.DEVNULL)
        lines = [x for x in p.stdout.splitlines() if x.startswith(MARK)]
        assert p.returncode == 0 and lines, f"driver exited {p.returncode}:\n{p.stderr[-4000:]}"
        out = json.loads(lines[-1][len(MARK):])

        on_c = out["c"]
        assert on_c["node"] == c.node_id, on_c
        assert (on_c["answer"], on_c["data"], on_c["greeting"]) == (
            42, "shipped with the task\n", "hi"), on_c
        cache = os.path.join(c.record["session_dir"], "runtime_env")
        assert os.path.dirname(on_c["cwd"]) == cache, on_c
        assert on_c["file"] == os.path.join(on_c["cwd"], HELPER + ".py"), on_c
        unpacked = os.listdir(cache)
        assert os.path.basename(on_c["cwd"]) in unpacked
        assert not [n for n in unpacked if n.endswith(".tmp")], unpacked

        nodes = {node for node, _ in out["spread"]}
        assert [v for _, v in out["spread"]] == [42] * 12
        assert nodes == {a.node_id, b.node_id, c.node_id}, nodes

        assert [v for _, v in out["nested"]] == [42] * 3, out["nested"]
        assert out["without"] == f"No module named '{HELPER}'", out["without"]
