"""The boot loader's exception: one type, whose message names the file or structure and the problem."""

from __future__ import annotations


class BootError(Exception):
    """The kernel, initrd, command line or RAM layout cannot be booted (a user-facing one-line message)."""
