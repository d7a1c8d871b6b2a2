"""bzImage setup header parsing: synthetic images and Debian's cloud kernel when the cache has it."""

from __future__ import annotations

import struct

import pytest
from boot_fakes import cached, make_bzimage

from hotswap.boot import BootError
from hotswap.boot.bzimage import parse_bzimage


def test_header_fields_are_read() -> None:
    image = parse_bzimage(make_bzimage(setup_sects=3, cmdline_size=511, init_size=0x50_0000), "bz")
    assert image.version == 0x020F
    assert image.protected_mode_offset == 4 * 512
    assert image.protected_mode_size == 0x2000
    assert image.cmdline_size == 511
    assert image.init_size == 0x50_0000
    assert image.relocatable
    # The raw header runs from 0x1f1 to where the jump at 0x200 lands (0x202 + 0x6a).
    assert len(image.setup_header) == 0x26C - 0x1F1
    assert image.setup_header[0x202 - 0x1F1 : 0x206 - 0x1F1] == b"HdrS"


def test_zero_setup_sects_means_four() -> None:
    data = bytearray(make_bzimage(setup_sects=4))
    data[0x1F1] = 0
    assert parse_bzimage(bytes(data), "bz").protected_mode_offset == 5 * 512


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 0x020B}, "older than 2.12"),
        ({"xloadflags": 0x02}, "XLF_KERNEL_64 is clear"),
        ({"loadflags": 0x00}, "zImage"),
        ({"init_size": 0}, "init_size is 0"),
    ],
)
def test_unsupported_images_are_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(BootError, match=message):
        parse_bzimage(make_bzimage(**kwargs), "bz")


def test_missing_signature_and_boot_flag_are_rejected() -> None:
    data = bytearray(make_bzimage())
    data[0x202:0x206] = b"HdrZ"
    with pytest.raises(BootError, match="HdrS"):
        parse_bzimage(bytes(data), "bz")
    data = bytearray(make_bzimage())
    struct.pack_into("<H", data, 0x1FE, 0)
    with pytest.raises(BootError, match="boot_flag"):
        parse_bzimage(bytes(data), "bz")


def test_truncated_images_are_rejected_naming_the_file() -> None:
    data = make_bzimage()
    for length in [0, 0x1F1, 0x263, 4 * 512, 4 * 512 + 0x200, len(data) - 16]:
        with pytest.raises(BootError, match=r"^/boot/cut: .*"):
            parse_bzimage(data[:length], "/boot/cut")


def test_footprint_covers_decompression_at_the_preferred_address() -> None:
    image = parse_bzimage(make_bzimage(init_size=0x300_0000, pref_address=0x100_0000), "bz")
    # Relocatable, loaded at 1 MiB: it decompresses at max(1 MiB aligned to 2 MiB, pref) = 16 MiB.
    assert image.footprint_end(0x10_0000) == 0x100_0000 + 0x300_0000
    fixed = parse_bzimage(make_bzimage(relocatable=False, init_size=0x10_0000, pref_address=0x20_0000), "bz")
    assert fixed.footprint_end(0x10_0000) == 0x30_0000


def test_debian_bzimage_header() -> None:
    image = parse_bzimage(cached("bzImage").read_bytes(), "bzImage")
    assert image.version >= 0x020C
    assert image.xloadflags & 1
    assert image.relocatable
    assert image.cmdline_size == 2047
    assert image.pref_address == 0x100_0000
    assert image.init_size > image.protected_mode_size
    assert image.initrd_addr_max >= 0x37FF_FFFF
