"""Guest RAM on memfds mapped MAP_SHARED: the fds can be handed to a successor process, which maps the same pages.

`GuestMemory` translates guest-physical addresses to host mappings with bounds checks; a range that is not entirely
inside one region raises MemoryAccessError (which is also a devices.errors.GuestMemoryError-compatible failure for
device models: the VMM adapts it). Nothing here copies guest RAM.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from kvm._ffi import CData, ffi, lib
from kvm.errors import KvmError, MemoryAccessError

MFD_HUGETLB = 0x0004
MEMFD_NAME_PREFIX = "hotswap-ram"


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """Where a region of guest RAM sits: guest-physical address and size. The memfd holds `size` bytes."""

    gpa: int
    size: int


class MemoryRegion:
    """One memfd mapped into this process."""

    def __init__(self, gpa: int, size: int, fd: int) -> None:
        self.gpa = gpa
        self.size = size
        self.fd = fd
        err = ffi.new("int *")
        # MAP_NORESERVE: guest RAM is sparse until touched, so a 16 GiB guest costs nothing up front.
        ptr = lib.hs_mmap(size, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_SHARED | lib.MAP_NORESERVE, fd, 0, err)
        if ptr == ffi.NULL:
            raise KvmError("mmap guest memory", err[0], f"{size:#x} bytes at gpa {gpa:#x}")
        self._ptr: CData = ffi.cast("uint8_t *", ptr)
        self.host_addr = int(ffi.cast("uintptr_t", ptr))
        self._view = memoryview(ffi.buffer(self._ptr, size))

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def view(self, offset: int, size: int) -> memoryview:
        return self._view[offset : offset + size]

    def close(self) -> None:
        if self.fd < 0:
            return
        self._view.release()
        lib.hs_munmap(ffi.cast("void *", self._ptr), self.size)
        os.close(self.fd)
        self.fd = -1


class GuestMemory:
    """All of guest RAM. Regions never overlap; lookups bisect on the region starts."""

    def __init__(self, regions: Sequence[MemoryRegion]) -> None:
        self.regions = sorted(regions, key=lambda r: r.gpa)
        for before, after in zip(self.regions, self.regions[1:], strict=False):
            if before.end > after.gpa:
                raise ValueError(f"memory regions overlap at {after.gpa:#x}")
        self._starts = [r.gpa for r in self.regions]

    @classmethod
    def create(cls, specs: Sequence[RegionSpec], hugetlb: bool = False) -> GuestMemory:
        """Allocate fresh memfds for each region."""
        regions: list[MemoryRegion] = []
        try:
            for i, spec in enumerate(specs):
                flags = os.MFD_CLOEXEC | (MFD_HUGETLB if hugetlb else 0)
                try:
                    fd = os.memfd_create(f"{MEMFD_NAME_PREFIX}{i}", flags)
                    os.ftruncate(fd, spec.size)
                except OSError as exc:
                    raise KvmError("memfd_create", exc.errno or 0, f"{spec.size:#x} bytes of guest RAM") from None
                regions.append(MemoryRegion(spec.gpa, spec.size, fd))
        except BaseException:
            for region in regions:
                region.close()
            raise
        return cls(regions)

    @classmethod
    def adopt(cls, specs: Sequence[RegionSpec], fds: Sequence[int]) -> GuestMemory:
        """Map memfds received from another process (a live upgrade): the guest's pages, not a copy."""
        if len(specs) != len(fds):
            raise ValueError(f"{len(specs)} memory regions but {len(fds)} fds")
        regions: list[MemoryRegion] = []
        try:
            for spec, fd in zip(specs, fds, strict=True):
                actual = os.fstat(fd).st_size
                if actual != spec.size:
                    raise KvmError("adopt guest memory", 22, f"memfd holds {actual:#x} bytes, expected {spec.size:#x}")
                regions.append(MemoryRegion(spec.gpa, spec.size, fd))
        except BaseException:
            for region in regions:
                region.close()
            raise
        return cls(regions)

    @property
    def specs(self) -> list[RegionSpec]:
        return [RegionSpec(r.gpa, r.size) for r in self.regions]

    @property
    def fds(self) -> list[int]:
        return [r.fd for r in self.regions]

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self.regions)

    def close(self) -> None:
        for region in self.regions:
            region.close()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- translation ------------------------------------------------------------------------------------------
    def _locate(self, gpa: int, size: int) -> tuple[MemoryRegion, int]:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and size >= 0:
            region = self.regions[i]
            offset = gpa - region.gpa
            if offset + size <= region.size:
                return region, offset
        raise MemoryAccessError(gpa, size)

    def contains(self, gpa: int, size: int) -> bool:
        try:
            self._locate(gpa, size)
        except MemoryAccessError:
            return False
        return True

    def view(self, gpa: int, size: int) -> memoryview:
        region, offset = self._locate(gpa, size)
        return region.view(offset, size)

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def read_u16(self, gpa: int) -> int:
        return int(struct.unpack_from("<H", self.view(gpa, 2))[0])

    def read_u32(self, gpa: int) -> int:
        return int(struct.unpack_from("<I", self.view(gpa, 4))[0])

    def read_u64(self, gpa: int) -> int:
        return int(struct.unpack_from("<Q", self.view(gpa, 8))[0])

    # Stores the guest may watch (a virtqueue's used.idx) must land in one store: struct.pack_into zero-fills its
    # target before writing, so a concurrent guest could read 0 in between. A cast memoryview item assignment is a
    # single native store (x86 is little-endian, as the guest's structures are).
    def write_u16(self, gpa: int, value: int) -> None:
        self.view(gpa, 2).cast("H")[0] = value

    def write_u32(self, gpa: int, value: int) -> None:
        self.view(gpa, 4).cast("I")[0] = value

    def write_u64(self, gpa: int, value: int) -> None:
        self.view(gpa, 8).cast("Q")[0] = value
