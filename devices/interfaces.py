"""What a device needs from the machine, as structural protocols (the VMM passes objects that match)."""

from __future__ import annotations

from typing import Protocol


class InterruptLine(Protocol):
    """One interrupt input of the irqchip (a GSI). Level-triggered devices call set_level; edge ones pulse."""

    def set_level(self, high: bool) -> None: ...

    def pulse(self) -> None: ...


class GuestMemory(Protocol):
    """Guest RAM by guest-physical address. Every method raises devices.errors.GuestMemoryError for a range that
    is not entirely inside one RAM region; nothing outside guest RAM is ever touched."""

    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...

    def view(self, gpa: int, size: int) -> memoryview:
        """A writable view straight into guest RAM (no copy); valid while the memory is mapped."""
        ...

    def read_u16(self, gpa: int) -> int: ...

    def read_u32(self, gpa: int) -> int: ...

    def read_u64(self, gpa: int) -> int: ...

    def write_u16(self, gpa: int, value: int) -> None: ...

    def write_u32(self, gpa: int, value: int) -> None: ...


class BusDevice(Protocol):
    """A device on the port-I/O or MMIO bus; offset is relative to the start of the range it is mapped at."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...
