"""Guest RAM regions and the e820 map the guest is told about.

A RamLayout is the list of (gpa, size) RAM regions the VMM registered, low RAM first. The e820 map is derived from
it: the first 639 KiB are usable, the EBDA and BIOS area up to 1 MiB are reserved (the MP table lives there, and
guests scan it), everything from 1 MiB on is usable. The MMIO hole is simply absent from the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise

from hotswap.boot.errors import BootError
from hotswap.layout import EBDA_START, HIGH_RAM_START, HIMEM_START, LOW_RAM_END, PAGE_SIZE

RamLayout = Sequence[tuple[int, int]]

# Enough low RAM for the boot structures below 1 MiB and a kernel above it.
MIN_RAM = 2 * HIMEM_START


class E820Type(IntEnum):
    RAM = 1
    RESERVED = 2


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size


def split_ram(mem_size: int) -> list[tuple[int, int]]:
    """The standard layout for `mem_size` bytes of RAM: low RAM up to the MMIO hole, the rest from 4 GiB."""
    if mem_size < MIN_RAM or mem_size % PAGE_SIZE:
        raise BootError(f"ram: size {mem_size:#x} must be a multiple of 4 KiB and at least {MIN_RAM:#x}")
    low = min(mem_size, LOW_RAM_END)
    regions = [(0, low)]
    if mem_size > low:
        regions.append((HIGH_RAM_START, mem_size - low))
    return regions


def validate_ram(ram: RamLayout) -> None:
    """Reject layouts the loader cannot describe: unsorted, overlapping, unaligned, in the MMIO hole, or
    without low RAM from address 0 past 1 MiB."""
    if not ram:
        raise BootError("ram: the layout has no regions")
    if ram[0][0] != 0 or ram[0][1] < MIN_RAM:
        raise BootError(f"ram: the first region must start at 0 and hold at least {MIN_RAM:#x} bytes")
    previous_end = 0
    for gpa, size in ram:
        if size <= 0 or gpa % PAGE_SIZE or size % PAGE_SIZE:
            raise BootError(f"ram: region {gpa:#x}+{size:#x} is empty or not 4 KiB aligned")
        if gpa < previous_end:
            raise BootError(f"ram: region {gpa:#x}+{size:#x} overlaps or precedes the one before it")
        if gpa < HIGH_RAM_START and gpa + size > LOW_RAM_END:
            raise BootError(f"ram: region {gpa:#x}+{size:#x} reaches into the MMIO hole at {LOW_RAM_END:#x}")
        previous_end = gpa + size


def low_ram_end(ram: RamLayout) -> int:
    """End of the region starting at 0 (where the kernel and initrd go)."""
    return ram[0][0] + ram[0][1]


def region_containing(ram: RamLayout, gpa: int, size: int) -> tuple[int, int] | None:
    """The RAM region holding all of [gpa, gpa + size), if one does."""
    for start, length in ram:
        if start <= gpa and gpa + size <= start + length:
            return (start, length)
    return None


def e820_map(ram: RamLayout) -> list[E820Entry]:
    """The e820 table for `ram`: each region split at the EBDA and at 1 MiB, [EBDA, 1 MiB) reserved."""
    validate_ram(ram)
    entries: list[E820Entry] = []
    for gpa, size in ram:
        end = gpa + size
        cuts = sorted({gpa, end, *(c for c in (EBDA_START, HIMEM_START) if gpa < c < end)})
        for start, stop in pairwise(cuts):
            reserved = EBDA_START <= start < HIMEM_START
            entries.append(E820Entry(start, stop - start, E820Type.RESERVED if reserved else E820Type.RAM))
    return entries
