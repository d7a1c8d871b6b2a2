"""struct hvm_start_info (Xen's PVH start-of-day structure, version 1) and what it points to.

The PVH entry gets EBX = the start info's address. Version 1 adds the memory map, so the kernel needs no
hypervisor call to learn its RAM. The initrd is module 0 of the module list.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hotswap.boot.ram import E820Entry

HVM_START_MAGIC = 0x336EC578
HVM_START_VERSION = 1
START_INFO = struct.Struct("<IIIIQQQQII")  # magic version flags nr_modules modlist cmdline rsdp memmap entries rsvd
MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr size cmdline_paddr reserved
MEMMAP_ENTRY = struct.Struct("<QQII")  # addr size type reserved; the types are the e820 ones


def build_start_info(
    *, cmdline_addr: int, modlist_addr: int, nr_modules: int, memmap_addr: int, memmap_entries: int
) -> bytes:
    return START_INFO.pack(
        HVM_START_MAGIC,
        HVM_START_VERSION,
        0,
        nr_modules,
        modlist_addr if nr_modules else 0,
        cmdline_addr,
        0,  # rsdp_paddr: no ACPI tables yet
        memmap_addr,
        memmap_entries,
        0,
    )


def build_memmap(e820: Sequence[E820Entry]) -> bytes:
    return b"".join(MEMMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in e820)


def build_modlist(modules: Sequence[tuple[int, int]]) -> bytes:
    """Module entries from (address, size); modules carry no command line of their own."""
    return b"".join(MODLIST_ENTRY.pack(addr, size, 0, 0) for addr, size in modules)
