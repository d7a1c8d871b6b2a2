"""Loading a kernel: detect its format, place it, the initrd, the command line and the boot structures in guest
memory, and return the BootPlan for the boot vCPU.

Guest memory map of the boot structures (all addresses from hotswap.layout; all below 1 MiB, never used by a
kernel, which must load at or above 1 MiB):
    BOOT_GDT_ADDR / BOOT_IDT_ADDR    GDT (4 entries) and a null IDT
    PVH_START_INFO_ADDR              hvm_start_info, then its memory map at PVH_MEMMAP_ADDR, then the module list
    ZERO_PAGE_ADDR                   boot_params (bzImage path)
    PML4_ADDR, PDPT_ADDR, PD_ADDR    identity map of the first 4 GiB (bzImage path)
    CMDLINE_ADDR                     the command line
    MPTABLE_ADDR                     the MP table (both paths)
The initrd goes page-aligned at the top of low RAM, above everything the kernel occupies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from devices.errors import GuestMemoryError
from devices.interfaces import GuestMemory
from hotswap.boot import bzimage, cpu_setup, elf, pvh
from hotswap.boot.cmdline import encode_cmdline
from hotswap.boot.cpuid import CpuidEntry, leaf
from hotswap.boot.errors import BootError
from hotswap.boot.mptable import DEFAULT_CPU_FEATURES, DEFAULT_CPU_SIGNATURE, build_mptable
from hotswap.boot.plan import BootPlan
from hotswap.boot.ram import E820Entry, RamLayout, e820_map, low_ram_end, region_containing, validate_ram
from hotswap.boot.zeropage import build_boot_params
from hotswap.layout import (
    BIOS_AREA_START,
    BOOT_GDT_ADDR,
    BOOT_IDT_ADDR,
    CMDLINE_ADDR,
    CMDLINE_MAX,
    HIMEM_START,
    LOW_RAM_END,
    MPTABLE_ADDR,
    PAGE_SIZE,
    PVH_MEMMAP_ADDR,
    PVH_START_INFO_ADDR,
    ZERO_PAGE_ADDR,
)

KernelFormat = Literal["elf-pvh", "bzimage"]
_ZERO_CHUNK = 1 << 20


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BootError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def format_of(data: bytes | memoryview, name: str) -> KernelFormat:
    """The kernel format, from the content alone; anything unbootable raises BootError naming the problem."""
    if elf.is_elf(data):
        elf.parse_elf_kernel(data, name)
        return "elf-pvh"
    if bzimage.is_bzimage(data):
        bzimage.parse_bzimage(data, name)
        return "bzimage"
    if len(data) == 0:
        raise BootError(f"{name}: the file is empty")
    raise BootError(f"{name}: neither an ELF vmlinux nor a bzImage (no ELF magic, no HdrS header)")


def detect_format(path: Path | str) -> KernelFormat:
    path = Path(path)
    return format_of(read_file(path, "kernel"), str(path))


class _Writer:
    """Writes into guest memory after checking the range lies in one RAM region; errors name the structure."""

    def __init__(self, memory: GuestMemory, ram: RamLayout) -> None:
        self._memory = memory
        self._ram = ram

    def check(self, gpa: int, size: int, what: str) -> None:
        if region_containing(self._ram, gpa, size) is None:
            raise BootError(f"{what}: [{gpa:#x}, {gpa + size:#x}) is not inside guest RAM")

    def write(self, gpa: int, data: bytes | memoryview, what: str) -> None:
        self.check(gpa, len(data), what)
        try:
            self._memory.write(gpa, data)
        except GuestMemoryError as exc:
            raise BootError(f"{what}: writing guest memory at {gpa:#x} failed: {exc}") from None

    def zero(self, gpa: int, size: int, what: str) -> None:
        self.check(gpa, size, what)
        chunk = bytes(min(size, _ZERO_CHUNK))
        for offset in range(0, size, _ZERO_CHUNK):
            self.write(gpa + offset, chunk[: min(_ZERO_CHUNK, size - offset)], what)


def load_kernel(
    memory: GuestMemory,
    kernel: Path,
    initrd: Path | None,
    cmdline: str,
    ram: RamLayout,
    cpus: int,
    *,
    cpuid: Sequence[CpuidEntry] = (),
) -> BootPlan:
    """Load `kernel` (PVH ELF vmlinux or bzImage) with `initrd` and `cmdline` into `memory` laid out as `ram`,
    describe `cpus` vCPUs in the MP table (signature and features from CPUID leaf 1 of `cpuid` if given), and
    return how to start the boot vCPU."""
    validate_ram(ram)
    kernel = Path(kernel)
    data = memoryview(read_file(kernel, "kernel"))
    fmt = format_of(data, str(kernel))
    initrd_data = read_file(initrd, "initrd") if initrd is not None else None
    if initrd_data is not None and not initrd_data:
        raise BootError(f"initrd: {initrd} is empty")
    writer = _Writer(memory, ram)
    e820 = e820_map(ram)

    if fmt == "bzimage":
        image = bzimage.parse_bzimage(data, str(kernel))
        cmdline_bytes = encode_cmdline(cmdline, image.cmdline_size)
        kernel_range = (HIMEM_START, image.footprint_end(HIMEM_START))
        _check_kernel_fits(ram, kernel, kernel_range)
        writer.write(HIMEM_START, data[image.protected_mode_offset :], f"{kernel}: protected-mode code")
        initrd_range = _place_initrd(writer, ram, initrd_data, kernel_range[1], image.initrd_addr_max)
        zero_page = build_boot_params(
            image,
            code32_start=HIMEM_START,
            cmdline_addr=CMDLINE_ADDR,
            initrd=_as_addr_size(initrd_range),
            e820=e820,
        )
        writer.write(ZERO_PAGE_ADDR, zero_page, "boot_params")
        for addr, table in cpu_setup.page_tables():
            writer.write(addr, table, "page tables")
        mode: Literal["pvh", "linux64"] = "linux64"
        rip = HIMEM_START + bzimage.ENTRY_64_OFFSET
    else:
        kernel_elf = elf.parse_elf_kernel(data, str(kernel))
        cmdline_bytes = encode_cmdline(cmdline, CMDLINE_MAX - 1)
        kernel_range = _load_elf(writer, ram, kernel, data, kernel_elf)
        initrd_range = _place_initrd(writer, ram, initrd_data, kernel_range[1], LOW_RAM_END - 1)
        _write_start_info(writer, e820, initrd_range)
        mode = "pvh"
        rip = kernel_elf.pvh_entry

    writer.write(CMDLINE_ADDR, cmdline_bytes, "cmdline")
    writer.write(BOOT_GDT_ADDR, cpu_setup.gdt(mode), "boot GDT")
    writer.write(BOOT_IDT_ADDR, cpu_setup.idt(), "boot IDT")
    _write_mptable(writer, cpus, cpuid)
    return cpu_setup.boot_plan(mode, rip=rip, kernel_range=kernel_range, initrd_range=initrd_range)


def _check_kernel_fits(ram: RamLayout, kernel: Path, kernel_range: tuple[int, int]) -> None:
    start, end = kernel_range
    if region_containing(ram, start, end - start) is None:
        raise BootError(
            f"{kernel}: the kernel needs RAM [{start:#x}, {end:#x}) to unpack and run; guest RAM is too small"
        )


def _load_elf(writer: _Writer, ram: RamLayout, kernel: Path, data: memoryview, image: elf.ElfKernel) -> tuple[int, int]:
    for index, seg in enumerate(image.segments):
        span = f"[{seg.paddr:#x}, {seg.paddr + seg.memsz:#x})"
        if seg.paddr < HIMEM_START:
            raise BootError(f"{kernel}: PT_LOAD {index} {span} overlaps the boot structures below 1 MiB")
        if region_containing(ram, seg.paddr, seg.memsz) is None:
            raise BootError(f"{kernel}: PT_LOAD {index} {span} is outside guest RAM")
    for index, seg in enumerate(image.segments):
        what = f"{kernel}: PT_LOAD {index}"
        writer.write(seg.paddr, data[seg.offset : seg.offset + seg.filesz], what)
        if seg.memsz > seg.filesz:
            writer.zero(seg.paddr + seg.filesz, seg.memsz - seg.filesz, what)
    return (min(s.paddr for s in image.segments), max(s.paddr + s.memsz for s in image.segments))


def _place_initrd(
    writer: _Writer, ram: RamLayout, data: bytes | None, floor: int, addr_max: int
) -> tuple[int, int] | None:
    """Put the initrd page-aligned at the top of low RAM, at or below `addr_max` and above `floor`."""
    if data is None:
        return None
    top = min(low_ram_end(ram), addr_max + 1)
    addr = (top - len(data)) & ~(PAGE_SIZE - 1)
    if addr < floor:
        raise BootError(
            f"initrd: {len(data)} bytes do not fit between the kernel's end {floor:#x} and {top:#x}; add RAM"
        )
    writer.write(addr, data, "initrd")
    return (addr, addr + len(data))


def _as_addr_size(span: tuple[int, int] | None) -> tuple[int, int] | None:
    return None if span is None else (span[0], span[1] - span[0])


def _write_start_info(writer: _Writer, e820: Sequence[E820Entry], initrd: tuple[int, int] | None) -> None:
    memmap = pvh.build_memmap(e820)
    modlist_addr = (PVH_MEMMAP_ADDR + len(memmap) + 7) & ~7
    modules = [] if initrd is None else [(initrd[0], initrd[1] - initrd[0])]
    modlist = pvh.build_modlist(modules)
    if modlist_addr + len(modlist) > ZERO_PAGE_ADDR:
        raise BootError(f"hvm_start_info: {len(e820)} memory map entries overflow into the zero page")
    start_info = pvh.build_start_info(
        cmdline_addr=CMDLINE_ADDR,
        modlist_addr=modlist_addr,
        nr_modules=len(modules),
        memmap_addr=PVH_MEMMAP_ADDR,
        memmap_entries=len(e820),
    )
    writer.write(PVH_START_INFO_ADDR, start_info, "hvm_start_info")
    writer.write(PVH_MEMMAP_ADDR, memmap, "hvm_start_info memory map")
    if modlist:
        writer.write(modlist_addr, modlist, "hvm_start_info module list")


def _write_mptable(writer: _Writer, cpus: int, cpuid: Sequence[CpuidEntry]) -> None:
    leaf1 = leaf(cpuid, 1)
    table = build_mptable(
        MPTABLE_ADDR,
        cpus,
        cpu_signature=leaf1.eax if leaf1 else DEFAULT_CPU_SIGNATURE,
        cpu_features=leaf1.edx if leaf1 else DEFAULT_CPU_FEATURES,
    )
    if MPTABLE_ADDR + len(table.data) > BIOS_AREA_START:
        raise BootError(f"mptable: {len(table.data)} bytes for {cpus} vCPUs run into the BIOS area")
    writer.write(MPTABLE_ADDR, table.data, "mptable")
