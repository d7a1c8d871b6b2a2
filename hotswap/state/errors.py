"""The state package's exception hierarchy. Every message names the operation and, where it applies, the place
in the tree (`vcpus[1].regs`) or the byte offset."""

from __future__ import annotations

from collections.abc import Iterable


class StateError(Exception):
    """Base of every error raised while encoding, decoding, packing or checking VM state."""


class StateFormatError(StateError):
    """Bytes are not a valid encoding of a state tree (unknown tag, truncation, trailing bytes, ...)."""


class StateEncodeError(StateError):
    """A tree holds something the codec cannot represent (a float, a tuple, a non-str key, too deep)."""


class StateSchemaError(StateError):
    """A well-formed tree has the wrong shape: an unknown or missing field, or a value of the wrong type."""


class StateUpgradeError(StateError):
    """Upgrading a tree from format N-1 to N failed."""


class StateContainerError(StateError):
    """The container around the encoded tree is damaged or from an incompatible build."""


class BadMagicError(StateContainerError):
    def __init__(self, found: bytes, expected: bytes) -> None:
        super().__init__(f"state container: bad magic {found!r}, expected {expected!r} (not a hotswap state)")


class UnsupportedVersionError(StateContainerError):
    def __init__(self, version: int, readable: Iterable[int]) -> None:
        self.version = version
        self.readable = tuple(sorted(readable))
        names = ", ".join(str(v) for v in self.readable)
        super().__init__(f"state container: format version {version} is not supported (this build reads {names})")


class UnknownFlagsError(StateContainerError):
    def __init__(self, flags: int) -> None:
        super().__init__(f"state container: unknown flags {flags:#06x}")


class LengthMismatchError(StateContainerError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"state container: length mismatch: {detail}")


class BadChecksumError(StateContainerError):
    def __init__(self, found: int, computed: int) -> None:
        super().__init__(f"state container: bad checksum {found:#010x}, computed {computed:#010x} (data corrupted)")
