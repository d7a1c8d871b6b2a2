"""A tiny QMP client: JSON objects, one per line, over QEMU's unix control socket.

QEMU greets with {"QMP": ...}; the client answers `qmp_capabilities` (with the `oob` capability left off), then each
command gets exactly one {"return": ...} or {"error": ...}, with asynchronous {"event": ...} lines in between,
which are all kept, in order, in `events` (`wait_event` looks through them).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from bench.report import BenchError


class QmpError(BenchError):
    """QEMU refused a command, or the QMP conversation broke."""


class Qmp:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []  # every event so far, oldest first
        self._buffer = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
            greeting = self._read_message(timeout)
            if "QMP" not in greeting:
                raise QmpError(f"qmp {path}: expected a greeting, got {greeting!r}")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        """Run one command and return its `return` value; QmpError with QEMU's description if it fails."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"qmp {command}: sending failed: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline - time.monotonic())
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"qmp {command}: {error.get('class', 'Error')}: {error.get('desc', error)}")
            if "return" in reply:
                return reply["return"]
            raise QmpError(f"qmp {command}: unexpected reply {reply!r}")

    def wait_event(self, name: str, timeout: float, start: int = 0) -> tuple[int, dict[str, Any]]:
        """The first event called `name` at index >= start of `events` (reading more as needed), and its index."""
        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.events):
                if self.events[index].get("event") == name:
                    return index, self.events[index]
                index += 1
            message = self._read_message(deadline - time.monotonic(), what=f"event {name}")
            if "event" in message:
                self.events.append(message)

    def _read_message(self, timeout: float, what: str = "a reply") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError(f"qmp {self.path}: timed out waiting for {what}")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise QmpError(f"qmp {self.path}: reading failed: {exc}") from exc
            if not data:
                raise QmpError(f"qmp {self.path}: QEMU closed the socket")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise QmpError(f"qmp {self.path}: not JSON: {line[:200]!r}") from exc
        if not isinstance(message, dict):
            raise QmpError(f"qmp {self.path}: not a JSON object: {line[:200]!r}")
        return message


def event_time_ns(event: dict[str, Any]) -> int:
    """An event's timestamp (CLOCK_REALTIME, taken by QEMU when it emitted it) in ns."""
    stamp = event.get("timestamp", {})
    try:
        return int(stamp["seconds"]) * 1_000_000_000 + int(stamp["microseconds"]) * 1000
    except (KeyError, TypeError, ValueError) as exc:
        raise QmpError(f"qmp: event without a timestamp: {event!r}") from exc
