"""A stock Debian Linux kernel under `hotswap run` (docs/linux-guest.md).

What a host allows differs. Where /dev/kvm is the nested kvm_pvm hypervisor (the development and CI machines), guest
ring 0 is emulated: Linux prints its banner and then stops on an instruction the emulator lacks, so the default tier
checks the banner, the bzImage decompressor's first line, and that the emulation failure ends the VMM with a
one-line report. The slow tier (HOTSWAP_SLOW=1, for hosts with hardware virtualization) boots to the initramfs's
self-test, and runs the virtio test (Linux's own virtio-mmio, virtio-blk, virtio-net and virtio-rng drivers on
hotswap's devices) across live upgrades. That same guest side runs here under QEMU/TCG (software emulation) on a
QEMU microvm, so it is checked even where Linux cannot boot on /dev/kvm. Every VMM and QEMU is killed by pid.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from framework.vmm import HOTSWAP, GuestVm, kill_pids, pids_with_tag

from hotswap import exitcodes
from hotswap.layout import VIRTIO_FIRST_GSI, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HOTSWAP_CACHE", REPO / ".cache" / "linux"))
BUILD_SCRIPT = REPO / "guest" / "linux" / "build_guest.py"
EMULATED_RING0 = Path("/sys/module/kvm_pvm").exists()  # the nested hypervisor that emulates guest kernel code
SERIAL = "earlyprintk=serial,ttyS0 console=ttyS0"
BANNER = "Linux version "
# Debian's kernel has no CONFIG_X86_VERBOSE_BOOTUP, so its decompressor only prints warnings: with `nokaslr` the
# first of them is this one, printed before decompression starts.
DECOMPRESSOR_FIRST_LINE = "KASLR disabled: 'nokaslr' on cmdline."
NO_LINUX_HERE = (
    "LINUX CANNOT BOOT ON THIS HOST: /dev/kvm is kvm_pvm, which emulates guest ring 0 and stops the kernel at "
    "instructions it cannot emulate (cmpxchg16b, xrstor; docs/linux-guest.md): needs hardware virtualization"
)


@dataclass(frozen=True)
class LinuxGuest:
    vmlinux: Path
    bzimage: Path
    initramfs: Path


@pytest.fixture(scope="module")
def linux_guest() -> LinuxGuest:
    """The Debian guest from the cache, brought up to date by the (idempotent) build first; a loud skip when there
    is none. A failed build with older files present keeps them, with a warning."""
    guest = LinuxGuest(CACHE / "vmlinux", CACHE / "bzImage", CACHE / "initramfs.cpio.gz")
    have_files = all(path.exists() for path in (guest.vmlinux, guest.bzimage, guest.initramfs))
    try:
        result = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT), "--cache", str(CACHE)], capture_output=True, text=True, timeout=600
        )
        why = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()[-1]
    except subprocess.TimeoutExpired:
        result, why = None, "did not finish in 600 s (downloading Debian's kernel?)"
    if result is None or result.returncode != 0:
        if not have_files:
            pytest.skip(f"NO LINUX GUEST: could not build it with {BUILD_SCRIPT.name}: {why}")
        print(f"\nWARNING: {BUILD_SCRIPT.name} failed ({why}); using the guest files already in {CACHE}")
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

    def start(self, kernel: Path, initrd: Path, cmdline: str, mem: str = "256M", *extra: str) -> ForegroundVmm:
        args = ["run", "--kernel", str(kernel), "--initrd", str(initrd), "--cmdline", cmdline, "--mem", mem, *extra]
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


@pytest.mark.kvm
def test_pvh_vmlinux_prints_the_linux_banner(pvh_run: PvhRun) -> None:
    banner = next(line for line in pvh_run.console.splitlines() if BANNER in line)
    assert re.search(r"Linux version \d+\.\d+\.\d+", banner), banner
    assert f"Command line: {SERIAL}" in pvh_run.console  # our cmdline reached the kernel intact
    assert "BIOS-e820: [mem 0x0000000000100000-" in pvh_run.console  # and so did our memory map


@pytest.mark.kvm
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


@pytest.mark.kvm
def test_bzimage_decompressor_prints_its_first_line(
    linux_guest: LinuxGuest, foreground: list[ForegroundVmm], run_dir: Path
) -> None:
    vmm = ForegroundVmm(run_dir, "bz").start(linux_guest.bzimage, linux_guest.initramfs, f"{SERIAL} nokaslr")
    foreground.append(vmm)
    seconds = vmm.wait_for(DECOMPRESSOR_FIRST_LINE, timeout=120)
    print(f"\nLinux through bzImage: decompressor's first line after {seconds:.1f} s")
    assert vmm.process is not None and vmm.process.poll() is None, "the VMM stopped while the guest decompressed"


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.skipif(EMULATED_RING0, reason=NO_LINUX_HERE)
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


# --- the virtio test: Linux's own drivers on virtio-mmio devices (guest/linux/hotswap-virtio) ---------------------

VIRTIO_UPGRADES = int(os.environ.get("HOTSWAP_LINUX_UPGRADES", "3"))
# loglevel=4: kernel warnings and errors still reach the console, but no info lines that could split ours.
VIRTIO_CMDLINE = "loglevel=4 panic=-1 hotswap.test=virtio hotswap.interval=0.5"
FILE_WRITTEN = re.compile(r"hotswap-linux: file written bytes=(\d+) sha256=([0-9a-f]{64})")
FILE_OK = re.compile(r"hotswap-linux: file ok (\d+)")
PINGS = re.compile(r"hotswap-linux: pings answered (\d+)")
PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def expected_file() -> bytes:
    """What the guest writes to hotswap.txt (guest/linux/hotswap-virtio builds the same lines)."""
    return "".join(f"hotswap-linux test line {i}\n" for i in range(1, 2001)).encode()


def console_lines(text: str) -> list[str]:
    """Complete lines only (the last may still be arriving), without the serial line's carriage returns."""
    return [line.strip() for line in text.split("\n")[:-1]]


def file_ok_numbers(text: str) -> list[int]:
    return [int(m.group(1)) for line in console_lines(text) if (m := FILE_OK.fullmatch(line))]


def file_ok_after(number: int) -> Callable[[str], bool]:
    """A wait_until condition: the guest has printed "file ok <number>" (or later)."""
    return lambda text: any(n >= number for n in file_ok_numbers(text))


def pings_answered(text: str) -> int:
    counts = [int(m.group(1)) for line in console_lines(text) if (m := PINGS.fullmatch(line))]
    return counts[-1] if counts else 0


def failures(text: str) -> list[str]:
    return [line for line in console_lines(text) if "hotswap-linux: FAIL" in line]


def wait_until(
    output: Callable[[], str],
    done: Callable[[str], bool],
    timeout: float,
    what: str,
    gone: Callable[[], str | None] = lambda: None,
) -> str:
    """Poll the console until `done`; fail at once on a FAIL line, or when `gone` says why the machine is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output()
        if (why := gone()) is not None:
            pytest.fail(f"{why} while waiting for {what}; console:\n{output()[-3000:]}")
        if failures(text):
            pytest.fail(f"the guest reported a failure while waiting for {what}:\n{text[-3000:]}")
        if done(text):
            return text
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout:.0f} s; console so far:\n{output()[-3000:]}")


def initramfs_has(initramfs: Path, *names: str) -> bool:
    """Whether the newc archive holds files of these names (each stored NUL-terminated)."""
    archive = gzip.decompress(initramfs.read_bytes())
    return all(f"{name}\0".encode() in archive for name in names)


@pytest.fixture
def virtio_guest(linux_guest: LinuxGuest) -> LinuxGuest:
    if not initramfs_has(linux_guest.initramfs, "etc/hotswap-virtio", "hotswap.load"):
        pytest.skip(f"NO VIRTIO GUEST: {linux_guest.initramfs} predates the virtio test (rebuild it)")
    return linux_guest


def cpio_files(archive: bytes) -> dict[str, bytes]:
    """Regular files of a newc cpio archive by path (headers: "070701" and 13 eight-digit hex fields)."""
    files: dict[str, bytes] = {}
    offset = 0
    while archive.startswith(b"070701", offset):
        fields = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = archive[name_start : name_start + name_size - 1].decode()
        data_start = (name_start + name_size + 3) & ~3
        if name == "TRAILER!!!":
            break
        if mode & 0o170000 == 0o100000:
            files[name] = archive[data_start : data_start + size]
        offset = (data_start + size + 3) & ~3
    return files


def test_initramfs_modules_load_in_dependency_order(virtio_guest: LinuxGuest) -> None:
    """The build's load list (what /init insmods, in order) brings each module after everything it depends on, for
    the kernel it was taken from, and ends with the one that takes the device= entries."""
    sys.path.insert(0, str(REPO / "guest" / "linux"))
    from kernel_modules import dependencies, modinfo, module_name, parameters

    files = cpio_files(gzip.decompress(virtio_guest.initramfs.read_bytes()))
    (load_list,) = [name for name in files if name.endswith("/hotswap.load")]
    module_dir = load_list.rsplit("/", 1)[0]
    release = module_dir.rsplit("/", 1)[1]
    builtin = set(files.get(f"{module_dir}/modules.builtin", b"").decode().split())  # not shipped: none assumed
    loaded: list[str] = []
    devices_to = []
    for line in files[load_list].decode().splitlines():
        path, *mark = line.split()
        info = modinfo(files[f"{module_dir}/{path}"], path)
        assert info["vermagic"][0].split()[0] == release, (path, info["vermagic"])
        missing = [dep for dep in dependencies(info) if dep not in loaded and dep not in builtin]
        assert not missing, f"{path} is loaded before {missing}"
        loaded.append(module_name(path))
        if mark == ["devices"]:
            assert "device" in parameters(info), f"{path} is given device= entries but has no such parameter"
            devices_to.append(module_name(path))
    assert {"virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng"} <= set(loaded), loaded
    assert devices_to == [loaded[-1]], (devices_to, loaded)


@pytest.fixture
def ext4_image(tmp_path: Path) -> Path:
    """An empty 32 MiB ext4 filesystem in a file, made on the host as the guest's /dev/vda."""
    if shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None:
        pytest.skip("NO E2FSPROGS: mkfs.ext4/debugfs missing (apt-get install e2fsprogs)")
    image = tmp_path / "ext4.img"
    with image.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    return image


@dataclass(frozen=True)
class HostNetwork:
    """A tap whose host end has an address, and the address the guest takes on the same /24."""

    tap: str
    host_ip: str
    guest_ip: str


@pytest.fixture
def host_network() -> Iterator[HostNetwork]:
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("NO TUN: /dev/net/tun is missing, cannot create a tap device")
    if ping_command() is None:
        pytest.skip("NO PING: neither ping (iputils-ping) nor busybox is installed")
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    subnet = next(f"10.254.{n}" for n in random.sample(range(256), 256) if f" 10.254.{n}." not in used)
    name = f"hsl{os.getpid() % 100000:05d}{os.urandom(1).hex()}"
    subprocess.run(["ip", "tuntap", "add", "mode", "tap", "name", name], check=True)
    try:
        subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1"], check=False)
        subprocess.run(["ip", "addr", "add", f"{subnet}.1/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield HostNetwork(name, f"{subnet}.1", f"{subnet}.2")
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def ping_command() -> list[str] | None:
    if shutil.which("ping"):
        return ["ping"]
    return ["busybox", "ping"] if shutil.which("busybox") else None


def ping_summary(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line (iputils and busybox word it slightly differently)."""
    match = PING_SUMMARY.search(output)
    assert match, f"no summary in ping's output:\n{output}"
    return int(match.group(1)), int(match.group(2))


def ping(address: str, count: int, deadline: float) -> tuple[int, int]:
    command = ping_command()
    assert command is not None
    argv = [*command, "-c", str(count), "-w", str(int(deadline)), address]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=deadline + 10)
    return ping_summary(result.stdout)


class BackgroundPing:
    """ping every 0.2 s until stop() (SIGINT to its pid, which makes it print its summary)."""

    def __init__(self, address: str) -> None:
        command = ping_command()
        assert command is not None
        self.process = subprocess.Popen(
            [*command, "-i", "0.2", address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def stop(self) -> tuple[int, int]:
        self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=10)
        return ping_summary(output)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def check_image(image: Path, last_ok: int, work: Path) -> None:
    """The filesystem the guest left behind: consistent after its journal is replayed (on a copy), hotswap.txt as
    written, and journal.txt holding every entry the guest announced with a "file ok" line, in order."""
    copy = work / "check.img"
    shutil.copyfile(image, copy)
    fsck = subprocess.run(["e2fsck", "-f", "-p", str(copy)], capture_output=True, text=True)
    # 0: clean; 1: fixed what preen mode may fix (replaying the journal, free counts after an unclean stop).
    assert fsck.returncode in (0, 1), f"e2fsck -fp exited {fsck.returncode}:\n{fsck.stdout}{fsck.stderr}"

    def cat(name: str) -> bytes:
        result = subprocess.run(["debugfs", "-R", f"cat /{name}", str(copy)], capture_output=True, check=True)
        return result.stdout

    assert cat("hotswap.txt") == expected_file()
    entries = cat("journal.txt").decode().splitlines()
    assert entries == [f"entry {i}" for i in range(1, len(entries) + 1)], entries[-5:]
    # Lines may reach the console after the next entry is already synced (and the guest was stopped in between).
    assert last_ok <= len(entries) <= last_ok + 3, (last_ok, len(entries))


def check_virtio_start(text: str) -> None:
    """The lines the guest prints before its loop: modules, rng, network, the file."""
    lines = console_lines(text)
    assert lines.count("hotswap-linux: init started") == 1, text[-3000:]
    loaded = next(line for line in lines if line.startswith("hotswap-linux: modules loaded:")).split(":")[2].split()
    assert {"virtio_mmio", "virtio_blk", "virtio_net", "virtio-rng"} <= set(loaded), loaded
    assert any(re.fullmatch(r"hotswap-linux: rng ok \(virtio_rng\.\d+, 64 bytes\)", line) for line in lines), lines
    assert any(re.fullmatch(r"hotswap-linux: net eth0 \S+ up mac=\S+", line) for line in lines), lines
    written = next(m for line in lines if (m := FILE_WRITTEN.fullmatch(line)))
    content = expected_file()
    assert int(written.group(1)) == len(content)
    assert written.group(2) == hashlib.sha256(content).hexdigest()


# What guest/linux/virtio_mmio_cmdline accepts: <size>@<base>:<irq>[:<id>], the size with an optional K/M/G.
MMIO_DEVICE_ENTRY = re.compile(r"virtio_mmio\.device=(\d+)([KMG]?)@(0x[0-9a-f]+):(\d+)(?::\d+)?")


@pytest.mark.kvm
def test_virtio_devices_reach_the_linux_command_line(
    virtio_guest: LinuxGuest,
    ext4_image: Path,
    host_network: HostNetwork,
    foreground: list[ForegroundVmm],
    run_dir: Path,
) -> None:
    """What this host can check of the hotswap side: with a disk, a tap and an rng, the kernel receives one
    virtio_mmio.device= entry per device, in the form the initramfs's helper module parses, on IRQs the PIC can
    deliver (Debian's kernel reads no MP table, and there are no ACPI tables, so the 8259 is its only irqchip)."""
    devices = ["--disk", str(ext4_image), "--net", f"tap={host_network.tap}", "--rng"]
    vmm = ForegroundVmm(run_dir, "virtio-cmdline").start(
        virtio_guest.vmlinux, virtio_guest.initramfs, f"{SERIAL} {VIRTIO_CMDLINE}", "256M", *devices
    )
    foreground.append(vmm)
    vmm.wait_for("Command line: ", timeout=240)
    line = next(line for line in vmm.output().splitlines() if "Command line: " in line)
    entries = [m.groups() for m in MMIO_DEVICE_ENTRY.finditer(line)]
    assert len(entries) == 3, line
    for index, (size, unit, base, irq) in enumerate(entries):
        assert int(size) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit] <= VIRTIO_MMIO_STRIDE
        assert int(base, 16) == VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_STRIDE
        assert int(irq) == VIRTIO_FIRST_GSI + index < 16, "an IRQ the kernel's PIC cannot deliver"


def qemu_virtio_argv(guest: LinuxGuest, image: Path, net: HostNetwork, console: Path) -> list[str]:
    """QEMU microvm under TCG with virtio-mmio blk/net/rng. QEMU puts its own virtio_mmio.device= entries on the
    command line (acpi=off), as hotswap does; the kernel's PIC routes their IRQs (it reads no MP table)."""
    return [
        "qemu-system-x86_64",
        *("-M", "microvm,acpi=off", "-accel", "tcg", "-m", "256", "-smp", "1"),
        *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", f"file:{console}"),
        *("-kernel", str(guest.bzimage), "-initrd", str(guest.initramfs)),
        *("-append", f"console=ttyS0 {VIRTIO_CMDLINE} hotswap.ip={net.guest_ip}/24"),
        *("-global", "virtio-mmio.force-legacy=false"),
        *("-drive", f"id=disk,file={image},format=raw,if=none", "-device", "virtio-blk-device,drive=disk"),
        *("-netdev", f"tap,id=net,ifname={net.tap},script=no,downscript=no", "-device", "virtio-net-device,netdev=net"),
        *("-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng"),
    ]


@pytest.mark.qemu
def test_virtio_guest_side_under_qemu_tcg(
    virtio_guest: LinuxGuest, ext4_image: Path, host_network: HostNetwork, tmp_path: Path
) -> None:
    """The guest half of the slow-tier virtio test, proven where Linux boots: QEMU's software emulation."""
    console = tmp_path / "qemu.console"
    console.touch()
    argv = qemu_virtio_argv(virtio_guest, ext4_image, host_network, console)
    with (tmp_path / "qemu.stderr").open("wb") as err:
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    started = time.monotonic()
    try:

        def output() -> str:
            return console.read_text(errors="replace")

        def gone() -> str | None:
            if qemu.poll() is None:
                return None
            return f"QEMU exited {qemu.returncode} ({(tmp_path / 'qemu.stderr').read_text()[-2000:]})"

        wait_until(output, lambda t: bool(file_ok_numbers(t)), 180, "first 'file ok' line", gone)
        written_s = time.monotonic() - started
        check_virtio_start(output())
        assert ping(host_network.guest_ip, 3, 30) == (3, 3)
        seen = file_ok_numbers(output())[-1]
        wait_until(output, file_ok_after(seen + 3), 60, "three more 'file ok' lines", gone)
        text = wait_until(output, lambda t: pings_answered(t) >= 3, 30, "the guest counting the pings", gone)
        print(f"\nQEMU/TCG: first 'file ok' {written_s:.1f} s after start, {time.monotonic() - started:.1f} s in all")
    finally:
        qemu.kill()  # by its pid; the guest synced every entry it announced, as it would before a crash
        qemu.wait(timeout=10)
    numbers = file_ok_numbers(text)
    assert numbers == list(range(1, numbers[-1] + 1))
    assert not failures(console.read_text(errors="replace"))
    check_image(ext4_image, numbers[-1], tmp_path)


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.skipif(EMULATED_RING0, reason=NO_LINUX_HERE)
def test_virtio_devices_serve_linux_across_upgrades(
    virtio_guest: LinuxGuest, ext4_image: Path, host_network: HostNetwork, run_dir: Path, tmp_path: Path
) -> None:
    """Linux's own virtio drivers on hotswap's devices keep working while the VMM is replaced: the file reads back
    from the disk after every upgrade, the host's pings keep being answered, and the image holds what was synced."""
    cmdline = f"{SERIAL} {VIRTIO_CMDLINE} hotswap.ip={host_network.guest_ip}/24"
    devices = ["--disk", str(ext4_image), "--net", f"tap={host_network.tap}", "--rng"]
    with GuestVm(run_dir, "linux-virtio") as vm:
        started = time.monotonic()
        vm.start(virtio_guest.vmlinux, cmdline, 1, "256M", "--initrd", str(virtio_guest.initramfs), *devices)

        def gone() -> str | None:
            alive = vm.pid is not None and os.path.exists(f"/proc/{vm.pid}")
            return None if alive else f"the VMM (pid {vm.pid}) is gone ({vm.log()[-1500:]})"

        wait_until(vm.output, lambda t: bool(file_ok_numbers(t)), 600, "first 'file ok' line", gone)
        print(f"\nLinux virtio test: first 'file ok' {time.monotonic() - started:.1f} s after start")
        check_virtio_start(vm.output())
        assert ping(host_network.guest_ip, 3, 30) == (3, 3)
        pids = {vm.pid}
        background = BackgroundPing(host_network.guest_ip)
        try:
            for round_ in range(1, VIRTIO_UPGRADES + 1):
                seen = file_ok_numbers(vm.output())[-1]
                result = vm.upgrade()
                pids.add(result["new_pid"])
                wait_until(vm.output, file_ok_after(seen + 2), 60, f"'file ok' after upgrade {round_}", gone)
                assert ping(host_network.guest_ip, 2, 20) == (2, 2), f"no ping answer after upgrade {round_}"
                last = file_ok_numbers(vm.output())[-1]
                print(f"upgrade {round_}: downtime {result.get('downtime_us')} us, file ok {last}")
            sent, received = background.stop()
        finally:
            background.kill()
        # Every reply the host got was sent by the guest's kernel, and counted there: the 3, 2 per upgrade, the rest.
        replies = 3 + 2 * VIRTIO_UPGRADES + received
        text = wait_until(vm.output, lambda t: pings_answered(t) >= replies, 30, f"the guest counting {replies}", gone)
        answered = pings_answered(text)
        vm.cli("stop", vm.name)
        deadline = time.monotonic() + 10
        while pids_with_tag(vm.tag) and time.monotonic() < deadline:
            time.sleep(0.05)
    text = vm.output()
    print(f"pings across {VIRTIO_UPGRADES} upgrades: {received} of {sent} answered; the guest counted {answered}")
    assert len(pids) == VIRTIO_UPGRADES + 1
    assert received >= sent - VIRTIO_UPGRADES, "more than one ping lost per upgrade"
    assert not failures(text)
    assert console_lines(text).count("hotswap-linux: init started") == 1  # one boot: the guest never restarted
    numbers = file_ok_numbers(text)
    assert numbers == list(range(1, numbers[-1] + 1))
    check_image(ext4_image, numbers[-1], tmp_path)
