"""Build virtio_mmio_cmdline.ko (guest/linux/virtio_mmio_cmdline/) against the kernel's own Debian headers.

Debian's kernels leave out CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so their virtio_mmio module has no `device=`
parameter; this small module registers the devices instead (see its source). It is built out of tree the way
Debian builds such modules, from the linux-headers-<release> package and the two it depends on (the common headers
and linux-kbuild), unpacked into the cache rather than installed, so the build needs no root and leaves /usr alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "virtio_mmio_cmdline"
MODULE_NAME = "virtio_mmio_cmdline"


class HelperBuildError(Exception):
    """Building the helper module failed; the message says at which step."""


def header_packages(release: str, depends: Callable[[str], str]) -> list[str]:
    """linux-headers-<release> and the linux-* packages it depends on (common headers, kbuild).

    `depends` returns `apt-cache depends <package>` output.
    """
    flavour = f"linux-headers-{release}"
    found = re.findall(r"Depends:\s*(linux-(?:headers|kbuild)-\S+)", depends(flavour))
    if not found:
        raise HelperBuildError(f"{flavour} has no linux-* dependencies (is it known to apt? run apt-get update)")
    return [flavour, *dict.fromkeys(found)]


def unpack_headers(debs: Sequence[Path], root: Path) -> Path:
    """Unpack the header packages under `root` (once) and return the flavour's build directory."""
    stamp = root / ".unpacked"
    expected = "".join(f"{deb.name}\n" for deb in debs)
    if not (stamp.exists() and stamp.read_text() == expected):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(root)])
        stamp.write_text(expected)
    flavours = [p for p in (root / "usr/src").glob("linux-headers-*") if (p / ".kernelvariables").exists()]
    if len(flavours) != 1:
        raise HelperBuildError(f"expected one flavour header directory under {root}/usr/src, found {len(flavours)}")
    return flavours[0]


def compiler(build_dir: Path) -> str:
    """The compiler the kernel was built with, as the headers name it (e.g. gcc-12)."""
    match = re.search(
        r"^CC\s*=.*?(gcc-\d+|gcc|clang-\d+|clang)\s*$", (build_dir / ".kernelvariables").read_text(), re.M
    )
    return match.group(1) if match else "gcc"


def build_helper(build_dir: Path, work: Path, output: Path) -> None:
    """Compile the helper module with the unpacked headers in `work` (emptied first) and write it, debug info
    stripped, to `output`."""
    cc = compiler(build_dir)
    if shutil.which(cc) is None:
        raise HelperBuildError(f"the kernel headers build with {cc}, which is not installed (apt-get install {cc})")
    # Debian's flavour Makefile includes the common one by its absolute /usr/src path; naming the common Makefile
    # with -f does the same from the unpacked copy (kbuild takes its source tree from that Makefile's location).
    common = sorted(build_dir.parent.glob("linux-headers-*-common*/Makefile"))
    if not common:
        raise HelperBuildError(f"no common linux-headers Makefile next to {build_dir}")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(SOURCE, work)
    # Paths in the debug info feed the module's build id: map the cache's location away, so the same sources and
    # headers give the same module wherever the cache is.
    prefix = os.path.commonpath([build_dir.resolve(), work.resolve()])
    kcflags = f"KCFLAGS=-ffile-prefix-map={prefix}=/kbuild"
    run(["make", "-s", "-C", str(build_dir), "-f", str(common[0]), f"M={work}", kcflags, "modules"])
    built = work / f"{MODULE_NAME}.ko"
    if not built.exists():
        raise HelperBuildError(f"make finished without producing {built.name}")
    run(["strip", "--strip-debug", "-o", str(output.with_name(output.name + ".tmp")), str(built)])
    output.with_name(output.name + ".tmp").replace(output)


def run(argv: Sequence[str]) -> None:
    try:
        result = subprocess.run(list(argv), capture_output=True, check=False)
    except FileNotFoundError:
        raise HelperBuildError(f"{argv[0]} is not installed") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        raise HelperBuildError(f"{' '.join(argv)} failed: {' | '.join(lines[-5:]) or f'exit {result.returncode}'}")
