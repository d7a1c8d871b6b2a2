"""Capture and restore of one vCPU's complete architectural state, in the order that keeps it intact.

Capture (every vCPU of the VM paused):
  MP_STATE first: reading it makes KVM latch pending LAPIC events (INIT/SIPI) into the state it reports.
  Then REGS, SREGS, XSAVE(2), XCRS, DEBUGREGS, LAPIC, MSRs, the TSC offset, and VCPU_EVENTS last, so an exception or
  interrupt that became pending while we read the rest is still reported.
Restore into a fresh vCPU (CPUID already set at creation, before the pause):
  MP_STATE -> REGS -> SREGS -> XSAVE -> XCRS -> DEBUGREGS -> LAPIC -> TSC offset -> MSRs -> TSC_DEADLINE -> EVENTS
  -> KVMCLOCK_CTRL.
  - SET_REGS/SET_SREGS clear pending exceptions, so VCPU_EVENTS (which carries them) must come after both.
  - The LAPIC must be set before the MSRs: writing MSR_IA32_TSC_DEADLINE arms the LAPIC timer, which a later
    SET_LAPIC would reset and lose.
  - The TSC offset goes before TSC_DEADLINE: KVM turns the deadline into a host timer using the guest TSC at the
    moment of the write. Same host, same physical TSC: copying the offset makes the guest TSC run straight through.
  - TSC_DEADLINE is written last and alone; a zero deadline means "disarmed" and is not written at all.
  - KVMCLOCK_CTRL at the very end tells the guest's kvm-clock it was stopped (no soft-lockup reports after the
    pause); advisory: without a kvm-clock page it fails with EINVAL, which changes nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from kvm.batch import IoctlBatch
from kvm.system import (
    KVM_PARAVIRT_MSR_FIRST,
    MSR_IA32_MC0_CTL,
    MSR_IA32_MCG_CAP,
    MSR_IA32_MCG_CTL,
    MSR_IA32_MCG_STATUS,
    Kvm,
)
from kvm.vcpu import Vcpu

MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0
# The guest TSC travels as KVM's TSC offset (exact, same host); writing IA32_TSC as an MSR would make KVM try to
# "synchronize" it with the other vCPUs.
MSRS_NOT_SAVED = frozenset({MSR_IA32_TSC})


@dataclass(slots=True)
class VcpuState:
    id: int
    mp_state: int
    regs: bytes
    sregs: bytes
    xsave: bytes
    xcrs: bytes
    debugregs: bytes
    lapic: bytes
    msrs: bytes  # raw struct kvm_msr_entry array: u32 index, u32 reserved, u64 data (little-endian)
    tsc_offset: int
    vcpu_events: bytes

    FIELDS = (
        "id",
        "mp_state",
        "regs",
        "sregs",
        "xsave",
        "xcrs",
        "debugregs",
        "lapic",
        "msrs",
        "tsc_offset",
        "vcpu_events",
    )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "mp_state": self.mp_state,
            "regs": self.regs,
            "sregs": self.sregs,
            "xsave": self.xsave,
            "xcrs": self.xcrs,
            "debugregs": self.debugregs,
            "lapic": self.lapic,
            "msrs": self.msrs,
            "tsc_offset": self.tsc_offset,
            "vcpu_events": self.vcpu_events,
        }


def msr_candidates(kvm: Kvm, vcpu: Vcpu) -> list[int]:
    """Every MSR worth saving: KVM's index list, the KVM paravirt MSRs (kvm-clock, async PF, steal time, PV EOI),
    the machine-check registers, minus those that travel another way. Filtered to what this host can read."""
    candidates: dict[int, None] = dict.fromkeys(kvm.msr_index_list())
    for index in range(KVM_PARAVIRT_MSR_FIRST, KVM_PARAVIRT_MSR_FIRST + 0x10):
        candidates.setdefault(index, None)
    candidates.setdefault(MSR_IA32_MCG_STATUS, None)
    candidates.setdefault(MSR_IA32_MCG_CTL, None)
    mcg_cap = vcpu.read_msr(MSR_IA32_MCG_CAP)
    if mcg_cap is not None:
        banks = mcg_cap & 0xFF
        for bank in range(banks):
            for register in range(4):  # CTL, STATUS, ADDR, MISC
                candidates.setdefault(MSR_IA32_MC0_CTL + 4 * bank + register, None)
    wanted = [i for i in candidates if i not in MSRS_NOT_SAVED]
    readable = vcpu.readable_msrs(wanted)
    # TSC_DEADLINE read last keeps restore's "write it last" order natural.
    readable.sort(key=lambda i: i == MSR_IA32_TSC_DEADLINE)
    return readable


def prepare(vcpu: Vcpu, msr_indices: Iterable[int]) -> None:
    """Fix the MSR list, allocate capture buffers and build the ioctl batches of a capture and of a restore of a
    state with the same MSR list (deadline armed or not): before any pause."""
    indices = list(msr_indices)
    vcpu.set_msr_indices(indices)
    others = len([index for index in indices if index != MSR_IA32_TSC_DEADLINE])
    for deadline in (False, True):
        restore_batch(vcpu, others, deadline)
    capture_batch(vcpu)


# Every ioctl of a capture, and of a restore, runs in one C call (kvm/batch.py), in these orders.
CAPTURE_ORDER = ("mp_state", "regs", "sregs", "xsave", "xcrs", "debugregs", "lapic", "msrs", "tsc_offset",
                 "vcpu_events")  # fmt: skip
RESTORE_ORDER = ("mp_state", "regs", "sregs", "xsave", "xcrs", "debugregs", "lapic", "tsc_offset", "msrs",
                 "tsc_deadline", "vcpu_events", "kvmclock_ctrl")  # fmt: skip


def capture(vcpu: Vcpu) -> VcpuState:
    """Read the whole state of a paused vCPU (order explained in the module docstring)."""
    capture_batch(vcpu).run()
    blob = vcpu.part_bytes
    return VcpuState(
        vcpu.id,
        mp_state=vcpu.part_int("mp_state"),
        regs=blob("regs"),
        sregs=blob("sregs"),
        xsave=blob("xsave"),
        xcrs=blob("xcrs"),
        debugregs=blob("debugregs"),
        lapic=blob("lapic"),
        msrs=blob("msrs"),
        tsc_offset=vcpu.part_int("tsc_offset"),
        vcpu_events=blob("vcpu_events"),
    )


def restore(vcpu: Vcpu, state: VcpuState) -> None:
    """Write a captured state into a fresh, not yet running vCPU (order explained in the module docstring)."""
    load(vcpu, state).run()


def load(vcpu: Vcpu, state: VcpuState) -> IoctlBatch:
    """Fill the restore's buffers from `state`; running the returned batch writes it into the vCPU (restore() runs
    it at once; a successor has the vCPU's own thread run it). Capture reads into the same buffers: no capture of
    this vCPU between the two."""
    others, deadline = split_tsc_deadline(state.msrs)
    msr_count = len(others) // 16
    batch = restore_batch(vcpu, msr_count, bool(deadline))
    load_part = vcpu.load_part
    load_part("mp_state", state.mp_state)
    for part in Vcpu.BLOB_PARTS:
        load_part(part, getattr(state, part))
    load_part("tsc_offset", state.tsc_offset)
    if msr_count:
        load_part("msrs", others)
    if deadline:
        load_part("tsc_deadline", deadline, MSR_IA32_TSC_DEADLINE)
    return batch


def capture_batch(vcpu: Vcpu) -> IoctlBatch:
    """The capture's ioctls, built once per vCPU (by prepare(), before any pause)."""
    batch = vcpu.batches.get("capture")
    if batch is None:
        batch = vcpu.batches["capture"] = IoctlBatch(vcpu.fd, [vcpu.get_step(part) for part in CAPTURE_ORDER])
    return batch


def restore_batch(vcpu: Vcpu, msr_count: int, deadline: bool) -> IoctlBatch:
    """The restore's ioctls for `msr_count` MSRs besides TSC_DEADLINE, built once per shape (prepare() builds the
    likely ones, so none is built inside a pause window). An empty MSR list or a disarmed deadline (0) writes
    nothing: those steps are left out."""
    key = ("restore", msr_count, deadline)
    batch = vcpu.batches.get(key)
    if batch is None:
        parts = [p for p in RESTORE_ORDER if (p != "msrs" or msr_count) and (p != "tsc_deadline" or deadline)]
        batch = vcpu.batches[key] = IoctlBatch(vcpu.fd, [vcpu.set_step(part, msr_count) for part in parts])
    return batch


def split_tsc_deadline(msrs: bytes) -> tuple[bytes, int]:
    """(every MSR entry but TSC_DEADLINE, the TSC_DEADLINE value or 0)."""
    indices = memoryview(msrs).cast("I")[0::4].tolist()  # the u32 index of each 16-byte entry
    try:
        start = 16 * indices.index(MSR_IA32_TSC_DEADLINE)  # a C-level search: this runs inside the pause window
    except ValueError:
        return msrs, 0
    (value,) = struct.unpack_from("<Q", msrs, start + 8)
    return msrs[:start] + msrs[start + 16 :], int(value)
