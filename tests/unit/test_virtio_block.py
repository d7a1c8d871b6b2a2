"""virtio-blk over a real temporary image file: every request type, read-only disks, and every malformed request
answered with an error status (never an exception out of notify, never a touch outside guest RAM)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from virtio_fakes import DriverQueue, FakeInterrupt, FakeMemory, device_features, driver_ok, negotiate, reg_read

from devices.errors import StateError
from devices.virtio import block
from devices.virtio.block import F_FLUSH, SECTOR_SIZE, BlkStatus, RequestType, VirtioBlock
from devices.virtio.constants import Status, bit
from devices.virtio.transport import STATUS, VirtioMmioTransport

SECTORS = 64
QUEUE_SIZE = 16
Buffer = tuple[int, int, bool]


def pattern(sector: int) -> bytes:
    return bytes((sector * 7 + i) & 0xFF for i in range(SECTOR_SIZE))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(pattern(s) for s in range(SECTORS)))
    return path


class BlkRig:
    def __init__(
        self,
        image: Path,
        *,
        read_only: bool = False,
        serial: str = "hotswap-disk-1",
        open_flags: int | None = None,
        without: int = 0,
    ) -> None:
        """`without`: feature bits the fake driver declines (all others offered are accepted)."""
        self.image = image
        self.memory = FakeMemory()
        self.irq = FakeInterrupt()
        fd = os.open(image, (os.O_RDONLY if read_only else os.O_RDWR) if open_flags is None else open_flags)
        self.device = VirtioBlock(fd, read_only=read_only, serial=serial, queue_size=QUEUE_SIZE)
        self.transport = VirtioMmioTransport(self.device, self.memory, self.irq)
        self.queue = DriverQueue(self.memory, QUEUE_SIZE)
        assert negotiate(self.transport, device_features(self.transport) & ~without)
        self.queue.configure(self.transport, 0)
        driver_ok(self.transport)

    def header(self, kind: int, sector: int = 0) -> Buffer:
        gpa = self.memory.alloc(16)
        self.memory.write(gpa, struct.pack("<IIQ", kind, 0, sector))
        return (gpa, 16, False)

    def status_buffer(self) -> Buffer:
        gpa = self.memory.alloc(1)
        self.memory.write(gpa, b"\xee")  # not a valid status: proves the device wrote it
        return (gpa, 1, True)

    def data(self, length: int, *, writable: bool, fill: bytes = b"") -> Buffer:
        gpa = self.memory.alloc(length)
        if fill:
            self.memory.write(gpa, fill)
        return (gpa, length, writable)

    def run(self, buffers: Sequence[Buffer], *, indirect: bool = False) -> tuple[int, int]:
        """Submit one chain; return (status byte, used length)."""
        head = self.queue.add(buffers, indirect=indirect)
        self.transport.notify(0)
        used = self.queue.take_used()
        assert [h for h, _ in used] == [head]
        last_gpa, last_len, _ = buffers[-1]
        return self.memory.read(last_gpa + last_len - 1, 1)[0], used[0][1]

    def read_sectors(self, sector: int, count: int, *, indirect: bool = False) -> tuple[int, bytes]:
        buf = self.data(count * SECTOR_SIZE, writable=True)
        status, used = self.run([self.header(RequestType.IN, sector), buf, self.status_buffer()], indirect=indirect)
        if status == BlkStatus.OK:
            assert used == count * SECTOR_SIZE + 1
        return status, self.memory.read(buf[0], buf[1])

    def healthy(self) -> bool:
        return not reg_read(self.transport, STATUS) & Status.DEVICE_NEEDS_RESET


@pytest.fixture
def rig(image: Path) -> Iterator[BlkRig]:
    rig = BlkRig(image)
    yield rig
    assert rig.memory.guard_intact()
    rig.transport.close()


def test_config_and_features(rig: BlkRig) -> None:
    capacity, _size_max, seg_max = struct.unpack("<QII", rig.transport.read(0x100, 16))
    assert capacity == SECTORS
    assert seg_max == QUEUE_SIZE - 2
    assert struct.unpack("<I", rig.transport.read(0x100 + 20, 4))[0] == SECTOR_SIZE
    features = device_features(rig.transport)
    for feature in (block.F_FLUSH, block.F_SEG_MAX, block.F_BLK_SIZE, 32):
        assert features & bit(feature)
    assert not features & bit(block.F_RO)


def test_read(rig: BlkRig) -> None:
    status, data = rig.read_sectors(3, 2)
    assert status == BlkStatus.OK
    assert data == pattern(3) + pattern(4)
    assert rig.irq.pulses == 1


def test_read_last_sector_and_indirect(rig: BlkRig) -> None:
    status, data = rig.read_sectors(SECTORS - 1, 1, indirect=True)
    assert status == BlkStatus.OK
    assert data == pattern(SECTORS - 1)


def test_read_scattered_segments(rig: BlkRig) -> None:
    parts = [rig.data(n, writable=True) for n in (100, 412, 512)]
    status, used = rig.run([rig.header(RequestType.IN, 5), *parts, rig.status_buffer()])
    assert (status, used) == (BlkStatus.OK, 1025)
    assert b"".join(rig.memory.read(g, n) for g, n, _ in parts) == pattern(5) + pattern(6)


def test_write(rig: BlkRig) -> None:
    payload = bytes(range(256)) * 4
    status, used = rig.run(
        [rig.header(RequestType.OUT, 10), rig.data(1024, writable=False, fill=payload), rig.status_buffer()]
    )
    assert (status, used) == (BlkStatus.OK, 1)
    content = rig.image.read_bytes()
    assert content[10 * SECTOR_SIZE : 12 * SECTOR_SIZE] == payload
    assert content[12 * SECTOR_SIZE : 13 * SECTOR_SIZE] == pattern(12)
    assert rig.read_sectors(10, 2)[1] == payload


def test_any_layout_header_split_and_status_with_data(rig: BlkRig) -> None:
    """virtio 1.x: the device must not depend on how the request is cut into buffers."""
    hdr = rig.memory.alloc(16)
    rig.memory.write(hdr, struct.pack("<IIQ", RequestType.IN, 0, 2))
    tail = rig.memory.alloc(SECTOR_SIZE + 1)  # data and status in one buffer
    status, used = rig.run([(hdr, 5, False), (hdr + 5, 11, False), (tail, SECTOR_SIZE + 1, True)])
    assert (status, used) == (BlkStatus.OK, SECTOR_SIZE + 1)
    assert rig.memory.read(tail, SECTOR_SIZE) == pattern(2)


def test_flush(rig: BlkRig, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    status, used = rig.run([rig.header(RequestType.FLUSH), rig.status_buffer()])
    assert (status, used) == (BlkStatus.OK, 1)
    assert synced == [rig.device.fd]


def write_request(rig: BlkRig, sector: int) -> list[Buffer]:
    data = rig.memory.alloc(SECTOR_SIZE)
    rig.memory.write(data, b"\x5a" * SECTOR_SIZE)
    return [rig.header(RequestType.OUT, sector), (data, SECTOR_SIZE, False), rig.status_buffer()]


def test_writes_are_not_synced_when_the_driver_flushes(rig: BlkRig, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    assert rig.run(write_request(rig, 3))[0] == BlkStatus.OK
    assert synced == []  # FLUSH negotiated: durability is the driver's call


def test_writes_are_synced_when_the_driver_does_not_flush(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = BlkRig(image, without=bit(F_FLUSH))
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    assert rig.run(write_request(rig, 3))[0] == BlkStatus.OK
    assert synced == [rig.device.fd]  # write-through: durable before it is acknowledged


def test_flush_for_real(rig: BlkRig) -> None:
    assert rig.run([rig.header(RequestType.FLUSH), rig.status_buffer()])[0] == BlkStatus.OK


def test_get_id(rig: BlkRig) -> None:
    buf = rig.data(20, writable=True)
    status, used = rig.run([rig.header(RequestType.GET_ID), buf, rig.status_buffer()])
    assert (status, used) == (BlkStatus.OK, 21)
    assert rig.memory.read(buf[0], 20) == b"hotswap-disk-1".ljust(20, b"\0")


def test_get_id_into_scattered_buffers(rig: BlkRig) -> None:
    first, second = rig.data(8, writable=True), rig.data(12, writable=True)
    status, used = rig.run([rig.header(RequestType.GET_ID), first, second, rig.status_buffer()])
    assert (status, used) == (BlkStatus.OK, 21)
    assert rig.memory.read(first[0], 8) + rig.memory.read(second[0], 12) == b"hotswap-disk-1".ljust(20, b"\0")


def test_get_id_full_length_serial_is_not_terminated(image: Path) -> None:
    rig = BlkRig(image, serial="S" * 20)
    buf = rig.data(20, writable=True)
    assert rig.run([rig.header(RequestType.GET_ID), buf, rig.status_buffer()])[0] == BlkStatus.OK
    assert rig.memory.read(buf[0], 20) == b"S" * 20
    rig.transport.close()


def test_serial_too_long_is_refused(image: Path) -> None:
    fd = os.open(image, os.O_RDONLY)
    with pytest.raises(ValueError, match="longer than 20"):
        VirtioBlock(fd, serial="x" * 21)
    os.close(fd)


def test_unknown_type_is_unsupported(rig: BlkRig) -> None:
    status, used = rig.run([rig.header(11), rig.data(16, writable=False), rig.status_buffer()])
    assert (status, used) == (BlkStatus.UNSUPP, 1)


@pytest.mark.parametrize("open_flags", [os.O_RDONLY, os.O_RDWR])
def test_read_only_disk(image: Path, open_flags: int) -> None:
    """Read-only is the device's policy, whatever mode the host opened the image in."""
    rig = BlkRig(image, read_only=True, open_flags=open_flags)
    assert device_features(rig.transport) & bit(block.F_RO)
    before = image.read_bytes()
    status, _ = rig.run(
        [rig.header(RequestType.OUT, 0), rig.data(512, writable=False, fill=b"\xff" * 512), rig.status_buffer()]
    )
    assert status == BlkStatus.IOERR
    assert image.read_bytes() == before
    assert rig.read_sectors(0, 1) == (BlkStatus.OK, pattern(0))
    assert rig.run([rig.header(RequestType.FLUSH), rig.status_buffer()])[0] == BlkStatus.OK
    rig.transport.close()


def test_io_error_becomes_ioerr(image: Path) -> None:
    """A write on an fd the host opened read-only fails in pwritev: IOERR, not an exception."""
    rig = BlkRig(image)
    os.close(rig.device.fd)
    rig.device.fd = os.open(image, os.O_RDONLY)
    status, _ = rig.run([rig.header(RequestType.OUT, 0), rig.data(512, writable=False), rig.status_buffer()])
    assert status == BlkStatus.IOERR
    assert rig.healthy()
    rig.transport.close()


# -- malformed requests: an error status, the device goes on -------------------------------------------------------
@pytest.mark.parametrize(
    ("sector", "count"), [(SECTORS, 1), (SECTORS - 1, 2), (2**63, 1), (2**64 - 1, 1), (SECTORS + 100, 0)]
)
def test_past_the_end(rig: BlkRig, sector: int, count: int) -> None:
    buf = rig.data(max(count, 1) * SECTOR_SIZE, writable=True)
    buffers = [rig.header(RequestType.IN, sector), buf, rig.status_buffer()] if count else None
    if buffers is None:  # zero-length read past the end: nothing to do, but still out of range
        buffers = [rig.header(RequestType.IN, sector), rig.status_buffer()]
    status, _ = rig.run(buffers)
    assert status == BlkStatus.IOERR
    assert rig.healthy()


@pytest.mark.parametrize("sector", [SECTORS, SECTORS - 1, 2**40])
def test_write_past_the_end_does_not_grow_the_image(rig: BlkRig, sector: int) -> None:
    size = rig.image.stat().st_size
    data = rig.data(2 * SECTOR_SIZE, writable=False, fill=b"\x11" * 2 * SECTOR_SIZE)
    assert rig.run([rig.header(RequestType.OUT, sector), data, rig.status_buffer()])[0] == BlkStatus.IOERR
    assert rig.image.stat().st_size == size


@pytest.mark.parametrize("kind", [RequestType.IN, RequestType.OUT])
@pytest.mark.parametrize("length", [100, 513, 1])
def test_not_whole_sectors(rig: BlkRig, kind: RequestType, length: int) -> None:
    data = rig.data(length, writable=kind == RequestType.IN)
    assert rig.run([rig.header(kind, 0), data, rig.status_buffer()])[0] == BlkStatus.IOERR


def test_read_with_readable_data_buffer(rig: BlkRig) -> None:
    buf = rig.data(512, writable=False)
    assert rig.run([rig.header(RequestType.IN, 0), buf, rig.status_buffer()])[0] == BlkStatus.IOERR


def test_write_with_writable_data_buffer(rig: BlkRig) -> None:
    before = rig.image.read_bytes()
    buf = rig.data(512, writable=True)
    assert rig.run([rig.header(RequestType.OUT, 0), buf, rig.status_buffer()])[0] == BlkStatus.IOERR
    assert rig.image.read_bytes() == before


def test_header_device_writable(rig: BlkRig) -> None:
    gpa, length, _ = rig.header(RequestType.IN, 0)
    assert rig.run([(gpa, length, True), rig.data(512, writable=True), rig.status_buffer()])[0] == BlkStatus.IOERR


def test_short_header(rig: BlkRig) -> None:
    gpa, _, _ = rig.header(RequestType.IN, 0)
    assert rig.run([(gpa, 8, False), rig.status_buffer()])[0] == BlkStatus.IOERR


def test_readable_after_writable(rig: BlkRig) -> None:
    buffers = [rig.header(RequestType.IN, 0), rig.data(512, writable=True), rig.data(16, writable=False)]
    status, used = rig.run([*buffers, rig.status_buffer()])
    assert (status, used) == (BlkStatus.IOERR, 1)


def test_status_not_writable_is_returned_unanswered(rig: BlkRig) -> None:
    status_gpa = rig.memory.alloc(1)
    head = rig.queue.add([rig.header(RequestType.FLUSH), (status_gpa, 1, False)])
    rig.transport.notify(0)
    assert rig.queue.take_used() == [(head, 0)]
    assert rig.healthy()


def test_flush_with_data_and_get_id_without_buffer(rig: BlkRig) -> None:
    assert rig.run([rig.header(RequestType.FLUSH), rig.data(512, writable=True), rig.status_buffer()])[0] == 1
    assert rig.run([rig.header(RequestType.GET_ID), rig.status_buffer()])[0] == BlkStatus.IOERR


def test_more_segments_than_seg_max(rig: BlkRig) -> None:
    # header + 14 data buffers whose last one also holds the status byte: a legal chain of 15 <= 16 descriptors,
    # but 15 data segments > seg_max (14).
    parts = [rig.data(512, writable=True) for _ in range(QUEUE_SIZE - 2)]
    last = rig.data(513, writable=True)
    status, _ = rig.run([rig.header(RequestType.IN, 0), *parts, last])
    assert status == BlkStatus.IOERR


def test_oversized_request(rig: BlkRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block, "MAX_REQUEST_BYTES", 4 * SECTOR_SIZE)
    assert rig.read_sectors(0, 5)[0] == BlkStatus.IOERR
    assert rig.read_sectors(0, 4)[0] == BlkStatus.OK


def test_bad_chain_needs_reset_without_exception(rig: BlkRig) -> None:
    rig.queue.write_desc(0, rig.memory.base + rig.memory.size, 16, 0, 0)  # outside RAM
    rig.queue.publish(0)
    rig.transport.notify(0)
    assert not rig.healthy()


def test_requests_keep_flowing_after_errors(rig: BlkRig) -> None:
    assert rig.read_sectors(SECTORS, 1)[0] == BlkStatus.IOERR
    assert rig.run([rig.header(99), rig.status_buffer()])[0] == BlkStatus.UNSUPP
    assert rig.read_sectors(1, 1) == (BlkStatus.OK, pattern(1))
    assert rig.device.completed == 3


# -- live upgrade ------------------------------------------------------------------------------------------------
def test_save_restore_mid_stream(rig: BlkRig) -> None:
    assert rig.read_sectors(0, 1)[0] == BlkStatus.OK
    # Two requests posted but their notification lost: the old process quiesces and hands over.
    rig.transport.quiesce()
    buf_a = rig.data(SECTOR_SIZE, writable=True)
    head_a = rig.queue.add([rig.header(RequestType.IN, 7), buf_a, rig.status_buffer()])
    payload = b"\x5a" * SECTOR_SIZE
    head_b = rig.queue.add(
        [rig.header(RequestType.OUT, 8), rig.data(SECTOR_SIZE, writable=False, fill=payload), rig.status_buffer()]
    )
    rig.transport.notify(0)
    assert rig.queue.take_used() == []
    state = rig.transport.save()
    # The successor: the same guest memory, the disk fd inherited (here: duplicated), a fresh device.
    successor = VirtioBlock(os.dup(rig.device.fd), serial="hotswap-disk-1", queue_size=QUEUE_SIZE)
    transport = VirtioMmioTransport.restore(successor, rig.memory, rig.irq, state)
    transport.resume()
    assert [h for h, _ in rig.queue.take_used()] == [head_a, head_b]
    assert rig.memory.read(buf_a[0], SECTOR_SIZE) == pattern(7)
    assert rig.image.read_bytes()[8 * SECTOR_SIZE : 9 * SECTOR_SIZE] == payload
    # And it goes on with the same rings.
    rig.transport = transport
    assert rig.read_sectors(8, 1) == (BlkStatus.OK, payload)
    transport.close()


def test_restore_refuses_a_different_disk(rig: BlkRig, tmp_path: Path) -> None:
    state = rig.transport.save()
    other = tmp_path / "other.img"
    other.write_bytes(bytes(SECTOR_SIZE * 2))
    for device, field in (
        (VirtioBlock(os.open(other, os.O_RDWR), serial="hotswap-disk-1", queue_size=QUEUE_SIZE), "capacity"),
        (VirtioBlock(os.open(rig.image, os.O_RDWR), serial="other", queue_size=QUEUE_SIZE), "serial"),
        (
            VirtioBlock(
                os.open(rig.image, os.O_RDONLY), read_only=True, serial="hotswap-disk-1", queue_size=QUEUE_SIZE
            ),
            "read_only",
        ),
    ):
        with pytest.raises(StateError, match=f"'{field}'"):
            VirtioMmioTransport.restore(device, rig.memory, rig.irq, state)
        device.close()


def test_device_state_rejects_unknown_field(rig: BlkRig) -> None:
    state = rig.transport.save()
    state["device"]["cache"] = "writeback"
    device = VirtioBlock(os.dup(rig.device.fd), serial="hotswap-disk-1", queue_size=QUEUE_SIZE)
    with pytest.raises(StateError, match=r"device: unknown field 'cache'"):
        VirtioMmioTransport.restore(device, rig.memory, rig.irq, state)
    device.close()
