"""An address bus: non-overlapping ranges [base, base + size) mapped to devices.

One Bus serves port I/O and another MMIO. Every vCPU exit for I/O does one lookup, so the lookup is a one-entry
cache of the last range hit (consecutive accesses usually go to the same device, e.g. a UART's THR and LSR) with
a bisect over the sorted range starts behind it. Ranges are only ever added; the table is replaced as a whole on
insert so a vCPU thread looking up concurrently sees either the old table or the new one, never a mix.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from devices.errors import DeviceError
from devices.interfaces import BusDevice


class BusError(DeviceError):
    """A bus mapping cannot be made (overlap, empty or negative range)."""


@dataclass(frozen=True, slots=True)
class BusRange:
    """One mapping: `device` answers for addresses [base, end), with offsets relative to base."""

    base: int
    size: int
    device: BusDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size

    def __str__(self) -> str:
        return f"{self.base:#x}..{self.end - 1:#x} ({self.name})"


class Bus:
    """Maps address ranges to devices and forwards accesses with the offset into the range."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._table: tuple[tuple[int, ...], tuple[BusRange, ...]] = ((), ())
        self._last: BusRange | None = None

    def insert(self, base: int, size: int, device: BusDevice, name: str) -> BusRange:
        """Map `device` at [base, base + size). The same device may be mapped at several ranges."""
        if base < 0 or size <= 0:
            raise BusError(f"{self.name} bus: cannot map {name} at base {base:#x} with size {size}")
        new = BusRange(base, size, device, name)
        starts, ranges = self._table
        index = bisect.bisect_right(starts, base)
        if index > 0 and ranges[index - 1].end > base:
            raise BusError(f"{self.name} bus: {new} overlaps {ranges[index - 1]}")
        if index < len(ranges) and ranges[index].base < new.end:
            raise BusError(f"{self.name} bus: {new} overlaps {ranges[index]}")
        self._table = (
            (*starts[:index], base, *starts[index:]),
            (*ranges[:index], new, *ranges[index:]),
        )
        return new

    def ranges(self) -> tuple[BusRange, ...]:
        """Every mapping, sorted by base address."""
        return self._table[1]

    def find(self, addr: int, size: int = 1) -> BusRange | None:
        """The range that holds the whole access [addr, addr + size), or None.

        An access that starts inside a range but runs past its end is treated as unmapped: no device is asked
        to answer for addresses it does not own.
        """
        last = self._last
        if last is not None and last.base <= addr and addr + size <= last.base + last.size:
            return last
        starts, ranges = self._table
        index = bisect.bisect_right(starts, addr) - 1
        if index < 0:
            return None
        found = ranges[index]
        if addr + size > found.base + found.size:
            return None
        self._last = found
        return found

    def read(self, addr: int, size: int) -> bytes | None:
        """Read `size` bytes from the device mapped at addr; None when nothing is (the VMM returns 0xff)."""
        found = self.find(addr, size)
        if found is None:
            return None
        return found.device.read(addr - found.base, size)

    def write(self, addr: int, data: bytes) -> bool:
        """Write to the device mapped at addr; False when nothing is (the VMM drops the write)."""
        found = self.find(addr, len(data))
        if found is None:
            return False
        found.device.write(addr - found.base, data)
        return True
