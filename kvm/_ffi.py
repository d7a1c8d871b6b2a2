"""The compiled cffi module behind a small typed facade: ioctl helpers that raise KvmError."""

from __future__ import annotations

from typing import Any

from kvm.errors import KvmError

try:
    from kvm._kvm_cffi import ffi, lib
except ImportError:  # a source checkout that was never built: compile in place once
    from kvm._build import build_in_place

    build_in_place()
    from kvm._kvm_cffi import ffi, lib

__all__ = ["NULL", "CData", "ffi", "ioctl", "ioctl_int", "lib"]

CData = Any  # cffi's cdata objects are untyped
NULL = ffi.NULL


def ioctl(fd: int, request: int, arg: CData, op: str) -> int:
    """ioctl with a pointer argument; raises KvmError(op, errno) on failure."""
    rc: int = lib.hs_ioctl_ptr(fd, request, arg)
    if rc < 0:
        raise KvmError(op, -rc)
    return rc


def ioctl_int(fd: int, request: int, arg: int, op: str) -> int:
    """ioctl with an integer argument; raises KvmError(op, errno) on failure."""
    rc: int = lib.hs_ioctl_int(fd, request, arg)
    if rc < 0:
        raise KvmError(op, -rc)
    return rc
