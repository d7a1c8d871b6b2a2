"""CPUID tables as plain Python values, converted to and from struct kvm_cpuid2."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from kvm._ffi import CData, ffi

MAX_CPUID_ENTRIES = 256


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class CpuidLike(Protocol):
    """Anything with the fields of a CPUID entry (the boot package has its own pure-Python table type)."""

    @property
    def function(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def eax(self) -> int: ...
    @property
    def ebx(self) -> int: ...
    @property
    def ecx(self) -> int: ...
    @property
    def edx(self) -> int: ...


def alloc_cpuid2(capacity: int = MAX_CPUID_ENTRIES) -> CData:
    cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": capacity, "entries": capacity})
    cpuid.nent = capacity
    return cpuid


def entries_from_cpuid2(cpuid: CData) -> list[CpuidEntry]:
    return [
        CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        for e in (cpuid.entries[i] for i in range(cpuid.nent))
    ]


def cpuid2_from_entries(entries: Iterable[CpuidLike]) -> CData:
    listed = list(entries)
    cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(listed), "entries": len(listed)})
    cpuid.nent = len(listed)
    for i, entry in enumerate(listed):
        slot = cpuid.entries[i]
        slot.function, slot.index, slot.flags = entry.function, entry.index, entry.flags
        slot.eax, slot.ebx, slot.ecx, slot.edx = entry.eax, entry.ebx, entry.ecx, entry.edx
    return cpuid
