#!/usr/bin/env python3
"""Fetch Debian's cloud kernel and busybox and build the hotswap Linux guest into a cache directory.

    python3 guest/linux/build_guest.py [--cache DIR] [--force]

Outputs, in $HOTSWAP_CACHE (default <repo>/.cache/linux):
    bzImage            the kernel package's vmlinuz (64-bit boot protocol entry)
    vmlinux            the uncompressed ELF inside it (PVH entry note checked)
    initramfs.cpio.gz  busybox, /init and the self-test (see guest/linux/init)

Idempotent: downloaded packages are kept in debs/, and an output is rebuilt only when it is missing or older than
its inputs (or with --force). Needs apt-get, apt-cache, dpkg-deb, cpio, and lz4/zstd for kernels compressed so.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

# Compressed-payload magics, in the order extract-vmlinux tries them (the kernel's own tool).
PAYLOAD_MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00\x00"),
    ("lzo", b"\x89LZO"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
)
# Tools for the formats Python's standard library cannot decompress.
PAYLOAD_TOOLS = {"lz4": ["lz4", "-dc"], "zstd": ["zstd", "-dc"], "lzo": ["lzop", "-dc"]}


class GuestBuildError(Exception):
    """A step of the guest build failed; the message says which and why."""


def say(message: str) -> None:
    print(f"guest/linux: {message}", flush=True)


def run(argv: Sequence[str], *, cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(list(argv), cwd=cwd, input=stdin, capture_output=True, check=False)
    except FileNotFoundError:
        raise GuestBuildError(f"{argv[0]} is not installed") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise GuestBuildError(f"{' '.join(argv)} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result.stdout


def is_fresh(output: Path, inputs: Sequence[Path]) -> bool:
    """True when `output` exists and is at least as new as every input."""
    if not output.exists():
        return False
    mtime = output.stat().st_mtime
    return all(path.stat().st_mtime <= mtime for path in inputs)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# --- packages ---------------------------------------------------------------------------------------------


def resolve_kernel_package() -> str:
    """The real linux-image-*-cloud-amd64 package the metapackage depends on."""
    say(f"resolving {KERNEL_METAPACKAGE}")
    text = run(["apt-cache", "depends", KERNEL_METAPACKAGE]).decode()
    match = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)\b", text)
    if not match:
        raise GuestBuildError(f"{KERNEL_METAPACKAGE} has no linux-image dependency; run apt-get update first")
    return match.group(1)


def download(package: str, debs: Path) -> Path:
    """The package's .deb in `debs`, downloaded with apt-get unless already there."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        say(f"have {found[-1].name}")
        return found[-1]
    say(f"apt-get download {package}")
    run(["apt-get", "download", package], cwd=debs)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise GuestBuildError(f"apt-get download {package} produced no .deb in {debs}")
    return found[-1]


def deb_member(deb: Path, pattern: str) -> tuple[str, bytes]:
    """(name, bytes) of the first file in the package whose path matches `pattern` (via dpkg-deb)."""
    tar_bytes = run(["dpkg-deb", "--fsys-tarfile", str(deb)])
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            if member.isfile() and re.fullmatch(pattern, member.name.removeprefix("./")):
                handle = tar.extractfile(member)
                if handle is not None:
                    return member.name, handle.read()
    raise GuestBuildError(f"{deb.name} has no file matching {pattern}")


# --- vmlinux from bzImage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    kind: str
    offset: int
    length: int
    exact: bool  # located by the setup header (so it ends with the 4-byte uncompressed size)


def find_payload(image: bytes) -> Payload:
    """Where the compressed kernel lies inside a bzImage, and its format.

    The setup header's payload_offset/payload_length (boot protocol 2.08+) locate it exactly; the magic there
    names the format. Without them, the first known magic in the file is used, as extract-vmlinux does.
    """
    if image[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", image, 0x206)[0] >= 0x0208:
        setup_sects = image[0x1F1] or 4
        offset = (setup_sects + 1) * 512 + struct.unpack_from("<I", image, 0x248)[0]
        length = struct.unpack_from("<I", image, 0x24C)[0]
        for kind, magic in PAYLOAD_MAGICS:
            if length > len(magic) + 4 and image.startswith(magic, offset) and offset + length <= len(image):
                return Payload(kind, offset, length, exact=True)
    hits = sorted((image.find(magic), kind) for kind, magic in PAYLOAD_MAGICS if magic in image)
    if not hits:
        raise GuestBuildError("no compressed kernel payload found in the bzImage")
    offset, kind = hits[0]
    return Payload(kind, offset, len(image) - offset, exact=False)


def decompress(kind: str, payload: bytes) -> bytes:
    """Decompress one payload. Kernel payloads end with the 4-byte uncompressed size, which the standalone
    tools reject as trailing garbage, so the stream decoders below stop at the end of the stream."""
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if kind in ("xz", "lzma"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE).decompress(payload)
    if kind == "bzip2":
        return bz2.BZ2Decompressor().decompress(payload)
    tool = PAYLOAD_TOOLS.get(kind)
    if tool is None:
        raise GuestBuildError(f"no decompressor for a {kind} payload")
    return run(tool, stdin=payload[:-4])


def extract_vmlinux(image: bytes) -> bytes:
    payload = find_payload(image)
    say(f"decompressing the {payload.kind} payload ({payload.length} bytes at {payload.offset:#x})")
    data = image[payload.offset : payload.offset + payload.length]
    vmlinux = decompress(payload.kind, data if payload.exact else data + bytes(4))
    if not vmlinux.startswith(b"\x7fELF"):
        raise GuestBuildError(f"the decompressed {payload.kind} payload is not an ELF file")
    recorded = struct.unpack_from("<I", data, len(data) - 4)[0]
    if payload.exact and recorded != len(vmlinux) & 0xFFFF_FFFF:
        raise GuestBuildError(f"vmlinux is {len(vmlinux)} bytes but the bzImage records {recorded}")
    return vmlinux


def check_pvh(vmlinux: Path) -> int:
    """The PVH entry of `vmlinux`, via the loader's own parser (so the VMM will accept the file)."""
    sys.path.insert(0, str(REPO))
    from hotswap.boot.elf import parse_elf_kernel
    from hotswap.boot.errors import BootError

    try:
        return parse_elf_kernel(vmlinux.read_bytes(), str(vmlinux)).pvh_entry
    except BootError as exc:
        raise GuestBuildError(str(exc)) from None


def kernel_release(image: bytes) -> str:
    """The kernel's version string from the setup header's kernel_version pointer."""
    pointer = struct.unpack_from("<H", image, 0x20E)[0] + 0x200
    return image[pointer : image.index(b"\0", pointer)].decode(errors="replace")


# --- initramfs ------------------------------------------------------------------------------------------


def build_initramfs(busybox: bytes, output: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hotswap-initramfs-") as tmp:
        root = Path(tmp)
        for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "bin/busybox").write_bytes(busybox)
        (root / "bin/busybox").chmod(0o755)
        applets = run([str(root / "bin/busybox"), "--list-full"]).decode().split()
        for applet in applets:
            link = root / applet
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        shutil.copy(HERE / "init", root / "init")
        shutil.copy(HERE / "hotswap-test", root / "etc/hotswap-test")
        for script in (root / "init", root / "etc/hotswap-test"):
            script.chmod(0o755)
        if os.geteuid() == 0:
            os.mknod(root / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
        else:
            say("not root: no /dev/console node in the archive (/init reopens it from devtmpfs)")
        paths = sorted(root.rglob("*"))
        for path in [root, *paths]:  # fixed timestamps: the same inputs give the same archive
            os.utime(path, (0, 0), follow_symlinks=False)
        names = [str(path.relative_to(root)) for path in paths]
        archive = run(
            ["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible"],
            cwd=root,
            stdin="".join(f"{name}\n" for name in [".", *names]).encode(),
        )
    say(f"initramfs: busybox with {len(applets)} applets, {len(archive)} bytes of cpio")
    write_atomically(output, gzip.compress(archive, compresslevel=9, mtime=0))


# --- main -----------------------------------------------------------------------------------------------


def build(cache: Path, force: bool) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    kernel_deb = download(resolve_kernel_package(), debs)
    busybox_deb = download(BUSYBOX_PACKAGE, debs)

    bzimage, vmlinux, initramfs = cache / "bzImage", cache / "vmlinux", cache / "initramfs.cpio.gz"
    if force or not is_fresh(bzimage, [kernel_deb]):
        name, data = deb_member(kernel_deb, r"boot/vmlinuz-.*")
        say(f"extracting {name} from {kernel_deb.name}")
        write_atomically(bzimage, data)
    image = bzimage.read_bytes()
    say(f"kernel {kernel_release(image)}")
    if force or not is_fresh(vmlinux, [bzimage]):
        write_atomically(vmlinux, extract_vmlinux(image))
    say(f"vmlinux has a PVH entry at {check_pvh(vmlinux):#x}")

    inputs = [busybox_deb, HERE / "init", HERE / "hotswap-test", Path(__file__).resolve()]
    if force or not is_fresh(initramfs, inputs):
        _, busybox = deb_member(busybox_deb, r"bin/busybox")
        build_initramfs(busybox, initramfs)
    return [vmlinux, bzimage, initramfs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_cache = Path(os.environ.get("HOTSWAP_CACHE", REPO / ".cache" / "linux"))
    parser.add_argument("--cache", type=Path, default=default_cache, help=f"output directory ({default_cache})")
    parser.add_argument("--force", action="store_true", help="rebuild every output")
    args = parser.parse_args(argv)
    try:
        outputs = build(args.cache.resolve(), args.force)
    except GuestBuildError as exc:
        print(f"guest/linux: error: {exc}", file=sys.stderr)
        return 1
    for path in outputs:
        print(f"{path}  ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
