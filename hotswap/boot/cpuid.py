"""Shaping the CPUID table of one vCPU from what KVM supports (KVM_GET_SUPPORTED_CPUID).

KVM reports what the host can virtualize, but not this VM's topology nor anything per vCPU. Each change below
says why it is made:

- Leaf 1 EBX[31:24] is the initial APIC id: the guest takes it as the CPU's identity, and it must match the id
  the in-kernel LAPIC has (the vCPU index) and the MP table lists. EBX[23:16] is the number of logical processor
  ids in the package (all vCPUs sit in one package), meaningful only with EDX.HTT, so HTT is set exactly when
  there is more than one vCPU. ECX[31] tells the guest it runs under a hypervisor, which makes Linux look for
  the KVM leaves (kvm-clock, PV EOI, steal time).
- Leaves 0xB and 0x1F (extended topology) give the x2APIC id in EDX; we describe one thread per core and all
  vCPUs as cores of one package: level 0 SMT (shift 0, 1 thread), level 1 core (shift = bits for the vCPU count,
  that many processors), then the invalid terminating level. Only rewritten if KVM reports the leaf.
- Leaf 4 (Intel cache parameters) EAX[31:26] is "cores per package - 1" and EAX[25:14] "threads sharing this
  cache - 1"; they must agree with the topology above or Linux miscounts cores. L1/L2 are private to a core,
  L3 shared by all vCPUs. AMD's 0x8000001D carries the same sharing field; 0x80000008 ECX has the core count
  (NC) and the APIC id width; 0x8000001E has the per-vCPU extended APIC id and core id (Linux reads it on AMD
  with TOPOEXT). Each is rewritten only when present.
- 0x40000000 is the KVM signature "KVMKVMKVM\\0\\0\\0"; its EAX (the highest hypervisor leaf) is raised to
  0x40000010 so the guest reads the timing leaf. 0x40000001 (KVM paravirt features) is passed as KVM reports
  it: advertising a feature KVM lacks would break the guest. 0x40000010 (the hypervisor timing leaf VMware
  defined; the project's test guest reads it, Linux uses kvm-clock instead) gives the TSC frequency in kHz
  (this CPU has no leaf 0x15/0x16, so a guest would otherwise calibrate against the PIT, slowly, under
  emulation) and the LAPIC timer frequency, 1 GHz for KVM's in-kernel LAPIC, which counts in nanoseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from hotswap.boot.errors import BootError

KVM_CPUID_FLAG_SIGNIFICANT_INDEX = 1
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_CPUID_SIGNATURE = 0x4000_0000
KVM_CPUID_FEATURES = 0x4000_0001
KVM_CPUID_TIMING = 0x4000_0010
LAPIC_BUS_KHZ = 1_000_000  # KVM's LAPIC timer ticks once per nanosecond
MAX_VCPUS = 255  # leaf 1 carries an 8-bit APIC id

LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_HTT = 1 << 28
TOPOLOGY_LEVEL_INVALID = 0
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2


@dataclass(frozen=True)
class CpuidEntry:
    """One struct kvm_cpuid_entry2 (without padding)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def leaf(entries: Iterable[CpuidEntry], function: int, index: int = 0) -> CpuidEntry | None:
    """The entry for (function, index), if present."""
    for entry in entries:
        if entry.function == function and entry.index == index:
            return entry
    return None


def core_id_bits(cpus: int) -> int:
    """Bits of the APIC id that number the cores of the package (ceil(log2(cpus)))."""
    return (cpus - 1).bit_length()


def shape_cpuid(supported: Sequence[CpuidEntry], vcpu_index: int, cpus: int, tsc_khz: int) -> list[CpuidEntry]:
    """The CPUID table to set on vCPU `vcpu_index` of `cpus`, from KVM's supported table (input order kept,
    the KVM paravirt leaves added when missing)."""
    if not 1 <= cpus <= MAX_VCPUS:
        raise BootError(f"cpuid: {cpus} vCPUs is outside 1..{MAX_VCPUS}")
    if not 0 <= vcpu_index < cpus:
        raise BootError(f"cpuid: vCPU index {vcpu_index} is outside 0..{cpus - 1}")
    if not 0 < tsc_khz <= 0xFFFF_FFFF:
        raise BootError(f"cpuid: TSC frequency {tsc_khz} kHz is not a positive 32-bit value")

    out: list[CpuidEntry] = []
    for entry in supported:
        if entry.function in (0xB, 0x1F):
            if entry.index == 0:  # all subleaves are regenerated from subleaf 0's position
                out.extend(_extended_topology(entry, vcpu_index, cpus))
            continue
        if entry.function in (KVM_CPUID_SIGNATURE, KVM_CPUID_TIMING):
            continue  # re-added below with our values
        out.append(_shape_leaf(entry, vcpu_index, cpus))

    features = leaf(supported, KVM_CPUID_FEATURES)
    if features is None:
        out.append(CpuidEntry(KVM_CPUID_FEATURES, 0, 0, 0, 0, 0, 0))
    ebx, ecx, edx = (int.from_bytes(KVM_SIGNATURE[i : i + 4], "little") for i in (0, 4, 8))
    out.append(CpuidEntry(KVM_CPUID_SIGNATURE, 0, 0, KVM_CPUID_TIMING, ebx, ecx, edx))
    out.append(CpuidEntry(KVM_CPUID_TIMING, 0, 0, tsc_khz, LAPIC_BUS_KHZ, 0, 0))
    return out


def _shape_leaf(entry: CpuidEntry, vcpu_index: int, cpus: int) -> CpuidEntry:
    if entry.function == 1:
        ebx = (entry.ebx & 0x0000_FFFF) | (vcpu_index << 24) | (cpus << 16)
        edx = entry.edx | LEAF1_EDX_HTT if cpus > 1 else entry.edx & ~LEAF1_EDX_HTT
        return replace(entry, ebx=ebx, ecx=entry.ecx | LEAF1_ECX_HYPERVISOR, edx=edx)
    if entry.function == 4 and entry.eax & 0x1F:  # cache type 0 ends the list
        eax = entry.eax & 0x3FFF | (min(cpus - 1, 0x3F) << 26) | (_sharing(entry.eax, cpus) << 14)
        return replace(entry, eax=eax)
    if entry.function == 0x8000_001D and entry.eax & 0x1F:
        return replace(entry, eax=entry.eax & ~(0xFFF << 14) | (_sharing(entry.eax, cpus) << 14))
    if entry.function == 0x8000_0008:
        ecx = entry.ecx & ~0xF0FF | (core_id_bits(cpus) << 12) | (cpus - 1)
        return replace(entry, ecx=ecx)
    if entry.function == 0x8000_001E:
        # EAX extended APIC id; EBX core id, 1 thread per core; ECX node 0 of 1.
        return replace(entry, eax=vcpu_index, ebx=vcpu_index & 0xFF, ecx=0)
    return entry


def _sharing(eax: int, cpus: int) -> int:
    """'Logical processors sharing this cache - 1' from the cache level in EAX[7:5]."""
    level = (eax >> 5) & 0x7
    return min(cpus - 1, 0xFFF) if level >= 3 else 0


def _extended_topology(entry: CpuidEntry, vcpu_index: int, cpus: int) -> list[CpuidEntry]:
    flags = entry.flags | KVM_CPUID_FLAG_SIGNIFICANT_INDEX
    levels = [
        (0, 1, TOPOLOGY_LEVEL_SMT),
        (core_id_bits(cpus), cpus, TOPOLOGY_LEVEL_CORE),
        (0, 0, TOPOLOGY_LEVEL_INVALID),
    ]
    return [
        CpuidEntry(entry.function, index, flags, shift, count, (kind << 8) | index, vcpu_index)
        for index, (shift, count, kind) in enumerate(levels)
    ]
