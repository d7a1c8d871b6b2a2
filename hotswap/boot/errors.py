"""The boot loader's exception: one type, whose message names the file or structure and the problem."""

from __future__ import annotations

from hotswap.errors import ConfigError


class BootError(ConfigError):
    """The kernel, initrd, command line or RAM layout cannot be booted (a user-facing one-line message).

    A ConfigError, so the VMM reports it like any other machine that cannot be built as asked."""
