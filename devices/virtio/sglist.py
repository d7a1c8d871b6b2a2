"""Byte ranges of a descriptor chain treated as one stream (virtio 1.x makes no promise about how a request is cut
into buffers, so a header may span buffers and data may share a buffer with a header)."""

from __future__ import annotations

from collections.abc import Sequence

from devices.interfaces import GuestMemory
from devices.virtio.queue import Descriptor

Segment = tuple[int, int]  # (guest-physical address, length)


def total_length(descriptors: Sequence[Descriptor]) -> int:
    return sum(desc.length for desc in descriptors)


def segments(descriptors: Sequence[Descriptor], start: int, end: int) -> list[Segment]:
    """The guest-physical pieces holding bytes [start, end) of the concatenated buffers (zero-length ones dropped)."""
    pieces: list[Segment] = []
    offset = 0
    for desc in descriptors:
        lo = max(start, offset)
        hi = min(end, offset + desc.length)
        if lo < hi:
            pieces.append((desc.gpa + lo - offset, hi - lo))
        offset += desc.length
        if offset >= end:
            break
    return pieces


def views(memory: GuestMemory, pieces: Sequence[Segment]) -> list[memoryview]:
    """Writable views straight into guest RAM for each piece (for preadv/pwritev/readv/writev: no copies)."""
    return [memory.view(gpa, length) for gpa, length in pieces]


def gather(memory: GuestMemory, descriptors: Sequence[Descriptor], start: int, size: int) -> bytes:
    """Copy bytes [start, start + size) out of the buffers (small things: headers)."""
    return b"".join(memory.read(gpa, length) for gpa, length in segments(descriptors, start, start + size))


def scatter(memory: GuestMemory, descriptors: Sequence[Descriptor], start: int, data: bytes) -> None:
    """Write `data` at byte offset `start` of the buffers (small things: headers, status bytes, ids)."""
    done = 0
    for gpa, length in segments(descriptors, start, start + len(data)):
        memory.write(gpa, data[done : done + length])
        done += length
