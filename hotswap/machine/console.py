"""The guest's serial console on the host side: where its output goes and where its input comes from.

Output (called on a vCPU thread for every byte the guest transmits) goes to stdout in the foreground, to every
attached `hotswap console` client, to an optional log file, and to a bounded history that a newly attached client
is shown first. Output never blocks the vCPU: a client that cannot keep up loses bytes, not the guest's time.
Input comes from stdin (foreground) or from clients; what the UART's FIFO cannot take yet is held here.

All host resources are fds that can travel to a successor VMM: the listening socket, connected clients, the log file.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hotswap import log
from hotswap.machine.eventloop import EventLoop
from hotswap.sockets import make_listener, peer_is_allowed

HISTORY_BYTES = 64 * 1024
READ_CHUNK = 4096
# Guest output arrives a byte per vCPU exit. It is sent on at each newline, when this much has gathered, or after
# FLUSH_DELAY (a prompt without a newline): one write per line, not one syscall and socket buffer per byte.
FLUSH_BYTES = 512
FLUSH_DELAY = 0.02


@dataclass
class ConsoleFds:
    """The console's host fds, in the order a handover sends them."""

    listener: int | None = None
    log_file: int | None = None
    clients: list[int] = field(default_factory=list)


class Console:
    def __init__(self, loop: EventLoop, use_stdio: bool) -> None:
        self._loop = loop
        self._use_stdio = use_stdio
        self._lock = threading.Lock()
        self._clients: dict[int, socket.socket] = {}
        self._listener: socket.socket | None = None
        self._log_fd: int | None = None
        self._history = bytearray()
        self._pending_input = bytearray()
        self._out = bytearray()  # guest output not yet sent on
        self._written = 0  # bytes that ever went through the history (a position in the output stream)
        self._flush_scheduled = False
        self._input_sink: Callable[[bytes], int] | None = None
        self._stdin_open = use_stdio
        self.dropped_bytes = 0
        self._log = log.get("console")

    # -- set-up -----------------------------------------------------------------------------------------------
    def listen(self, path: str) -> None:
        """Create the console socket (mode 0600)."""
        self._listener = make_listener(path)

    def open_log(self, path: str) -> None:
        self._log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def adopt(self, fds: ConsoleFds) -> None:
        """Take over a predecessor's console fds (they arrived over SCM_RIGHTS, before the pause)."""
        if fds.listener is not None:
            self._listener = socket.socket(fileno=fds.listener)
        self._log_fd = fds.log_file
        for fd in fds.clients:
            client = socket.socket(fileno=fd)
            client.setblocking(False)
            self._clients[client.fileno()] = client

    def restore_state(self, history: bytes, pending_input: bytes) -> None:
        """The predecessor's output history and held-back input (they arrive with the paused guest's state)."""
        with self._lock:
            self._history = bytearray(history[-HISTORY_BYTES:])
        self._pending_input = bytearray(pending_input)

    def attach_input(self, sink: Callable[[bytes], int]) -> None:
        """`sink(data) -> bytes taken` feeds the UART; call feed_pending() when it has room again."""
        self._input_sink = sink

    def start(self) -> None:
        """Start serving (on the event loop thread): accept clients, read their input and stdin."""

        def register() -> None:
            if self._listener is not None:
                self._listener.setblocking(False)
                self._loop.add_reader(self._listener.fileno(), self._accept)
            for fd in list(self._clients):
                self._loop.add_reader(fd, self._read_client)
            if self._use_stdio and self._stdin_open and _is_readable_stdin():
                self._loop.add_reader(0, self._read_stdin)

        self._loop.call_soon(register)

    def stop_serving(self) -> None:
        """Stop reading input and accepting clients (output keeps flowing): the handover's first step."""

        def unregister() -> None:
            if self._listener is not None:
                self._loop.remove_reader(self._listener.fileno())
            for fd in list(self._clients):
                self._loop.remove_reader(fd)
            if self._use_stdio:
                self._loop.remove_reader(0)

        self._loop.run_sync(unregister)

    # -- handover ---------------------------------------------------------------------------------------------
    def fds(self) -> ConsoleFds:
        with self._lock:
            return ConsoleFds(
                listener=self._listener.fileno() if self._listener is not None else None,
                log_file=self._log_fd,
                clients=list(self._clients),
            )

    def history(self) -> bytes:
        """Recent output, everything flushed first (a handover must not strand bytes in our buffer)."""
        with self._lock:
            self._flush_locked()
            return bytes(self._history)

    def mark(self) -> int:
        """A position in the output stream (everything buffered so far flushed first)."""
        with self._lock:
            self._flush_locked()
            return self._written

    def history_since(self, mark: int) -> bytes:
        """Output after `mark`, as far as the history still holds it (a handover sends the bulk of the history
        before the pause and only this tail inside it)."""
        with self._lock:
            self._flush_locked()
            count = min(self._written - mark, len(self._history))
            return bytes(self._history[len(self._history) - count :]) if count > 0 else b""

    def pending_input(self) -> bytes:
        return bytes(self._pending_input)

    def close(self, unlink: str | None = None) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
        if unlink:
            try:
                os.unlink(unlink)
            except FileNotFoundError:
                pass

    # -- output (vCPU threads) --------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        with self._lock:
            out = self._out
            out += data
            if b"\n" in data or len(out) >= FLUSH_BYTES:
                self._flush_locked()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = bytes(self._out)
        self._out.clear()
        if self._use_stdio:
            try:
                os.write(1, data)
            except OSError:
                self._use_stdio = False  # stdout went away; the guest keeps running
        if self._log_fd is not None:
            os.write(self._log_fd, data)
        history = self._history
        history += data
        self._written += len(data)
        if len(history) > HISTORY_BYTES:
            del history[: len(history) - HISTORY_BYTES]
        for fd, client in list(self._clients.items()):
            try:
                sent = client.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._drop_client(fd)
                continue
            self.dropped_bytes += len(data) - sent

    # -- input (event loop thread) ----------------------------------------------------------------------------
    def feed_pending(self) -> None:
        """Move held-back input into the UART (called when the guest drained its receive FIFO)."""
        if self._pending_input and self._input_sink is not None:
            taken = self._input_sink(bytes(self._pending_input))
            del self._pending_input[:taken]

    def _input(self, data: bytes) -> None:
        self._pending_input += data
        self.feed_pending()

    def _accept(self, _fd: int) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not peer_is_allowed(client):
            client.close()
            return
        client.setblocking(False)
        with self._lock:
            history = bytes(self._history)
            self._clients[client.fileno()] = client
        try:
            client.send(history)
        except OSError:
            pass
        self._loop.add_reader(client.fileno(), self._read_client)
        self._log.info("console.attached", fd=client.fileno())

    def _read_client(self, fd: int) -> None:
        client = self._clients.get(fd)
        if client is None:
            self._loop.remove_reader(fd)
            return
        try:
            data = client.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(fd)
            with self._lock:
                self._drop_client(fd)
            return
        self._input(data)

    def _drop_client(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        if client is not None:
            client.close()

    def _read_stdin(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stdin_open = False
            self._loop.remove_reader(fd)
            return
        self._input(data)


def _is_readable_stdin() -> bool:
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    # /dev/null is a character device that reads EOF forever: do not poll it.
    return not (stat.S_ISCHR(mode) and os.major(os.fstat(0).st_rdev) == 1 and os.minor(os.fstat(0).st_rdev) == 3)
