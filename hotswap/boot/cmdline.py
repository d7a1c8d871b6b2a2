"""Kernel command line validation and encoding (a NUL-terminated byte string at CMDLINE_ADDR)."""

from __future__ import annotations

from hotswap.boot.errors import BootError
from hotswap.layout import CMDLINE_MAX


def encode_cmdline(cmdline: str, max_len: int) -> bytes:
    """The command line as the kernel reads it, NUL-terminated; `max_len` excludes the terminator.

    `max_len` comes from the bzImage header's cmdline_size (the kernel silently truncates anything longer, so a
    long line is an error here, not a surprise at run time), capped by the CMDLINE_MAX area reserved for it.
    """
    if "\0" in cmdline:
        raise BootError("cmdline: contains a NUL byte")
    data = cmdline.encode("utf-8")
    limit = min(max_len, CMDLINE_MAX - 1)
    if len(data) > limit:
        raise BootError(f"cmdline: {len(data)} bytes is longer than the kernel's limit of {limit}")
    return data + b"\0"
