"""The dashboard's HTTP side: the server, and a handler that checks the Host
header and the token, then sends what `Dashboard.answer(path)` (node/dashboard.py) says.

Imported by the dashboard's HTTP thread at the first connection, not when the
node starts: http.server (with email, http.client and ssl) is 20 ms of
imports and ~7 MB of memory that a node nobody looks at never pays.
`make_server` wraps the socket the Dashboard bound at start.
"""
from __future__ import annotations

import hmac
import http.server
import logging
import threading
from urllib.parse import parse_qs

log = logging.getLogger("zfabric.dashboard")
MAX_CONNECTIONS = 32     # HTTP connections served at once; more are closed at once
IO_TIMEOUT = 10.0        # seconds a connection may take to send a request or read a reply


def make_server(sock, dashboard) -> "_Server":
    """A threading HTTP server on the listening socket `sock`, answering for `dashboard`."""
    server = _Server(sock.getsockname()[:2], _Handler, bind_and_activate=False)
    server.socket.close()   # (the one TCPServer made: ours is bound already)
    server.socket = sock
    server.server_name, server.server_port = server.server_address[:2]
    server.dashboard = dashboard
    server._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    return server


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    dashboard = None
    _slots = None

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)   # too many at once: this one waits for nobody
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request, client_address) -> None:
        """A handler's exception goes to the node's log, not to stderr (an
        embedded node shares the driver's terminal)."""
        log.warning("dashboard: error answering %s", client_address, exc_info=True)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "zfabric-dashboard"
    timeout = IO_TIMEOUT

    def do_GET(self) -> None:
        if not self._host_ok() or not self._token_ok():
            return
        self._send(*self.server.dashboard.answer(self.path.split("?", 1)[0]))

    def do_HEAD(self) -> None:
        self.do_GET()

    def _refuse_method(self) -> None:
        if self._host_ok():
            self._send(405, "text/plain; charset=utf-8",
                       b"the dashboard is read-only: GET only\n", allow=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = \
        _refuse_method

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        if host in self.server.dashboard.allowed_hosts:
            return True
        self._send(403, "text/plain; charset=utf-8",
                   b"refused: the Host header is not this dashboard's address\n")
        return False

    def _token_ok(self) -> bool:
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        try:
            given = parse_qs(query, max_num_fields=10).get("token", [""])[0]
        except ValueError:   # too many fields
            given = ""
        if hmac.compare_digest(given.encode(), self.server.dashboard.token.encode()):
            return True
        self._send(403, "text/plain; charset=utf-8",
                   b"refused: open the dashboard's URL with its token, as zf.init() returns "
                   b"it and `zfabric status` prints it\n")
        return False

    def _send(self, code: int, kind: str, body: bytes, allow: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; img-src 'self' data:")
        if allow:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:   # to the node's log, not stderr
        log.debug("%s %s", self.address_string(), format % args)
