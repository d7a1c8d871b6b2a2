"""HELLO: what a peer speaks, and the version check both sides make before anything else.

Payload layout (frozen: it never changes, so any two builds can read each other's HELLO; new capabilities come
with a new protocol version, which HELLO negotiates):

    u16 n, n x u16     protocol versions spoken
    u16 m, m x u16     state format versions read
    u32                pid
    u16 k, k bytes     package version (UTF-8)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from hotswap import __version__
from hotswap.state.schema import FORMATS
from hotswap.wire.errors import ProtocolError, VersionMismatchError
from hotswap.wire.messages import SUPPORTED_PROTOCOL_VERSIONS

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Hello:
    protocol_versions: tuple[int, ...]
    state_formats: tuple[int, ...]
    package_version: str
    pid: int

    @classmethod
    def local(cls) -> Hello:
        """This build's HELLO."""
        return cls(SUPPORTED_PROTOCOL_VERSIONS, tuple(sorted(FORMATS.readable)), __version__, os.getpid())

    def describe(self) -> str:
        return f"hotswap {self.package_version} (pid {self.pid})"

    def encode(self) -> bytes:
        version = self.package_version.encode()
        parts = [_U16.pack(len(self.protocol_versions))]
        parts += [_U16.pack(v) for v in self.protocol_versions]
        parts.append(_U16.pack(len(self.state_formats)))
        parts += [_U16.pack(v) for v in self.state_formats]
        parts += [_U32.pack(self.pid), _U16.pack(len(version)), version]
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        try:
            pos = 0
            protocols, pos = _read_u16_list(payload, pos)
            formats, pos = _read_u16_list(payload, pos)
            (pid,) = _U32.unpack_from(payload, pos)
            (size,) = _U16.unpack_from(payload, pos + 4)
            pos += 6
            if pos + size != len(payload):
                raise ValueError(f"{len(payload) - pos - size} bytes after the package version")
            version = payload[pos:].decode()
        except (struct.error, ValueError) as err:
            raise ProtocolError(f"wire: malformed HELLO payload ({err})") from None
        return cls(protocols, formats, version, pid)


def _read_u16_list(payload: bytes, pos: int) -> tuple[tuple[int, ...], int]:
    (count,) = _U16.unpack_from(payload, pos)
    values = struct.unpack_from(f"<{count}H", payload, pos + 2)
    return values, pos + 2 + 2 * count


def negotiate(
    remote: Hello,
    *,
    protocol_versions: tuple[int, ...] = SUPPORTED_PROTOCOL_VERSIONS,
    state_format: int | None = None,
) -> int:
    """The protocol version to use with `remote`: the highest both speak. If `state_format` is given (the format
    this side will send), `remote` must read it. Raises VersionMismatchError saying which versions each side has."""
    common = set(protocol_versions) & set(remote.protocol_versions)
    if not common:
        raise VersionMismatchError(
            f"{remote.describe()} speaks protocol versions {_names(remote.protocol_versions)}, "
            f"this build speaks {_names(protocol_versions)}"
        )
    if state_format is not None and state_format not in remote.state_formats:
        raise VersionMismatchError(
            f"{remote.describe()} reads state formats {_names(remote.state_formats)}, "
            f"this build writes format {state_format}"
        )
    return max(common)


def _names(versions: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in sorted(versions)) or "none"
