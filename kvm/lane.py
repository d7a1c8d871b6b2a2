"""A vCPU's state from the old VMM's vCPU thread to its successor's, through memory both map (protocol 5).

The old VMM creates a memfd with one slot per vCPU and one eventfd per vCPU, and hands them over with the rest of
the fds before the pause. Inside the pause window, its vCPU thread captures a vCPU and writes the record into the
vCPU's slot (`LaneWriter.send`: the capture batch, the copy, a checksum, the eventfd write: one C call); the
successor's parked vCPU thread, woken by the eventfd, checks the record and restores it (`LaneReader`, run by
hs_park: the check, the copy, the restore batch). Neither side's Python nor its main thread touches the vCPU state
on the way, and no byte of it crosses a socket.

A record (kvm/_build.py, hs_lane_*) is a 64-byte header -- magic, layout version, vCPU id, generation, payload
length, checksum -- and the payload: the capture's buffers in capture order (`LaneLayout`). Both sides must agree
on the layout (the pieces and their sizes, and the MSR list) before the pause; the successor checks the old VMM's
layout against its own vCPUs and declines the lane when they differ, so the state then goes the ordinary way.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from kvm._ffi import CData, ffi, lib
from kvm.batch import IoctlBatch
from kvm.errors import KvmError
from kvm.vcpu import Vcpu
from kvm.vcpu_state import CAPTURE_ORDER, MSR_IA32_TSC_DEADLINE, capture_batch, restore_batch

LAYOUT_VERSION = 1
HEADER_BYTES = int(lib.HS_LANE_HEADER_BYTES)
PAGE = 4096

FAULTS = {"corrupt": lib.HS_LANE_FAULT_CORRUPT, "truncate": lib.HS_LANE_FAULT_TRUNCATE,
          "badversion": lib.HS_LANE_FAULT_BADVERSION}  # fmt: skip


class LaneRecordError(KvmError):
    """A vCPU state record was refused before anything was written into the vCPU. `kind`: "missing", "layout",
    "vcpu", "generation", "length", "checksum" or "size"; `found` / `expected` where they apply."""

    def __init__(self, vcpu_id: int, kind: str, detail: str, found: int = 0, expected: int = 0) -> None:
        super().__init__("vCPU state record", errno.EINVAL, f"vCPU {vcpu_id}: {detail}")
        self.args = (f"vCPU {vcpu_id}'s state record: {detail}",)  # no errno text: nothing failed in the kernel
        self.vcpu_id = vcpu_id
        self.kind = kind
        self.found = found
        self.expected = expected


@dataclass(frozen=True)
class LaneLayout:
    """What a vCPU's record holds: its pieces (name, bytes) in order and the MSRs of the "msrs" piece."""

    pieces: tuple[tuple[str, int], ...]
    msr_indices: tuple[int, ...]
    version: int = LAYOUT_VERSION

    @property
    def payload_bytes(self) -> int:
        return sum(size for _name, size in self.pieces)

    @property
    def slot_bytes(self) -> int:
        """The record's slot in the shared memfd: header and payload, rounded up to whole pages."""
        return -(-(HEADER_BYTES + self.payload_bytes) // PAGE) * PAGE

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pieces": [[name, size] for name, size in self.pieces],
            "msrs": list(self.msr_indices),
        }

    @classmethod
    def from_dict(cls, data: object) -> LaneLayout:
        """The layout a peer described (to_dict); ValueError says what is malformed."""
        if not isinstance(data, dict) or set(data) != {"version", "pieces", "msrs"}:
            raise ValueError("a vCPU record layout is a dict of exactly 'version', 'pieces' and 'msrs'")
        version, pieces, msrs = data["version"], data["pieces"], data["msrs"]
        if not isinstance(version, int) or not isinstance(pieces, list) or not isinstance(msrs, list):
            raise ValueError("vCPU record layout: 'version' must be an int, 'pieces' and 'msrs' lists")
        parsed = []
        for piece in pieces:
            if not (isinstance(piece, list) and len(piece) == 2 and isinstance(piece[0], str)
                    and isinstance(piece[1], int) and 0 <= piece[1] <= 1 << 20):  # fmt: skip
                raise ValueError(f"vCPU record layout: bad piece {piece!r} (expected [name, size])")
            parsed.append((piece[0], piece[1]))
        if not all(isinstance(index, int) and 0 <= index < 1 << 32 for index in msrs):
            raise ValueError("vCPU record layout: 'msrs' must be u32 MSR indices")
        return cls(tuple(parsed), tuple(msrs), version)

    def mismatch(self, other: LaneLayout) -> str | None:
        """Why a record of `other`'s layout cannot be restored by this one, or None when it can."""
        if other.version != self.version:
            return f"layout version {other.version}, this build reads {self.version}"
        if other.pieces != self.pieces:
            return f"pieces {list(other.pieces)}, this VMM's vCPUs have {list(self.pieces)}"
        if other.msr_indices != self.msr_indices:
            extra = sorted(set(other.msr_indices) - set(self.msr_indices))
            missing = sorted(set(self.msr_indices) - set(other.msr_indices))
            return f"another MSR list (extra {[hex(i) for i in extra]}, missing {[hex(i) for i in missing]}, or order)"
        if len(self.pieces) > lib.HS_LANE_MAX_PIECES - 1:
            return f"{len(self.pieces)} pieces, at most {lib.HS_LANE_MAX_PIECES - 1}"
        return None


def layout_of(vcpu: Vcpu) -> LaneLayout:
    """The layout of this vCPU's records (its MSR list fixed by vcpu_state.prepare first)."""
    return LaneLayout(tuple((part, vcpu.capture_buffer(part)[1]) for part in CAPTURE_ORDER), tuple(vcpu.msr_indices))


def slot_offsets(layouts: list[LaneLayout]) -> tuple[list[int], int]:
    """Where each vCPU's slot starts in the shared memfd, and the memfd's size: the slots one after another."""
    offsets, at = [], 0
    for layout in layouts:
        offsets.append(at)
        at += layout.slot_bytes
    return offsets, at


class LaneRegion:
    """The memfd holding every vCPU's slot, mapped shared. Owns the fd and the mapping."""

    def __init__(self, fd: int, size: int) -> None:
        err = ffi.new("int *")
        ptr = lib.hs_mmap(size, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_SHARED, fd, 0, err)
        if ptr == ffi.NULL:
            os.close(fd)
            raise KvmError("mmap", err[0], "vCPU state records")
        self.fd = fd
        self.size = size
        self._base: CData = ffi.cast("uint8_t *", ptr)
        self._ptr = ptr

    @classmethod
    def create(cls, size: int) -> LaneRegion:
        fd = os.memfd_create("hotswap-vcpu-records", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, size)

    @classmethod
    def adopt(cls, fd: int, size: int) -> LaneRegion:
        """Map a peer's memfd, which must hold at least `size` bytes (takes the fd, closed on failure too)."""
        held = os.fstat(fd).st_size
        if held < size:
            os.close(fd)
            raise KvmError("vCPU state records", errno.EINVAL, f"the memfd holds {held} bytes, {size} are needed")
        return cls(fd, size)

    def slot(self, offset: int) -> CData:
        return self._base + offset

    def close(self) -> None:
        if self.fd >= 0:
            lib.hs_munmap(self._ptr, self.size)
            os.close(self.fd)
            self.fd = -1


def _lane_struct(vcpu: Vcpu, region: LaneRegion, offset: int, capacity: int, notify_fd: int, generation: int,
                 pieces: list[tuple[CData, int]]) -> CData:  # fmt: skip
    lane = ffi.new("struct hs_lane *")
    lane.slot = region.slot(offset)
    lane.capacity = capacity
    lane.layout = LAYOUT_VERSION
    lane.vcpu_id = vcpu.id
    lane.generation = generation
    lane.notify_fd = notify_fd
    lane.batch_fd = vcpu.fd
    lane.count = len(pieces)
    for index, (buf, size) in enumerate(pieces):
        lane.pieces[index].buf = buf
        lane.pieces[index].size = size
    lane.deadline_piece = -1
    return lane


def _raise_for(lane: CData, vcpu_id: int, batch: IoctlBatch | None) -> None:
    status = int(lane.status)
    found, expected = int(lane.found), int(lane.expected)
    if status == lib.HS_LANE_OK:
        return
    if status == lib.HS_LANE_STEP_FAILED:
        assert batch is not None
        batch.check(int(lane.done), int(lane.rc))
        raise KvmError("vCPU state record", -int(lane.rc) if lane.rc < 0 else errno.EIO, f"vCPU {vcpu_id}")
    reasons = {
        lib.HS_LANE_NO_RECORD: ("missing", "signalled, but its slot holds no record"),
        lib.HS_LANE_BAD_LAYOUT: ("layout", f"format version {found} is not supported (this build reads {expected})"),
        lib.HS_LANE_WRONG_VCPU: ("vcpu", f"the record is vCPU {found}'s"),
        lib.HS_LANE_WRONG_GENERATION: ("generation", f"the record is for generation {found}, expected {expected}"),
        lib.HS_LANE_BAD_LENGTH: ("length", f"length mismatch: the header announces {found} bytes, {expected} expected"),
        lib.HS_LANE_BAD_CHECKSUM: ("checksum", "bad checksum (data corrupted)"),
        lib.HS_LANE_TOO_BIG: ("size", f"{found} bytes do not fit its {expected}-byte slot"),
    }
    kind, detail = reasons.get(status, ("unknown", f"status {status}"))
    raise LaneRecordError(vcpu_id, kind, detail, found, expected)


class LaneWriter:
    """The old VMM's side for one vCPU: send() captures it and writes its record (the vCPU paused)."""

    def __init__(self, vcpu: Vcpu, region: LaneRegion, offset: int, layout: LaneLayout, notify_fd: int,
                 generation: int) -> None:  # fmt: skip
        self.vcpu = vcpu
        self._batch = capture_batch(vcpu)
        pieces = [vcpu.capture_buffer(part) for part, _size in layout.pieces]
        self._lane = _lane_struct(vcpu, region, offset, layout.slot_bytes, notify_fd, generation, pieces)
        self._lane.steps = self._batch.steps
        self._lane.steps_count = self._batch.count

    def send(self, fault: str | None = None) -> int:
        """Capture, write and signal; returns how long it took (us). `fault`: a FAULTS name (safety tests)."""
        lane = self._lane
        lane.fault = FAULTS[fault] if fault else 0
        lib.hs_lane_send(lane)
        _raise_for(lane, self.vcpu.id, self._batch)
        return int(lane.ran_ns) // 1000


class LaneReader:
    """The successor's side for one vCPU: `c` goes to the parked vCPU thread (hs_park), which takes the record
    when it arrives; check() then raises what went wrong."""

    def __init__(self, vcpu: Vcpu, region: LaneRegion, offset: int, layout: LaneLayout, notify_fd: int,
                 generation: int) -> None:  # fmt: skip
        self.vcpu = vcpu
        indices = layout.msr_indices
        deadline_last = bool(indices) and indices[-1] == MSR_IA32_TSC_DEADLINE
        others = len(indices) - 1 if deadline_last else len(indices)
        pieces: list[tuple[CData, int]] = []
        deadline_piece = -1
        for part, _size in layout.pieces:
            if part == "msrs":
                pieces.append(vcpu.restore_buffer("msrs", others))
                if deadline_last:
                    deadline_piece = len(pieces)
                    pieces.append(vcpu.restore_buffer("tsc_deadline"))
            else:
                pieces.append(vcpu.restore_buffer(part))
        if MSR_IA32_TSC_DEADLINE in indices[:-1]:
            raise KvmError("vCPU state records", errno.EINVAL, "IA32_TSC_DEADLINE must be the MSR list's last")
        self._disarmed = restore_batch(vcpu, others, False)
        self._armed = restore_batch(vcpu, others, True) if deadline_last else self._disarmed
        self._lane = _lane_struct(vcpu, region, offset, layout.slot_bytes, notify_fd, generation, pieces)
        self._lane.steps = self._disarmed.steps
        self._lane.steps_count = self._disarmed.count
        self._lane.armed = self._armed.steps
        self._lane.armed_count = self._armed.count
        self._lane.deadline_piece = deadline_piece
        self._lane.status = -1  # not taken yet

    @property
    def c(self) -> CData:
        """The C record reader (struct hs_lane *) for hs_park."""
        return self._lane

    @property
    def began_ns(self) -> int:
        """CLOCK_MONOTONIC ns when the parked thread started taking the record."""
        return int(self._lane.began_ns)

    def check(self) -> int:
        """After the parked thread took the record: how long check and restore took (us), or the error."""
        lane = self._lane
        if int(lane.status) < 0:
            raise KvmError("vCPU state record", errno.EAGAIN, f"vCPU {self.vcpu.id}: no record taken yet")
        ran = self._armed if int(lane.expected) == self._armed.count else self._disarmed  # C: expected = its count
        _raise_for(lane, self.vcpu.id, ran)
        return int(lane.ran_ns) // 1000
