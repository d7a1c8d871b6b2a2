"""The API server: HTTP/1.1 + JSON on a unix socket, mode 0600, peers checked with SO_PEERCRED.

It can start on a socket it created or on a listening socket inherited from a predecessor VMM (a live upgrade
hands the listening fd over, so the API path never disappears; connections made meanwhile wait in its backlog).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from hotswap import __version__, log
from hotswap.api.actions import Action, Controller, parse_action
from hotswap.errors import ApiError, HotswapError
from hotswap.sockets import peer_is_allowed

MAX_BODY = 64 * 1024
_request = threading.local()


def current_connection() -> socket.socket | None:
    """The client connection of the request being handled on this thread (an exec-mode upgrade hands it to the
    new program image, which answers it)."""
    connection: socket.socket | None = getattr(_request, "connection", None)
    return connection


def raw_response(status: int, payload: dict[str, Any]) -> bytes:
    """A complete HTTP/1.1 response, for answering a connection outside the server (after an exec)."""
    reason = {200: "OK", 500: "Internal Server Error"}.get(status, "Error")
    body = (json.dumps(payload) + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nServer: hotswap/{__version__}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    controller: Controller

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return peer_is_allowed(request)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = f"hotswap/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:
        log.get("api").debug("api.request", line=format % args)

    def _handle(self) -> None:
        _request.connection = self.connection
        action: Action | None = None
        try:
            body = self._read_body()
            action = parse_action(self.command, self.path.split("?", 1)[0], body)
            self._reply(200, self.server.controller.execute(action))
        except ApiError as exc:
            self._reply(exc.status, {"error": str(exc)})
        except HotswapError as exc:
            self._reply(500, {"error": str(exc)})
        except Exception as exc:  # never let one request take the VMM down
            log.get("api").error("api.internal_error", error=repr(exc))
            self._reply(500, {"error": f"internal error: {exc!r}"})
        finally:
            _request.connection = None
            if action is not None:
                self.server.controller.replied(action)  # answered, whatever the answer was

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    def _read_body(self) -> dict[str, Any]:
        length_header = self.headers.get("Content-Length", "0")
        try:
            length = int(length_header)
        except ValueError:
            raise ApiError(f"bad Content-Length {length_header!r}", 400) from None
        if length < 0 or length > MAX_BODY:
            raise ApiError(f"request body must be 0..{MAX_BODY} bytes", 413)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(f"request body is not valid JSON: {exc}", 400) from None
        if not isinstance(body, dict):
            raise ApiError("request body must be a JSON object", 400)
        return body

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = (json.dumps(payload) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ApiServer:
    """Serves requests on its own thread. Stopping is immediate (an eventfd wakes the accept loop), so a live
    upgrade does not wait out a poll interval before it can hand the listening socket over."""

    def __init__(self, listener: socket.socket, controller: Controller) -> None:
        self._server = _Server(listener.getsockname() or "", _Handler, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = listener
        self._server.controller = controller
        self._server.timeout = 0  # handle_request() is only called when the listener is readable
        self._listener = listener
        self._thread: threading.Thread | None = None
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._stopping = False

    @property
    def listener_fd(self) -> int:
        return self._listener.fileno()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj == self._wake:
                        try:
                            os.eventfd_read(self._wake)
                        except BlockingIOError:
                            pass
                    elif not self._stopping:
                        self._server.handle_request()  # accept one connection (ready: no wait), serve it on a thread

    def stop_accepting(self) -> None:
        """Stop taking new connections (requests already being handled finish). The socket stays open, and
        connections made meanwhile wait in its backlog for whoever serves it next."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if thread is not threading.current_thread():
            thread.join(5.0)
        self._thread = None

    def close(self) -> None:
        self.stop_accepting()
        self._listener.close()
        os.close(self._wake)
