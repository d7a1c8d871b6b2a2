"""The handover / migration wire protocol: message framing over a stream socket, with fds on unix sockets.

messages      MessageType, ErrorCode, the 16-byte header, ERROR/ABORT payloads, PROTOCOL_VERSION
hello         the HELLO payload and version negotiation
channel       Channel: send / recv of framed messages, fds via SCM_RIGHTS, timeouts
receiver      the successor's state machine; sender: the old VMM's
"""

from __future__ import annotations

from hotswap.wire.channel import DEFAULT_MAX_PAYLOAD, SCM_MAX_FD, Channel
from hotswap.wire.errors import (
    PeerClosed,
    ProtocolError,
    RemoteAbort,
    RemoteError,
    VersionMismatchError,
    WireError,
    WireTimeout,
)
from hotswap.wire.hello import Hello, negotiate
from hotswap.wire.messages import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    ErrorCode,
    Message,
    MessageType,
    decode_error,
    encode_error,
)
from hotswap.wire.receiver import Receiver, ReceiverState
from hotswap.wire.sender import Sender, SenderState

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "SCM_MAX_FD",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "Channel",
    "ErrorCode",
    "Hello",
    "Message",
    "MessageType",
    "PeerClosed",
    "ProtocolError",
    "Receiver",
    "ReceiverState",
    "RemoteAbort",
    "RemoteError",
    "Sender",
    "SenderState",
    "VersionMismatchError",
    "WireError",
    "WireTimeout",
    "decode_error",
    "encode_error",
    "negotiate",
]
