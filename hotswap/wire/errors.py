"""The wire package's exception hierarchy. Messages name the operation and the peer ("wire: successor closed the
connection while waiting for READY")."""

from __future__ import annotations

from hotswap.wire.messages import ErrorCode


class WireError(Exception):
    """Base of every error raised by the handover / migration channel."""


class ProtocolError(WireError):
    """The peer broke the protocol: bad magic or checksum, unknown type, oversized or out-of-order message."""


class VersionMismatchError(ProtocolError):
    """The two sides share no protocol version, or one cannot read the other's state format."""


class WireTimeout(WireError):
    """No complete message (or no room to send one) within the timeout. `partial`: part of a message had already
    gone through, so the stream is out of step and the channel unusable."""

    def __init__(self, message: str, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


class PeerClosed(WireError):
    """The peer closed the connection (or reset it), possibly in the middle of a message."""


class RemoteError(WireError):
    """The peer sent ERROR: its code and message, so the reason reaches the user."""

    def __init__(self, code: ErrorCode, message: str, peer: str = "peer") -> None:
        self.code = code
        self.message = message
        super().__init__(f"{peer} reported {code.name}: {message}")


class RemoteAbort(RemoteError):
    """The peer sent ABORT: it gives the operation up, with a code and a reason."""

    def __init__(self, code: ErrorCode, message: str, peer: str = "peer") -> None:
        super().__init__(code, message, peer)
        self.args = (f"{peer} aborted ({code.name}): {message}",)
