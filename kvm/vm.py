"""`Vm`: one KVM virtual machine fd. Memory slots, irqchip, PIT, eventfd wiring, and VM-wide state."""

from __future__ import annotations

import errno
import os
from types import TracebackType
from typing import TYPE_CHECKING

from kvm._ffi import CData, ffi, ioctl, ioctl_int, lib
from kvm.batch import IoctlBatch, Step
from kvm.errors import KvmError

if TYPE_CHECKING:
    from kvm.system import Kvm
    from kvm.vcpu import Vcpu

IRQCHIP_PIC_MASTER = lib.KVM_IRQCHIP_PIC_MASTER
IRQCHIP_PIC_SLAVE = lib.KVM_IRQCHIP_PIC_SLAVE
IRQCHIP_IOAPIC = lib.KVM_IRQCHIP_IOAPIC
IRQCHIPS = {"pic_master": IRQCHIP_PIC_MASTER, "pic_slave": IRQCHIP_PIC_SLAVE, "ioapic": IRQCHIP_IOAPIC}
BLOB_PARTS = (*IRQCHIPS, "pit2")  # the VM-wide state parts that travel as raw structs (the clock travels as ints)


class Vm:
    """A KVM VM. Created by Kvm.create_vm(); owns its fd and its vCPUs."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self.vcpus: list[Vcpu] = []
        self._slots: dict[int, tuple[int, int, int, int]] = {}  # slot -> (flags, gpa, size, host address)
        # The VM-wide state's buffers, read and written by ioctl batches (kvm/vm_state.py), built once
        self.batches: dict[str, IoctlBatch] = {}
        self._chips = {name: ffi.new("struct kvm_irqchip *", {"chip_id": chip}) for name, chip in IRQCHIPS.items()}
        self._pit = ffi.new("struct kvm_pit_state2 *")
        self._clock = ffi.new("struct kvm_clock_data *")

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def check_extension(self, capability: int) -> int:
        return ioctl_int(self.fd, lib.KVM_CHECK_EXTENSION, capability, "KVM_CHECK_EXTENSION")

    # -- platform ---------------------------------------------------------------------------------------------
    def set_tss_addr(self, addr: int) -> None:
        ioctl_int(self.fd, lib.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        value = ffi.new("uint64_t *", addr)
        ioctl(self.fd, lib.KVM_SET_IDENTITY_MAP_ADDR, value, "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        ioctl_int(self.fd, lib.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self) -> None:
        config = ffi.new("struct kvm_pit_config *")
        config.flags = lib.KVM_PIT_SPEAKER_DUMMY  # port 0x61 handled in-kernel, no PC speaker exits
        ioctl(self.fd, lib.KVM_CREATE_PIT2, config, "KVM_CREATE_PIT2")

    # -- memory -----------------------------------------------------------------------------------------------
    def set_memory_region(self, slot: int, gpa: int, size: int, host_addr: int, log_dirty: bool = False) -> None:
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot = slot
        region.flags = lib.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0
        region.guest_phys_addr = gpa
        region.memory_size = size
        region.userspace_addr = host_addr
        ioctl(self.fd, lib.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")
        self._slots[slot] = (region.flags, gpa, size, host_addr)

    def get_dirty_log(self, slot: int) -> bytes:
        """The dirty bitmap of a slot since the last call (one bit per 4 KiB page)."""
        _flags, _gpa, size, _addr = self._slots[slot]
        pages = size // 4096
        bitmap = ffi.new("uint64_t[]", (pages + 63) // 64)
        log = ffi.new("struct kvm_dirty_log *")
        log.slot = slot
        log.dirty_bitmap = bitmap
        ioctl(self.fd, lib.KVM_GET_DIRTY_LOG, log, "KVM_GET_DIRTY_LOG")
        return bytes(ffi.buffer(bitmap))

    # -- interrupts and notifications -------------------------------------------------------------------------
    def irq_line(self, gsi: int, level: bool) -> None:
        irq = ffi.new("struct kvm_irq_level *")
        irq.irq = gsi
        irq.level = 1 if level else 0
        ioctl(self.fd, lib.KVM_IRQ_LINE, irq, "KVM_IRQ_LINE")

    def irqfd(self, eventfd: int, gsi: int, deassign: bool = False) -> None:
        request = ffi.new("struct kvm_irqfd *")
        request.fd = eventfd
        request.gsi = gsi
        request.flags = lib.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        ioctl(self.fd, lib.KVM_IRQFD, request, "KVM_IRQFD")

    def ioeventfd(
        self,
        eventfd: int,
        addr: int,
        length: int,
        datamatch: int | None = None,
        pio: bool = False,
        deassign: bool = False,
    ) -> None:
        request = ffi.new("struct kvm_ioeventfd *")
        request.addr = addr
        request.len = length
        request.fd = eventfd
        flags = 0
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
            request.datamatch = datamatch
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        request.flags = flags
        ioctl(self.fd, lib.KVM_IOEVENTFD, request, "KVM_IOEVENTFD")

    def register_coalesced_mmio(self, addr: int, size: int) -> None:
        zone = ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr = addr
        zone.size = size
        ioctl(self.fd, lib.KVM_REGISTER_COALESCED_MMIO, zone, "KVM_REGISTER_COALESCED_MMIO")

    # -- vCPUs ------------------------------------------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        from kvm.vcpu import Vcpu

        fd = ioctl_int(self.fd, lib.KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU")
        try:
            vcpu = Vcpu(self, vcpu_id, fd)
        except BaseException:
            os.close(fd)
            raise
        self.vcpus.append(vcpu)
        return vcpu

    # -- VM-wide state (capture with every vCPU paused) -------------------------------------------------------
    # Parts: "pic_master", "pic_slave", "ioapic" (struct kvm_irqchip), "pit2" (struct kvm_pit_state2) and "clock"
    # (struct kvm_clock_data), each in a buffer of this Vm that a batch reads into or writes from.
    def _part_buffer(self, part: str) -> tuple[CData, str]:
        """(buffer, name of the ioctls' object) of a blob part."""
        if part == "pit2":
            return self._pit, "PIT2"
        return self._chips[part], "IRQCHIP"

    def get_step(self, part: str) -> Step:
        """The ioctl that reads `part` into this VM's buffer (part_bytes / clock_read after the batch ran)."""
        if part == "clock":
            return Step(lib.KVM_GET_CLOCK, self._clock, "KVM_GET_CLOCK")
        buf, op = self._part_buffer(part)
        return Step(getattr(lib, f"KVM_GET_{op}"), buf, f"KVM_GET_{op}")

    def set_step(self, part: str) -> Step:
        """The ioctl that writes `part` from this VM's buffer (load_part / load_clock before the batch runs)."""
        if part == "clock":
            return Step(lib.KVM_SET_CLOCK, self._clock, "KVM_SET_CLOCK")
        buf, op = self._part_buffer(part)
        return Step(getattr(lib, f"KVM_SET_{op}"), buf, f"KVM_SET_{op}")

    def part_bytes(self, part: str) -> bytes:
        buf, _op = self._part_buffer(part)
        data: bytes = ffi.buffer(buf)[:]
        return data

    def load_part(self, part: str, blob: bytes) -> None:
        """Fill the buffer of a blob part; a blob of the wrong size is refused before any ioctl."""
        buf, op = self._part_buffer(part)
        size = ffi.sizeof(buf[0])
        if len(blob) != size:
            raise KvmError(f"KVM_SET_{op}", errno.EINVAL, f"{part} state blob is {len(blob)} bytes, expected {size}")
        if op == "IRQCHIP":
            chip_id = int.from_bytes(blob[:4], "little")  # struct kvm_irqchip starts with it
            if chip_id != IRQCHIPS[part]:
                raise KvmError("KVM_SET_IRQCHIP", errno.EINVAL, f"{part} state blob is for irqchip {chip_id}")
        ffi.memmove(buf, blob, size)

    def clock_read(self) -> tuple[int, int, int]:
        """What the last batch's KVM_GET_CLOCK read: (kvmclock ns, flags, host realtime ns if flagged)."""
        data = self._clock
        return int(data.clock), int(data.flags), int(data.realtime)

    def load_clock(self, clock_ns: int, realtime_ns: int | None = None) -> None:
        """Fill the clock buffer: with realtime_ns, KVM advances the clock by the real time elapsed since then."""
        data = self._clock  # also the capture's buffer: every field KVM_SET_CLOCK reads is set here
        data.clock = clock_ns
        data.flags = 0 if realtime_ns is None else lib.KVM_CLOCK_REALTIME
        data.realtime = 0 if realtime_ns is None else realtime_ns
