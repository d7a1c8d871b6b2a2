"""Test doubles for the virtio unit tests: guest RAM over a bytearray, an interrupt line that counts, and a small
driver that sets up a transport and builds descriptor tables and rings the way a guest driver would."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from devices.errors import GuestMemoryError
from devices.virtio.constants import Status
from devices.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from devices.virtio.transport import (
    DEVICE_FEATURES,
    DEVICE_FEATURES_SEL,
    DRIVER_FEATURES,
    DRIVER_FEATURES_SEL,
    QUEUE_DESC_HIGH,
    QUEUE_DESC_LOW,
    QUEUE_DEVICE_HIGH,
    QUEUE_DEVICE_LOW,
    QUEUE_DRIVER_HIGH,
    QUEUE_DRIVER_LOW,
    QUEUE_NUM,
    QUEUE_READY,
    QUEUE_SEL,
    STATUS,
    VirtioMmioTransport,
)

RAM_BASE = 0x10_0000
RAM_SIZE = 2 * 1024 * 1024
GUARD = 4096
GUARD_BYTE = 0xA5


class FakeMemory:
    """Guest RAM at [base, base + size). The bytearray has guard bytes after RAM that nothing may change, and every
    access outside RAM raises GuestMemoryError (and is counted)."""

    def __init__(self, size: int = RAM_SIZE, base: int = RAM_BASE) -> None:
        self.base = base
        self.size = size
        self.buf = bytearray(size + GUARD)
        self.buf[size:] = bytes([GUARD_BYTE]) * GUARD
        self.rejected = 0
        self._next_free = base

    def _offset(self, gpa: int, size: int) -> int:
        if size < 0 or gpa < self.base or gpa + size > self.base + self.size:
            self.rejected += 1
            raise GuestMemoryError(f"fake memory: [{gpa:#x}, +{size:#x}) outside RAM")
        return gpa - self.base

    def guard_intact(self) -> bool:
        return self.buf[self.size :] == bytes([GUARD_BYTE]) * GUARD

    def view(self, gpa: int, size: int) -> memoryview:
        offset = self._offset(gpa, size)
        return memoryview(self.buf)[offset : offset + size]

    def read(self, gpa: int, size: int) -> bytes:
        offset = self._offset(gpa, size)
        return bytes(self.buf[offset : offset + size])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        offset = self._offset(gpa, len(data))
        self.buf[offset : offset + len(data)] = data

    def read_u16(self, gpa: int) -> int:
        return int(struct.unpack("<H", self.read(gpa, 2))[0])

    def read_u32(self, gpa: int) -> int:
        return int(struct.unpack("<I", self.read(gpa, 4))[0])

    def read_u64(self, gpa: int) -> int:
        return int(struct.unpack("<Q", self.read(gpa, 8))[0])

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<H", value))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<I", value))

    def alloc(self, size: int, align: int = 16) -> int:
        """A fresh, zeroed guest-physical range (bump allocator)."""
        gpa = (self._next_free + align - 1) // align * align
        if gpa + size > self.base + self.size:
            raise MemoryError("fake memory: out of RAM")
        self._next_free = gpa + size
        return gpa


class FakeInterrupt:
    def __init__(self) -> None:
        self.pulses = 0
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    def pulse(self) -> None:
        self.pulses += 1


def reg_read(transport: VirtioMmioTransport, offset: int) -> int:
    return int(struct.unpack("<I", transport.read(offset, 4))[0])


def reg_write(transport: VirtioMmioTransport, offset: int, value: int) -> None:
    transport.write(offset, struct.pack("<I", value))


def device_features(transport: VirtioMmioTransport) -> int:
    reg_write(transport, DEVICE_FEATURES_SEL, 0)
    low = reg_read(transport, DEVICE_FEATURES)
    reg_write(transport, DEVICE_FEATURES_SEL, 1)
    return low | reg_read(transport, DEVICE_FEATURES) << 32


def negotiate(transport: VirtioMmioTransport, features: int | None = None) -> bool:
    """ACKNOWLEDGE, DRIVER, write features (default: all offered), FEATURES_OK; True if the device kept it."""
    reg_write(transport, STATUS, 0)
    reg_write(transport, STATUS, Status.ACKNOWLEDGE)
    reg_write(transport, STATUS, Status.ACKNOWLEDGE | Status.DRIVER)
    if features is None:
        features = device_features(transport)
    for sel in (0, 1):
        reg_write(transport, DRIVER_FEATURES_SEL, sel)
        reg_write(transport, DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFF_FFFF)
    reg_write(transport, STATUS, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    return bool(reg_read(transport, STATUS) & Status.FEATURES_OK)


def driver_ok(transport: VirtioMmioTransport) -> None:
    reg_write(transport, STATUS, reg_read(transport, STATUS) | Status.DRIVER_OK)


class DriverQueue:
    """The driver's side of one split virtqueue in fake memory."""

    def __init__(self, memory: FakeMemory, size: int) -> None:
        self.memory = memory
        self.size = size
        self.desc = memory.alloc(16 * size, 16)
        self.avail = memory.alloc(6 + 2 * size, 2)
        self.used = memory.alloc(6 + 8 * size, 4)
        self.avail_idx = 0
        self.last_used = 0
        self.next_desc = 0

    def configure(self, transport: VirtioMmioTransport, index: int, *, ready: bool = True) -> None:
        reg_write(transport, QUEUE_SEL, index)
        reg_write(transport, QUEUE_NUM, self.size)
        for low, high, addr in (
            (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, self.desc),
            (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, self.avail),
            (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, self.used),
        ):
            reg_write(transport, low, addr & 0xFFFF_FFFF)
            reg_write(transport, high, addr >> 32)
        if ready:
            reg_write(transport, QUEUE_READY, 1)

    # -- building requests ---------------------------------------------------------------------------------------
    def write_desc(
        self, index: int, gpa: int, length: int, flags: int, next_index: int, table: int | None = None
    ) -> None:
        base = self.desc if table is None else table
        self.memory.write(base + 16 * index, struct.pack("<QIHH", gpa, length, flags, next_index))

    def _take_descs(self, count: int) -> list[int]:
        indices = [(self.next_desc + i) % self.size for i in range(count)]
        self.next_desc = (self.next_desc + count) % self.size
        return indices

    def add(self, buffers: Sequence[tuple[int, int, bool]], *, indirect: bool = False) -> int:
        """Make a chain of (gpa, length, device_writable) available; return its head index."""
        if indirect:
            table = self.memory.alloc(16 * len(buffers), 16)
            for i, (gpa, length, writable) in enumerate(buffers):
                flags = (DESC_F_WRITE if writable else 0) | (DESC_F_NEXT if i + 1 < len(buffers) else 0)
                self.write_desc(i, gpa, length, flags, i + 1, table)
            (head,) = self._take_descs(1)
            self.write_desc(head, table, 16 * len(buffers), DESC_F_INDIRECT, 0)
        else:
            indices = self._take_descs(len(buffers))
            for i, (gpa, length, writable) in enumerate(buffers):
                last = i + 1 == len(buffers)
                flags = (DESC_F_WRITE if writable else 0) | (0 if last else DESC_F_NEXT)
                self.write_desc(indices[i], gpa, length, flags, 0 if last else indices[i + 1])
            head = indices[0]
        self.publish(head)
        return head

    def publish(self, head: int) -> None:
        """Put `head` in the avail ring and bump avail.idx (entries first, then the index)."""
        self.memory.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail + 2, self.avail_idx)

    # -- reading completions and suppression fields --------------------------------------------------------------
    def used_idx(self) -> int:
        return self.memory.read_u16(self.used + 2)

    def take_used(self) -> list[tuple[int, int]]:
        """(head, length) of every used element added since the last call."""
        out: list[tuple[int, int]] = []
        idx = self.used_idx()
        while self.last_used != idx:
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            out.append(struct.unpack("<II", self.memory.read(slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used + 4 + 8 * self.size)

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write_u16(self.avail, flags)
