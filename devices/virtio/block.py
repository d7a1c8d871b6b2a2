"""virtio-blk (virtio 1.x §5.2) over a raw image fd.

A request is a chain: a 16-byte device-readable header {type u32, reserved u32, sector u64}, data (device-readable
for T_OUT, device-writable for T_IN and T_GET_ID), and a device-writable status byte at the very end. Data moves
between the image and guest RAM with os.preadv/os.pwritev on views of guest memory (no copies). I/O is synchronous,
in the caller's thread (the VMM's event loop), so there is never a request in flight once notify() returns.

Any bad request gets an error status (IOERR, or UNSUPP for an unknown type) and the device goes on; only a chain
without a writable status byte cannot be answered, and is returned with nothing written.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

from devices.errors import StateError
from devices.virtio.constants import COMMON_FEATURES, DeviceId, bit
from devices.virtio.device import VirtioDevice
from devices.virtio.queue import Descriptor
from devices.virtio.sglist import Segment, gather, segments, total_length, views
from devices.virtio.state import StateReader

log = logging.getLogger(__name__)

SECTOR_SIZE = 512
HEADER_SIZE = 16
ID_BYTES = 20
DEFAULT_QUEUE_SIZE = 256
MAX_REQUEST_BYTES = 32 * 1024 * 1024  # larger requests are refused (IOERR); Linux sends at most a few MiB

F_SEG_MAX = 2
F_RO = 5
F_BLK_SIZE = 6
F_FLUSH = 9

_HEADER = struct.Struct("<IIQ")
_CONFIG = struct.Struct("<QII4xI")  # capacity, size_max, seg_max, geometry (unused), blk_size


class RequestType(IntEnum):
    IN = 0
    OUT = 1
    FLUSH = 4
    GET_ID = 8


class BlkStatus(IntEnum):
    OK = 0
    IOERR = 1
    UNSUPP = 2


class RequestError(Exception):
    """A request the device answers with an error status (internal to this module)."""

    def __init__(self, status: BlkStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def image_sectors(fd: int) -> int:
    """Capacity of a raw image (regular file or block device) in 512-byte sectors."""
    info = os.fstat(fd)
    size = os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(info.st_mode) else info.st_size
    return size // SECTOR_SIZE


def _advance(buffers: list[memoryview], count: int) -> list[memoryview]:
    """The buffers minus their first `count` bytes (after a short preadv/pwritev)."""
    while buffers and count >= len(buffers[0]):
        count -= len(buffers[0])
        buffers = buffers[1:]
    if count:
        buffers = [buffers[0][count:], *buffers[1:]]
    return buffers


def read_fully(fd: int, buffers: list[memoryview], offset: int) -> None:
    while buffers:
        done = os.preadv(fd, buffers, offset)
        if done == 0:
            raise OSError(f"unexpected end of image at offset {offset}")
        offset += done
        buffers = _advance(buffers, done)


def write_fully(fd: int, buffers: list[memoryview], offset: int) -> None:
    while buffers:
        done = os.pwritev(fd, buffers, offset)
        if done == 0:
            raise OSError(f"image accepted no data at offset {offset}")
        offset += done
        buffers = _advance(buffers, done)


class VirtioBlock(VirtioDevice):
    device_id = DeviceId.BLOCK
    name = "virtio-blk"

    def __init__(
        self, fd: int, *, read_only: bool = False, serial: str = "", queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> None:
        """Serve the raw image open on `fd` (the device owns the fd from now on: close() closes it)."""
        super().__init__([queue_size])
        encoded = serial.encode()
        if len(encoded) > ID_BYTES:
            raise ValueError(f"virtio-blk: serial {serial!r} is longer than {ID_BYTES} bytes")
        self.fd = fd
        self.read_only = read_only
        self.serial = serial
        self._id = encoded.ljust(ID_BYTES, b"\0")
        self.capacity = image_sectors(fd)
        self.seg_max = queue_size - 2  # a request is header + data segments + status, all in one queue
        self.completed = 0  # requests answered (any status), for tests and statistics

    @property
    def device_features(self) -> int:
        features = COMMON_FEATURES | bit(F_FLUSH) | bit(F_SEG_MAX) | bit(F_BLK_SIZE)
        return features | bit(F_RO) if self.read_only else features

    def config_bytes(self) -> bytes:
        return _CONFIG.pack(self.capacity, 0, self.seg_max, SECTOR_SIZE)

    def process_queue(self, index: int) -> None:
        queue = self.queue(index)
        memory = self.memory()
        while (chain := queue.pop()) is not None:
            split = chain.split()
            writable = split[1] if split else [d for d in chain.descriptors if d.writable]
            writable_len = total_length(writable)
            if writable_len == 0:
                log.debug("virtio-blk: request %d has no status byte; returned unanswered", chain.head)
                queue.add_used(chain.head, 0)
                continue
            status_gpa = segments(writable, writable_len - 1, writable_len)[0][0]
            if split is None:
                status, written = BlkStatus.IOERR, 0
                log.debug("virtio-blk: request %d has a readable buffer after a writable one", chain.head)
            else:
                status, written = self._execute(split[0], writable, writable_len - 1)
            memory.write(status_gpa, bytes([status]))
            queue.add_used(chain.head, written + 1)
            self.completed += 1

    def _execute(
        self, readable: list[Descriptor], writable: list[Descriptor], data_in_len: int
    ) -> tuple[BlkStatus, int]:
        """Run one request; (status, bytes written into the data buffers)."""
        memory = self.memory()
        readable_len = total_length(readable)
        try:
            if readable_len < HEADER_SIZE:
                raise RequestError(BlkStatus.IOERR, f"header is {readable_len} bytes, not {HEADER_SIZE}")
            kind, _, sector = _HEADER.unpack(gather(memory, readable, 0, HEADER_SIZE))
            data_out = segments(readable, HEADER_SIZE, readable_len)
            data_in = segments(writable, 0, data_in_len)
            return BlkStatus.OK, self._dispatch(kind, sector, data_out, data_in)
        except RequestError as exc:
            log.debug("virtio-blk: request refused: %s", exc)
            return exc.status, 0
        except OSError as exc:
            log.warning("virtio-blk: I/O error: %s", exc)
            return BlkStatus.IOERR, 0

    def _dispatch(self, kind: int, sector: int, data_out: list[Segment], data_in: list[Segment]) -> int:
        if kind == RequestType.IN:
            if data_out:
                raise RequestError(BlkStatus.IOERR, "read request carries device-readable data")
            self._check_range(sector, data_in)
            read_fully(self.fd, views(self.memory(), data_in), sector * SECTOR_SIZE)
            return _length(data_in)
        if kind == RequestType.OUT:
            if data_in:
                raise RequestError(BlkStatus.IOERR, "write request carries device-writable data")
            if self.read_only:
                raise RequestError(BlkStatus.IOERR, "write to a read-only disk")
            self._check_range(sector, data_out)
            write_fully(self.fd, views(self.memory(), data_out), sector * SECTOR_SIZE)
            if not self.features & bit(F_FLUSH):
                # A driver that did not negotiate FLUSH may take a completed write as durable (virtio 1.2,
                # 5.2.6.2: such a device behaves as write-through), so it is synced before it is acknowledged.
                os.fdatasync(self.fd)
            return 0
        if kind == RequestType.FLUSH:
            if data_in or data_out:
                raise RequestError(BlkStatus.IOERR, "flush request carries data")
            os.fdatasync(self.fd)
            return 0
        if kind == RequestType.GET_ID:
            if data_out or not data_in:
                raise RequestError(BlkStatus.IOERR, "get-id request needs one device-writable id buffer")
            return self._write_id(data_in)
        raise RequestError(BlkStatus.UNSUPP, f"request type {kind} not supported")

    def _check_range(self, sector: int, data: Sequence[Segment]) -> None:
        length = _length(data)
        if length % SECTOR_SIZE:
            raise RequestError(BlkStatus.IOERR, f"{length} bytes is not a whole number of sectors")
        if len(data) > self.seg_max or length > MAX_REQUEST_BYTES:
            raise RequestError(BlkStatus.IOERR, f"request of {len(data)} segments / {length} bytes is too large")
        if sector + length // SECTOR_SIZE > self.capacity:
            raise RequestError(
                BlkStatus.IOERR, f"sectors {sector}+{length // SECTOR_SIZE} past capacity {self.capacity}"
            )

    def _write_id(self, data_in: list[Segment]) -> int:
        memory = self.memory()
        written = 0
        for gpa, length in data_in:
            chunk = self._id[written : written + length]
            if not chunk:
                break
            memory.write(gpa, chunk)
            written += len(chunk)
        return written

    # -- state ---------------------------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "read_only": self.read_only, "serial": self.serial}

    def restore_state(self, state: object, where: str) -> None:
        """The guest has seen this configuration; the disk given to the new process must match it."""
        reader = StateReader(state, where)
        saved = {
            "capacity": reader.get_int("capacity"),
            "read_only": reader.get_bool("read_only"),
            "serial": reader.get_str("serial"),
        }
        reader.finish()
        for name, value in saved.items():
            if value != getattr(self, name):
                raise StateError(
                    f"{where}: field '{name}' was {value!r}, the disk given now has {getattr(self, name)!r}"
                )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _length(data: Sequence[Segment]) -> int:
    return sum(length for _, length in data)
