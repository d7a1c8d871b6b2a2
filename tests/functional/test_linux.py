"""A stock Debian Linux kernel under `hotswap run` (docs/linux-guest.md).

What a host allows differs. Where /dev/kvm is the nested kvm_pvm hypervisor (the development and CI machines), guest
ring 0 is emulated: Linux prints its banner and then stops on an instruction the emulator lacks, so the default tier
checks the banner, the bzImage decompressor's first line, and that the emulation failure ends the VMM with a
one-line report. The slow tier (HOTSWAP_SLOW=1, for hosts with hardware virtualization) boots to the initramfs's
self-test. Every VMM runs in the foreground with its console on stdout, tagged, and is killed by pid at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from framework.vmm import HOTSWAP, kill_pids, pids_with_tag

from hotswap import exitcodes

pytestmark = pytest.mark.kvm

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HOTSWAP_CACHE", REPO / ".cache" / "linux"))
BUILD_SCRIPT = REPO / "guest" / "linux" / "build_guest.py"
EMULATED_RING0 = Path("/sys/module/kvm_pvm").exists()  # the nested hypervisor that emulates guest kernel code
SERIAL = "earlyprintk=serial,ttyS0 console=ttyS0"
BANNER = "Linux version "
# Debian's kernel has no CONFIG_X86_VERBOSE_BOOTUP, so its decompressor only prints warnings: with `nokaslr` the
# first of them is this one, printed before decompression starts.
DECOMPRESSOR_FIRST_LINE = "KASLR disabled: 'nokaslr' on cmdline."


@dataclass(frozen=True)
class LinuxGuest:
    vmlinux: Path
    bzimage: Path
    initramfs: Path


@pytest.fixture(scope="module")
def linux_guest() -> LinuxGuest:
    """The Debian guest from the cache, built (downloaded) first when missing; a loud skip when that cannot be."""
    guest = LinuxGuest(CACHE / "vmlinux", CACHE / "bzImage", CACHE / "initramfs.cpio.gz")
    if not all(path.exists() for path in (guest.vmlinux, guest.bzimage, guest.initramfs)):
        try:
            result = subprocess.run(
                [sys.executable, str(BUILD_SCRIPT), "--cache", str(CACHE)], capture_output=True, text=True, timeout=600
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"NO LINUX GUEST: {BUILD_SCRIPT.name} did not finish in 600 s (downloading Debian's kernel?)")
        if result.returncode != 0:
            why = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()[-1]
            pytest.skip(f"NO LINUX GUEST: could not build it with {BUILD_SCRIPT.name}: {why}")
    return guest


class ForegroundVmm:
    """`hotswap run` in the foreground: the guest's console goes to a file, the VMM's own messages to another."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.name = name
        self.console = run_dir / f"{name}.console"
        self.errors = run_dir / f"{name}.stderr"
        self.tag = uuid.uuid4().hex
        self.env = {**os.environ, "HOTSWAP_RUN_DIR": str(run_dir), "HOTSWAP_TEST_TAG": self.tag}
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self, kernel: Path, initrd: Path, cmdline: str, mem: str = "256M") -> ForegroundVmm:
        args = ["run", "--kernel", str(kernel), "--initrd", str(initrd), "--cmdline", cmdline, "--mem", mem]
        with self.console.open("wb") as out, self.errors.open("wb") as err:
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [*HOTSWAP, *args, "--name", self.name], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env
            )
        return self

    def kill(self) -> None:
        kill_pids(pids_with_tag(self.tag))
        if self.process is not None:
            self.process.wait(timeout=10)

    def output(self) -> str:
        return self.console.read_text(errors="replace")

    def stderr(self) -> str:
        return self.errors.read_text(errors="replace")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds from start until `text` appeared on the console; fails if the VMM exits or time runs out first."""
        assert self.process is not None
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return self.elapsed()
            if self.process.poll() is not None:
                pytest.fail(
                    f"the VMM exited {self.process.returncode} before {text!r} appeared\n"
                    f"stderr: {self.stderr()[-2000:]}\nconsole: {self.output()[-2000:]}"
                )
            time.sleep(0.2)
        pytest.fail(f"{text!r} did not appear within {timeout:.0f} s; console so far:\n{self.output()[-3000:]}")

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=max(0.1, self.started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the VMM was still running {timeout:.0f} s after start; console:\n{self.output()[-3000:]}")


@pytest.fixture
def foreground(run_dir: Path) -> Iterator[list[ForegroundVmm]]:
    """Foreground VMMs a test starts (append to the list); each is killed by pid afterwards."""
    started: list[ForegroundVmm] = []
    try:
        yield started
    finally:
        for vmm in started:
            vmm.kill()


@dataclass(frozen=True)
class PvhRun:
    banner_s: float
    exit_s: float | None  # None: not waited for (a host that runs guest ring 0 natively does not fail)
    exit_status: int | None
    stderr: str
    console: str


@pytest.fixture(scope="module")
def pvh_run(linux_guest: LinuxGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PvhRun]:
    """One PVH boot of vmlinux shared by the tests below (it takes ~40 s here): to the banner, then to the exit."""
    vmm = ForegroundVmm(tmp_path_factory.mktemp("linux-pvh"), "pvh")
    try:
        vmm.start(linux_guest.vmlinux, linux_guest.initramfs, SERIAL)
        banner = vmm.wait_for(BANNER, timeout=240)
        exit_s = status = None
        if EMULATED_RING0:
            status = vmm.wait_exit(timeout=480)
            exit_s = vmm.elapsed()
        ending = f", VMM exited {status} after {exit_s:.1f} s" if exit_s is not None else ""
        print(f"\nLinux through PVH: banner after {banner:.1f} s{ending}")
        yield PvhRun(banner, exit_s, status, vmm.stderr(), vmm.output())
    finally:
        vmm.kill()


def test_pvh_vmlinux_prints_the_linux_banner(pvh_run: PvhRun) -> None:
    banner = next(line for line in pvh_run.console.splitlines() if BANNER in line)
    assert re.search(r"Linux version \d+\.\d+\.\d+", banner), banner
    assert f"Command line: {SERIAL}" in pvh_run.console  # our cmdline reached the kernel intact
    assert "BIOS-e820: [mem 0x0000000000100000-" in pvh_run.console  # and so did our memory map


@pytest.mark.skipif(not EMULATED_RING0, reason="guest ring 0 runs natively on this host: no emulation failure")
def test_pvh_emulation_failure_ends_the_vmm_with_a_one_line_report(pvh_run: PvhRun) -> None:
    assert pvh_run.exit_status == exitcodes.GUEST_FAILURE, pvh_run.stderr
    reports = [line for line in pvh_run.stderr.splitlines() if "KVM_EXIT_INTERNAL_ERROR" in line]
    assert len(reports) == 1, pvh_run.stderr
    report = reports[0]
    assert report.startswith("hotswap: pvh: vCPU 0: KVM_EXIT_INTERNAL_ERROR: emulation failure"), report
    assert re.search(r"instruction bytes( [0-9a-f]{2})+", report), report
    assert re.search(r"at RIP 0xffffffff[0-9a-f]{8} \(CS 0x10, CPL 0", report), report  # in the kernel, ring 0
    assert "Traceback" not in pvh_run.stderr


def test_bzimage_decompressor_prints_its_first_line(
    linux_guest: LinuxGuest, foreground: list[ForegroundVmm], run_dir: Path
) -> None:
    vmm = ForegroundVmm(run_dir, "bz").start(linux_guest.bzimage, linux_guest.initramfs, f"{SERIAL} nokaslr")
    foreground.append(vmm)
    seconds = vmm.wait_for(DECOMPRESSOR_FIRST_LINE, timeout=120)
    print(f"\nLinux through bzImage: decompressor's first line after {seconds:.1f} s")
    assert vmm.process is not None and vmm.process.poll() is None, "the VMM stopped while the guest decompressed"


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["vmlinux", "bzImage"])
def test_linux_boots_to_its_self_test(
    linux_guest: LinuxGuest, foreground: list[ForegroundVmm], run_dir: Path, kernel: str
) -> None:
    image = linux_guest.vmlinux if kernel == "vmlinux" else linux_guest.bzimage
    cmdline = f"{SERIAL} hotswap.test=1 panic=-1"
    vmm = ForegroundVmm(run_dir, f"self-test-{kernel}").start(image, linux_guest.initramfs, cmdline)
    foreground.append(vmm)
    seconds = vmm.wait_for("hotswap-linux: ok", timeout=600)
    print(f"\nLinux through {kernel}: self-test passed after {seconds:.1f} s")
    assert "hotswap-linux: init started" in vmm.output()
    # The self-test resets the machine (reboot -f); a reset ends the VMM with status 0.
    assert vmm.wait_exit(timeout=seconds + 120) == exitcodes.OK, vmm.stderr()
