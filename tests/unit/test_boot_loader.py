"""load_kernel end to end into a sparse guest memory: what lands where, the register plan, and every error."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from boot_fakes import SparseMemory, cached, make_bzimage, make_elf, make_pvh_elf, note

from hotswap.boot import BootError, detect_format, load_kernel, split_ram
from hotswap.boot.plan import BootPlan
from hotswap.errors import ConfigError
from hotswap.layout import (
    BOOT_GDT_ADDR,
    CMDLINE_ADDR,
    GIB,
    MIB,
    MPTABLE_ADDR,
    PD_ADDR,
    PDPT_ADDR,
    PML4_ADDR,
    PVH_MEMMAP_ADDR,
    PVH_START_INFO_ADDR,
    ZERO_PAGE_ADDR,
)

RAM_256M = split_ram(256 * MIB)
# Well-known flat descriptors: 64-bit code, 32-bit code, data (all base 0, 4 GiB, DPL 0).
CODE64, CODE32, DATA = 0x00AF_9B00_0000_FFFF, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load(
    tmp_path: Path,
    kernel: bytes,
    *,
    initrd: bytes | None = b"initrd-bytes" * 100,
    cmdline: str = "console=ttyS0",
    ram: list[tuple[int, int]] = RAM_256M,
    cpus: int = 2,
) -> tuple[SparseMemory, BootPlan]:
    memory = SparseMemory(ram)
    initrd_path = write(tmp_path, "initrd", initrd) if initrd is not None else None
    plan = load_kernel(memory, write(tmp_path, "kernel", kernel), initrd_path, cmdline, ram, cpus)
    return memory, plan


def gdt(memory: SparseMemory) -> list[int]:
    return list(struct.unpack("<4Q", memory.read(BOOT_GDT_ADDR, 32)))


def test_bzimage_lands_at_1mib_with_zero_page_and_page_tables(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64
    memory, _ = load(tmp_path, make_bzimage(payload=payload))
    assert memory.read(0x10_0000, len(payload)) == payload
    assert memory.read(CMDLINE_ADDR, 14) == b"console=ttyS0\0"
    zero_page = memory.read(ZERO_PAGE_ADDR, 4096)
    assert zero_page[0x202:0x206] == b"HdrS" and zero_page[0x210] == 0xFF
    assert struct.unpack_from("<I", zero_page, 0x228)[0] == CMDLINE_ADDR
    assert zero_page[0x1E8] == 3
    assert memory.read_u64(PML4_ADDR) == PDPT_ADDR | 3
    assert [memory.read_u64(PDPT_ADDR + 8 * i) for i in range(5)] == [PD_ADDR + 0x1000 * i | 3 for i in range(4)] + [0]
    assert memory.read_u64(PD_ADDR) == 0x83
    assert memory.read_u64(PD_ADDR + 3 * 0x1000 + 511 * 8) == (4 * GIB - 2 * MIB) | 0x83
    assert gdt(memory) == [0, 0, CODE64, DATA]
    assert memory.read(MPTABLE_ADDR, 4) == b"_MP_"


def test_bzimage_plan_is_the_64bit_boot_protocol(tmp_path: Path) -> None:
    _, plan = load(tmp_path, make_bzimage())
    assert plan.mode == "linux64"
    assert plan.rip == 0x10_0200 and plan.rsi == ZERO_PAGE_ADDR
    assert plan.cr0 & 0x8000_0001 == 0x8000_0001  # PG and PE
    assert plan.cr4 & 0x20 and plan.efer & 0x500 == 0x500 and plan.cr3 == PML4_ADDR
    assert (plan.cs.selector, plan.cs.l, plan.cs.db) == (0x10, True, False)
    assert all(s.selector == 0x18 for s in (plan.ds, plan.es, plan.ss))
    assert int.from_bytes(plan.cs.descriptor(), "little") == CODE64
    assert int.from_bytes(plan.ds.descriptor(), "little") == DATA
    assert (plan.gdt_base, plan.gdt_limit) == (BOOT_GDT_ADDR, 31)
    assert plan.rflags == 2


def test_bzimage_initrd_at_top_of_ram_and_below_its_limit(tmp_path: Path) -> None:
    initrd = b"\xab" * 10_000
    memory, plan = load(tmp_path, make_bzimage(), initrd=initrd)
    assert plan.initrd_range is not None
    start, end = plan.initrd_range
    assert start % 4096 == 0 and end == start + len(initrd) and end <= 256 * MIB < start + 4096 + len(initrd)
    assert memory.read(start, len(initrd)) == initrd
    zero_page = memory.read(ZERO_PAGE_ADDR, 4096)
    assert struct.unpack_from("<II", zero_page, 0x218) == (start, len(initrd))
    _, capped = load(tmp_path, make_bzimage(initrd_addr_max=0x7FF_FFFF), initrd=initrd, ram=split_ram(1 * GIB))
    assert capped.initrd_range is not None and capped.initrd_range[1] <= 0x800_0000


def test_bzimage_initrd_stays_above_the_kernel_footprint(tmp_path: Path) -> None:
    with pytest.raises(BootError, match=r"initrd: .* do not fit"):
        load(tmp_path, make_bzimage(init_size=0x300_0000), initrd=bytes(40 * MIB), ram=split_ram(64 * MIB))


def test_bzimage_needing_more_ram_than_there_is(tmp_path: Path) -> None:
    with pytest.raises(BootError, match=r"needs RAM .* guest RAM is too small"):
        load(tmp_path, make_bzimage(init_size=0x800_0000), ram=split_ram(64 * MIB))


def test_pvh_elf_loads_segments_and_start_info(tmp_path: Path) -> None:
    memory, plan = load(tmp_path, make_pvh_elf(0x100_0100), cpus=1)
    assert memory.read(0x100_0000, 4096) == bytes(range(256)) * 16
    assert memory.read(0x100_1000, 0x3000) == bytes(0x3000)
    assert plan.mode == "pvh" and plan.rip == 0x100_0100 and plan.rbx == PVH_START_INFO_ADDR
    assert plan.cr0 & 1 and not plan.cr0 & 0x8000_0000 and plan.efer == 0 and plan.cr4 == 0
    assert (plan.cs.selector, plan.cs.db, plan.cs.l) == (0x10, True, False)
    assert plan.tr is not None and (plan.tr.limit, plan.tr.type, plan.tr.s) == (0x67, 11, False)
    assert gdt(memory) == [0, 0, CODE32, DATA]
    magic, version, _, nr_modules, modlist, cmdline, rsdp, memmap, entries = struct.unpack(
        "<IIIIQQQQI", memory.read(PVH_START_INFO_ADDR, 52)
    )
    assert (magic, version, nr_modules, cmdline, rsdp, memmap, entries) == (
        0x336E_C578,
        1,
        1,
        CMDLINE_ADDR,
        0,
        PVH_MEMMAP_ADDR,
        3,
    )
    assert plan.initrd_range is not None
    start, end = plan.initrd_range
    assert struct.unpack("<QQ", memory.read(modlist, 16)) == (start, end - start)
    assert modlist >= PVH_MEMMAP_ADDR + 3 * 24
    assert plan.kernel_range == (0x100_0000, 0x100_4000)


def test_pvh_without_initrd_has_no_modules(tmp_path: Path) -> None:
    memory, plan = load(tmp_path, make_pvh_elf(), initrd=None)
    assert plan.initrd_range is None
    assert memory.read_u32(PVH_START_INFO_ADDR + 12) == 0


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([(0x8_0000, bytes(64), 64)], "overlaps the boot structures below 1 MiB"),
        ([(0x100_0000, bytes(64), 300 * MIB)], "outside guest RAM"),
        ([(0xC000_0000, bytes(64), 64)], "outside guest RAM"),
    ],
)
def test_pvh_segments_in_the_wrong_place(tmp_path: Path, segments: list[tuple[int, bytes, int]], message: str) -> None:
    paddr = segments[0][0]
    kernel = make_elf(segments, [note(b"Xen\0", 18, paddr.to_bytes(4, "little"))])
    with pytest.raises(BootError, match=message):
        load(tmp_path, kernel)


def test_cmdline_limits(tmp_path: Path) -> None:
    with pytest.raises(BootError, match="cmdline: 600 bytes is longer than the kernel's limit of 511"):
        load(tmp_path, make_bzimage(cmdline_size=511), cmdline="x" * 600)
    with pytest.raises(BootError, match="NUL"):
        load(tmp_path, make_bzimage(), cmdline="a\0b")
    memory, _ = load(tmp_path, make_bzimage(cmdline_size=511), cmdline="y" * 511)
    assert memory.read(CMDLINE_ADDR, 512) == b"y" * 511 + b"\0"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"MZ garbage" * 100, "neither an ELF vmlinux nor a bzImage"),
        (make_bzimage()[:0x300], "truncated"),
        (make_elf([(0x100_0000, bytes(64), 64)]), "no PVH entry note"),
    ],
)
def test_corrupt_kernels_give_one_line_errors_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, "bad-kernel", content)
    with pytest.raises(BootError, match=message) as info:
        detect_format(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BootError, match=message):
        load_kernel(SparseMemory(RAM_256M), path, None, "", RAM_256M, 1)


def test_boot_errors_reach_the_user_as_hotswap_config_errors() -> None:
    assert issubclass(BootError, ConfigError)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BootError, match=r"kernel: cannot read .*nope"):
        detect_format(tmp_path / "nope")
    kernel = write(tmp_path, "k", make_bzimage())
    with pytest.raises(BootError, match="initrd: cannot read"):
        load_kernel(SparseMemory(RAM_256M), kernel, tmp_path / "nope", "", RAM_256M, 1)
    with pytest.raises(BootError, match=r"initrd: .* is empty"):
        load_kernel(SparseMemory(RAM_256M), kernel, write(tmp_path, "empty", b""), "", RAM_256M, 1)


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "a", make_bzimage())) == "bzimage"
    assert detect_format(write(tmp_path, "b", make_pvh_elf())) == "elf-pvh"


def test_sixteen_gib_guest(tmp_path: Path) -> None:
    ram = split_ram(16 * GIB)
    memory, plan = load(tmp_path, make_bzimage(), ram=ram)
    assert plan.initrd_range is not None and plan.initrd_range[1] <= 3 * GIB
    zero_page = memory.read(ZERO_PAGE_ADDR, 4096)
    assert zero_page[0x1E8] == 4
    assert struct.unpack_from("<QQI", zero_page, 0x2D0 + 3 * 20) == (4 * GIB, 13 * GIB, 1)


def test_debian_bzimage_loads(tmp_path: Path) -> None:
    memory = SparseMemory(RAM_256M)
    initrd = cached("initramfs.cpio.gz")
    plan = load_kernel(memory, cached("bzImage"), initrd, "console=ttyS0", RAM_256M, 2)
    assert plan.rip == 0x10_0200
    assert plan.initrd_range is not None and plan.initrd_range[0] >= plan.kernel_range[1]
    assert memory.read(plan.initrd_range[0], 2) == b"\x1f\x8b"


def test_debian_vmlinux_loads_through_pvh(tmp_path: Path) -> None:
    memory = SparseMemory(RAM_256M)
    plan = load_kernel(memory, cached("vmlinux"), cached("initramfs.cpio.gz"), "console=ttyS0", RAM_256M, 2)
    assert plan.mode == "pvh" and plan.kernel_range[0] == 0x100_0000
    assert memory.read(plan.rip, 1) != b"\0"
    assert detect_format(cached("vmlinux")) == "elf-pvh"
    assert detect_format(cached("bzImage")) == "bzimage"
