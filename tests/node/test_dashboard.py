"""The dashboard of a real node (no browser: tests/cluster/test_dashboard.py has one).

What its endpoints answer for a known workload; /metrics parses as Prometheus
text; it is read-only (GET only), refuses a foreign Host and a missing token;
--no-dashboard / include_dashboard=False serve nothing; a taken default port
falls back to a free one; garbage HTTP does not harm the node.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import numpy as np
import psutil
import pytest

import zfabric as zf
from zfabric.node import forking
from tests.harness.dashboard import (get_json, parse_metrics, raw, request, split_url, value,
                                     wait_for_tasks, wait_until)

pytestmark = pytest.mark.timeout(120)


@zf.remote
def square(x):
    return x * x


@zf.remote
def broken(x):
    raise ValueError(f"broken input {x}")


def run_workload(ok: int, bad: int) -> None:
    assert zf.get([square.remote(i) for i in range(ok)]) == [i * i for i in range(ok)]
    for ref in [broken.remote(i) for i in range(bad)]:
        with pytest.raises(ValueError):
            zf.get(ref)


@pytest.fixture
def node(fresh):
    """An embedded node with its dashboard, after 12 tasks that finished and 3 that
    failed, holding two arrays in its store."""
    info = zf.init(num_cpus=2)
    info["arrays"] = [zf.put(np.zeros(n, dtype=np.uint8)) for n in (3_000_000, 1_000_000)]
    run_workload(12, 3)
    wait_for_tasks(info["dashboard_url"], finished=12, failed=3)
    return info


def test_endpoints_answer_for_a_known_workload(node):
    url = node["dashboard_url"]
    assert url.startswith("http://127.0.0.1:")
    nodes = get_json(url, "/api/nodes")
    assert nodes["self"] == node["node_id"]
    [me] = nodes["nodes"]
    assert me["Alive"] and me["Resources"]["CPU"] == 2.0 and me["tasks_running"] == 0

    tasks = get_json(url, "/api/tasks")
    assert tasks["states"] == {"waiting": 0, "queued": 0, "running": 0, "spilled": 0,
                               "finished": 12, "failed": 3, "cancelled": 0}
    by_name = {f["name"]: f for f in tasks["functions"]}
    assert set(by_name) == {"square", "broken"}
    assert (by_name["square"]["finished"], by_name["square"]["failed"]) == (12, 0)
    assert (by_name["broken"]["finished"], by_name["broken"]["failed"]) == (0, 3)
    stream = tasks["stream"]
    assert len(stream) == 15
    assert sorted((r["function"], r["status"]) for r in stream) == sorted(
        [("square", "finished")] * 12 + [("broken", "failed")] * 3)
    assert all(r["node_id"] == node["node_id"] and r["worker"].startswith("w")
               and r["end"] >= r["start"] for r in stream)
    assert tasks["history"] and tasks["history"][-1]["states"]["finished"] == 12

    errors = get_json(url, "/api/errors")["errors"]
    assert len(errors) == 3
    assert sorted(e["message"] for e in errors) == [f"broken input {i}" for i in range(3)]
    for e in errors:
        assert e["function"] == "broken" and e["type"] == "ValueError"
        assert e["traceback"].startswith("Traceback (most recent call last):")
        assert "in broken" in e["traceback"] and e["message"] in e["traceback"]
        assert e["node_id"] == node["node_id"]

    big, small = (ref.hex() for ref in node["arrays"])
    objects = wait_until(url, "/api/objects", lambda o: {big, small} <= {
        r["object_id"] for r in o["largest"]})
    [me] = objects["nodes"]
    assert me["node_id"] == node["node_id"] and me["store_capacity"] > 0
    assert me["objects"] >= 2 and me["bytes"] >= 4_000_000
    assert me["store_used"] >= 4_000_000
    first, second = objects["largest"][:2]
    assert (first["object_id"], second["object_id"]) == (big, small)
    assert first["size"] > 3_000_000 and first["nodes"] == [node["node_id"]]
    assert first["state"] == "STORE" and first["spilled"] is False


def test_metrics_parse_as_prometheus_text(node):
    status, headers, body = request(node["dashboard_url"], "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = parse_metrics(body.decode())
    assert value(families, "zfabric_finished_total") == 12
    assert value(families, "zfabric_failed_total") == 3
    assert value(families, "zfabric_submitted_total") == 15
    assert value(families, "zfabric_resources_total", resource="CPU") == 2
    assert value(families, "zfabric_cluster_nodes_alive") == 1
    assert families["zfabric_store_capacity"]["type"] == "gauge"
    assert value(families, "zfabric_tasks_running") == 0


def test_page_is_served_whole(node):
    status, headers, body = request(node["dashboard_url"], "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "<script>" in page and 'id="nodes"' in page
    assert "http://" not in page.replace('"http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert request(node["dashboard_url"], "/nothing-here")[0] == 404


def test_foreign_host_and_missing_token_are_refused(node):
    url = node["dashboard_url"]
    _h, port, _tok = split_url(url)
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}",
                 f"127.0.0.1.evil.example:{port}", ""):
        status, _headers, body = request(url, "/api/nodes", host=host)
        assert status == 403 and b"Host" in body, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        assert request(url, "/api/nodes", host=host)[0] == 200, host
    status, _headers, body = request(url, "/api/nodes", token=False)
    assert status == 403 and b"token" in body
    status, _headers, _body = request(url.replace("token=", "token=x"), "/metrics")
    assert status == 403


def test_it_is_read_only(node):
    url = node["dashboard_url"]
    before = get_json(url, "/api/tasks")["states"]
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/", "/api/tasks", "/api/nodes", "/metrics"):
            status, headers, _body = request(url, path, method=method, body=b"{}")
            assert status == 405 and headers["Allow"] == "GET, HEAD", (method, path)
    status, _headers, body = request(url, "/api/nodes", method="HEAD")
    assert status == 200 and body == b""
    assert get_json(url, "/api/tasks")["states"] == before
    assert zf.get(square.remote(3)) == 9   # the node carries on


def test_garbage_http_does_not_harm_the_node(node):
    url = node["dashboard_url"]
    host, port, _tok = split_url(url)
    raw(url, b"\x00\xff" * 5000)
    raw(url, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    raw(url, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
    raw(url, b"NONSENSE\r\n\r\n")
    raw(url, b"GET /api/nodes?token=" + b"&a=1" * 100 + b" HTTP/1.1\r\nHost: "
        + f"{host}:{port}".encode() + b"\r\n\r\n")
    # slow clients holding connections open: they hold server threads, never the loop
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(40)]
    try:
        idle[0].sendall(b"GET /api/nodes HTTP/1.1\r\n")   # and never finishes
        assert zf.get([square.remote(i) for i in range(20)]) == [i * i for i in range(20)]
    finally:
        for s in idle:
            s.close()
    run_workload(1, 0)
    wait_for_tasks(url, finished=12 + 20 + 1, failed=3)
    assert get_json(url, "/api/nodes")["nodes"][0]["Alive"]


def test_many_clients_at_once(node):
    url = node["dashboard_url"]
    results: list = []

    def client() -> None:
        for _ in range(5):
            results.append(request(url, "/api/tasks")[0])

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 80


def test_no_dashboard_serves_nothing(fresh):
    info = zf.init(num_cpus=1, include_dashboard=False)
    assert info["dashboard_url"] is None
    listening = [c for c in psutil.Process(_embedded_node_pid()).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert len(listening) == 2, listening    # the peer and object ports, no HTTP


def _embedded_node_pid() -> int:
    [child] = [p for p in psutil.Process().children() if p.name() == forking.NODE_NAME]
    return child.pid


def test_with_a_dashboard_the_node_listens_on_three_ports(fresh):
    info = zf.init(num_cpus=1, dashboard_port=0)
    listening = {c.laddr.port for c in psutil.Process(_embedded_node_pid()).net_connections(
        kind="tcp") if c.status == psutil.CONN_LISTEN}
    _h, port, _tok = split_url(info["dashboard_url"])
    assert len(listening) == 3 and port in listening


def test_taken_default_port_falls_back_but_a_chosen_one_is_an_error(fresh, monkeypatch):
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        taken = holder.getsockname()[1]
        monkeypatch.setenv("ZFABRIC_DASHBOARD_PORT", str(taken))
        info = zf.init(num_cpus=1)
        _h, port, _tok = split_url(info["dashboard_url"])
        assert port != taken
        wait_for_tasks(info["dashboard_url"], finished=0, failed=0)   # it serves
        zf.shutdown()
        with pytest.raises(RuntimeError, match=f"dashboard on 127.0.0.1:{taken}"):
            zf.init(num_cpus=1, dashboard_port=taken)
    finally:
        holder.close()


def test_init_checks_its_dashboard_arguments(fresh):
    with pytest.raises(TypeError, match="include_dashboard"):
        zf.init(include_dashboard="yes")
    with pytest.raises(ValueError, match="dashboard_port"):
        zf.init(dashboard_port=70000)
    with pytest.raises(TypeError, match="dashboard_host"):
        zf.init(dashboard_host=5)
    assert not zf.is_initialized()


def test_cli_flags_and_status():
    """`start --dashboard-port 0` prints the URL, `status` too; bad flags are one line."""
    temp = tempfile.mkdtemp(prefix="zf-")
    env = {**os.environ, "ZFABRIC_TEMP_DIR": temp}
    env.pop("ZFABRIC_ADDRESS", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "zfabric.node", *args], capture_output=True,
                              text=True, timeout=60, env=env)

    try:
        out = cli("start", "--head", "--port", "0", "--dashboard-port", "70000")
        assert out.returncode == 1 and "--dashboard-port must be between" in out.stderr
        out = cli("start", "--head", "--dashboard-port", "1", "--no-dashboard")
        assert out.returncode == 2 and "not allowed with" in out.stderr
        out = cli("start", "--head", "--port", "0", "--dashboard-port", "0")
        assert out.returncode == 0, out.stderr
        [url] = [line.split(": ", 1)[1] for line in out.stdout.splitlines()
                 if line.startswith("dashboard: ")]
        status = cli("status")
        assert status.returncode == 0 and f"dashboard: {url}" in status.stdout.splitlines()
        wait_for_tasks(url, finished=0, failed=0)
        assert cli("stop").returncode == 0
        out = cli("start", "--head", "--port", "0", "--no-dashboard")
        assert out.returncode == 0 and "dashboard" not in out.stdout
        assert "dashboard" not in cli("status").stdout
    finally:
        cli("stop")
        shutil.rmtree(temp, ignore_errors=True)
