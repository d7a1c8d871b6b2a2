"""Pick kernel modules out of a Debian kernel package for the initramfs, with their dependencies, in load order.

Debian's linux-image package ships no modules.dep (depmod writes it at install time), so dependencies come from
each module's own `.modinfo` section (`depends=`, written by modpost: the same facts depmod records). Modules the
kernel has built in are listed in the package's `modules.builtin` and need nothing. Compressed modules (.ko.xz,
.ko.gz, .ko.zst, as newer Debian kernels ship them) are decompressed here, so plain `insmod` loads them.
"""

from __future__ import annotations

import gzip
import lzma
import re
import struct
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class ModuleError(Exception):
    """A kernel module could not be found, read or ordered; the message names the module."""


def module_name(path: str) -> str:
    """The name the kernel knows a module file by (virtio-rng.ko.xz -> virtio_rng)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            return base.removesuffix(suffix).replace("-", "_")
    raise ModuleError(f"{path} is not a kernel module file")


def decompress_module(path: str, data: bytes) -> bytes:
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.endswith(".ko.zst"):
        try:
            result = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=False)
        except FileNotFoundError:
            raise ModuleError(f"{path}: zstd is not installed") from None
        if result.returncode != 0:
            raise ModuleError(f"{path}: zstd failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout
    return data


def modinfo(image: bytes, what: str = "module") -> dict[str, list[str]]:
    """The key=value pairs of an ELF64 module's .modinfo section (a key may repeat, e.g. parm)."""
    if not image.startswith(b"\x7fELF\x02\x01"):
        raise ModuleError(f"{what} is not a little-endian ELF64 file")
    shoff = struct.unpack_from("<Q", image, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)

    def section(index: int) -> tuple[int, int, int]:  # (name offset, file offset, size)
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", image, shoff + index * shentsize)
        return name, offset, size

    _, names_offset, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if image[names_offset + name : image.index(b"\0", names_offset + name)] == b".modinfo":
            info: dict[str, list[str]] = {}
            for entry in image[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    raise ModuleError(f"{what} has no .modinfo section")


def parameters(info: Mapping[str, list[str]]) -> set[str]:
    """Names of the module parameters a module declares (its parm=/parmtype= entries)."""
    return {value.split(":", 1)[0] for key in ("parm", "parmtype") for value in info.get(key, [])}


def dependencies(info: Mapping[str, list[str]]) -> list[str]:
    return [name for value in info.get("depends", []) for name in value.split(",") if name]


@dataclass
class ModuleSet:
    """Modules chosen from a kernel package: files (path -> uncompressed bytes) in load order."""

    release: str
    builtin: set[str]
    order: list[str] = field(default_factory=list)  # names, dependencies first
    paths: dict[str, str] = field(default_factory=dict)  # name -> path under lib/modules/<release>/, as .ko
    images: dict[str, bytes] = field(default_factory=dict)  # name -> uncompressed module
    infos: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def modules_dep(self) -> str:
        """modules.dep in depmod's format (dependencies listed so the last is loaded first), for modprobe."""
        lines = []
        for name in self.order:
            deps = self.closure([name])[:-1]
            lines.append(f"{self.paths[name]}: {' '.join(self.paths[d] for d in reversed(deps))}".rstrip())
        return "".join(f"{line}\n" for line in lines)

    def closure(self, names: Iterable[str]) -> list[str]:
        """`names` and everything they need, dependencies first (a topological order; cycles are an error)."""
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in ordered or name in self.builtin:
                return
            if name in visiting:
                raise ModuleError(f"module dependencies loop: {' -> '.join((*chain, name))}")
            visiting.add(name)
            for dep in dependencies(self.infos[name]):
                visit(dep, (*chain, name))
            visiting.discard(name)
            ordered.append(name)

        for name in names:
            visit(name, ())
        return ordered


def builtin_names(text: str) -> set[str]:
    """Module names from a modules.builtin file (one kernel/.../name.ko path per line)."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def select_modules(tar: tarfile.TarFile, wanted: Iterable[str]) -> ModuleSet:
    """The wanted modules of the kernel package behind `tar` (its data tarball) and their dependencies.

    A wanted module the kernel has built in is skipped; one that is neither built in nor shipped is an error.
    """
    members: dict[str, tarfile.TarInfo] = {}
    builtin_member: tarfile.TarInfo | None = None
    for member in tar:
        path = member.name.removeprefix("./")
        if not member.isfile() or not path.startswith("lib/modules/"):
            continue
        if path.endswith("/modules.builtin"):
            builtin_member = member
        elif path.endswith(MODULE_SUFFIXES):
            members[module_name(path)] = member
    if builtin_member is None:
        raise ModuleError("the kernel package has no lib/modules/<release>/modules.builtin")
    release = builtin_member.name.removeprefix("./").split("/")[2]
    modules = ModuleSet(release, builtin_names(read_member(tar, builtin_member).decode()))

    def load(name: str, needed_by: str) -> None:
        if name in modules.infos or name in modules.builtin:
            return
        member = members.get(name)
        if member is None:
            raise ModuleError(f"module {name} ({needed_by}) is neither built in nor in the kernel package")
        path = member.name.removeprefix("./")
        image = decompress_module(path, read_member(tar, member))
        modules.infos[name] = modinfo(image, path)
        modules.images[name] = image
        relative = path.removeprefix(f"lib/modules/{release}/")
        modules.paths[name] = re.sub(r"\.ko(\.\w+)?$", ".ko", relative)
        for dep in dependencies(modules.infos[name]):
            load(dep, f"needed by {name}")

    wanted = list(wanted)
    for name in wanted:
        load(name, "wanted")
    modules.order = modules.closure(wanted)
    return modules


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise ModuleError(f"cannot read {member.name} from the kernel package")
    return handle.read()
