"""Without the cluster key, nobody runs code on a node, reads its objects or
its GCS, joins it or stops it: not another local user, not a process that
reaches its TCP ports with no key or the wrong one. With the key, all works.

"Another local user" is a child of the test that drops root for uid/gid 65534
(nobody) with os.setuid after fork, so it runs the already imported zfabric.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback

import cloudpickle
import psutil
import pytest
import zmq

import zfabric as zf
from zfabric import ids
from zfabric import protocol as p
from zfabric.config import Config
from zfabric.exceptions import AuthenticationError
from zfabric.node import auth
from zfabric.node import launch
from zfabric.node import node as node_mod
from zfabric.node.__main__ import main as cli_main   # (imported here: the child cannot read
                                                     # a checkout that only root may enter)
from zfabric.testing import LocalCluster

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534
ANSWER_WAIT_MS = 1000   # a node that accepted a request answers well within this


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("acting as another local user needs root (to setuid in a child)")


@pytest.fixture
def node(fresh):
    """One node started like `zfabric start` (its key in a 0700 dir). The test
    process is not attached to it: a forked attacker starts clean."""
    with LocalCluster(nodes=1, num_cpus=1) as cluster:
        yield cluster


def as_user(uid: int, fn, *args) -> dict:
    """Run fn(*args) in a forked child that dropped to `uid`; its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            payload = json.dumps(fn(*args))
        except BaseException:   # report, whatever it was
            payload = json.dumps({"crashed": traceback.format_exc()})
        os.write(w, payload.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    assert "crashed" not in result, result.get("crashed")
    return result


def marker_submit(marker: str) -> bytes:
    """A Submit frame whose task, if it ever ran, would create `marker`."""
    def touch():
        with open(marker, "w") as f:
            f.write(str(os.getuid()))
    blob = cloudpickle.dumps(touch)
    return p.encode(p.Submit(ids.new_task_id(), "touch", ids.function_id(blob), 1, {}, 0,
                             False, 0, b"", [], [], blob, b"", b""))


def knock(ctx: zmq.Context, address: str, frames: list[bytes], identity: bytes,
          curve: tuple[bytes, auth.ClusterKey] | None) -> str:
    """Send `frames` (each a message) to a node's TCP port, plain or as a CURVE
    client (the server's public key, a key pair of our own); "answered" if
    anything came back, else "silent"."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if identity:
        sock.identity = identity
    if curve is not None:
        server_public, own = curve
        sock.curve_serverkey = server_public
        sock.curve_publickey, sock.curve_secretkey = own.public, own.secret
    sock.connect(address)
    for frame in frames:
        sock.send(frame)
    answered = sock.poll(ANSWER_WAIT_MS)
    sock.close(0)
    return "answered" if answered else "silent"


def attacks(record: dict, server_public: str, oid_hex: str, marker: str) -> dict:
    """Everything a process without the key tries; what came of each."""
    out = {"uid": os.getuid()}
    ipc_path = record["ipc"].removeprefix("ipc://")
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(ipc_path)
            out["ipc"] = "connected"
        except OSError as e:
            out["ipc"] = type(e).__name__
    for name in ("cluster_key", "session_dir"):
        try:
            if os.path.isdir(record[name]):
                os.listdir(record[name])
            else:
                open(record[name]).close()
            out[name] = "read"
        except OSError as e:
            out[name] = type(e).__name__
    try:
        zf.init(address=record["address"])
        out["init"] = "joined"
        zf.shutdown()
    except AuthenticationError as e:
        out["init"] = f"AuthenticationError: {e}"
    ctx = zmq.Context()
    client_id = b"\x01" * 16
    frames = [marker_submit(marker), p.encode(p.Shutdown("attack"))]
    gossip = [p.encode(p.Gossip(client_id, [], {}, True))]
    pull = [p.encode(p.PullChunk(bytes.fromhex(oid_hex), 0, 1024))]
    # the worst case: the server's public key leaked, and we bring a key pair of our own
    for label, curve in (("plain", None), ("own key", (server_public.encode(), auth.generate()))):
        out[f"submit, {label}"] = knock(ctx, record["address"], frames, client_id + b">", curve)
        out[f"gossip, {label}"] = knock(ctx, record["address"], gossip, client_id + b"^", curve)
        out[f"pull, {label}"] = knock(ctx, record["object_address"], pull, b"", curve)
    ctx.destroy(0)
    try:
        os.kill(record["pid"], signal.SIGTERM)
        out["kill"] = "sent"
    except OSError as e:
        out["kill"] = type(e).__name__
    out["stop"] = cli_main(["stop"])
    return out


def own_stats(cluster) -> dict:
    return cluster.own_status(cluster.nodes[0])["stats"]


def test_another_local_user_cannot_run_code_read_objects_join_or_stop(node, tmp_path):
    needs_root()
    cluster = node
    record = cluster.nodes[0].info
    marker = str(tmp_path / "ran")
    os.chmod(tmp_path, 0o777)   # the attacker could create it: only the task's root could not
    before = own_stats(cluster)
    # any object id: a node that accepted the pull would answer, if only "no such object"
    out = as_user(NOBODY, attacks, record, auth.read(cluster.key_path).public.decode(),
                  ids.return_ids(ids.new_task_id(), 1)[0].hex(), marker)
    assert out["uid"] == NOBODY
    assert out["ipc"] == "PermissionError"          # the session dir is 0700
    assert out["session_dir"] == "PermissionError"
    assert out["cluster_key"] == "PermissionError"  # and so is the key's dir, and the key
    assert out["init"].startswith("AuthenticationError: the cluster at") and \
        "requires a cluster key" in out["init"]
    assert {k: v for k, v in out.items() if k.startswith(("submit", "gossip", "pull"))} == {
        f"{what}, {how}": "silent" for what in ("submit", "gossip", "pull")
        for how in ("plain", "own key")}
    assert out["kill"] == "PermissionError"
    assert out["stop"] == 0
    assert not os.path.exists(marker)               # nothing ran
    assert psutil.pid_exists(record["pid"])         # nothing stopped it
    after = own_stats(cluster)
    assert after["rejected_unauthenticated"] >= before["rejected_unauthenticated"] + 6
    assert after["rejected_malformed"] == before["rejected_malformed"]   # nothing was decoded
    zf.init(address=cluster.address)                 # and it still serves its own user
    assert zf.get(zf.remote(lambda: os.getuid()).remote()) == 0


def nodes_seen(cluster) -> set[str]:
    return {r["NodeID"] for r in cluster.query(cluster.nodes[0], "nodes")}


def cli(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zfabric.node", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_a_wrong_key_or_none_cannot_join_and_the_cluster_stays_unchanged(node, tmp_path):
    cluster = node
    before = nodes_seen(cluster)
    wrong = str(tmp_path / "wrong.key")
    auth.create(wrong)
    with pytest.raises(AuthenticationError, match="refused our cluster key"):
        _init_elsewhere(cluster, tmp_path, cluster_key=wrong)
    with pytest.raises(AuthenticationError, match="requires a cluster key"):
        _init_elsewhere(cluster, tmp_path)
    env = dict(os.environ, ZFABRIC_TEMP_DIR=str(tmp_path / "elsewhere"))
    out = cli("start", "--address", cluster.address, "--cluster-key", wrong, env=env)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("zfabric: error: the cluster at") and \
        "refused our cluster key" in out.stderr and len(out.stderr.splitlines()) == 1
    out = cli("start", "--address", cluster.address, env=env)
    assert out.returncode == 1 and "requires a cluster key" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    open(tmp_path / "loose.key", "w").write(open(cluster.key_path).read())
    os.chmod(tmp_path / "loose.key", 0o644)
    out = cli("start", "--address", cluster.address, "--cluster-key",
              str(tmp_path / "loose.key"), env=env)
    assert out.returncode == 1 and "readable by other users" in out.stderr
    assert nodes_seen(cluster) == before
    assert cluster.query(cluster.nodes[0], "status")["nodes"][0]["Alive"]


def _init_elsewhere(cluster, tmp_path, **kwargs):
    """zf.init(address=...) from a process that has no node of that cluster here
    to attach to or take the key from (a temp dir of its own)."""
    os.environ["ZFABRIC_TEMP_DIR"] = str(tmp_path / "elsewhere")
    try:
        zf.init(address=cluster.address, **kwargs)
    finally:
        del os.environ["ZFABRIC_TEMP_DIR"]


def test_with_the_key_a_node_joins_and_a_driver_finds_the_key_itself(node, tmp_path):
    cluster = node
    second = cluster.add_node(num_cpus=1)    # given the key file
    assert second.node_id in nodes_seen(cluster)
    # a driver of the same user on this machine: the key of a local node of that cluster
    info = zf.init(address=cluster.address)
    assert info["node_id"] == cluster.nodes[0].node_id   # attached to the local node
    assert len([n for n in zf.nodes() if n["Alive"]]) == 2
    zf.shutdown()


def test_secret_files_are_private_and_the_key_is_in_no_command_line_or_log(node):
    cluster = node
    record = cluster.nodes[0].info
    secret = auth.read(cluster.key_path).secret.decode()
    assert stat.S_IMODE(os.stat(cluster.key_path).st_mode) == 0o600
    config = Config.from_env()
    for path in (config.temp_dir, launch.node_records_dir(config), record["session_dir"],
                 record["store_dir"]):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
        assert os.stat(path).st_uid == os.geteuid()
    proc = psutil.Process(record["pid"])
    for p_ in [proc] + proc.children(recursive=True):
        assert secret not in " ".join(p_.cmdline())
        assert secret not in "".join(f"{k}={v}" for k, v in p_.environ().items())
    for name in os.listdir(record["session_dir"]):
        path = os.path.join(record["session_dir"], name)
        if os.path.isfile(path):
            assert secret not in open(path, errors="replace").read(), name


def test_a_temp_dir_another_user_made_is_refused(tmp_path):
    needs_root()
    trap = tmp_path / "trap"
    trap.mkdir(mode=0o777)
    os.chown(trap, NOBODY, NOBODY)
    out = cli("start", "--head", "--port", "0",
              env=dict(os.environ, ZFABRIC_TEMP_DIR=str(trap)))
    assert out.returncode == 1
    assert "belongs to another user" in out.stderr and len(out.stderr.splitlines()) == 1
    assert os.listdir(trap) == []


def test_stop_signals_only_this_users_nodes(tmp_path):
    """A record naming another user's process (a recycled pid, a planted file)
    does not make `stop` signal it."""
    needs_root()
    other = subprocess.Popen(["/bin/sh", "-c", "sleep 60; :", "zfabric.node"],
                             user=NOBODY, group=NOBODY)
    try:
        config = Config(temp_dir=str(tmp_path / "t"))
        launch.private_dir(config.temp_dir)
        launch.private_dir(launch.node_records_dir(config))
        with open(os.path.join(launch.node_records_dir(config), "ab.json"), "w") as f:
            json.dump({"pid": other.pid, "node_id": "ab", "store_dir": "/nonexistent/zfabric-x",
                       "session_dir": str(tmp_path / "none")}, f)
        out = cli("stop", env=dict(os.environ, ZFABRIC_TEMP_DIR=config.temp_dir))
        assert out.stdout.strip() == "stopped 0 node(s)"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.fixture
def short_tmp():
    """A temp dir with a short path (an ipc socket path must fit in 107 bytes)."""
    path = tempfile.mkdtemp(prefix="zfs-")
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_insecure_mode_is_explicit_and_loud(fresh, short_tmp):
    tmp_path = short_tmp
    env = dict(os.environ, ZFABRIC_TEMP_DIR=str(tmp_path / "t"))
    out = cli("start", "--head", "--port", "0", "--insecure-no-auth", env=env)
    assert out.returncode == 0, out.stderr
    try:
        assert "WARNING" in out.stderr and "--insecure-no-auth" in out.stdout
        status = cli("status", env=env)
        assert "WARNING: this cluster runs with --insecure-no-auth" in status.stdout
        (record,) = [json.load(open(os.path.join(tmp_path / "t" / "nodes", n)))
                     for n in os.listdir(tmp_path / "t" / "nodes")]
        assert record["auth"] == "none" and record["cluster_key"] == ""
        log = open(os.path.join(record["session_dir"], "node.log")).read()
        assert "INSECURE" in log
        # a node with a key does not join it by mistake, and says why
        joined = cli("start", "--address", record["address"],
                     env=dict(env, ZFABRIC_TEMP_DIR=str(tmp_path / "u")))
        assert joined.returncode == 1 and "runs without authentication" in joined.stderr
    finally:
        assert cli("stop", env=env).returncode == 0


def test_without_curve_a_node_stays_on_loopback(monkeypatch, tmp_path):
    monkeypatch.setattr(auth, "curve_available", lambda: False)
    config = Config(temp_dir=str(tmp_path))
    with pytest.raises(launch.NodeStartError, match="no CURVE support"):
        node_mod.node_key(config, str(tmp_path), "10.1.2.3", [], insecure=False)
    with pytest.raises(launch.NodeStartError, match="no CURVE support"):
        node_mod.node_key(config, str(tmp_path), "127.0.0.1", ["tcp://10.1.2.3:7380"],
                          insecure=False)
    assert node_mod.node_key(config, str(tmp_path), "127.0.0.1", [], insecure=False) \
        == (None, "")
