"""ELF64 vmlinux parsing for the PVH boot path: the PT_LOAD segments and the XEN_ELFNOTE_PHYS32_ENTRY note.

A kernel that supports PVH carries an ELF note named "Xen" of type 18 whose value is the 32-bit physical address
of its PVH entry point (Linux: pvh_start_xen). The loader places each PT_LOAD at its physical address (p_paddr).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hotswap.boot.errors import BootError

ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_EM_X86_64 = 62
_ET_EXEC = 2
_PT_LOAD = 1
_PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD: file bytes [offset, offset + filesz) go to paddr, then zeros up to memsz."""

    paddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class ElfKernel:
    segments: tuple[LoadSegment, ...]
    pvh_entry: int


def is_elf(data: bytes | memoryview) -> bool:
    return bytes(data[:4]) == ELF_MAGIC


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _notes(data: memoryview, offset: int, size: int) -> list[tuple[bytes, int, bytes]]:
    """(name, type, desc) of every note in a PT_NOTE segment; a note running past the segment is corrupt."""
    notes: list[tuple[bytes, int, bytes]] = []
    pos, end = offset, offset + size
    while pos + _NHDR.size <= end:
        namesz, descsz, note_type = _NHDR.unpack_from(data, pos)
        name_at = pos + _NHDR.size
        desc_at = name_at + _align4(namesz)
        next_pos = desc_at + _align4(descsz)
        if desc_at + descsz > end:
            raise ValueError(f"note at file offset {pos:#x} runs past its PT_NOTE segment")
        notes.append((bytes(data[name_at : name_at + namesz]), note_type, bytes(data[desc_at : desc_at + descsz])))
        pos = next_pos
    return notes


def parse_elf_kernel(data: bytes | memoryview, name: str) -> ElfKernel:
    """Parse an x86-64 ELF kernel image; `name` (the file) prefixes every error message."""
    view = memoryview(data)
    try:
        return _parse(view)
    except (ValueError, struct.error) as exc:
        raise BootError(f"{name}: not a bootable ELF kernel: {exc}") from None


def _parse(data: memoryview) -> ElfKernel:
    if len(data) < _EHDR.size:
        raise ValueError(f"file is {len(data)} bytes, shorter than an ELF header (truncated?)")
    ident, e_type, machine, _, _, phoff, _, _, _, phentsize, phnum, _, _, _ = _EHDR.unpack_from(data, 0)
    if ident[:4] != ELF_MAGIC:
        raise ValueError("no ELF magic")
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB:
        raise ValueError("not a little-endian ELF64 file")
    if machine != _EM_X86_64:
        raise ValueError(f"machine type {machine} is not x86-64 (62)")
    if e_type != _ET_EXEC:
        raise ValueError(f"ELF type {e_type} is not an executable (2)")
    if phentsize != _PHDR.size or phnum == 0:
        raise ValueError(f"unexpected program headers (entry size {phentsize}, count {phnum})")
    if phoff + phnum * phentsize > len(data):
        raise ValueError("program header table lies past the end of the file (truncated?)")

    segments: list[LoadSegment] = []
    entry: int | None = None
    for i in range(phnum):
        p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ = _PHDR.unpack_from(data, phoff + i * _PHDR.size)
        if p_type not in (_PT_LOAD, _PT_NOTE):
            continue
        if p_offset + p_filesz > len(data):
            raise ValueError(f"program header {i} needs file bytes up to {p_offset + p_filesz:#x} (truncated?)")
        if p_type == _PT_LOAD:
            if p_memsz < p_filesz:
                raise ValueError(f"PT_LOAD {i} has memsz {p_memsz:#x} < filesz {p_filesz:#x}")
            if p_memsz:
                segments.append(LoadSegment(p_paddr, p_offset, p_filesz, p_memsz))
            continue
        for note_name, note_type, desc in _notes(data, p_offset, p_filesz):
            if note_name.rstrip(b"\0") == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                if len(desc) not in (4, 8):
                    raise ValueError(f"PVH entry note has a {len(desc)}-byte value")
                entry = int.from_bytes(desc, "little")
    if not segments:
        raise ValueError("no PT_LOAD segments")
    if entry is None:
        raise ValueError("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); the kernel needs CONFIG_PVH=y")
    if entry > 0xFFFF_FFFF:
        raise ValueError(f"PVH entry {entry:#x} is above 4 GiB (the entry runs in 32-bit mode)")
    if not any(s.paddr <= entry < s.paddr + s.filesz for s in segments):
        raise ValueError(f"PVH entry {entry:#x} is outside every loaded segment")
    return ElfKernel(tuple(segments), entry)
