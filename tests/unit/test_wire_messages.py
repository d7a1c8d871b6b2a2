"""Header framing, ERROR payloads, HELLO and version negotiation (no sockets)."""

from __future__ import annotations

import struct
import zlib

import pytest

from hotswap.state import CURRENT_FORMAT
from hotswap.wire import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    ErrorCode,
    Hello,
    MessageType,
    ProtocolError,
    VersionMismatchError,
    decode_error,
    encode_error,
    negotiate,
)
from hotswap.wire.messages import decode_header, encode_header


def test_header_layout() -> None:
    header = encode_header(MessageType.STATE, 0, 3, 0x1234)
    assert len(header) == HEADER_SIZE == 16
    assert header[:2] == b"HS"
    assert struct.unpack_from("<HHHI", header, 2) == (MessageType.STATE, 0, 3, 0x1234)
    assert struct.unpack_from("<I", header, 12)[0] == zlib.crc32(header[:12])
    assert decode_header(header) == (MessageType.STATE, 0, 3, 0x1234)


def test_message_type_numbers_are_stable() -> None:
    # These numbers are on the wire between different builds: they must never change.
    assert [t.value for t in MessageType][:9] == list(range(1, 10))
    assert MessageType.MEMORY_PAGES.value == 0x80
    assert [ErrorCode.UNKNOWN.value, ErrorCode.VERSION_MISMATCH.value, ErrorCode.BUSY.value] == [0, 1, 7]


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"XS", "bad magic b'XS'"),
        (2, struct.pack("<H", 0x7777), "unknown message type 0x7777"),
        (4, struct.pack("<H", 1), "unknown flags 0x0001 on READY"),
    ],
)
def test_header_rejects(offset: int, value: bytes, message: str) -> None:
    header = bytearray(encode_header(MessageType.READY, 0, 0, 0))
    header[offset : offset + len(value)] = value
    header[12:16] = struct.pack("<I", zlib.crc32(bytes(header[:12])))  # a valid CRC: only the field is wrong
    with pytest.raises(ValueError, match=message):
        decode_header(bytes(header))


def test_header_checksum() -> None:
    header = bytearray(encode_header(MessageType.READY, 0, 0, 64))
    header[8] ^= 1  # the length
    with pytest.raises(ValueError, match="header checksum mismatch"):
        decode_header(bytes(header))


def test_error_payload_round_trip() -> None:
    payload = encode_error(ErrorCode.RESTORE_FAILED, "KVM_SET_XSAVE failed: EINVAL — vcpus[1]")
    assert payload[:4] == struct.pack("<I", 3)
    assert decode_error(payload) == (ErrorCode.RESTORE_FAILED, "KVM_SET_XSAVE failed: EINVAL — vcpus[1]")


def test_error_payload_from_a_newer_peer_keeps_its_message() -> None:
    payload = struct.pack("<I", 999) + b"disk \xff quota"
    code, text = decode_error(payload)
    assert code is ErrorCode.UNKNOWN
    assert text == "(error code 999) disk \ufffd quota"


def test_error_payload_too_short() -> None:
    with pytest.raises(ValueError, match="shorter than its 4-byte code"):
        decode_error(b"\x01")


def test_long_error_messages_are_cut() -> None:
    code, text = decode_error(encode_error(ErrorCode.INTERNAL, "é" * 100_000))
    assert code is ErrorCode.INTERNAL
    assert len(text.encode()) <= 16 * 1024
    assert text.endswith("...")


# --- HELLO ------------------------------------------------------------------------------------------------------


def test_hello_round_trip_and_layout() -> None:
    hello = Hello((1, 2), (1,), "1.2.3", 4242)
    payload = hello.encode()
    assert payload == struct.pack("<HHHHHIH", 2, 1, 2, 1, 1, 4242, 5) + b"1.2.3"
    assert Hello.decode(payload) == hello


def test_local_hello() -> None:
    hello = Hello.local()
    assert hello.protocol_versions == SUPPORTED_PROTOCOL_VERSIONS == (1, 2, 3, 4, PROTOCOL_VERSION)
    assert CURRENT_FORMAT in hello.state_formats
    assert hello.pid > 0


@pytest.mark.parametrize("cut", [0, 1, 3, 7, 12])
def test_truncated_hello(cut: int) -> None:
    with pytest.raises(ProtocolError, match="malformed HELLO"):
        Hello.decode(Hello((1,), (1,), "0.1", 7).encode()[:cut])


def test_hello_with_trailing_bytes() -> None:
    with pytest.raises(ProtocolError, match="malformed HELLO"):
        Hello.decode(Hello((1,), (1,), "0.1", 7).encode() + b"x")


def test_negotiate_picks_the_highest_common_version() -> None:
    remote = Hello((1, 2, 3), (1, 2), "0.3", 9)
    assert negotiate(remote, protocol_versions=(1, 2)) == 2
    assert negotiate(remote, protocol_versions=(1,), state_format=2) == 1


def test_negotiate_explains_a_protocol_mismatch() -> None:
    with pytest.raises(VersionMismatchError) as info:
        negotiate(Hello((3, 4), (1,), "0.9.0", 77), protocol_versions=(1, 2))
    assert str(info.value) == "hotswap 0.9.0 (pid 77) speaks protocol versions 3, 4, this build speaks 1, 2"


def test_negotiate_explains_a_state_format_mismatch() -> None:
    with pytest.raises(VersionMismatchError) as info:
        negotiate(Hello((1,), (3, 4), "0.9.0", 77), state_format=1)
    assert str(info.value) == "hotswap 0.9.0 (pid 77) reads state formats 3, 4, this build writes format 1"
