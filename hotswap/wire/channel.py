"""A message channel over a stream socket: unix (with fds, for same-host handover) or TCP (cross-host migration).

Framing: a 16-byte header (hotswap.wire.messages) and the payload. fds travel as SCM_RIGHTS on the header's bytes:
a unix socket accepts at most SCM_MAX_FD (253) fds per sendmsg, so fd i rides on header byte i // 253 (up to 16
chunks, 4048 fds), and the kernel hands each chunk to the receiver in a separate read. The receiver collects fds
while it reads the header, then checks the count against the header's fd count.

The socket stays in blocking mode. Without a timeout every read or write is one plain syscall; with one, the
syscall is tried without blocking first and poll() waits only if it would block. Error texts ("while waiting for
READY") are built only when an error happens. After any framing error the stream position is unknown, so the
channel refuses further use.
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

from hotswap.wire.errors import PeerClosed, ProtocolError, RemoteAbort, RemoteError, WireError, WireTimeout
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
_ENDING = (MessageType.ERROR, MessageType.ABORT)

Buffer = bytes | bytearray | memoryview


class Channel:
    """Send and receive framed messages on a connected stream socket, which the channel then owns.

    One thread may send while another receives; two threads must not both send (or both receive).
    """

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
        self._spin_until = 0.0
        self._broken: str | None = None  # why the stream can no longer be trusted
        self._bytes_sent = 0  # of the message being sent
        sock.settimeout(None)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages go out at once
        # One poll object per direction, so one thread may send while another receives.
        self._readable = select.poll()
        self._readable.register(sock.fileno(), select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock.fileno(), select.POLLOUT)

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
        payload: Buffer = b"",
        fds: Sequence[int] = (),
        *,
        flags: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Send one message; `fds` are duplicated into the peer (the caller keeps and still owns its own)."""
        if self._broken is not None:
            raise self._unusable()
        length = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        if length > self.max_payload:
            raise ProtocolError(f"wire: sending {msg_type.name}: payload of {length} bytes exceeds {self.max_payload}")
        if fds and not self._unix:
            raise ProtocolError(f"wire: sending {msg_type.name}: fds can only be sent over a unix socket")
        if len(fds) > self.max_fds:
            raise ProtocolError(
                f"wire: sending {msg_type.name}: {len(fds)} fds exceed the limit of {self.max_fds} per message"
            )
        header = encode_header(msg_type, flags, len(fds), length)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._bytes_sent = 0
        try:
            if len(fds) <= self._fds_per_chunk:
                self._send_buffers([header, payload], HEADER_SIZE + length, fds, deadline)
                return
            # All but the last chunk ride alone on one header byte each; the last one goes with everything else.
            chunk = self._fds_per_chunk
            chunks = [fds[start : start + chunk] for start in range(0, len(fds), chunk)]
            for index, fd_chunk in enumerate(chunks[:-1]):
                self._send_buffers([header[index : index + 1]], 1, fd_chunk, deadline)
            rest = header[len(chunks) - 1 :]
            self._send_buffers([rest, payload], len(rest) + length, chunks[-1], deadline)
        except WireError as err:
            if self._bytes_sent or not isinstance(err, WireTimeout):  # else nothing went out: the stream is intact
                self._broken = f"{type(err).__name__} while sending {msg_type.name}"
            err.args = (f"{err} while sending {msg_type.name}",)
            raise

    def send_error(self, code: ErrorCode, message: str, *, timeout: float | None = None) -> None:
        self.send(MessageType.ERROR, encode_error(code, message), timeout=timeout)

    def send_abort(self, code: ErrorCode, reason: str, *, timeout: float | None = None) -> None:
        self.send(MessageType.ABORT, encode_error(code, reason), timeout=timeout)

    def _send_buffers(self, buffers: list[Buffer], total: int, fds: Sequence[int], deadline: float | None) -> None:
        """sendmsg until all `total` bytes of `buffers` are out; `fds` go with the first byte."""
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        views: list[memoryview] | None = None
        while True:
            try:
                if deadline is None:
                    sent = self.sock.sendmsg(views or buffers, ancdata, _SEND_FLAGS)
                else:
                    sent = self.sock.sendmsg(views or buffers, ancdata, _SEND_FLAGS | socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._wait(self._writable, deadline, partial=self._bytes_sent > 0)
                continue
            except (BrokenPipeError, ConnectionResetError) as err:
                raise PeerClosed(f"wire: {self.peer} closed the connection") from err
            self._bytes_sent += sent
            total -= sent
            if not total:
                return
            ancdata = []  # the fds went with the first byte
            views = _drop_front([memoryview(b).cast("B") for b in (views or buffers)], sent)

    # --- receiving ----------------------------------------------------------------------------------------------

    def recv(
        self, timeout: float | None = None, expect: AbstractSet[MessageType] | None = None, *, spin: float = 0.0
    ) -> Message:
        """Receive one message, waiting at most `timeout` seconds (None: forever).

        `spin` (seconds, needs a timeout): busy-poll this long before sleeping in poll(). Inside a guest's pause
        window a reply is due within microseconds, and being woken from poll() costs more than that here.

        If `expect` is given, any other type is a ProtocolError. ERROR and ABORT raise RemoteError / RemoteAbort
        (with the peer's code and message) unless `expect` names them. fds of a rejected message are closed.
        """
        if self._broken is not None:
            raise self._unusable()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._spin_until = time.monotonic() + spin if spin and deadline is not None else 0.0
        fds: list[int] = []
        try:
            header = self._recv_header(fds, deadline)
            try:
                msg_type, flags, nfds, length = decode_header(header)
            except ValueError as err:
                raise ProtocolError(f"wire: {err}") from None
            if nfds != len(fds):
                raise ProtocolError(f"wire: {msg_type.name} announced {nfds} fds but {len(fds)} arrived")
            if length > self.max_payload:
                raise ProtocolError(
                    f"wire: {msg_type.name} payload of {length} bytes exceeds the limit of {self.max_payload}"
                )
            payload = self._recv_payload(length, deadline, msg_type) if length else b""
        except WireError as err:
            _close_all(fds)
            if not isinstance(err, WireTimeout) or err.partial:  # else nothing was read: the stream is intact
                self._broken = f"{type(err).__name__}: {err}"
            err.args = (f"{err} while {_waiting_for(expect)}",)
            raise
        except BaseException:
            _close_all(fds)
            self._broken = "interrupted in the middle of a message"
            raise
        message = Message(msg_type, flags, payload, tuple(fds))
        if expect is not None and msg_type in expect:
            return message
        if msg_type in _ENDING:
            message.close_fds()
            raise self._remote_error(message)
        if expect is not None:
            message.close_fds()
            raise ProtocolError(f"wire: got {msg_type.name} while {_waiting_for(expect)}")
        return message

    def _remote_error(self, message: Message) -> RemoteError:
        try:
            code, text = decode_error(message.payload)
        except ValueError as err:
            code, text = ErrorCode.UNKNOWN, f"(malformed {message.type.name} payload: {err})"
        if message.type == MessageType.ABORT:
            return RemoteAbort(code, text, self.peer)
        return RemoteError(code, text, self.peer)

    def _recv_header(self, fds: list[int], deadline: float | None) -> bytes:
        """Read the 16 header bytes, collecting the fds that ride on them."""
        header = b""
        while len(header) < HEADER_SIZE:
            flags = _RECV_FLAGS if deadline is None else _RECV_FLAGS | socket.MSG_DONTWAIT
            try:
                if self._unix:
                    data, ancdata, msg_flags, _ = self.sock.recvmsg(HEADER_SIZE - len(header), self._ancbufsize, flags)
                    if ancdata:
                        _collect_fds(ancdata, fds)
                    if msg_flags & socket.MSG_CTRUNC:
                        raise ProtocolError(f"wire: fds truncated (more than {self._fds_per_chunk} in one chunk)")
                else:
                    data = self.sock.recv(HEADER_SIZE - len(header), flags)
            except BlockingIOError:
                self._wait(self._readable, deadline, partial=bool(header))
                continue
            except ConnectionResetError as err:
                raise PeerClosed(f"wire: {self.peer} reset the connection") from err
            if not data:
                if header:
                    raise PeerClosed(
                        f"wire: {self.peer} closed the connection mid-message "
                        f"({len(header)} of {HEADER_SIZE} header bytes)"
                    )
                raise PeerClosed(f"wire: {self.peer} closed the connection")
            header += data
        return header

    def _recv_payload(self, length: int, deadline: float | None, msg_type: MessageType) -> bytes:
        chunks: list[bytes] = []
        remaining = length
        flags = 0 if deadline is None else socket.MSG_DONTWAIT
        while remaining:
            try:
                data = self.sock.recv(remaining, flags)
            except BlockingIOError:
                self._wait(self._readable, deadline, partial=True)
                continue
            except ConnectionResetError as err:
                raise PeerClosed(f"wire: {self.peer} reset the connection") from err
            if not data:
                raise PeerClosed(
                    f"wire: {self.peer} closed the connection mid-message "
                    f"({length - remaining} of {length} {msg_type.name} payload bytes)"
                )
            chunks.append(data)
            remaining -= len(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # --- helpers ------------------------------------------------------------------------------------------------

    def _wait(self, poller: select.poll, deadline: float | None, *, partial: bool) -> None:
        """Wait until the socket is ready (or hung up: the next syscall then says why), at most until `deadline`."""
        if self._spin_until and time.monotonic() < self._spin_until:
            return  # spinning: the caller retries its non-blocking read at once
        remaining_ms = None if deadline is None else max(deadline - time.monotonic(), 0.0) * 1000.0
        if not poller.poll(remaining_ms):
            state = "in the middle of a message" if partial else "with nothing received"
            raise WireTimeout(f"wire: timed out {state}", partial=partial)

    def _unusable(self) -> ProtocolError:
        return ProtocolError(f"wire: channel to {self.peer} is unusable after an earlier error ({self._broken})")


def _waiting_for(expect: AbstractSet[MessageType] | None) -> str:
    if not expect:
        return "waiting for a message"
    return "waiting for " + " or ".join(sorted(t.name for t in expect))


def _drop_front(views: list[memoryview], count: int) -> list[memoryview]:
    """`views` without their first `count` bytes."""
    while count:
        if count >= len(views[0]):
            count -= len(views.pop(0))
        else:
            views[0] = views[0][count:]
            count = 0
    return views


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
