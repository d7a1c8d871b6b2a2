"""guest/linux/build_guest.py: finding and unpacking the kernel inside a bzImage, and the initramfs it built."""

from __future__ import annotations

import gzip
import importlib.util
import lzma
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType

import pytest
from boot_fakes import REPO, cached, make_bzimage, make_pvh_elf


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_guest", REPO / "guest" / "linux" / "build_guest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_guest"] = module
    spec.loader.exec_module(module)
    return module


build_guest = _load_script()
VMLINUX = make_pvh_elf()


def bzimage_with(compressed: bytes, *, garbage: bytes = b"\xcc" * 64) -> bytes:
    """A bzImage whose header points at `compressed` + the 4-byte size, the way the kernel build lays it out."""
    payload = compressed + struct.pack("<I", len(VMLINUX))
    code = b"\x90" * 0x300 + payload + garbage
    code += bytes(-len(code) % 16)
    image = bytearray(make_bzimage(payload=code))
    struct.pack_into("<II", image, 0x248, 0x300, len(payload))  # payload_offset (from the code), payload_length
    return bytes(image)


def lz4_legacy(data: bytes) -> bytes:
    if shutil.which("lz4") is None:
        pytest.skip("lz4 is not installed")
    return subprocess.run(["lz4", "-l", "-c"], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize(
    ("kind", "compress"),
    [
        ("gzip", lambda d: gzip.compress(d, mtime=0)),
        ("xz", lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)),
        ("lz4", lz4_legacy),
    ],
)
def test_payload_is_found_by_header_and_unpacked(kind: str, compress: Callable[[bytes], bytes]) -> None:
    image = bzimage_with(compress(VMLINUX))
    payload = build_guest.find_payload(image)
    assert (payload.kind, payload.offset, payload.exact) == (kind, 4 * 512 + 0x300, True)
    assert build_guest.extract_vmlinux(image) == VMLINUX


def test_payload_found_by_magic_without_header_fields() -> None:
    image = bytearray(bzimage_with(gzip.compress(VMLINUX, mtime=0)))
    struct.pack_into("<H", image, 0x206, 0x0207)  # protocol 2.07: no payload fields
    payload = build_guest.find_payload(bytes(image))
    assert (payload.kind, payload.offset, payload.exact) == ("gzip", 4 * 512 + 0x300, False)
    assert build_guest.extract_vmlinux(bytes(image)) == VMLINUX


def test_size_mismatch_is_reported() -> None:
    image = bytearray(bzimage_with(gzip.compress(VMLINUX, mtime=0)))
    end = 4 * 512 + 0x300 + struct.unpack_from("<I", image, 0x24C)[0]
    struct.pack_into("<I", image, end - 4, 12345)
    with pytest.raises(build_guest.GuestBuildError, match="records 12345"):
        build_guest.extract_vmlinux(bytes(image))


def test_no_payload() -> None:
    with pytest.raises(build_guest.GuestBuildError, match="no compressed kernel payload"):
        build_guest.find_payload(bytes(4096))


def test_cached_initramfs_has_init_busybox_and_test() -> None:
    archive = gzip.decompress(cached("initramfs.cpio.gz").read_bytes())
    names = set()
    pos = 0
    while True:  # newc: 110-byte ASCII header, name, data, each 4-byte aligned
        header = archive[pos : pos + 110]
        assert header[:6] == b"070701"
        namesize, filesize = int(header[94:102], 16), int(header[54:62], 16)
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        names.add(name)
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + filesize + 3) & ~3
    assert {"init", "bin/busybox", "bin/sh", "etc/hotswap-test", "proc", "sys", "dev"} <= names
