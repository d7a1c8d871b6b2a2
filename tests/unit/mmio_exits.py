"""MMIO exits written into a kvm_run in memory, as KVM leaves them, for the C byte queue (kvm/byte_queue.py)."""

from __future__ import annotations

from kvm._ffi import ffi, lib
from kvm.byte_queue import ByteQueue

BASE = 0xD000_0000  # where the tests put their UART


class Exits:
    """A kvm_run in memory and a way to offer it MMIO exits."""

    def __init__(self) -> None:
        self.run = ffi.new("struct kvm_run *")
        union = ffi.cast("uint8_t *", self.run) + lib.hs_run_union_offset()
        self.mmio = ffi.cast("struct hs_exit_mmio *", union)

    def offer(self, queue: ByteQueue, addr: int, data: bytes = b"", read: int = 0) -> bool:
        self.run.exit_reason = lib.KVM_EXIT_MMIO
        self.mmio.phys_addr = addr
        self.mmio.is_write = 0 if read else 1
        self.mmio.len = read or len(data)
        self.mmio.data = bytes(8)
        ffi.memmove(self.mmio.data, data, len(data))
        return bool(lib.hs_byte_queue_serve(queue.c, self.run))

    def write(self, queue: ByteQueue, text: bytes, data_offset: int = 0) -> None:
        for byte in text:
            assert self.offer(queue, BASE + data_offset, bytes([byte]))
