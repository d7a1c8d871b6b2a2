"""`Vcpu`: one KVM vCPU fd and its kvm_run mapping.

Threading: KVM_RUN is called by exactly one thread (the vCPU's). Any other thread stops it with `kick()` support:
set `immediate_exit` and signal the vCPU thread (see hotswap's vCPU runner); the vCPU's state is read or written only
while it is out of KVM_RUN.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from kvm._ffi import CData, ffi, ioctl, lib
from kvm.batch import ADVISORY, IoctlBatch, Step
from kvm.cpuid import CpuidEntry, CpuidLike, alloc_cpuid2, cpuid2_from_entries, entries_from_cpuid2
from kvm.errors import KvmError
from kvm.exits import INTERRUPTED, VcpuExit, decode_exit

if TYPE_CHECKING:
    from kvm.byte_queue import ByteQueue
    from kvm.vm import Vm

MP_STATE_RUNNABLE = lib.KVM_MP_STATE_RUNNABLE
MP_STATE_UNINITIALIZED = lib.KVM_MP_STATE_UNINITIALIZED
MP_STATE_INIT_RECEIVED = lib.KVM_MP_STATE_INIT_RECEIVED
MP_STATE_HALTED = lib.KVM_MP_STATE_HALTED
MP_STATE_SIPI_RECEIVED = lib.KVM_MP_STATE_SIPI_RECEIVED


class Vcpu:
    """A vCPU of a Vm. Created by Vm.create_vcpu(); closed with its Vm."""

    def __init__(self, vm: Vm, vcpu_id: int, fd: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = fd
        self._mmap_size = vm.kvm.vcpu_mmap_size()
        err = ffi.new("int *")
        ptr = lib.hs_mmap(self._mmap_size, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_SHARED, fd, 0, err)
        if ptr == ffi.NULL:
            raise KvmError("mmap kvm_run", err[0], f"vCPU {vcpu_id}")
        self._run_ptr = ptr
        self.run_struct: CData = ffi.cast("struct kvm_run *", ptr)
        self._run_bytes: CData = ffi.cast("uint8_t *", ptr)
        # Buffers reused on every capture/restore: the pause window must not allocate more than it has to.
        self._regs = ffi.new("struct kvm_regs *")
        self._sregs = ffi.new("struct kvm_sregs *")
        self._mp_state = ffi.new("struct kvm_mp_state *")
        self._lapic = ffi.new("struct kvm_lapic_state *")
        self._xcrs = ffi.new("struct kvm_xcrs *")
        self._debugregs = ffi.new("struct kvm_debugregs *")
        self._events = ffi.new("struct kvm_vcpu_events *")
        self._u64 = ffi.new("uint64_t *")
        self._attr = ffi.new("struct kvm_device_attr *")
        xsave2_size = vm.check_extension(lib.KVM_CAP_XSAVE2)
        self._xsave_size = max(xsave2_size, ffi.sizeof("struct kvm_xsave"))
        self._xsave_get = lib.KVM_GET_XSAVE2 if xsave2_size else lib.KVM_GET_XSAVE
        self._xsave_raw = ffi.new("uint8_t[]", self._xsave_size)
        self._xsave = ffi.cast("struct kvm_xsave *", self._xsave_raw)
        self._msrs: CData = None
        self._msr_count = 0
        self._msr_indices: tuple[int, ...] = ()
        self._msr_layout = struct.Struct("<")
        self._msr_view: CData = None
        self._write_msrs: dict[tuple[int, bool], CData] = {}
        self._blob_table: dict[str, tuple[CData, int, int, int, str, str]] = {}  # filled by _blob() on first use
        self.batches: dict[object, IoctlBatch] = {}  # built once per vCPU by kvm/vcpu_state.py

    def close(self) -> None:
        if self.fd < 0:
            return
        lib.hs_munmap(self._run_ptr, self._mmap_size)
        os.close(self.fd)
        self.fd = -1

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, queue: ByteQueue | None = None) -> VcpuExit:
        """Enter the guest until the next exit that needs userspace. EINTR (a kick) returns Interrupted. With an
        open `queue`, the UART exits it serves are handled in C and never returned (kvm/byte_queue.py)."""
        rc: int = lib.hs_run(self.fd, self.run_struct, queue.c if queue is not None else ffi.NULL)
        if rc < 0:
            if rc in (-errno.EINTR, -errno.EAGAIN):
                return INTERRUPTED
            raise KvmError("KVM_RUN", -rc, f"vCPU {self.id}")
        return decode_exit(self.run_struct, self._run_bytes)

    @property
    def immediate_exit(self) -> bool:
        return bool(self.run_struct.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_struct.immediate_exit = 1 if value else 0

    def complete_io_in(self, data: bytes) -> None:
        """Provide the bytes a port-I/O read (IN) returns; must be called before the next run()."""
        io = ffi.cast("struct hs_exit_io *", self._run_bytes + lib.hs_run_union_offset())
        ffi.memmove(self._run_bytes + io.data_offset, data, len(data))

    def complete_mmio_read(self, data: bytes) -> None:
        mmio = ffi.cast("struct hs_exit_mmio *", self._run_bytes + lib.hs_run_union_offset())
        ffi.memmove(mmio.data, data, min(len(data), 8))

    # -- CPUID ------------------------------------------------------------------------------------------------
    def set_cpuid(self, entries: Iterable[CpuidLike]) -> None:
        ioctl(self.fd, lib.KVM_SET_CPUID2, cpuid2_from_entries(entries), "KVM_SET_CPUID2")

    def get_cpuid(self) -> list[CpuidEntry]:
        cpuid = alloc_cpuid2()
        ioctl(self.fd, lib.KVM_GET_CPUID2, cpuid, "KVM_GET_CPUID2")
        return entries_from_cpuid2(cpuid)

    # -- registers (raw structs; fields named as in <linux/kvm.h>) -------------------------------------------
    def get_regs(self) -> CData:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, lib.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: CData) -> None:
        ioctl(self.fd, lib.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> CData:
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, lib.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: CData) -> None:
        ioctl(self.fd, lib.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    # -- MSRs -------------------------------------------------------------------------------------------------
    def set_msr_indices(self, indices: Sequence[int]) -> None:
        """Fix the list of MSRs get_msrs() reads, with a buffer allocated once."""
        count = len(indices)
        self._msr_count = count
        self._msr_indices = tuple(indices)
        self.batches.clear()  # they hold the buffer this replaces
        self._msrs = ffi.new("struct kvm_msrs *", {"nmsrs": count, "entries": count})
        self._msrs.nmsrs = count
        # struct kvm_msr_entry is {u32 index; u32 reserved; u64 data}: the whole array converts in one struct
        # call instead of two cffi attribute accesses per MSR (~60 us saved per vCPU inside the pause window).
        self._msr_layout = struct.Struct("<" + "IxxxxQ" * count)
        self._msr_view = ffi.buffer(self._msrs.entries, 16 * count)
        self._msr_layout.pack_into(self._msr_view, 0, *[v for index in indices for v in (index, 0)])

    @property
    def msr_indices(self) -> tuple[int, ...]:
        """The MSRs a capture reads, in order (set_msr_indices)."""
        return self._msr_indices

    def get_msrs(self) -> list[tuple[int, int]]:
        """Read the MSRs fixed by set_msr_indices(); all of them must be readable."""
        self._msrs.nmsrs = self._msr_count
        got = ioctl(self.fd, lib.KVM_GET_MSRS, self._msrs, "KVM_GET_MSRS")
        if got != self._msr_count:
            bad = self._msrs.entries[got].index
            raise KvmError("KVM_GET_MSRS", errno.EINVAL, f"read {got} of {self._msr_count} MSRs, stopped at {bad:#x}")
        flat = self._msr_layout.unpack_from(self._msr_view)
        return list(zip(flat[0::2], flat[1::2], strict=True))

    def read_msr(self, index: int) -> int | None:
        """One MSR's value, or None when KVM cannot read it."""
        probe = ffi.new("struct kvm_msrs *", {"nmsrs": 1, "entries": 1})
        probe.nmsrs = 1
        probe.entries[0].index = index
        if lib.hs_ioctl_ptr(self.fd, lib.KVM_GET_MSRS, probe) != 1:
            return None
        return int(probe.entries[0].data)

    def readable_msrs(self, candidates: Iterable[int]) -> list[int]:
        """The candidates KVM_GET_MSRS can read on this vCPU (each probed alone; done once, before any pause)."""
        probe = ffi.new("struct kvm_msrs *", {"nmsrs": 1, "entries": 1})
        readable = []
        for index in candidates:
            probe.nmsrs = 1
            probe.entries[0].index = index
            if lib.hs_ioctl_ptr(self.fd, lib.KVM_GET_MSRS, probe) == 1:
                readable.append(index)
        return readable

    # -- the whole state as batch steps (kvm/vcpu_state.py orders them; kvm/batch.py runs them) ----------------
    BLOB_PARTS = ("regs", "sregs", "xsave", "xcrs", "debugregs", "lapic", "vcpu_events")

    def _blob(self, part: str) -> tuple[CData, int, int, int, str, str]:
        """(buffer, size, get request, set request, get ioctl name, set ioctl name) of a fixed-size state part."""
        table = self._blob_table
        if not table:
            for name, buf, op in (
                ("regs", self._regs, "REGS"),
                ("sregs", self._sregs, "SREGS"),
                ("xcrs", self._xcrs, "XCRS"),
                ("debugregs", self._debugregs, "DEBUGREGS"),
                ("lapic", self._lapic, "LAPIC"),
                ("vcpu_events", self._events, "VCPU_EVENTS"),
            ):
                get, put = getattr(lib, f"KVM_GET_{op}"), getattr(lib, f"KVM_SET_{op}")
                table[name] = (buf, ffi.sizeof(buf[0]), get, put, f"KVM_GET_{op}", f"KVM_SET_{op}")
            get_xsave = "KVM_GET_XSAVE2" if self._xsave_get == lib.KVM_GET_XSAVE2 else "KVM_GET_XSAVE"
            table["xsave"] = (
                self._xsave, self._xsave_size, self._xsave_get, lib.KVM_SET_XSAVE, get_xsave, "KVM_SET_XSAVE"
            )  # fmt: skip
        return table[part]

    def get_step(self, part: str) -> Step:
        """The ioctl that reads `part` into this vCPU's buffer (read it with part_bytes or part_int after the batch
        ran)."""
        if part == "mp_state":
            return Step(lib.KVM_GET_MP_STATE, self._mp_state, "KVM_GET_MP_STATE")
        if part == "msrs":
            return Step(lib.KVM_GET_MSRS, self._msrs, "KVM_GET_MSRS", self._msr_count, self._short_msr_read)
        if part == "tsc_offset":
            return Step(lib.KVM_GET_DEVICE_ATTR, self._tsc_attr(), "KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)")
        buf, _size, get, _put, name, _set_name = self._blob(part)
        return Step(get, buf, name)

    def part_bytes(self, part: str) -> bytes:
        """What the last batch read for a blob part, or "msrs" (the raw struct kvm_msr_entry array)."""
        if part == "msrs":
            blob: bytes = self._msr_view[:]
            return blob
        buf, size, *_ = self._blob(part)
        data: bytes = ffi.buffer(buf, size)[:]
        return data

    def part_int(self, part: str) -> int:
        """What the last batch read for "mp_state" or "tsc_offset"."""
        if part == "mp_state":
            return int(self._mp_state.mp_state)
        if part == "tsc_offset":
            return int(self._u64[0])
        raise ValueError(f"{part} is not an integer part")

    def set_step(self, part: str, msr_count: int = 0) -> Step:
        """The ioctl that writes `part` from this vCPU's buffer (filled by load_part before the batch runs).
        "msrs" writes `msr_count` entries; "tsc_deadline" writes IA32_TSC_DEADLINE alone."""
        if part == "mp_state":
            return Step(lib.KVM_SET_MP_STATE, self._mp_state, "KVM_SET_MP_STATE")
        if part == "msrs":
            msrs = self._msrs_to_write(msr_count)
            return Step(lib.KVM_SET_MSRS, msrs, "KVM_SET_MSRS", msr_count, self._short_msr_write(msrs))
        if part == "tsc_deadline":
            one = self._msrs_to_write(1, spare=True)
            return Step(lib.KVM_SET_MSRS, one, "KVM_SET_MSRS(IA32_TSC_DEADLINE)", 1)
        if part == "tsc_offset":
            return Step(lib.KVM_SET_DEVICE_ATTR, self._tsc_attr(), "KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)")
        if part == "kvmclock_ctrl":  # EINVAL without a kvm-clock page: nothing to tell the guest then
            return Step(lib.KVM_KVMCLOCK_CTRL, ffi.NULL, "KVM_KVMCLOCK_CTRL", ADVISORY)
        buf, _size, _get, put, _get_name, name = self._blob(part)
        return Step(put, buf, name)

    def capture_buffer(self, part: str) -> tuple[CData, int]:
        """(pointer, size) of the buffer get_step(part) reads into ("msrs": the entries alone)."""
        if part == "mp_state":
            return self._mp_state, ffi.sizeof("struct kvm_mp_state")
        if part == "tsc_offset":
            return self._u64, 8
        if part == "msrs":
            return self._msrs.entries, 16 * self._msr_count
        buf, size, *_ = self._blob(part)
        return buf, size

    def restore_buffer(self, part: str, msr_count: int = 0) -> tuple[CData, int]:
        """(pointer, size) of the buffer set_step(part, msr_count) writes from ("msrs": `msr_count` entries;
        "tsc_deadline": its one whole entry, index included)."""
        if part == "msrs":
            return self._msrs_to_write(msr_count).entries, 16 * msr_count
        if part == "tsc_deadline":
            return self._msrs_to_write(1, spare=True).entries, 16
        return self.capture_buffer(part)  # the same buffers serve both ways

    def enter_step(self) -> Step:
        """KVM_RUN as a batch step, for a first entry with immediate_exit set: no guest code runs, but KVM records
        the calling thread as this vCPU's. The first KVM_RUN from a thread that is not the recorded one pays for
        the change (kernels that still guarded vcpu->pid with RCU, before its 2024 switch to a rwlock, wait for a
        grace period: milliseconds); on this host it also takes ~20 us off the fresh vCPU's first real entry."""
        return Step(lib.KVM_RUN, ffi.NULL, "KVM_RUN", ADVISORY)

    def load_part(self, part: str, value: bytes | int, msr_index: int = 0) -> None:
        """Fill the buffer set_step(part) writes from. "tsc_deadline" takes the value, with `msr_index`."""
        if part == "mp_state":
            self._mp_state.mp_state = int(value)
        elif part == "tsc_offset":
            self._u64[0] = int(value) & 0xFFFF_FFFF_FFFF_FFFF
        elif part == "msrs":
            assert isinstance(value, bytes | bytearray | memoryview)
            msrs = self._msrs_to_write(len(value) // 16)
            ffi.memmove(msrs.entries, value, len(value))
        elif part == "tsc_deadline":
            one = self._msrs_to_write(1, spare=True)
            one.entries[0].index = msr_index
            one.entries[0].data = int(value)
        else:
            assert isinstance(value, bytes | bytearray | memoryview)
            buf, size, _get, _put, _get_name, name = self._blob(part)
            if len(value) != size:
                raise KvmError(name, errno.EINVAL, f"state blob is {len(value)} bytes, expected {size}")
            ffi.memmove(buf, value, size)

    def _msrs_to_write(self, count: int, spare: bool = False) -> CData:
        """A struct kvm_msrs for `count` entries, kept per count (the same one every time for a given count)."""
        key = (count, spare)
        msrs = self._write_msrs.get(key)
        if msrs is None:
            msrs = ffi.new("struct kvm_msrs *", {"nmsrs": count, "entries": count})
            msrs.nmsrs = count
            self._write_msrs[key] = msrs
        return msrs

    def _short_msr_read(self, got: int) -> str:
        bad = self._msrs.entries[got].index
        return f"read {got} of {self._msr_count} MSRs, stopped at {bad:#x}"

    @staticmethod
    def _short_msr_write(msrs: CData) -> Callable[[int], str]:
        def describe(done: int) -> str:
            entry = msrs.entries[done]
            return f"KVM accepted {done} of {msrs.nmsrs} MSRs, refused {entry.index:#x} = {entry.data:#x}"

        return describe

    # -- TSC and clock ----------------------------------------------------------------------------------------
    def _tsc_attr(self) -> CData:
        attr = self._attr
        attr.flags = 0
        attr.group = lib.KVM_VCPU_TSC_CTRL
        attr.attr = lib.KVM_VCPU_TSC_OFFSET
        attr.addr = int(ffi.cast("uintptr_t", self._u64))
        return attr

    def has_tsc_offset_attr(self) -> bool:
        return bool(lib.hs_ioctl_ptr(self.fd, lib.KVM_HAS_DEVICE_ATTR, self._tsc_attr()) == 0)

    def get_tsc_khz(self) -> int:
        rc: int = lib.hs_ioctl_int(self.fd, lib.KVM_GET_TSC_KHZ, 0)
        if rc < 0:
            raise KvmError("KVM_GET_TSC_KHZ", -rc)
        return rc
