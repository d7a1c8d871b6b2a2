"""The VM-wide state (PIC master and slave, IOAPIC, PIT2, kvmclock) in one ioctl batch each way (kvm/vm_state.py),
on the real /dev/kvm: a round trip keeps every byte, the clock never goes back, and a bad blob is refused before
any ioctl."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from hotswap.machine.platform import Platform
from kvm import KvmError, vm_state

pytestmark = pytest.mark.kvm

IOAPIC_ID_OFFSET = 8 + 8 + 4  # struct kvm_irqchip: chip_id, pad; kvm_ioapic_state: base_address (u64), ioregsel, id
PIT_CHANNEL_SIZE = 24  # struct kvm_pit_channel_state; its last 8 bytes are count_load_time
PIT_LOAD_TIME_OFFSET = 16


def pit_without_load_times(pit2: bytes) -> bytes:
    """The PIT2 state without each channel's count_load_time (KVM sets it to the time of a SET_PIT2)."""
    channels = b"".join(pit2[i * PIT_CHANNEL_SIZE : i * PIT_CHANNEL_SIZE + PIT_LOAD_TIME_OFFSET] for i in range(3))
    return channels + pit2[3 * PIT_CHANNEL_SIZE :]


def test_capture_restore_round_trip_keeps_every_byte(platform: Platform) -> None:
    vm = platform.vm
    before = vm_state.capture(vm)
    ioapic = bytearray(before.ioapic)
    struct.pack_into("<I", ioapic, IOAPIC_ID_OFFSET, 0x0500_0000)  # an IOAPIC id the fresh VM does not have
    vm_state.restore(vm, dataclasses.replace(before, ioapic=bytes(ioapic)))
    after = vm_state.capture(vm)
    assert after.ioapic == bytes(ioapic) != before.ioapic
    assert (after.pic_master, after.pic_slave) == (before.pic_master, before.pic_slave)
    assert pit_without_load_times(after.pit2) == pit_without_load_times(before.pit2)
    assert after.pic_master != after.pic_slave, "each chip's buffer must hold its own chip"


def test_the_clock_is_written_and_runs_on_across_a_restore(platform: Platform) -> None:
    vm = platform.vm
    before = vm_state.capture(vm)
    ahead = 10**9  # a clock a second ahead of this VM's: only a written clock reads that far
    vm_state.restore(vm, dataclasses.replace(before, clock=before.clock + ahead))
    after = vm_state.capture(vm)
    assert after.clock >= before.clock + ahead  # plus the time that passed: it never goes back
    assert after.clock_monotonic_ns > before.clock_monotonic_ns


@pytest.mark.parametrize(
    ("field", "blob", "message"),
    [
        ("pit2", b"\0" * 10, r"KVM_SET_PIT2.*pit2 state blob is 10 bytes, expected \d+"),
        ("pic_slave", b"\0" * 3, r"KVM_SET_IRQCHIP.*pic_slave state blob is 3 bytes"),
        ("ioapic", None, r"KVM_SET_IRQCHIP.*ioapic state blob is for irqchip 0$"),
    ],
)
def test_a_bad_blob_is_refused_before_any_ioctl(
    platform: Platform, field: str, blob: bytes | None, message: str
) -> None:
    vm = platform.vm
    state = vm_state.capture(vm)
    if blob is None:  # the PIC master's contents under the IOAPIC's name
        blob = state.pic_master + bytes(len(state.ioapic) - len(state.pic_master))
    with pytest.raises(KvmError, match=message):
        vm_state.restore(vm, dataclasses.replace(state, **{field: blob}))
    after = vm_state.capture(vm)
    assert (after.pic_master, after.pic_slave, after.ioapic) == (state.pic_master, state.pic_slave, state.ioapic)
    assert after.pit2 == state.pit2, "nothing was written (a SET_PIT2 would have moved its load times)"
