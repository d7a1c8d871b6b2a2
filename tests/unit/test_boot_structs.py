"""Byte layouts of boot_params (zero page) and hvm_start_info, checked against the documented offsets
(Documentation/arch/x86/zero-page.rst and boot.rst; xen/include/public/arch-x86/hvm/start_info.h)."""

from __future__ import annotations

import struct

from boot_fakes import make_bzimage

from hotswap.boot import E820Entry, E820Type
from hotswap.boot.bzimage import parse_bzimage
from hotswap.boot.pvh import MEMMAP_ENTRY, MODLIST_ENTRY, START_INFO, build_memmap, build_modlist, build_start_info
from hotswap.boot.zeropage import build_boot_params

E820 = [
    E820Entry(0, 0x9_FC00, E820Type.RAM),
    E820Entry(0x9_FC00, 0x6_0400, E820Type.RESERVED),
    E820Entry(0x10_0000, 0xFF0_0000, E820Type.RAM),
]


def u8(page: bytes, off: int) -> int:
    return page[off]


def u32(page: bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", page, off)[0]
    return value


def u64(page: bytes, off: int) -> int:
    value: int = struct.unpack_from("<Q", page, off)[0]
    return value


def zero_page(initrd: tuple[int, int] | None = (0x7F0_0000, 0x12345), cmdline: int = 0x2_0000) -> bytes:
    image = parse_bzimage(make_bzimage(), "bz")
    return build_boot_params(image, code32_start=0x10_0000, cmdline_addr=cmdline, initrd=initrd, e820=E820)


def test_zero_page_is_one_page_with_the_setup_header_at_0x1f1() -> None:
    page = zero_page()
    assert len(page) == 4096
    assert u8(page, 0x1F1) == 3  # setup_sects
    assert struct.unpack_from("<H", page, 0x1FE)[0] == 0xAA55  # boot_flag
    assert page[0x202:0x206] == b"HdrS"  # hdr.header
    assert struct.unpack_from("<H", page, 0x206)[0] == 0x020F  # hdr.version
    assert struct.unpack_from("<H", page, 0x236)[0] == 0x7F  # hdr.xloadflags
    assert u32(page, 0x238) == 0x7FF  # hdr.cmdline_size


def test_loader_fields_at_documented_offsets() -> None:
    page = zero_page()
    assert u8(page, 0x210) == 0xFF  # hdr.type_of_loader: undefined
    assert u32(page, 0x214) == 0x10_0000  # hdr.code32_start
    assert u32(page, 0x228) == 0x2_0000  # hdr.cmd_line_ptr
    assert u32(page, 0x218) == 0x7F0_0000  # hdr.ramdisk_image
    assert u32(page, 0x21C) == 0x12345  # hdr.ramdisk_size
    assert u32(page, 0x0C0) == u32(page, 0x0C4) == u32(page, 0x0C8) == 0  # ext_* high halves


def test_e820_table_at_0x2d0_with_its_count_at_0x1e8() -> None:
    page = zero_page()
    assert u8(page, 0x1E8) == 3
    for i, entry in enumerate(E820):
        at = 0x2D0 + 20 * i  # struct boot_e820_entry is packed: 8 + 8 + 4 bytes
        assert (u64(page, at), u64(page, at + 8), u32(page, at + 16)) == (entry.addr, entry.size, entry.type)
    assert page[0x2D0 + 20 * 3 : 0x2D0 + 20 * 4] == bytes(20)


def test_high_halves_go_to_the_ext_fields() -> None:
    page = zero_page(initrd=(0x1_2345_6000, 0x1_0000_0010), cmdline=0x2_0000_0000)
    assert (u32(page, 0x218), u32(page, 0x0C0)) == (0x2345_6000, 0x1)  # ramdisk_image / ext_ramdisk_image
    assert (u32(page, 0x21C), u32(page, 0x0C4)) == (0x10, 0x1)  # ramdisk_size / ext_ramdisk_size
    assert (u32(page, 0x228), u32(page, 0x0C8)) == (0, 0x2)  # cmd_line_ptr / ext_cmd_line_ptr


def test_no_initrd_leaves_ramdisk_fields_zero() -> None:
    page = zero_page(initrd=None)
    assert u32(page, 0x218) == u32(page, 0x21C) == 0


def test_hvm_start_info_layout() -> None:
    assert START_INFO.size == 56 and MODLIST_ENTRY.size == 32 and MEMMAP_ENTRY.size == 24
    info = build_start_info(
        cmdline_addr=0x2_0000, modlist_addr=0x60A0, nr_modules=1, memmap_addr=0x6040, memmap_entries=3
    )
    assert u32(info, 0) == 0x336E_C578  # magic
    assert u32(info, 4) == 1  # version
    assert u32(info, 8) == 0  # flags
    assert u32(info, 12) == 1  # nr_modules
    assert u64(info, 16) == 0x60A0  # modlist_paddr
    assert u64(info, 24) == 0x2_0000  # cmdline_paddr
    assert u64(info, 32) == 0  # rsdp_paddr
    assert u64(info, 40) == 0x6040  # memmap_paddr
    assert u32(info, 48) == 3  # memmap_entries


def test_hvm_start_info_without_modules_has_no_modlist_pointer() -> None:
    info = build_start_info(
        cmdline_addr=0x2_0000, modlist_addr=0x60A0, nr_modules=0, memmap_addr=0x6040, memmap_entries=3
    )
    assert u32(info, 12) == 0 and u64(info, 16) == 0


def test_memmap_and_modlist_entries() -> None:
    memmap = build_memmap(E820)
    assert len(memmap) == 3 * 24
    assert (u64(memmap, 24), u64(memmap, 32), u32(memmap, 40)) == (0x9_FC00, 0x6_0400, 2)
    modlist = build_modlist([(0x7F0_0000, 0x1234)])
    assert (u64(modlist, 0), u64(modlist, 8), u64(modlist, 16), u64(modlist, 24)) == (0x7F0_0000, 0x1234, 0, 0)
