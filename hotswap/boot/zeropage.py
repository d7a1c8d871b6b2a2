"""struct boot_params (the "zero page") for the 64-bit boot protocol (Documentation/arch/x86/zero-page.rst).

The setup header from the bzImage is copied to 0x1F1, then the loader's fields are filled in: who loaded the
kernel, where the command line and initrd are, and the e820 map. Fields wider than 32 bits keep their upper half
in the ext_* fields.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hotswap.boot import bzimage
from hotswap.boot.errors import BootError
from hotswap.boot.ram import E820Entry

BOOT_PARAMS_SIZE = 4096
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
E820_TABLE = 0x2D0
E820_ENTRY = struct.Struct("<QQI")  # struct boot_e820_entry, packed: 20 bytes
E820_MAX_ENTRIES_ZEROPAGE = 128
TYPE_OF_LOADER_UNDEFINED = 0xFF  # no registered boot loader id


def build_boot_params(
    image: bzimage.BzImage,
    *,
    code32_start: int,
    cmdline_addr: int,
    initrd: tuple[int, int] | None,
    e820: Sequence[E820Entry],
) -> bytes:
    """The zero page bytes; `initrd` is (address, size)."""
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(f"boot_params: {len(e820)} e820 entries exceed the zero page's {E820_MAX_ENTRIES_ZEROPAGE}")
    page = bytearray(BOOT_PARAMS_SIZE)
    page[bzimage.HDR_OFFSET : bzimage.HDR_OFFSET + len(image.setup_header)] = image.setup_header
    page[bzimage.TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    struct.pack_into("<I", page, bzimage.CODE32_START, code32_start)
    _pack_split(page, bzimage.CMD_LINE_PTR, EXT_CMD_LINE_PTR, cmdline_addr)
    if initrd is not None:
        _pack_split(page, bzimage.RAMDISK_IMAGE, EXT_RAMDISK_IMAGE, initrd[0])
        _pack_split(page, bzimage.RAMDISK_SIZE, EXT_RAMDISK_SIZE, initrd[1])
    page[E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        E820_ENTRY.pack_into(page, E820_TABLE + i * E820_ENTRY.size, entry.addr, entry.size, entry.type)
    return bytes(page)


def _pack_split(page: bytearray, low_off: int, high_off: int, value: int) -> None:
    """A 64-bit value whose low half lives in the setup header and high half in an ext_* field."""
    struct.pack_into("<I", page, low_off, value & 0xFFFF_FFFF)
    struct.pack_into("<I", page, high_off, value >> 32)
