"""A vCPU's state record through shared memory (kvm/lane.py), on the real /dev/kvm: one VM's vCPU captured into
the memfd, another VM's vCPU restored from it, byte for byte; every damaged record refused before the first
ioctl, with what is wrong named."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from hotswap.machine.platform import Platform
from kvm import KvmError, vcpu_state
from kvm._ffi import ffi, lib
from kvm.lane import HEADER_BYTES, LaneLayout, LaneReader, LaneRecordError, LaneRegion, LaneWriter, layout_of
from kvm.vcpu_state import MSR_IA32_TSC_DEADLINE, VcpuState

pytestmark = pytest.mark.kvm

GENERATION = 7


class Lane(NamedTuple):
    writer: LaneWriter
    reader: LaneReader
    region: LaneRegion  # the writer's mapping
    notify: int


@pytest.fixture
def lane(platform: Platform, second_platform: Platform) -> Iterator[Lane]:
    """platform's vCPU writes, second_platform's fresh vCPU takes (each side with its own mapping of the memfd)."""
    source, fresh = platform.vcpus[0], second_platform.vcpus[0]
    layout = layout_of(source)
    assert layout_of(fresh).mismatch(layout) is None
    region = LaneRegion.create(layout.slot_bytes)
    peer = LaneRegion.adopt(os.dup(region.fd), layout.slot_bytes)
    notify = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        yield Lane(LaneWriter(source, region, 0, layout, notify, GENERATION),
                   LaneReader(fresh, peer, 0, layout, notify, GENERATION), region, notify)  # fmt: skip
    finally:
        os.close(notify)
        peer.close()
        region.close()


def _distinct(state: VcpuState) -> VcpuState:
    """The state with values a fresh vCPU does not have: rax, rbx and an armed TSC deadline (LAPIC in deadline
    mode, so KVM keeps it)."""
    regs = bytearray(state.regs)
    struct.pack_into("<QQ", regs, 0, 0x1234_5678_9ABC, 0xFEED_F00D)
    lapic = bytearray(state.lapic)
    struct.pack_into("<I", lapic, 0xF0, struct.unpack_from("<I", lapic, 0xF0)[0] | 0x100)
    struct.pack_into("<I", lapic, 0x320, (2 << 17) | 0xEC)
    msrs = bytearray(state.msrs)
    indices = memoryview(state.msrs).cast("I")[0::4].tolist()
    if MSR_IA32_TSC_DEADLINE in indices:
        struct.pack_into("<Q", msrs, 16 * indices.index(MSR_IA32_TSC_DEADLINE) + 8, 1 << 50)
    changed = {**state.to_dict(), "regs": bytes(regs), "lapic": bytes(lapic), "msrs": bytes(msrs)}
    return VcpuState(**changed)  # type: ignore[arg-type]


def test_a_record_restores_the_vcpu_byte_for_byte(platform: Platform, second_platform: Platform, lane: Lane) -> None:
    writer, reader, notify = lane.writer, lane.reader, lane.notify
    source, fresh = platform.vcpus[0], second_platform.vcpus[0]
    vcpu_state.restore(source, _distinct(vcpu_state.capture(source)))
    sent = vcpu_state.capture(source)
    writer.send()
    assert os.eventfd_read(notify) == 1, "the writer signals the reader"
    lib.hs_lane_take(reader.c)
    reader.check()
    got = vcpu_state.capture(fresh)
    for part in ("mp_state", "regs", "sregs", "xcrs", "debugregs", "lapic", "vcpu_events"):
        assert getattr(got, part) == getattr(sent, part), part
    assert struct.unpack_from("<QQ", got.regs) == (0x1234_5678_9ABC, 0xFEED_F00D)
    assert got.tsc_offset == sent.tsc_offset
    deadline = dict(fresh.get_msrs()).get(MSR_IA32_TSC_DEADLINE)
    if deadline is not None:
        assert deadline != 0, "the armed TSC deadline was restored"


@pytest.mark.parametrize(
    ("fault", "kind", "message"),
    [
        ("corrupt", "checksum", r"vCPU 0's state record: bad checksum"),
        ("truncate", "length", r"vCPU 0's state record: length mismatch: the header announces \d+ bytes, \d+ expected"),
        ("badversion", "layout", r"vCPU 0's state record: format version 99 is not supported \(this build reads 1\)"),
    ],
)
def test_a_damaged_record_is_refused_before_any_ioctl(
    second_platform: Platform, lane: Lane, fault: str, kind: str, message: str
) -> None:
    writer, reader = lane.writer, lane.reader
    fresh = second_platform.vcpus[0]
    before = vcpu_state.capture(fresh)
    writer.send(fault=fault)
    lib.hs_lane_take(reader.c)
    with pytest.raises(LaneRecordError, match=message) as refused:
        reader.check()
    assert refused.value.kind == kind
    assert vcpu_state.capture(fresh) == before, "a refused record must not have changed the vCPU"


def test_a_record_of_another_generation_or_vcpu_is_refused(lane: Lane) -> None:
    writer, reader = lane.writer, lane.reader
    header = ffi.buffer(lane.region.slot(0), HEADER_BYTES)
    writer.send()
    struct.pack_into("<Q", header, 16, GENERATION + 1)  # the generation field
    lib.hs_lane_take(reader.c)
    with pytest.raises(LaneRecordError, match=r"generation 8, expected 7"):
        reader.check()
    writer.send()
    struct.pack_into("<I", header, 12, 3)  # the vCPU id field
    lib.hs_lane_take(reader.c)
    with pytest.raises(LaneRecordError, match=r"the record is vCPU 3's"):
        reader.check()


def test_no_record_and_a_taken_record_are_not_taken_again(lane: Lane) -> None:
    writer, reader = lane.writer, lane.reader
    lib.hs_lane_take(reader.c)
    with pytest.raises(LaneRecordError, match="holds no record"):
        reader.check()
    writer.send()
    lib.hs_lane_take(reader.c)
    reader.check()
    lib.hs_lane_take(reader.c)  # the reader cleared the magic when it took the record
    with pytest.raises(LaneRecordError, match="holds no record"):
        reader.check()


def test_a_capture_refused_by_kvm_is_named(platform: Platform, lane: Lane) -> None:
    vcpu = platform.vcpus[0]
    vcpu.set_msr_indices([*vcpu.msr_indices[:-1], 0xDEAD_0000])  # an MSR KVM cannot read
    broken = LaneWriter(vcpu, lane.region, 0, layout_of(vcpu), lane.notify, GENERATION)
    with pytest.raises(KvmError, match=r"KVM_GET_MSRS"):
        broken.send()


def test_layouts_must_agree() -> None:
    ours = LaneLayout((("regs", 144), ("msrs", 32)), (0x10, 0x6E0))
    assert ours.mismatch(LaneLayout.from_dict(ours.to_dict())) is None
    assert "pieces" in str(ours.mismatch(LaneLayout((("regs", 144), ("msrs", 48)), (0x10, 0x11, 0x6E0))))
    assert "MSR list" in str(ours.mismatch(LaneLayout((("regs", 144), ("msrs", 32)), (0x11, 0x6E0))))
    assert "layout version 2" in str(ours.mismatch(LaneLayout(ours.pieces, ours.msr_indices, 2)))
    malformed = ({"version": 1}, {"version": 1, "pieces": [["regs"]], "msrs": []},
                 {"version": 1, "pieces": [], "msrs": [-1]})  # fmt: skip
    for bad in malformed:
        with pytest.raises(ValueError, match="layout"):
            LaneLayout.from_dict(bad)
    assert ours.slot_bytes == 4096 and HEADER_BYTES == 64
