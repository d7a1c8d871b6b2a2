"""The boot vCPU's starting state for both entry paths, and the memory it relies on (GDT, IDT, page tables).

linux64 (bzImage 64-bit entry, boot.rst "64-bit boot protocol"): long mode with paging on, an identity map of
at least the kernel, zero page and command line (we map the first 4 GiB with 2 MiB pages), flat segments with
__BOOT_CS = 0x10 and __BOOT_DS = 0x18, RSI = the zero page.

pvh (Xen PVH entry, docs/misc/pvh.pandoc): 32-bit protected mode, paging off, flat 4 GiB CS (read/execute) and
DS/ES/SS (read/write), TR a 32-bit TSS of limit 0x67, EBX = the hvm_start_info.

Both use one GDT layout at BOOT_GDT_ADDR: [0] null, [1] unused, [2] code (0x10), [3] data (0x18). TR has no GDT
slot (the IDT follows at 0x520); VM entry only needs its hidden part, and the kernel loads its own TSS.
The IDT is a single null entry: an exception before the kernel installs its own triple-faults, which the VMM
sees as a shutdown instead of the guest running stray handlers.
"""

from __future__ import annotations

import struct

from hotswap.boot.plan import BootMode, BootPlan, Segment
from hotswap.layout import (
    BOOT_GDT_ADDR,
    BOOT_IDT_ADDR,
    BOOT_STACK_TOP,
    GIB,
    MIB,
    PAGE_SIZE,
    PD_ADDR,
    PDPT_ADDR,
    PML4_ADDR,
    PVH_START_INFO_ADDR,
    ZERO_PAGE_ADDR,
)

BOOT_CS = 0x10
BOOT_DS = 0x18
GDT_ENTRIES = 4
GDT_LIMIT = GDT_ENTRIES * 8 - 1
IDT_LIMIT = 7

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1  # bit 1 always reads as 1; IF, TF and VM stay clear

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_HUGE = 1 << 7
IDENTITY_MAP_SIZE = 4 * GIB
HUGE_PAGE = 2 * MIB

_TYPE_CODE_RX = 0xB  # execute/read, accessed
_TYPE_DATA_RW = 0x3  # read/write, accessed
_TYPE_TSS_BUSY = 0xB  # busy 32/64-bit TSS (system segment)
FLAT_LIMIT = 0xFFFF_FFFF


def _flat(selector: int, seg_type: int, *, long_mode: bool, db: bool) -> Segment:
    return Segment(
        base=0,
        limit=FLAT_LIMIT,
        selector=selector,
        type=seg_type,
        present=True,
        dpl=0,
        db=db,
        s=True,
        l=long_mode,
        g=True,
    )


TSS = Segment(
    base=0, limit=0x67, selector=0, type=_TYPE_TSS_BUSY, present=True, dpl=0, db=False, s=False, l=False, g=False
)


def code_segment(mode: BootMode) -> Segment:
    if mode == "linux64":
        return _flat(BOOT_CS, _TYPE_CODE_RX, long_mode=True, db=False)
    return _flat(BOOT_CS, _TYPE_CODE_RX, long_mode=False, db=True)


def data_segment() -> Segment:
    return _flat(BOOT_DS, _TYPE_DATA_RW, long_mode=False, db=True)


def gdt(mode: BootMode) -> bytes:
    """The boot GDT for `mode`, to be written at BOOT_GDT_ADDR."""
    return bytes(16) + code_segment(mode).descriptor() + data_segment().descriptor()


def idt() -> bytes:
    return bytes(IDT_LIMIT + 1)


def page_tables() -> list[tuple[int, bytes]]:
    """(address, bytes) of PML4, PDPT and page directories identity-mapping [0, 4 GiB) with 2 MiB pages."""
    directories = IDENTITY_MAP_SIZE // (512 * HUGE_PAGE)
    table_flags = PTE_PRESENT | PTE_WRITABLE
    pml4 = struct.pack("<Q", PDPT_ADDR | table_flags).ljust(PAGE_SIZE, b"\0")
    pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * PAGE_SIZE) | table_flags) for i in range(directories))
    tables = [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt.ljust(PAGE_SIZE, b"\0"))]
    for i in range(directories):
        first = i * 512
        pd = b"".join(struct.pack("<Q", ((first + j) * HUGE_PAGE) | table_flags | PTE_HUGE) for j in range(512))
        tables.append((PD_ADDR + i * PAGE_SIZE, pd))
    return tables


def boot_plan(
    mode: BootMode, *, rip: int, kernel_range: tuple[int, int], initrd_range: tuple[int, int] | None
) -> BootPlan:
    """Registers, control registers and segments for entering the kernel at `rip` in `mode`."""
    data = data_segment()
    long_mode = mode == "linux64"
    return BootPlan(
        mode=mode,
        rip=rip,
        rsi=ZERO_PAGE_ADDR if long_mode else 0,
        rbx=0 if long_mode else PVH_START_INFO_ADDR,
        rsp=BOOT_STACK_TOP,
        rflags=RFLAGS_RESERVED,
        cr0=CR0_PE | CR0_ET | (CR0_PG if long_mode else 0),
        cr3=PML4_ADDR if long_mode else 0,
        cr4=CR4_PAE if long_mode else 0,
        efer=EFER_LME | EFER_LMA if long_mode else 0,
        gdt_base=BOOT_GDT_ADDR,
        gdt_limit=GDT_LIMIT,
        idt_base=BOOT_IDT_ADDR,
        idt_limit=IDT_LIMIT,
        cs=code_segment(mode),
        ds=data,
        es=data,
        fs=data,
        gs=data,
        ss=data,
        tr=TSS,
        ldt=None,
        kernel_range=kernel_range,
        initrd_range=initrd_range,
    )
