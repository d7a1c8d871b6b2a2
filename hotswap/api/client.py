"""A small client for the control API, used by the CLI."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from hotswap.errors import ApiError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(
    socket_path: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    connection = _UnixConnection(socket_path, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except FileNotFoundError:
            raise ApiError(f"no API socket at {socket_path}", 503) from None
        except ConnectionRefusedError:
            raise ApiError(f"nothing is listening on {socket_path} (the VMM is not running)", 503) from None
        except TimeoutError:
            raise ApiError(f"the VMM at {socket_path} did not answer within {timeout:g} s", 504) from None
        except OSError as exc:
            raise ApiError(f"cannot talk to {socket_path}: {exc.strerror or exc}", 503) from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            raise ApiError(f"the VMM sent a response that is not JSON: {raw[:80]!r}", 502) from None
        if response.status >= 400:
            raise ApiError(str(data.get("error", f"HTTP {response.status}")), response.status)
        if not isinstance(data, dict):
            raise ApiError("the VMM sent a JSON response that is not an object", 502)
        return data
    finally:
        connection.close()
