"""bzImage parsing: the real-mode setup header (Documentation/arch/x86/boot.rst) and the protected-mode part.

Only the 64-bit boot protocol entry is supported: protocol 2.12 or later with XLF_KERNEL_64, whose 64-bit entry
sits 0x200 bytes into the protected-mode code. Offsets below are file offsets, which equal the offsets inside
struct boot_params because the setup header is copied to the same place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hotswap.boot.errors import BootError

HDR_OFFSET = 0x1F1  # the setup header starts here, in the file and in boot_params
HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_PROTOCOL = 0x020C  # 2.12: xloadflags exist
LOADED_HIGH = 0x01  # loadflags: the protected-mode code is loaded at 0x100000
XLF_KERNEL_64 = 0x01  # xloadflags: has the 64-bit entry at code32_start + 0x200
ENTRY_64_OFFSET = 0x200
SECTOR = 512
DEFAULT_SETUP_SECTS = 4  # a zero setup_sects means 4 (boot.rst)

# Field offsets (file / boot_params) of the setup header fields the loader reads or writes.
SETUP_SECTS = 0x1F1
BOOT_FLAG_OFF = 0x1FE
JUMP = 0x200
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
CODE32_START = 0x214
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
INITRD_ADDR_MAX = 0x22C
KERNEL_ALIGNMENT = 0x230
RELOCATABLE_KERNEL = 0x234
XLOADFLAGS = 0x236
CMDLINE_SIZE = 0x238
PREF_ADDRESS = 0x258
INIT_SIZE = 0x260
SETUP_HEADER_END_LIMIT = 0x290  # boot_params.edd_mbr_sig_buffer follows the setup header


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage. `setup_header` is the raw header bytes from 0x1F1 (copied into boot_params)."""

    version: int
    setup_header: bytes
    protected_mode_offset: int  # file offset of the protected-mode code
    protected_mode_size: int
    loadflags: int
    xloadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    cmdline_size: int
    pref_address: int
    init_size: int

    def footprint_end(self, load_addr: int) -> int:
        """First byte above what the kernel may use while decompressing and running from `load_addr`.

        A relocatable kernel decompresses to max(load_addr aligned up to kernel_alignment, pref_address) and
        needs init_size bytes there; a fixed one runs at pref_address.
        """
        target = self.pref_address
        if self.relocatable:
            align = max(self.kernel_alignment, 1)
            target = max(-(-load_addr // align) * align, self.pref_address)
        return max(load_addr + self.protected_mode_size, target + self.init_size)


def is_bzimage(data: bytes | memoryview) -> bool:
    return bytes(data[HEADER : HEADER + 4]) == HDRS_MAGIC


def _u8(data: memoryview, off: int) -> int:
    return data[off]


def _u16(data: memoryview, off: int) -> int:
    value: int = struct.unpack_from("<H", data, off)[0]
    return value


def _u32(data: memoryview, off: int) -> int:
    value: int = struct.unpack_from("<I", data, off)[0]
    return value


def _u64(data: memoryview, off: int) -> int:
    value: int = struct.unpack_from("<Q", data, off)[0]
    return value


def parse_bzimage(data: bytes | memoryview, name: str) -> BzImage:
    """Parse a bzImage; `name` (the file) prefixes every error message."""
    view = memoryview(data)
    try:
        return _parse(view)
    except (ValueError, struct.error) as exc:
        raise BootError(f"{name}: not a bootable bzImage: {exc}") from None


def _parse(data: memoryview) -> BzImage:
    if len(data) < INIT_SIZE + 4:
        raise ValueError(f"file is {len(data)} bytes, shorter than a setup header (truncated?)")
    if bytes(data[HEADER : HEADER + 4]) != HDRS_MAGIC:
        raise ValueError('no "HdrS" setup header signature at 0x202')
    if _u16(data, BOOT_FLAG_OFF) != BOOT_FLAG:
        raise ValueError(f"boot_flag is {_u16(data, BOOT_FLAG_OFF):#06x}, not 0xaa55")
    version = _u16(data, VERSION)
    if version < MIN_PROTOCOL:
        raise ValueError(f"boot protocol {version >> 8}.{version & 0xFF} is older than 2.12 (no 64-bit entry)")
    loadflags = _u8(data, LOADFLAGS)
    if not loadflags & LOADED_HIGH:
        raise ValueError("a zImage (loaded low) is not supported; LOADED_HIGH is clear")
    xloadflags = _u16(data, XLOADFLAGS)
    if not xloadflags & XLF_KERNEL_64:
        raise ValueError("XLF_KERNEL_64 is clear: the kernel has no 64-bit entry point")
    # The header ends where the jump at 0x200 lands (0x202 + its 8-bit displacement).
    header_end = min(HEADER + _u8(data, JUMP + 1), SETUP_HEADER_END_LIMIT)
    setup_sects = _u8(data, SETUP_SECTS) or DEFAULT_SETUP_SECTS
    pm_offset = (setup_sects + 1) * SECTOR
    if pm_offset + ENTRY_64_OFFSET >= len(data):
        raise ValueError(f"the protected-mode code at {pm_offset:#x} is missing (truncated?)")
    syssize = _u32(data, 0x1F4) * 16  # size of the protected-mode code in 16-byte paragraphs
    pm_size = len(data) - pm_offset
    if syssize > pm_size:
        raise ValueError(f"the header declares {syssize:#x} bytes of kernel, the file has {pm_size:#x} (truncated?)")
    init_size = _u32(data, INIT_SIZE)
    if init_size == 0:
        raise ValueError("init_size is 0")
    return BzImage(
        version=version,
        setup_header=bytes(data[HDR_OFFSET:header_end]),
        protected_mode_offset=pm_offset,
        protected_mode_size=pm_size,
        loadflags=loadflags,
        xloadflags=xloadflags,
        initrd_addr_max=_u32(data, INITRD_ADDR_MAX),
        kernel_alignment=_u32(data, KERNEL_ALIGNMENT),
        relocatable=bool(_u8(data, RELOCATABLE_KERNEL)),
        cmdline_size=_u32(data, CMDLINE_SIZE),
        pref_address=_u64(data, PREF_ADDRESS),
        init_size=init_size,
    )
