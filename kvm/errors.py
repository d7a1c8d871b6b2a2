"""The kvm package's exception hierarchy: every failure names the operation and the errno."""

from __future__ import annotations

import errno as errno_module
import os

from devices.errors import GuestMemoryError


class KvmError(Exception):
    """A KVM operation failed. `op` is the ioctl or syscall name, `errno` the error number."""

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        self.op = op
        self.errno = err
        self.detail = detail
        name = errno_module.errorcode.get(err, str(err))
        text = f"{op} failed: {name} ({os.strerror(err)})"
        super().__init__(f"{text}: {detail}" if detail else text)


class KvmUnavailable(KvmError):
    """/dev/kvm cannot be opened or speaks an unexpected API version."""


class CapabilityMissing(KvmError):
    """The host's KVM lacks a capability hotswap needs."""

    def __init__(self, capability: str) -> None:
        super().__init__("KVM_CHECK_EXTENSION", errno_module.ENOSYS, f"host KVM lacks {capability}")
        self.capability = capability


class MemoryAccessError(KvmError, GuestMemoryError):
    """A guest-physical range is not inside guest RAM.

    Also a devices.errors.GuestMemoryError, so device models given a kvm.GuestMemory see the error type their
    GuestMemory protocol promises (devices/errors.py is a leaf module; devices never import kvm).
    """

    def __init__(self, gpa: int, size: int) -> None:
        super().__init__("guest memory access", errno_module.EFAULT, f"[{gpa:#x}, +{size:#x}) is outside guest RAM")
        self.gpa = gpa
        self.size = size
