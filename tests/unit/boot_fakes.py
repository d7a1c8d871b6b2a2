"""Test helpers for hotswap.boot: a sparse guest memory, synthetic ELF and bzImage builders, the real Debian
guest files when the cache has them, and a CPUID table captured from KVM_GET_SUPPORTED_CPUID on an AMD EPYC."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from devices.errors import GuestMemoryError
from hotswap.boot import CpuidEntry, RamLayout

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HOTSWAP_CACHE", REPO / ".cache" / "linux"))
CHUNK = 1 << 20


class SparseMemory:
    """GuestMemory over `ram` regions that only allocates the MiB chunks written to (so 16 GiB is cheap)."""

    def __init__(self, ram: RamLayout) -> None:
        self.ram = list(ram)
        self._chunks: dict[int, bytearray] = {}

    def _check(self, gpa: int, size: int) -> None:
        if not any(start <= gpa and gpa + size <= start + length for start, length in self.ram):
            raise GuestMemoryError(f"guest memory: [{gpa:#x}, {gpa + size:#x}) is outside RAM")

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        self._check(gpa, len(data))
        done = 0
        while done < len(data):
            chunk, offset = divmod(gpa + done, CHUNK)
            n = min(CHUNK - offset, len(data) - done)
            self._chunks.setdefault(chunk, bytearray(CHUNK))[offset : offset + n] = data[done : done + n]
            done += n

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        out = bytearray()
        while len(out) < size:
            chunk, offset = divmod(gpa + len(out), CHUNK)
            n = min(CHUNK - offset, size - len(out))
            out += self._chunks.get(chunk, bytes(CHUNK))[offset : offset + n]
        return bytes(out)

    def view(self, gpa: int, size: int) -> memoryview:
        self._check(gpa, size)
        chunk, offset = divmod(gpa, CHUNK)
        if offset + size > CHUNK:
            raise NotImplementedError("SparseMemory.view across a 1 MiB chunk")
        return memoryview(self._chunks.setdefault(chunk, bytearray(CHUNK)))[offset : offset + size]

    def read_u16(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 2), "little")

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(2, "little"))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, value.to_bytes(4, "little"))

    def written(self) -> list[int]:
        """Start addresses of the chunks that were written."""
        return sorted(chunk * CHUNK for chunk in self._chunks)


def note(name: bytes, note_type: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


PVH_NOTE_TYPE = 18


def make_elf(
    segments: Sequence[tuple[int, bytes, int]],
    notes: Sequence[bytes] = (),
    *,
    machine: int = 62,
    elf_class: int = 2,
    e_type: int = 2,
) -> bytes:
    """An ELF64 executable with PT_LOAD (paddr, file bytes, memsz) segments and one PT_NOTE holding `notes`."""
    note_blob = b"".join(notes)
    phnum = len(segments) + (1 if notes else 0)
    offset = 64 + 56 * phnum
    headers, body = [], b""
    for paddr, data, memsz in segments:
        headers.append(
            struct.pack(
                "<IIQQQQQQ", 1, 5, offset + len(body), paddr | 0xFFFF_FFFF_8000_0000, paddr, len(data), memsz, 0x1000
            )
        )
        body += data
    if notes:
        headers.append(struct.pack("<IIQQQQQQ", 4, 4, offset + len(body), 0, 0, len(note_blob), len(note_blob), 4))
        body += note_blob
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    return ehdr + b"".join(headers) + body


def make_pvh_elf(entry: int = 0x100_0100, *, desc_size: int = 4, bss: int = 0x3000) -> bytes:
    """A small PVH kernel: text at 1 MiB + 16 MiB (like Linux), the entry note, and some bss."""
    text = bytes(range(256)) * 16
    return make_elf(
        [(0x100_0000, text, len(text) + bss)],
        [note(b"Xen\0", 6, b"linux\0"), note(b"Xen\0", PVH_NOTE_TYPE, entry.to_bytes(desc_size, "little"))],
    )


def make_bzimage(
    *,
    version: int = 0x020F,
    xloadflags: int = 0x7F,
    loadflags: int = 0x01,
    setup_sects: int = 3,
    payload: bytes = b"\x90" * 0x2000,
    init_size: int = 0x40_0000,
    cmdline_size: int = 0x7FF,
    initrd_addr_max: int = 0x7FFF_FFFF,
    pref_address: int = 0x100_0000,
    kernel_alignment: int = 0x20_0000,
    relocatable: bool = True,
) -> bytes:
    """A bzImage with a real-looking setup header (protocol `version`) and `payload` as the protected-mode part."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, len(payload) // 16)
    struct.pack_into("<H", setup, 0x1FA, 0xFFFF)  # vid_mode
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x6A])  # jmp: the header ends at 0x202 + 0x6a = 0x26c
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x10_0000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    setup[0x234] = int(relocatable)
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload


def cached(name: str) -> Path:
    """A file built by guest/linux/build_guest.py, or skip the test saying how to get it."""
    path = CACHE / name
    if not path.exists():
        pytest.skip(f"{path} is missing: run `python3 guest/linux/build_guest.py` to fetch the Debian guest")
    return path


# KVM_GET_SUPPORTED_CPUID on this project's AMD EPYC host (kvm_pvm), as (function, index, flags, a, b, c, d).
_EPYC_ROWS = """
00000000 0 0 0000001c 68747541 444d4163 69746e65
00000001 0 0 00a10f11 01020800 81202000 078bfbff
00000004 0 1 00000000 00000000 00000000 00000000
00000007 0 1 00000001 01800002 00000104 20000000
00000007 1 1 00000000 00000000 00000000 00000000
0000000b 0 1 00000000 00000000 00000000 00000001
0000000d 0 1 000000e7 00000980 00000980 00000000
0000000d 1 1 00000000 00000000 00000000 00000000
80000000 0 0 80000021 68747541 444d4163 69746e65
80000001 0 0 00a10f11 40000000 00400393 23d3fbff
80000008 0 0 00003030 50020005 00007001 00000000
8000001d 0 1 00000121 01c0003f 0000003f 00000000
8000001d 1 1 00000122 01c0003f 0000003f 00000000
8000001d 2 1 00000143 01c0003f 000007ff 00000002
8000001d 3 1 00004163 03c0003f 00007fff 00000001
8000001d 4 1 00000000 00000000 00000000 00000000
8000001e 0 0 00000000 00000000 00000000 00000000
40000000 0 0 40000001 4b4d564b 564b4d56 0000004d
40000001 0 0 01007efb 00000000 00000000 00000000
"""


def epyc_cpuid() -> list[CpuidEntry]:
    rows = [line.split() for line in _EPYC_ROWS.strip().splitlines()]
    return [
        CpuidEntry(int(f, 16), int(i), int(fl), int(a, 16), int(b, 16), int(c, 16), int(d, 16))
        for f, i, fl, a, b, c, d in rows
    ]
