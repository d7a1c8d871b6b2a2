"""The KVM side of a machine: VM, irqchip, PIT, memory slots and vCPUs with their CPUID and MSR lists.

Built the same way for a fresh boot and for a successor taking over a live guest (which adopts the memfds instead
of creating them), and always completely before a handover pauses the guest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hotswap.boot.cpuid import CpuidEntry, shape_cpuid
from hotswap.errors import ConfigError
from hotswap.layout import KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR
from kvm import GuestMemory, Kvm, RegionSpec, Vcpu, Vm, vcpu_state, vm_state


@dataclass
class Platform:
    kvm: Kvm
    vm: Vm
    memory: GuestMemory
    vcpus: list[Vcpu]
    tsc_khz: int
    cpuid: list[CpuidEntry]
    timings_us: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        self.vm.close()
        self.memory.close()
        self.kvm.close()


def build_platform(cpus: int, regions: Sequence[RegionSpec], memory_fds: Sequence[int] | None = None) -> Platform:
    """Create the VM. With memory_fds, map those memfds (a live upgrade) instead of allocating new RAM."""
    timings: dict[str, int] = {}
    start = time.perf_counter_ns()
    kvm = Kvm()
    try:
        kvm.require_capabilities()
        if cpus > kvm.max_vcpus():
            raise ConfigError(f"--cpus {cpus}: this host's KVM allows at most {kvm.max_vcpus()} vCPUs")
        vm = kvm.create_vm()
    except BaseException:
        kvm.close()
        raise
    memory: GuestMemory | None = None
    try:
        vm.set_tss_addr(KVM_TSS_ADDR)
        vm.set_identity_map_addr(KVM_IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2()
        memory = GuestMemory.create(regions) if memory_fds is None else GuestMemory.adopt(regions, memory_fds)
        for slot, region in enumerate(memory.regions):
            vm.set_memory_region(slot, region.gpa, region.size, region.host_addr)
        timings["memslots_us"] = (time.perf_counter_ns() - start) // 1000
        supported = [
            CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in kvm.supported_cpuid()
        ]
        vcpus: list[Vcpu] = []
        tsc_khz = 0
        msr_list: list[int] | None = None
        for index in range(cpus):
            vcpu = vm.create_vcpu(index)
            if index == 0:
                tsc_khz = vcpu.get_tsc_khz()
            vcpu.set_cpuid(shape_cpuid(supported, vcpu_index=index, cpus=cpus, tsc_khz=tsc_khz))
            if msr_list is None:
                msr_list = vcpu_state.msr_candidates(kvm, vcpu)
            vcpu_state.prepare(vcpu, msr_list)
            vcpus.append(vcpu)
        vm_state.prepare(vm)
        timings["platform_us"] = (time.perf_counter_ns() - start) // 1000
        return Platform(kvm, vm, memory, vcpus, tsc_khz, supported, timings)
    except BaseException:
        vm.close()
        if memory is not None:
            memory.close()  # memfds that were not adopted yet stay the caller's
        kvm.close()
        raise
