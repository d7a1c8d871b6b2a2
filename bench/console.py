"""A guest's serial output as the benchmark sees it: lines stamped with the host time they arrived.

Output can come from several sources in turn: a QEMU migration hands the guest (and its UART) to a destination QEMU
with its own console socket, so the line being printed at the switch-over starts on the source and ends on the
destination. Sources are joined in the order they were attached, and a source's bytes are only used once every
earlier source has ended (its VMM gone), so a line is never assembled out of order.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.guest import Status
from bench.report import BenchError

READ_SIZE = 65536


def connect_console(path: Path, what: str) -> socket.socket:
    """A connection to a VMM's console socket; `what` names the VMM in the error."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise BenchError(f"{what}: connecting to the console {path}: {exc}") from exc
    return sock


@dataclass
class _Source:
    name: str
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    ended: bool = False
    stop: Callable[[], None] | None = None


class ConsoleTap:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sources: list[_Source] = []
        self._threads: list[threading.Thread] = []
        self._current = 0  # the source being assembled
        self._taken = 0  # chunks of it already assembled
        self._partial = bytearray()
        self._partial_ns = 0
        self.lines: list[tuple[int, str]] = []  # (arrival CLOCK_MONOTONIC ns, line without its line ending)
        self.statuses: list[Status] = []

    # -- sources ---------------------------------------------------------------------------------------------
    def attach_socket(self, sock: socket.socket, name: str) -> None:
        """Read a connected stream socket until its peer closes it (or close() is called)."""

        def stop() -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        self._attach(sock.fileno(), name, stop, on_end=sock.close)

    def attach_fd(self, fd: int, name: str) -> None:
        """Read a pipe (or any fd) until end of file; the caller closes it by ending the writer."""
        self._attach(fd, name, None, on_end=None)

    def _attach(self, fd: int, name: str, stop: Callable[[], None] | None, on_end: Callable[[], None] | None) -> None:
        source = _Source(name, stop=stop)
        with self._cond:
            self._sources.append(source)
        thread = threading.Thread(target=self._read, args=(fd, source, on_end), name=f"console-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _read(self, fd: int, source: _Source, on_end: Callable[[], None] | None) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except OSError:
                    data = b""
                now = time.monotonic_ns()
                with self._cond:
                    if data:
                        source.chunks.append((now, data))
                    else:
                        source.ended = True
                    self._assemble()
                    self._cond.notify_all()
                if not data:
                    return
        finally:
            if on_end is not None:
                on_end()

    def close(self) -> None:
        """Stop reading every source (the VMMs may still run; they must be killed by whoever started them)."""
        with self._cond:
            sources = list(self._sources)
        for source in sources:
            if source.stop is not None:
                source.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- assembling lines (under the lock) -------------------------------------------------------------------
    def _assemble(self) -> None:
        while self._current < len(self._sources):
            source = self._sources[self._current]
            while self._taken < len(source.chunks):
                arrived, data = source.chunks[self._taken]
                self._taken += 1
                self._feed(arrived, data)
            if not (source.ended and self._current + 1 < len(self._sources)):
                return
            self._current += 1
            self._taken = 0

    def _feed(self, arrived: int, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                if start < len(data):
                    if not self._partial:
                        self._partial_ns = arrived
                    self._partial += data[start:]
                return
            self._partial += data[start:end]
            line = self._partial.decode(errors="replace").strip("\r\n\x00 ")
            self._partial.clear()
            self.lines.append((arrived, line))
            status = Status.parse(line, arrived)
            if status is not None:
                self.statuses.append(status)
            start = end + 1

    # -- waiting ---------------------------------------------------------------------------------------------
    def last_seq(self) -> int:
        with self._cond:
            return self.statuses[-1].seq if self.statuses else 0

    def wait_statuses(self, after: int, count: int, timeout: float) -> list[Status]:
        """Wait until `count` status lines with seq > after have arrived; return all of those so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._statuses_after(after)
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(line for _, line in self.lines[-5:])
                    raise BenchError(
                        f"console: timed out after {timeout:.0f} s waiting for {count} status lines after seq {after}; "
                        f"last lines:\n{tail}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_line(self, prefix: str, timeout: float) -> tuple[int, str]:
        """The first line starting with `prefix` (waiting for it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for arrived, line in self.lines:
                    if line.startswith(prefix):
                        return arrived, line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"console: timed out after {timeout:.0f} s waiting for a line {prefix!r}")
                self._cond.wait(min(remaining, 0.5))

    def statuses_after(self, after: int) -> list[Status]:
        """Status lines with seq > after."""
        with self._cond:
            return self._statuses_after(after)

    def _statuses_after(self, after: int) -> list[Status]:
        found: list[Status] = []
        for status in reversed(self.statuses):
            if status.seq <= after:
                break
            found.append(status)
        return found[::-1]

    def statuses_between(self, after: int, last: int) -> list[Status]:
        """Status lines with after < seq <= last."""
        with self._cond:
            return [s for s in self.statuses if after < s.seq <= last]

    def all_statuses(self) -> list[Status]:
        with self._cond:
            return list(self.statuses)
