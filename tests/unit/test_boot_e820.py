"""RAM layouts and the e820 map derived from them."""

from __future__ import annotations

import pytest

from hotswap.boot import BootError, E820Entry, E820Type, e820_map, split_ram
from hotswap.layout import GIB, MIB

RAM, RES = E820Type.RAM, E820Type.RESERVED
LOW = [E820Entry(0, 0x9_FC00, RAM), E820Entry(0x9_FC00, 0x10_0000 - 0x9_FC00, RES)]


@pytest.mark.parametrize(
    ("mem", "expected"),
    [
        (256 * MIB, [*LOW, E820Entry(0x10_0000, 256 * MIB - 0x10_0000, RAM)]),
        (3 * GIB, [*LOW, E820Entry(0x10_0000, 3 * GIB - 0x10_0000, RAM)]),
        (4 * GIB, [*LOW, E820Entry(0x10_0000, 3 * GIB - 0x10_0000, RAM), E820Entry(4 * GIB, 1 * GIB, RAM)]),
        (16 * GIB, [*LOW, E820Entry(0x10_0000, 3 * GIB - 0x10_0000, RAM), E820Entry(4 * GIB, 13 * GIB, RAM)]),
    ],
)
def test_e820_for_standard_sizes(mem: int, expected: list[E820Entry]) -> None:
    e820 = e820_map(split_ram(mem))
    assert e820 == expected
    assert sum(e.size for e in e820 if e.type == RAM) + 0x6_0400 == mem


def test_split_ram_puts_the_rest_above_4g() -> None:
    assert split_ram(256 * MIB) == [(0, 256 * MIB)]
    assert split_ram(3 * GIB) == [(0, 3 * GIB)]
    assert split_ram(5 * GIB) == [(0, 3 * GIB), (4 * GIB, 2 * GIB)]


def test_entries_never_cover_the_mmio_hole() -> None:
    for entry in e820_map(split_ram(16 * GIB)):
        assert entry.end <= 3 * GIB or entry.addr >= 4 * GIB


@pytest.mark.parametrize(
    ("ram", "message"),
    [
        ([], "no regions"),
        ([(0x1000, 64 * MIB)], "start at 0"),
        ([(0, 1 * MIB)], "at least"),
        ([(0, 64 * MIB), (32 * MIB, 64 * MIB)], "overlaps"),
        ([(0, 64 * MIB + 1)], "aligned"),
        ([(0, 3 * GIB + 4096)], "MMIO hole"),
        ([(0, 64 * MIB), (3 * GIB - 4096, 8192)], "MMIO hole"),
    ],
)
def test_bad_layouts_are_rejected(ram: list[tuple[int, int]], message: str) -> None:
    with pytest.raises(BootError, match=message):
        e820_map(ram)


def test_split_ram_rejects_tiny_or_unaligned_sizes() -> None:
    with pytest.raises(BootError, match="ram"):
        split_ram(1 * MIB)
    with pytest.raises(BootError, match="ram"):
        split_ram(64 * MIB + 1)
