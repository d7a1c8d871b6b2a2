"""`Kvm`: the /dev/kvm system fd. Creates VMs and answers capability and host-wide questions."""

from __future__ import annotations

import errno
import os
from types import TracebackType
from typing import TYPE_CHECKING

from kvm._ffi import ffi, ioctl, ioctl_int, lib
from kvm.cpuid import CpuidEntry, alloc_cpuid2, entries_from_cpuid2
from kvm.errors import CapabilityMissing, KvmError, KvmUnavailable

if TYPE_CHECKING:
    from kvm.vm import Vm

KVM_DEVICE = "/dev/kvm"

# Capabilities a hotswap machine cannot run without.
REQUIRED_CAPABILITIES = {
    "KVM_CAP_IRQCHIP": lib.KVM_CAP_IRQCHIP,
    "KVM_CAP_PIT2": lib.KVM_CAP_PIT2,
    "KVM_CAP_USER_MEMORY": lib.KVM_CAP_USER_MEMORY,
    "KVM_CAP_SET_TSS_ADDR": lib.KVM_CAP_SET_TSS_ADDR,
    "KVM_CAP_EXT_CPUID": lib.KVM_CAP_EXT_CPUID,
    "KVM_CAP_IRQFD": lib.KVM_CAP_IRQFD,
    "KVM_CAP_IOEVENTFD": lib.KVM_CAP_IOEVENTFD,
    "KVM_CAP_IMMEDIATE_EXIT": lib.KVM_CAP_IMMEDIATE_EXIT,
    "KVM_CAP_MP_STATE": lib.KVM_CAP_MP_STATE,
    "KVM_CAP_VCPU_EVENTS": lib.KVM_CAP_VCPU_EVENTS,
    "KVM_CAP_DEBUGREGS": lib.KVM_CAP_DEBUGREGS,
    "KVM_CAP_XSAVE": lib.KVM_CAP_XSAVE,
    "KVM_CAP_XCRS": lib.KVM_CAP_XCRS,
    "KVM_CAP_ADJUST_CLOCK": lib.KVM_CAP_ADJUST_CLOCK,
    "KVM_CAP_PIT_STATE2": lib.KVM_CAP_PIT_STATE2,
}

# KVM paravirtual MSRs (kvm-clock, async PF, steal time, PV EOI, poll control, ...) live in this range.
KVM_PARAVIRT_MSR_FIRST = 0x4B564D00
KVM_PARAVIRT_MSR_LAST = 0x4B564DFF
MSR_IA32_MCG_CAP = 0x179
MSR_IA32_MCG_STATUS = 0x17A
MSR_IA32_MCG_CTL = 0x17B
MSR_IA32_MC0_CTL = 0x400


class Kvm:
    """The /dev/kvm handle. Owns its fd; use as a context manager or call close()."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise KvmUnavailable(f"open {path}", exc.errno or errno.ENODEV) from None
        version = ioctl_int(self.fd, lib.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != lib.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(
                "KVM_GET_API_VERSION", errno.EINVAL, f"API version {version}, need {lib.KVM_API_VERSION}"
            )
        self._supported_cpuid: list[CpuidEntry] | None = None
        self._msr_indices: list[int] | None = None

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- capabilities -----------------------------------------------------------------------------------------
    def check_extension(self, capability: int) -> int:
        return ioctl_int(self.fd, lib.KVM_CHECK_EXTENSION, capability, "KVM_CHECK_EXTENSION")

    def require_capabilities(self) -> None:
        for name, cap in REQUIRED_CAPABILITIES.items():
            if self.check_extension(cap) <= 0:
                raise CapabilityMissing(name)

    def max_vcpus(self) -> int:
        return self.check_extension(lib.KVM_CAP_MAX_VCPUS) or self.check_extension(lib.KVM_CAP_NR_VCPUS) or 4

    def recommended_vcpus(self) -> int:
        return self.check_extension(lib.KVM_CAP_NR_VCPUS) or 4

    def vcpu_mmap_size(self) -> int:
        return ioctl_int(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")

    # -- host-wide tables -------------------------------------------------------------------------------------
    def supported_cpuid(self) -> list[CpuidEntry]:
        if self._supported_cpuid is None:
            cpuid = alloc_cpuid2()
            ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID")
            self._supported_cpuid = entries_from_cpuid2(cpuid)
        return list(self._supported_cpuid)

    def msr_index_list(self) -> list[int]:
        """The MSRs KVM saves and restores (KVM_GET_MSR_INDEX_LIST), without duplicates, in KVM's order."""
        if self._msr_indices is None:
            probe = ffi.new("struct kvm_msr_list *", {"nmsrs": 0, "indices": 0})
            try:
                ioctl(self.fd, lib.KVM_GET_MSR_INDEX_LIST, probe, "KVM_GET_MSR_INDEX_LIST")
            except KvmError as exc:
                if exc.errno != errno.E2BIG:
                    raise
            count = probe.nmsrs
            listing = ffi.new("struct kvm_msr_list *", {"nmsrs": count, "indices": count})
            listing.nmsrs = count
            ioctl(self.fd, lib.KVM_GET_MSR_INDEX_LIST, listing, "KVM_GET_MSR_INDEX_LIST")
            seen: dict[int, None] = {}
            for i in range(listing.nmsrs):
                seen.setdefault(int(listing.indices[i]), None)
            self._msr_indices = list(seen)
        return list(self._msr_indices)

    def create_vm(self) -> Vm:
        from kvm.vm import Vm

        fd = ioctl_int(self.fd, lib.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        return Vm(self, fd)
