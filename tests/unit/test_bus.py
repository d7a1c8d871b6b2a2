"""The address bus: mapping, overlap refusal, lookup with offsets, unmapped accesses."""

from __future__ import annotations

import pytest

from devices.bus import Bus, BusError
from devices.errors import DeviceError


class RecordingDevice:
    """Answers reads with its tag and the offset; records every access."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))
        return bytes([self.tag, offset & 0xFF, *([0] * (size - 2))])[:size]

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))


def test_read_and_write_reach_the_device_with_the_offset() -> None:
    bus = Bus("pio")
    com1 = RecordingDevice(1)
    bus.insert(0x3F8, 8, com1, "com1")
    assert bus.read(0x3FD, 1) == b"\x01"
    assert bus.write(0x3F8, b"A")
    assert com1.reads == [(5, 1)]
    assert com1.writes == [(0, b"A")]


def test_nothing_mapped_reads_none_and_writes_false() -> None:
    bus = Bus("pio")
    bus.insert(0x3F8, 8, RecordingDevice(1), "com1")
    assert bus.read(0x3F7, 1) is None
    assert bus.read(0x400, 1) is None
    assert bus.write(0x2F8, b"x") is False
    assert Bus("empty").read(0, 1) is None


@pytest.mark.parametrize(
    ("base", "size"),
    [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3F0, 0x20), (0x3FC, 2)],
)
def test_overlapping_insert_is_refused(base: int, size: int) -> None:
    bus = Bus("pio")
    bus.insert(0x3F8, 8, RecordingDevice(1), "com1")
    with pytest.raises(BusError, match=r"pio bus: .* overlaps 0x3f8\.\.0x3ff \(com1\)"):
        bus.insert(base, size, RecordingDevice(2), "other")
    assert [r.name for r in bus.ranges()] == ["com1"]


def test_adjacent_ranges_are_fine_and_sorted() -> None:
    bus = Bus("pio")
    bus.insert(0x64, 1, RecordingDevice(3), "i8042-cmd")
    bus.insert(0x60, 1, RecordingDevice(2), "i8042-data")
    bus.insert(0x3F8, 8, RecordingDevice(1), "com1")
    bus.insert(0x3F0, 8, RecordingDevice(4), "below")
    bus.insert(0x400, 8, RecordingDevice(5), "above")
    assert [r.base for r in bus.ranges()] == [0x60, 0x64, 0x3F0, 0x3F8, 0x400]
    assert bus.read(0x60, 1) == b"\x02"
    assert bus.read(0x64, 1) == b"\x03"
    assert bus.read(0x3F7, 1) == b"\x04"
    assert bus.read(0x3F8, 1) == b"\x01"
    assert bus.read(0x407, 1) == b"\x05"
    assert bus.read(0x61, 1) is None


@pytest.mark.parametrize(("base", "size"), [(-1, 4), (0x10, 0), (0x10, -3)])
def test_empty_or_negative_range_is_refused(base: int, size: int) -> None:
    with pytest.raises(BusError):
        Bus("mmio").insert(base, size, RecordingDevice(1), "bad")


def test_bus_error_is_a_device_error() -> None:
    assert issubclass(BusError, DeviceError)


def test_access_running_past_the_end_of_a_range_is_unmapped() -> None:
    bus = Bus("pio")
    com1 = RecordingDevice(1)
    bus.insert(0x3F8, 8, com1, "com1")
    assert bus.read(0x3FE, 2) == b"\x01\x06"
    assert bus.read(0x3FF, 2) is None
    assert bus.write(0x3FF, b"ab") is False
    assert com1.writes == []


def test_the_same_device_mapped_twice_sees_the_same_offsets() -> None:
    pio, mmio = Bus("pio"), Bus("mmio")
    com1 = RecordingDevice(1)
    pio.insert(0x3F8, 8, com1, "com1")
    mmio.insert(0xD000_0000, 0x1000, com1, "com1-mmio")
    pio.write(0x3FB, b"\x80")
    mmio.write(0xD000_0003, b"\x03")
    assert com1.writes == [(3, b"\x80"), (3, b"\x03")]


def test_cache_does_not_answer_for_another_range() -> None:
    bus = Bus("mmio")
    first, second = RecordingDevice(1), RecordingDevice(2)
    bus.insert(0x1000, 0x100, first, "first")
    bus.insert(0x2000, 0x100, second, "second")
    assert bus.read(0x1010, 1) == b"\x01"  # caches "first"
    assert bus.read(0x2010, 1) == b"\x02"
    assert bus.read(0x1100, 1) is None  # just past "first": must not hit the cache
    assert bus.read(0x0FFF, 1) is None
    assert bus.read(0x10FF, 1) == b"\x01"


def test_insert_after_lookups_is_seen() -> None:
    bus = Bus("mmio")
    bus.insert(0x1000, 0x100, RecordingDevice(1), "first")
    assert bus.read(0x3000, 1) is None
    bus.insert(0x3000, 0x100, RecordingDevice(3), "third")
    assert bus.read(0x3000, 1) == b"\x03"


def test_many_ranges_lookup() -> None:
    bus = Bus("mmio")
    devices = [RecordingDevice(i) for i in range(16)]
    for i, device in enumerate(devices):
        bus.insert(0xD000_1000 + i * 0x1000, 0x200, device, f"virtio{i}")
    for i in reversed(range(16)):
        base = 0xD000_1000 + i * 0x1000
        assert bus.read(base + 0x1FF, 1) == bytes([i])
        assert bus.read(base + 0x200, 1) is None
