"""The state container: a header, the encoded tree and a checksum.

    offset  size  field
    0       8     magic b"HSVMSTAT"
    8       2     format version (u16, little-endian)
    10      2     flags (u16; none are defined, a reader rejects any it does not know)
    12      8     payload length (u64)
    20      n     payload: the tree, encoded by hotswap.state.codec
    20+n    4     CRC32 (zlib) of header and payload (u32)

The container layout itself never changes; the format version says how the payload is to be read.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from hotswap.state.codec import decode, encode
from hotswap.state.errors import (
    BadChecksumError,
    BadMagicError,
    LengthMismatchError,
    StateSchemaError,
    UnknownFlagsError,
    UnsupportedVersionError,
)
from hotswap.state.schema import FORMATS, FormatRegistry, validate_tree
from hotswap.state.types import StateDict

MAGIC = b"HSVMSTAT"
KNOWN_FLAGS = 0x0000

_HEADER = struct.Struct("<8sHHQ")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
TRAILER_SIZE = _CRC.size


class Unpacked(NamedTuple):
    version: int  # the format the container was written in
    tree: StateDict  # already upgraded to the current format


def pack(tree: StateDict, version: int | None = None, *, formats: FormatRegistry = FORMATS) -> bytes:
    """Encode `tree` into a container of format `version` (default: the current one).

    The tree must already be in that format: nothing is downgraded. Writing the previous format exists so tests can
    produce old-format files; a tree in the current format has its top level checked before it is written.
    """
    if version is None:
        version = formats.current
    if version not in formats.readable:
        raise UnsupportedVersionError(version, formats.readable)
    if version == formats.current:
        validate_tree(tree)
    return _seal(tree, version)


def pack_part(part: StateDict, *, formats: FormatRegistry = FORMATS) -> bytes:
    """A container of the current format holding some of a tree's top-level fields (a handover sends the vCPUs
    and the rest in two). The whole is checked where the parts are joined: join_parts."""
    return _seal(part, formats.current)


def join_parts(parts: list[Unpacked], *, formats: FormatRegistry = FORMATS) -> Unpacked:
    """One tree from parts opened with unpack_part (all of one format, no field in two), upgraded to the current
    format and checked as unpack would."""
    versions = {part.version for part in parts}
    if len(versions) != 1:
        raise StateSchemaError(f"the state's parts are of different formats: {sorted(versions)}")
    tree: StateDict = {}
    for part in parts:
        twice = set(tree) & set(part.tree)
        if twice:
            raise StateSchemaError(f"the state's parts both hold {', '.join(sorted(twice))}")
        tree.update(part.tree)
    version = versions.pop()
    return Unpacked(version, validate_tree(formats.upgrade(tree, version)))


def _seal(tree: StateDict, version: int) -> bytes:
    payload = encode(tree)
    header = _HEADER.pack(MAGIC, version, 0, len(payload))
    checksum = zlib.crc32(payload, zlib.crc32(header))
    return b"".join((header, payload, _CRC.pack(checksum)))


def unpack(blob: bytes | bytearray | memoryview, *, formats: FormatRegistry = FORMATS) -> Unpacked:
    """Check and decode a container; returns the version it was written in and the tree in the current format."""
    opened = unpack_part(blob, formats=formats)
    return Unpacked(opened.version, validate_tree(formats.upgrade(opened.tree, opened.version)))


def unpack_part(blob: bytes | bytearray | memoryview, *, formats: FormatRegistry = FORMATS) -> Unpacked:
    """Check and decode a container (magic, length, checksum, a readable format) without upgrading or checking
    its tree: a part of one (pack_part), or the first step of unpack."""
    data = memoryview(blob).cast("B")
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        found = bytes(data[: len(MAGIC)])
        if len(found) < len(MAGIC) and MAGIC.startswith(found):
            raise LengthMismatchError(f"{len(data)} bytes is too short for a container")
        raise BadMagicError(found, MAGIC)
    if len(data) < HEADER_SIZE + TRAILER_SIZE:
        raise LengthMismatchError(f"{len(data)} bytes is too short for a container")
    _, version, flags, length = _HEADER.unpack_from(data)
    held = len(data) - HEADER_SIZE - TRAILER_SIZE
    if length != held:
        raise LengthMismatchError(f"the header announces {length} payload bytes, the container holds {held}")
    (stored,) = _CRC.unpack_from(data, HEADER_SIZE + length)
    computed = zlib.crc32(data[: HEADER_SIZE + length])
    if stored != computed:
        raise BadChecksumError(stored, computed)
    if version not in formats.readable:
        raise UnsupportedVersionError(version, formats.readable)
    if flags & ~KNOWN_FLAGS:
        raise UnknownFlagsError(flags)
    tree = decode(data[HEADER_SIZE : HEADER_SIZE + length])
    if not isinstance(tree, dict):
        raise StateSchemaError(f"the state tree has type {type(tree).__name__}, expected dict")
    return Unpacked(version, tree)
