#!/usr/bin/env python3
"""Fetch Debian's cloud kernel and busybox and build the hotswap Linux guest into a cache directory.

    python3 guest/linux/build_guest.py [--cache DIR] [--force]

Outputs, in $HOTSWAP_CACHE (default <repo>/.cache/linux):
    bzImage            the kernel package's vmlinuz (64-bit boot protocol entry)
    vmlinux            the uncompressed ELF inside it (PVH entry note checked)
    initramfs.cpio.gz  busybox, /init, the self-tests, and the kernel's virtio modules (see guest/linux/init)

The virtio modules (virtio_mmio, virtio_blk, virtio_net, virtio_rng and what they need; ext4 when it is not built
in) come from the kernel package. When its virtio_mmio cannot take `device=` (Debian: no
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), the helper module in virtio_mmio_cmdline/ is compiled against the kernel's
Debian headers (unpacked into kbuild/, not installed) and goes in too.

Idempotent: downloaded packages are kept in debs/, and an output is rebuilt only when it is missing or older than
its inputs (or with --force). Needs apt-get, apt-cache, dpkg-deb, cpio, lz4/zstd for kernels compressed so, and
make, strip and the kernel's compiler (gcc-12 for Debian 12) for the helper module.
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

# The helpers beside this script, also when it is loaded by path from elsewhere (the unit tests do).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_modules import ModuleError, ModuleSet, parameters, select_modules
from mmio_helper import MODULE_NAME as HELPER_NAME
from mmio_helper import HelperBuildError, build_helper, header_packages, unpack_headers

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Kernel modules the virtio test needs; ext4 is built into Debian's kernel, and then needs nothing.
GUEST_MODULES = ("virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng", "ext4")
# The scripts /init runs, and where they go in the archive.
GUEST_SCRIPTS = {"init": "init", "hotswap-test": "etc/hotswap-test", "hotswap-virtio": "etc/hotswap-virtio"}

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


def download(package: str, debs: Path, version: str | None = None) -> Path:
    """The package's .deb in `debs` (of `version`, when given), downloaded with apt-get unless already there."""
    debs.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb" if version else f"{package}_*.deb"
    found = sorted(debs.glob(pattern))
    if found:
        say(f"have {found[-1].name}")
        return found[-1]
    say(f"apt-get download {package}{f'={version}' if version else ''}")
    run(["apt-get", "download", f"{package}={version}" if version else package], cwd=debs)
    found = sorted(debs.glob(pattern))
    if not found:
        raise GuestBuildError(f"apt-get download {package} produced no .deb in {debs}")
    return found[-1]


def deb_version(deb: Path) -> str:
    return run(["dpkg-deb", "--field", str(deb), "Version"]).decode().strip()


def open_deb(deb: Path) -> tarfile.TarFile:
    """The package's data as a (seekable) tar archive, via dpkg-deb."""
    return tarfile.open(fileobj=io.BytesIO(run(["dpkg-deb", "--fsys-tarfile", str(deb)])))


def tar_member(tar: tarfile.TarFile, pattern: str, what: str) -> tuple[str, bytes]:
    """(name, bytes) of the first file in the archive whose path matches `pattern`."""
    for member in tar:
        if member.isfile() and re.fullmatch(pattern, member.name.removeprefix("./")):
            handle = tar.extractfile(member)
            if handle is not None:
                return member.name, handle.read()
    raise GuestBuildError(f"{what} has no file matching {pattern}")


def deb_member(deb: Path, pattern: str) -> tuple[str, bytes]:
    """(name, bytes) of the first file in the package whose path matches `pattern` (via dpkg-deb)."""
    with open_deb(deb) as tar:
        return tar_member(tar, pattern, deb.name)


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


# --- kernel modules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestModules:
    """The modules for the initramfs, and which of them takes the virtio_mmio.device= entries as device=."""

    modules: ModuleSet
    devices_to: str | None  # virtio_mmio, the helper, or None (a built-in driver reads the command line itself)

    @property
    def needs_helper(self) -> bool:
        return self.devices_to == HELPER_NAME


def guest_modules(kernel_deb: Path) -> GuestModules:
    with open_deb(kernel_deb) as tar:
        try:
            modules = select_modules(tar, GUEST_MODULES)
        except ModuleError as exc:
            raise GuestBuildError(f"{kernel_deb.name}: {exc}") from None
        if "virtio_mmio" in modules.builtin:
            _, config = tar_member(tar, r"boot/config-.*", kernel_deb.name)
            reads_cmdline = re.search(rb"^CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y$", config, re.M) is not None
            devices_to = None if reads_cmdline else HELPER_NAME
        else:
            takes_devices = "device" in parameters(modules.infos["virtio_mmio"])
            devices_to = "virtio_mmio" if takes_devices else HELPER_NAME
    built_in = sorted(set(GUEST_MODULES) & modules.builtin)
    say(
        f"modules for {modules.release}: {', '.join(modules.order)}"
        + (f"; built in: {', '.join(built_in)}" if built_in else "")
        + f"; virtio_mmio.device= entries go to {devices_to or 'the built-in driver'}"
    )
    return GuestModules(modules, devices_to)


def helper_module(cache: Path, release: str, version: str, sources: Sequence[Path], force: bool) -> Path:
    """virtio_mmio_cmdline.ko for this kernel, built from its Debian headers unless up to date."""
    output = cache / f"{HELPER_NAME}-{release}.ko"
    debs = cache / "debs"

    def apt_depends(package: str) -> str:
        return run(["apt-cache", "depends", package]).decode()

    try:
        packages = header_packages(release, apt_depends)
    except HelperBuildError as exc:
        raise GuestBuildError(str(exc)) from None
    header_debs = [download(package, debs, version) for package in packages]
    if force or not is_fresh(output, [*header_debs, *sources, HERE / "mmio_helper.py"]):
        say(f"building {HELPER_NAME}.ko against {packages[0]}")
        try:
            build_dir = unpack_headers(header_debs, cache / "kbuild" / release)
            build_helper(build_dir, cache / "kbuild" / f"{HELPER_NAME}-build", output)
        except HelperBuildError as exc:
            raise GuestBuildError(f"{HELPER_NAME}: {exc}") from None
    return output


def load_list(modules: GuestModules, helper: bool) -> str:
    """hotswap.load: one module path per line in load order; `devices` marks the one /init passes device= to."""
    lines = [
        f"{modules.modules.paths[name]}{' devices' if name == modules.devices_to else ''}"
        for name in modules.modules.order
    ]
    if helper:
        lines.append(f"extra/{HELPER_NAME}.ko devices")
    return "".join(f"{line}\n" for line in lines)


# --- initramfs ------------------------------------------------------------------------------------------


def build_initramfs(busybox: bytes, modules: GuestModules, helper: bytes | None, output: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hotswap-initramfs-") as tmp:
        root = Path(tmp)
        for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root", "mnt"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "bin/busybox").write_bytes(busybox)
        (root / "bin/busybox").chmod(0o755)
        applets = run([str(root / "bin/busybox"), "--list-full"]).decode().split()
        for applet in applets:
            link = root / applet
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        for source, target in GUEST_SCRIPTS.items():
            shutil.copy(HERE / source, root / target)
            (root / target).chmod(0o755)
        module_dir = root / "lib/modules" / modules.modules.release
        for name in modules.modules.order:
            path = module_dir / modules.modules.paths[name]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(modules.modules.images[name])
        dep = modules.modules.modules_dep()
        if helper is not None:
            (module_dir / "extra").mkdir(parents=True, exist_ok=True)
            (module_dir / "extra" / f"{HELPER_NAME}.ko").write_bytes(helper)
            dep += f"extra/{HELPER_NAME}.ko:\n"
        (module_dir / "modules.dep").write_text(dep)
        (module_dir / "hotswap.load").write_text(load_list(modules, helper is not None))
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
    count = len(modules.modules.order) + (helper is not None)
    say(f"initramfs: busybox with {len(applets)} applets, {count} modules, {len(archive)} bytes of cpio")
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

    helper_sources = sorted(p for p in (HERE / "virtio_mmio_cmdline").iterdir() if p.is_file())
    code = [Path(__file__).resolve(), HERE / "kernel_modules.py", HERE / "mmio_helper.py"]
    scripts = [HERE / source for source in GUEST_SCRIPTS]
    if force or not is_fresh(initramfs, [busybox_deb, kernel_deb, *scripts, *code, *helper_sources]):
        modules = guest_modules(kernel_deb)
        helper = None
        if modules.needs_helper:
            helper = helper_module(cache, modules.modules.release, deb_version(kernel_deb), helper_sources, force)
        _, busybox = deb_member(busybox_deb, r"bin/busybox")
        build_initramfs(busybox, modules, helper.read_bytes() if helper else None, initramfs)
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
