"""Typed KVM bindings: Kvm -> Vm -> Vcpu, GuestMemory on memfds, typed exits, state capture and restore.

Struct layouts and ioctl numbers come from the system's <linux/kvm.h> through cffi's API mode (see _build.py).
This package never imports hotswap.
"""

from kvm.cpuid import CpuidEntry
from kvm.errors import CapabilityMissing, KvmError, KvmUnavailable, MemoryAccessError
from kvm.memory import GuestMemory, MemoryRegion, RegionSpec
from kvm.system import Kvm
from kvm.vcpu import Vcpu
from kvm.vm import Vm

__all__ = [
    "CapabilityMissing",
    "CpuidEntry",
    "GuestMemory",
    "Kvm",
    "KvmError",
    "KvmUnavailable",
    "MemoryAccessError",
    "MemoryRegion",
    "RegionSpec",
    "Vcpu",
    "Vm",
]
