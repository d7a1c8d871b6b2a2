"""Message types, error codes and the fixed 16-byte header of the handover / migration protocol.

    offset  size  field
    0       2     magic b"HS"
    2       2     type (u16, MessageType)
    4       2     flags (u16; protocol 1 defines none, so it must be 0)
    6       2     fd count (u16): how many fds ride on the header bytes (SCM_RIGHTS, unix sockets only)
    8       4     payload length (u32)
    12      4     CRC32 (zlib) of bytes 0..11

All integers are little-endian. The payload follows the header; its layout depends on the type (docs/protocol.md).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

# Protocol 2: CONFIG carries "protocol", "console_history" (sent before the pause) and one "virtio" fd count where
# protocol 1 had "disks" and "taps".
# Protocol 3: CONFIG carries an ownership token (an eventfd, hotswap/handover/ownership.py); after STATE the
# successor takes it and resumes the guest at once, then sends RESUMED: no RESTORED/COMMIT round trip in the pause.
# Protocol 4: the paused guest's state goes in two messages, STATE_VCPUS (the vCPUs, captured first) then STATE (VM,
# devices, machine): the successor restores the vCPUs while the old VMM still captures the rest.
# Protocol 5: CONFIG also offers each vCPU's state record layout and the fds of shared memory for the records
# (kvm/lane.py); a successor that accepts (READY "lane": true) gets the vCPUs there, straight from the old VMM's
# vCPU thread to its own, and the sequence is protocol 3's (STATE alone); one that declines gets STATE_VCPUS.
# A successor also accepts protocols 1 and 2 from an old VMM (and then waits for COMMIT as they expect), 3 and 4.
PROTOCOL_VERSION = 5
# a successor reads every protocol an upgradable build sent
SUPPORTED_PROTOCOL_VERSIONS = (1, 2, 3, 4, PROTOCOL_VERSION)

MAGIC = b"HS"
KNOWN_FLAGS = 0x0000
HEADER = struct.Struct("<2sHHHI")  # everything but the CRC
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size + CRC.size


class MessageType(IntEnum):
    # Same-host handover (docs/protocol.md has the sequence). 1..0x7F are for handover.
    HELLO = 1  # successor -> old: versions it speaks, its pid
    CONFIG = 2  # old -> successor: machine config (codec dict) + fds
    READY = 3  # successor -> old: VM built, waiting for state
    STATE = 4  # old -> successor: state container (hotswap.state.pack); protocols 4-5: all but the vCPUs
    RESTORED = 5  # protocols 1-2, successor -> old: state restored, waiting for COMMIT
    COMMIT = 6  # protocols 1-2, old -> successor: the guest is yours; the old VMM never runs it again
    RESUMED = 7  # successor -> old: it owns the guest and its vCPUs run (payload: codec dict of timings)
    ERROR = 8  # either way: ErrorCode + message
    ABORT = 9  # either way, before the commit point: give the operation up (ErrorCode + reason)
    STATE_VCPUS = 10  # protocols 4-5, old -> successor, before STATE: state container of the vCPUs alone
    # Cross-host migration: reserved, not implemented yet. 0x80..0xFF are for migration.
    MEMORY_PAGES = 0x80  # a run of guest pages (pre-copy or post-copy push)
    DIRTY_ROUND = 0x81  # start / end of a pre-copy round of dirty pages
    MEMORY_DONE = 0x82  # the last pre-copy round is over; STATE follows
    POSTCOPY_START = 0x83  # destination resumes with missing pages served on demand
    PAGE_REQUEST = 0x84  # destination -> source: pages a vCPU faulted on
    AUTH = 0x85  # pre-shared-key challenge / response
    PING = 0x86  # liveness and bandwidth probe


class ErrorCode(IntEnum):
    UNKNOWN = 0  # a code this build does not know (sent by a newer peer)
    VERSION_MISMATCH = 1  # no common protocol version, or the state format cannot be read
    BAD_STATE = 2  # the state container or tree was rejected
    RESTORE_FAILED = 3  # KVM or a device refused the state
    TIMEOUT = 4  # a step took too long
    INTERNAL = 5  # a bug or unexpected exception on the sender's side
    ABORTED = 6  # the operation was cancelled (user request, or the other side gave up)
    BUSY = 7  # another upgrade or migration is in progress
    PROTOCOL = 8  # an out-of-order or malformed message
    BAD_CONFIG = 9  # the machine config cannot be built (unknown field, device kind, ...)
    RESOURCES = 10  # out of memory, fds or another host resource
    UNSUPPORTED = 11  # a feature the receiver does not have (a device without save/restore, ...)


@dataclass(slots=True)
class Message:
    """One received message. The receiver owns `fds` and must close them (close_fds) or hand them on."""

    type: MessageType
    flags: int = 0
    payload: bytes = b""
    fds: tuple[int, ...] = field(default=())

    def close_fds(self) -> None:
        fds, self.fds = self.fds, ()
        for fd in fds:
            os.close(fd)


_TYPES = {t.value: t for t in MessageType}  # a dict lookup is several times faster than MessageType(value)


def encode_header(msg_type: MessageType, flags: int, nfds: int, length: int) -> bytes:
    head = HEADER.pack(MAGIC, msg_type, flags, nfds, length)
    return head + CRC.pack(zlib.crc32(head))


def decode_header(header: bytes) -> tuple[MessageType, int, int, int]:
    """(type, flags, fd count, payload length) of a 16-byte header; raises ValueError naming what is wrong."""
    magic, raw_type, flags, nfds, length = HEADER.unpack_from(header)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r} (expected {MAGIC!r}: is the peer a hotswap VMM?)")
    (stored,) = CRC.unpack_from(header, HEADER.size)
    if stored != zlib.crc32(header[: HEADER.size]):
        raise ValueError("header checksum mismatch (stream out of sync or corrupted)")
    msg_type = _TYPES.get(raw_type)
    if msg_type is None:
        raise ValueError(f"unknown message type {raw_type:#06x}")
    if flags & ~KNOWN_FLAGS:
        raise ValueError(f"unknown flags {flags:#06x} on {msg_type.name}")
    return msg_type, flags, nfds, length


# --- payloads -----------------------------------------------------------------------------------------------

_ERROR = struct.Struct("<I")
MAX_ERROR_MESSAGE = 16 * 1024  # bytes of UTF-8; longer messages are cut


def encode_error(code: ErrorCode, message: str) -> bytes:
    """ERROR and ABORT payload: u32 code, then the message in UTF-8 (no terminator)."""
    text = message.encode(errors="replace")
    if len(text) > MAX_ERROR_MESSAGE:
        text = text[: MAX_ERROR_MESSAGE - 3].decode(errors="ignore").encode() + b"..."
    return _ERROR.pack(code) + text


def decode_error(payload: bytes) -> tuple[ErrorCode, str]:
    """The (code, message) of an ERROR or ABORT payload. Never fails on the message text: it must reach the user."""
    if len(payload) < _ERROR.size:
        raise ValueError(f"ERROR payload of {len(payload)} bytes is shorter than its {_ERROR.size}-byte code")
    (raw,) = _ERROR.unpack_from(payload)
    text = payload[_ERROR.size :].decode(errors="replace")
    try:
        code = ErrorCode(raw)
    except ValueError:
        code = ErrorCode.UNKNOWN
        text = f"(error code {raw}) {text}"
    return code, text
