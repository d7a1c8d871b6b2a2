"""State files on disk (fixtures for tests, snapshots): written atomically, read with every container check."""

from __future__ import annotations

import os
from pathlib import Path

from hotswap.state.container import Unpacked, pack, unpack
from hotswap.state.errors import StateError
from hotswap.state.schema import FORMATS, FormatRegistry
from hotswap.state.types import StateDict


def save_file(
    path: str | os.PathLike[str], tree: StateDict, version: int | None = None, *, formats: FormatRegistry = FORMATS
) -> None:
    """Write `tree` as a state container; a crash mid-write leaves either the old file or the new one."""
    target = Path(path)
    blob = pack(tree, version, formats=formats)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load_file(path: str | os.PathLike[str], *, formats: FormatRegistry = FORMATS) -> Unpacked:
    """Read a state file; returns the version it was written in and the tree in the current format."""
    blob = Path(path).read_bytes()
    try:
        return unpack(blob, formats=formats)
    except StateError as err:
        err.args = (f"{os.fspath(path)}: {err}",)  # same exception type, message names the file
        raise
