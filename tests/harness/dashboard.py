"""Talking to a node's dashboard in tests: GET an endpoint with the token,
raw HTTP for what a browser would never send, a Prometheus text parser,
and waiting until the dashboard's sample shows what the cluster did."""
from __future__ import annotations

import http.client
import json
import re
import socket
import time
from urllib.parse import urlsplit


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, token) of a dashboard URL as init() returns it."""
    parts = urlsplit(url)
    token = dict(q.split("=", 1) for q in parts.query.split("&") if "=" in q)["token"]
    return parts.hostname, parts.port, token


def request(url: str, path: str, *, method: str = "GET", host: str | None = None,
            token: bool = True, body: bytes | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request to the dashboard at `url`."""
    h, port, tok = split_url(url)
    conn = http.client.HTTPConnection(h, port, timeout=10)
    try:
        target = f"{path}?token={tok}" if token else path
        conn.putrequest(method, target, skip_host=True)
        if host != "":
            conn.putheader("Host", host if host is not None else f"{h}:{port}")
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str) -> dict:
    status, _headers, body = request(url, path)
    assert status == 200, (status, body)
    return json.loads(body)


def wait_until(url: str, path: str, pred, timeout: float = 60.0) -> dict:
    """The endpoint's answer once `pred(answer)` holds (a later sample)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = get_json(url, path)
        if pred(answer):
            return answer
        assert time.monotonic() < deadline, f"{path} after {timeout} s: {answer}"
        time.sleep(0.2)


def wait_for_tasks(url: str, finished: int, failed: int, timeout: float = 60.0) -> dict:
    """/api/tasks once its cluster-wide counts reach these numbers (they come
    with the next sample, after peers' counts reach this node by the GCS)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = get_json(url, "/api/tasks")
        states = tasks["states"]
        if states.get("finished") == finished and states.get("failed") == failed:
            return tasks
        assert time.monotonic() < deadline, f"the dashboard shows {states} after {timeout} s"
        time.sleep(0.2)


def raw(url: str, data: bytes, *, read: bool = True) -> bytes:
    """Send bytes on a fresh TCP connection; what comes back (b"" if nothing)."""
    h, port, _tok = split_url(url)
    with socket.create_connection((h, port), timeout=10) as s:
        s.sendall(data)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, dict]:
    """Prometheus text format (0.0.4): {family: {"type", "help", "samples":
    [(labels, value)]}}. AssertionError for anything out of order or malformed:
    a sample before its TYPE, a family twice, a line that is not a sample."""
    families: dict[str, dict] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _hash, kind, name, rest = line.split(" ", 3)
            fam = families.setdefault(name, {"samples": []})
            assert kind.lower() not in fam, f"second {kind} for {name}"
            assert not fam["samples"], f"{kind} of {name} after its samples"
            fam[kind.lower()] = rest
            continue
        assert not line.startswith("#"), line
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert name in families and "type" in families[name], f"{name} has no TYPE"
        parsed = dict(_LABEL.findall(labels or ""))
        families[name]["samples"].append((parsed, float(value)))
    for name, fam in families.items():
        assert name.startswith("zfabric_"), name
        assert fam.get("type") in ("counter", "gauge"), (name, fam)
        assert fam.get("help"), name
        if fam["type"] == "counter":
            assert name.endswith("_total"), name
    return families


def value(families: dict, name: str, **labels) -> float:
    for got, v in families[name]["samples"]:
        if got == labels:
            return v
    raise KeyError(f"{name}{labels}")
