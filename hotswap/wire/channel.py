"""A message channel over a stream socket: unix (with fds, for same-host handover) or TCP (cross-host migration).

Framing: a 16-byte header (hotswap.wire.messages) and the payload. fds travel as SCM_RIGHTS on the header's bytes:
a unix socket accepts at most SCM_MAX_FD (253) fds per sendmsg, so fd i rides on header byte i // 253 (up to 16
chunks, 4048 fds), and the kernel hands each chunk to the receiver in a separate read. The receiver collects fds
while it reads the header, then checks the count against the header's fd count.

The socket is kept in blocking mode; a timeout is a poll() before each syscall, so calls without a timeout cost
exactly one syscall per read or write. After any framing error the stream position is unknown, so the channel
refuses further use.
"""

from __future__ import annotations

import array
import os
import select
import socket
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from types import TracebackType

from hotswap.wire.errors import PeerClosed, ProtocolError, RemoteAbort, RemoteError, WireTimeout
from hotswap.wire.messages import (
    HEADER_SIZE,
    ErrorCode,
    Message,
    MessageType,
    decode_error,
    decode_header,
    encode_error,
    encode_header,
)

SCM_MAX_FD = 253  # the kernel's limit of fds per sendmsg on a unix socket
MAX_FD_CHUNKS = HEADER_SIZE  # one chunk of fds per header byte
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024

_INT_SIZE = array.array("i").itemsize
_RECV_FLAGS = socket.MSG_CMSG_CLOEXEC  # received fds must not leak into anything this process execs
_SEND_FLAGS = socket.MSG_NOSIGNAL  # a closed peer is an EPIPE error, never a SIGPIPE


class Channel:
    """Send and receive framed messages on a connected stream socket, which the channel then owns."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer: str = "peer",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        fds_per_chunk: int = SCM_MAX_FD,
    ) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("wire: a channel needs a stream socket")
        if not 1 <= fds_per_chunk <= SCM_MAX_FD:
            raise ValueError(f"wire: fds_per_chunk must be within 1..{SCM_MAX_FD}")
        self.sock = sock
        self.peer = peer
        self.max_payload = max_payload
        self.max_fds = fds_per_chunk * MAX_FD_CHUNKS
        self._fds_per_chunk = fds_per_chunk
        self._ancbufsize = socket.CMSG_SPACE(fds_per_chunk * _INT_SIZE)
        self._unix = sock.family == socket.AF_UNIX
        self._broken: str | None = None  # why the stream can no longer be trusted
        self._bytes_sent = 0  # of the message being sent
        sock.settimeout(None)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages go out at once
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._poll_events = select.POLLIN

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- sending ------------------------------------------------------------------------------------------------

    def send(
        self,
        msg_type: MessageType,
        payload: bytes | bytearray | memoryview = b"",
        fds: Sequence[int] = (),
        *,
        flags: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Send one message; `fds` are duplicated into the peer (the caller keeps and still owns its own)."""
        self._check_usable()
        what = f"sending {msg_type.name}"
        payload_view = memoryview(payload).cast("B")
        if len(payload_view) > self.max_payload:
            raise ProtocolError(f"wire: {what}: payload of {len(payload_view)} bytes exceeds {self.max_payload}")
        if fds and not self._unix:
            raise ProtocolError(f"wire: {what}: fds can only be sent over a unix socket")
        if len(fds) > self.max_fds:
            raise ProtocolError(f"wire: {what}: {len(fds)} fds exceed the limit of {self.max_fds} per message")
        header = encode_header(msg_type, flags, len(fds), len(payload_view))
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = self._fds_per_chunk
        chunks = [fds[start : start + chunk] for start in range(0, len(fds), chunk)]
        self._bytes_sent = 0
        try:
            # All but the last chunk ride alone on one header byte each; the last one goes with everything else.
            for index, fd_chunk in enumerate(chunks[:-1]):
                self._send_buffers([header[index : index + 1]], fd_chunk, deadline, what)
            first = max(len(chunks) - 1, 0)
            self._send_buffers([memoryview(header)[first:], payload_view], chunks[-1] if chunks else (), deadline, what)
        except WireTimeout:
            if self._bytes_sent:  # else nothing went out: the stream is intact
                self._broken = f"a timeout while {what} left a partial message"
            raise
        except PeerClosed:
            self._broken = "the peer closed the connection"
            raise

    def send_error(self, code: ErrorCode, message: str, *, timeout: float | None = None) -> None:
        self.send(MessageType.ERROR, encode_error(code, message), timeout=timeout)

    def send_abort(self, code: ErrorCode, reason: str, *, timeout: float | None = None) -> None:
        self.send(MessageType.ABORT, encode_error(code, reason), timeout=timeout)

    def _send_buffers(
        self, buffers: Sequence[bytes | memoryview], fds: Sequence[int], deadline: float | None, what: str
    ) -> None:
        """sendmsg until every byte of `buffers` is out; `fds` go with the first byte."""
        views = [memoryview(b) for b in buffers if len(b)]
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while views:
            flags = _SEND_FLAGS
            if deadline is not None:
                self._wait(select.POLLOUT, deadline, what)
                flags |= socket.MSG_DONTWAIT
            try:
                sent = self.sock.sendmsg(views, ancdata, flags)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError) as err:
                raise PeerClosed(f"wire: {self.peer} closed the connection while {what}") from err
            ancdata = []
            self._bytes_sent += sent
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    # --- receiving ----------------------------------------------------------------------------------------------

    def recv(self, timeout: float | None = None, expect: AbstractSet[MessageType] | None = None) -> Message:
        """Receive one message, waiting at most `timeout` seconds (None: forever).

        If `expect` is given, any other type is a ProtocolError. ERROR and ABORT raise RemoteError / RemoteAbort
        (with the peer's code and message) unless `expect` names them. fds of a rejected message are closed.
        """
        self._check_usable()
        what = _waiting_for(expect)
        deadline = None if timeout is None else time.monotonic() + timeout
        fds: list[int] = []
        try:
            header = self._recv_header(fds, deadline, what)
            try:
                msg_type, flags, nfds, length = decode_header(header)
            except ValueError as err:
                raise ProtocolError(f"wire: {err} while {what}") from None
            if nfds != len(fds):
                raise ProtocolError(f"wire: {msg_type.name} announced {nfds} fds but {len(fds)} arrived (while {what})")
            if length > self.max_payload:
                raise ProtocolError(
                    f"wire: {msg_type.name} payload of {length} bytes exceeds the limit of {self.max_payload} "
                    f"(while {what})"
                )
            payload = self._recv_exact(length, deadline, f"{what} ({msg_type.name} payload)")
        except BaseException as err:
            _close_all(fds)
            if not isinstance(err, WireTimeout) or err.partial:  # else nothing was read: the stream is intact
                self._broken = f"{type(err).__name__}: {err}"
            raise
        message = Message(msg_type, flags, payload, tuple(fds))
        if expect is not None and msg_type in expect:
            return message
        if msg_type in (MessageType.ERROR, MessageType.ABORT):
            message.close_fds()
            raise self._remote_error(message)
        if expect is not None:
            message.close_fds()
            raise ProtocolError(f"wire: got {msg_type.name} while {what}")
        return message

    def _remote_error(self, message: Message) -> RemoteError:
        try:
            code, text = decode_error(message.payload)
        except ValueError as err:
            code, text = ErrorCode.UNKNOWN, f"(malformed {message.type.name} payload: {err})"
        if message.type == MessageType.ABORT:
            return RemoteAbort(code, text, self.peer)
        return RemoteError(code, text, self.peer)

    def _recv_header(self, fds: list[int], deadline: float | None, what: str) -> bytes:
        """Read the 16 header bytes, collecting the fds that ride on them."""
        header = bytearray()
        while len(header) < HEADER_SIZE:
            if deadline is not None:
                self._wait(select.POLLIN, deadline, what, partial=bool(header))
            try:
                if self._unix:
                    data, ancdata, msg_flags, _ = self.sock.recvmsg(
                        HEADER_SIZE - len(header), self._ancbufsize, _RECV_FLAGS
                    )
                    _collect_fds(ancdata, fds)
                    if msg_flags & socket.MSG_CTRUNC:
                        raise ProtocolError(
                            f"wire: fds truncated (more than {self._fds_per_chunk} in one chunk) while {what}"
                        )
                else:
                    data = self.sock.recv(HEADER_SIZE - len(header))
            except ConnectionResetError as err:
                raise PeerClosed(f"wire: {self.peer} reset the connection while {what}") from err
            if not data:
                if header:
                    raise PeerClosed(
                        f"wire: {self.peer} closed the connection mid-message ({len(header)} of {HEADER_SIZE} "
                        f"header bytes) while {what}"
                    )
                raise PeerClosed(f"wire: {self.peer} closed the connection while {what}")
            header += data
        return bytes(header)

    def _recv_exact(self, length: int, deadline: float | None, what: str) -> bytes:
        chunks: list[bytes] = [b""]
        remaining = length
        while remaining:
            if deadline is not None:
                self._wait(select.POLLIN, deadline, what, partial=True)
            try:
                data = self.sock.recv(remaining)
            except ConnectionResetError as err:
                raise PeerClosed(f"wire: {self.peer} reset the connection while {what}") from err
            if not data:
                raise PeerClosed(
                    f"wire: {self.peer} closed the connection mid-message ({length - remaining} of {length} "
                    f"payload bytes) while {what}"
                )
            chunks.append(data)
            remaining -= len(data)
        return chunks[-1] if len(chunks) <= 2 else b"".join(chunks)  # chunks[0] is b"", for an empty payload

    # --- helpers ------------------------------------------------------------------------------------------------

    def _wait(self, events: int, deadline: float, what: str, *, partial: bool = False) -> None:
        """Wait until the socket is ready for `events` (or hung up: the next syscall then reports why)."""
        if events != self._poll_events:
            self._poll.modify(self.sock.fileno(), events)
            self._poll_events = events
        remaining_ms = max(deadline - time.monotonic(), 0.0) * 1000.0
        if not self._poll.poll(remaining_ms):
            state = "in the middle of a message" if partial else "with nothing received"
            raise WireTimeout(f"wire: timed out {state} while {what}", partial=partial)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ProtocolError(f"wire: channel to {self.peer} is unusable after an earlier error ({self._broken})")


def _waiting_for(expect: AbstractSet[MessageType] | None) -> str:
    if not expect:
        return "waiting for a message"
    return "waiting for " + " or ".join(sorted(t.name for t in expect))


def _collect_fds(ancdata: list[tuple[int, int, bytes]], fds: list[int]) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % _INT_SIZE])
            fds.extend(received)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
