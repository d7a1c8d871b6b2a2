"""A vCPU's whole state in one ioctl batch each way (kvm/vcpu_state.py, kvm/batch.py), on the real /dev/kvm: a
round trip keeps every byte, and KVM refusing a step names the ioctl and what it refused."""

from __future__ import annotations

import struct

import pytest

from hotswap.machine.platform import Platform
from kvm import KvmError, vcpu_state
from kvm.vcpu_state import MSR_IA32_TSC_DEADLINE, VcpuState

pytestmark = pytest.mark.kvm


def test_capture_restore_round_trip_keeps_every_byte(platform: Platform) -> None:
    vcpu = platform.vcpus[0]
    before = vcpu_state.capture(vcpu)
    changed = bytearray(before.regs)
    changed[0:8] = struct.pack("<Q", 0x1234_5678)  # rax
    vcpu_state.restore(vcpu, VcpuState(**{**before.to_dict(), "regs": bytes(changed)}))  # type: ignore[arg-type]
    after = vcpu_state.capture(vcpu)
    assert after.regs == bytes(changed)
    assert (after.sregs, after.xsave, after.lapic, after.vcpu_events) == (
        before.sregs, before.xsave, before.lapic, before.vcpu_events)  # fmt: skip
    assert after.tsc_offset == before.tsc_offset


def test_an_armed_tsc_deadline_is_written_last_and_read_back(platform: Platform) -> None:
    vcpu = platform.vcpus[0]
    state = vcpu_state.capture(vcpu)
    indices = memoryview(state.msrs).cast("I")[0::4].tolist()
    if MSR_IA32_TSC_DEADLINE not in indices:
        pytest.skip("this host's KVM does not list IA32_TSC_DEADLINE")
    msrs = bytearray(state.msrs)
    struct.pack_into("<Q", msrs, 16 * indices.index(MSR_IA32_TSC_DEADLINE) + 8, 1 << 40)
    # KVM ignores the deadline unless the LAPIC is enabled with its timer in TSC-deadline mode; the restore order
    # (LAPIC before MSRs) is what lets the deadline stick.
    lapic = bytearray(state.lapic)
    struct.pack_into("<I", lapic, 0xF0, struct.unpack_from("<I", lapic, 0xF0)[0] | 0x100)  # SVR: APIC on
    struct.pack_into("<I", lapic, 0x320, (2 << 17) | 0xEC)  # LVT timer: TSC-deadline mode, vector 0xec
    restored = {**state.to_dict(), "msrs": bytes(msrs), "lapic": bytes(lapic)}
    vcpu_state.restore(vcpu, VcpuState(**restored))  # type: ignore[arg-type]
    deadline = next(v for i, v in vcpu.get_msrs() if i == MSR_IA32_TSC_DEADLINE)
    assert deadline != 0, "the armed deadline was not written"


def test_a_refused_msr_is_named(platform: Platform) -> None:
    vcpu = platform.vcpus[0]
    state = vcpu_state.capture(vcpu)
    bogus = struct.pack("<IxxxxQ", 0xDEAD_0000, 1)  # no such MSR
    with pytest.raises(KvmError, match=r"KVM_SET_MSRS.*refused 0xdead0000 = 0x1"):
        vcpu_state.restore(vcpu, VcpuState(**{**state.to_dict(), "msrs": state.msrs + bogus}))  # type: ignore[arg-type]


def test_a_blob_of_the_wrong_size_is_refused_before_any_ioctl(platform: Platform) -> None:
    vcpu = platform.vcpus[0]
    state = vcpu_state.capture(vcpu)
    with pytest.raises(KvmError, match=r"KVM_SET_LAPIC.*state blob is 10 bytes, expected 1024"):
        vcpu_state.restore(vcpu, VcpuState(**{**state.to_dict(), "lapic": b"\0" * 10}))  # type: ignore[arg-type]
    assert vcpu_state.capture(vcpu) == state, "a refused restore must not have changed the vCPU"
