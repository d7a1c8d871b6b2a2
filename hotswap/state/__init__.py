"""The versioned VM state tree: its binary codec, the file container around it and the format versions.

codec      tree <-> bytes (tagged values, strict decoder)
container  magic + format version + flags + length + payload + CRC32
schema     format versions, N-1 -> N upgrades, field and top-level shape checks
files      save_file / load_file
"""

from __future__ import annotations

from hotswap.state import upgrades  # noqa: F401 - registers the N-1 -> N upgrade with FORMATS
from hotswap.state.codec import MAX_DEPTH, decode, encode
from hotswap.state.container import HEADER_SIZE, MAGIC, Unpacked, join_parts, pack, pack_part, unpack, unpack_part
from hotswap.state.errors import (
    BadChecksumError,
    BadMagicError,
    LengthMismatchError,
    StateContainerError,
    StateEncodeError,
    StateError,
    StateFormatError,
    StateSchemaError,
    StateUpgradeError,
    UnknownFlagsError,
    UnsupportedVersionError,
)
from hotswap.state.files import load_file, save_file
from hotswap.state.schema import (
    CURRENT_FORMAT,
    FORMATS,
    FormatRegistry,
    check_fields,
    field_path,
    get_field,
    index_path,
    validate_tree,
)
from hotswap.state.types import StateDict, StateValue

__all__ = [
    "CURRENT_FORMAT",
    "FORMATS",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DEPTH",
    "BadChecksumError",
    "BadMagicError",
    "FormatRegistry",
    "LengthMismatchError",
    "StateContainerError",
    "StateDict",
    "StateEncodeError",
    "StateError",
    "StateFormatError",
    "StateSchemaError",
    "StateUpgradeError",
    "StateValue",
    "UnknownFlagsError",
    "Unpacked",
    "UnsupportedVersionError",
    "check_fields",
    "decode",
    "encode",
    "field_path",
    "get_field",
    "index_path",
    "join_parts",
    "load_file",
    "pack",
    "pack_part",
    "save_file",
    "unpack",
    "unpack_part",
    "validate_tree",
]
