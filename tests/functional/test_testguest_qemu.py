"""The test guest (guest/testguest) booted by QEMU microvm through PVH: the boot lines, SMP start-up, the LAPIC
timer, the ring-3 workload and its integrity check, the cmdline keys, the exit and panic paths; and its virtio-mmio
drivers against QEMU's virtio-blk/net/rng devices (the disk journal checked on the image afterwards, frames both
ways through a real tap).

QEMU is the peer the guest must boot on besides hotswap. Every QEMU is started with -no-reboot (the guest's reset
ends it) and killed by its PID in teardown whatever happened. docs/test-guest.md describes the console format.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from framework.guest import Status, line_fields

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "guest" / "build-testguest.sh"
KVM = "/dev/kvm"
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 60.0  # the guest prints its first status line ~0.3 s after QEMU starts; this host is noisy


def _missing_tools() -> str | None:
    if shutil.which(QEMU) is None:
        return f"NO QEMU: {QEMU} is not installed (Debian package qemu-system-x86)"
    if not os.access(KVM, os.R_OK | os.W_OK):
        return f"NO KVM: {KVM} is missing or not usable by uid {os.getuid()}"
    return None


def _skip_without_tools() -> None:
    reason = _missing_tools()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def guest_elf() -> Path:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("NO TOOLCHAIN: gcc and make are needed to build guest/testguest")
    out = subprocess.run([str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=300)
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.is_file(), f"build script printed {path!r}, which is not a file"
    return path


# --- console lines -------------------------------------------------------------------------------------------


# --- QEMU ----------------------------------------------------------------------------------------------------


class QemuGuest:
    """One QEMU microvm running the test guest; its serial console is QEMU's stdout, read by a thread."""

    def __init__(self, kernel: Path, cpus: int, append: str, mem: str, extra: list[str], machine: str) -> None:
        self.argv = [
            QEMU, "-M", machine, "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", mem,
            "-smp", str(cpus), "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel), "-append", append, *extra,
        ]  # fmt: skip
        self.started = time.monotonic()
        # A file, not a pipe: QEMU must never block on it. Closed in kill().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines: list[tuple[float, str]] = []  # (seconds since start, line)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()

    def _read_console(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._changed:
                self.lines.append((time.monotonic() - self.started, line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def text(self) -> list[str]:
        with self._changed:
            return [line for _, line in self.lines]

    def describe(self) -> str:
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace")
        return f"argv: {' '.join(self.argv)}\nconsole:\n" + "\n".join(self.text()) + f"\nstderr:\n{stderr}"

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = BOOT_TIMEOUT) -> tuple[float, str]:
        """The first console line matching `predicate` (and when it arrived); fails on timeout or QEMU exit."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for when, line in self.lines[seen:]:
                    if predicate(line):
                        return when, line
                seen = len(self.lines)
                if not self._reader.is_alive():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        pytest.fail(f"no matching console line within {timeout:.0f} s\n{self.describe()}")

    def wait_status(self, predicate: Callable[[Status], bool], timeout: float = BOOT_TIMEOUT) -> Status:
        _, line = self.wait_line(
            lambda text: text.startswith("hsg: status ") and predicate(Status.from_line(text)), timeout
        )
        return Status.from_line(line)

    def wait_exit(self, timeout: float = BOOT_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"QEMU did not exit within {timeout:.0f} s\n{self.describe()}")
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


Boot = Callable[..., QemuGuest]


@pytest.fixture
def boot(guest_elf: Path) -> Iterator[Boot]:
    """Starts QEMUs with the guest; kills every one of them by PID afterwards."""
    _skip_without_tools()
    started: list[QemuGuest] = []

    def start(
        cpus: int = 1, append: str = "", mem: str = "256M", extra: list[str] | None = None, machine: str = "microvm"
    ) -> QemuGuest:
        guest = QemuGuest(guest_elf, cpus, append, mem, extra or [], machine)
        started.append(guest)
        return guest

    yield start
    for guest in started:
        guest.kill()


def statuses(lines: list[str]) -> list[Status]:
    return [Status.from_line(line) for line in lines if line.startswith("hsg: status ")]


def symbol(elf: Path, name: str) -> int:
    out = subprocess.run(["nm", str(elf)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{elf} has no symbol {name}")


# --- the image -----------------------------------------------------------------------------------------------


def test_build_is_incremental_and_prints_the_path(guest_elf: Path) -> None:
    before = guest_elf.stat().st_mtime_ns
    started = time.monotonic()
    out = subprocess.run([str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(REPO / "guest" / "build" / "testguest.elf")
    assert guest_elf.stat().st_mtime_ns == before, "a rebuild with nothing changed rewrote the image"
    assert time.monotonic() - started < 5


def test_image_is_a_pvh_elf_loaded_at_1mib(guest_elf: Path) -> None:
    data = guest_elf.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not an ELF64"
    (e_machine,) = struct.unpack_from("<H", data, 18)
    assert e_machine == 62, "not x86-64"
    e_phoff, e_phentsize, e_phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    loads, entry = [], None
    for i in range(e_phnum):
        p_type, _, p_offset, _, p_paddr, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize
        )
        if p_type == 1:
            loads.append(p_paddr)
        elif p_type == 4:
            note = data[p_offset : p_offset + p_filesz]
            namesz, descsz, n_type = struct.unpack_from("<III", note)
            name = note[12 : 12 + namesz]
            desc = note[12 + (namesz + 3) // 4 * 4 :][:descsz]
            if n_type == 18 and name == b"Xen\0":
                entry = int.from_bytes(desc, "little")
    assert loads and min(loads) == 0x100000, f"PT_LOAD physical addresses {loads}"
    assert entry == symbol(guest_elf, "pvh_entry"), "XEN_ELFNOTE_PHYS32_ENTRY does not point at pvh_entry"


# --- booting -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.qemu
@pytest.mark.kvm
def test_boots_reports_and_exits(boot: Boot, cpus: int) -> None:
    guest = boot(cpus=cpus, append="exit_after=6")
    assert guest.wait_exit() == 0, guest.describe()
    lines = guest.text()
    first = lines.index(next(line for line in lines if line.startswith("hsg: boot ")))
    boot_line = line_fields(lines[first], 2)
    assert boot_line["cpus"] == str(cpus)
    assert boot_line["ws"] == str(16 << 20)
    assert boot_line["tsc_source"] == "pit", "QEMU publishes no TSC leaf: the PIT must have been used"
    assert 100_000 < int(boot_line["tsc_khz"]) < 10_000_000
    assert boot_line["uart"] == "port" and boot_line["timer_hz"] == "10"
    assert boot_line["cpu_source"] == "madt", "microvm has no MP table: CPUs come from the ACPI MADT"
    cpu_lines = lines[first + 1 : first + 1 + cpus]
    assert [line.split()[2] for line in cpu_lines] == [str(i) for i in range(cpus)]
    assert all(line.startswith("hsg: cpu ") and line.endswith(" online") for line in cpu_lines)
    assert len({line_fields(line, 3)["apic"] for line in cpu_lines}) == cpus, "APIC ids must differ"
    assert lines[first + 1 + cpus] == "hsg: ready"

    seen = statuses(lines)
    assert [s.seq for s in seen] == [1, 2, 3, 4, 5, 6]
    assert all(s.cpus == cpus and s.integrity == "ok" for s in seen)
    for earlier, later in itertools.pairwise(seen):
        assert later.steps > earlier.steps and later.uptime_us > earlier.uptime_us
        assert later.ticks >= earlier.ticks and later.passes >= earlier.passes
        assert later.maxgap_us >= earlier.maxgap_us >= earlier.gap_us
    assert seen[-1].ticks >= 3 * cpus, "the LAPIC timer (10 Hz per CPU) barely ticked in 0.6 s"
    assert seen[-1].passes >= 1, "no CPU completed a generation: nothing was verified"
    assert lines[-1] == "hsg: exit"
    assert lines.index("hsg: exit") == len(lines) - 1


@pytest.mark.qemu
@pytest.mark.kvm
def test_status_lines_keep_their_period(boot: Boot) -> None:
    guest = boot(append="exit_after=8 status_ms=50 timer_hz=100")
    assert guest.wait_exit() == 0, guest.describe()
    seen = statuses(guest.text())
    intervals = [b.uptime_us - a.uptime_us for a, b in itertools.pairwise(seen)]
    # Never back to back; on average near the period (a line takes ~10 ms to print through emulated port I/O
    # and this shared host adds stalls of its own).
    assert min(intervals) >= 40_000, intervals
    assert sum(intervals) / len(intervals) <= 150_000, intervals
    ticks_per_second = (seen[-1].ticks - seen[0].ticks) / ((seen[-1].uptime_us - seen[0].uptime_us) / 1e6)
    assert 50 <= ticks_per_second <= 150, f"timer_hz=100 gave {ticks_per_second:.0f} ticks/s"


@pytest.mark.qemu
@pytest.mark.kvm
def test_cmdline_keys_override_and_unknown_ones_are_ignored(boot: Boot) -> None:
    append = (
        "console=ttyS0 virtio_mmio.device=4K@0xd0001000:5 cpus=1 ws=8M tsc_khz=2000000 timer_hz=0 "
        "uart=port status_ms=20 exit_after=4 foo bar=baz ws=bogus"
    )
    guest = boot(cpus=2, append=append)
    assert guest.wait_exit() == 0, guest.describe()
    lines = guest.text()
    assert "hsg: warning bad value for ws=, using the default" in lines
    boot_line = line_fields(next(line for line in lines if line.startswith("hsg: boot ")), 2)
    assert boot_line == {
        "cpus": "1",
        "ws": str(16 << 20),  # the last ws= wins and is bad: the default stays
        "tsc_khz": "2000000",
        "tsc_source": "cmdline",
        "uart": "port",
        "timer_hz": "0",
        "cpu_source": "cmdline",
    }
    seen = statuses(lines)
    assert len(seen) == 4 and all(s.cpus == 1 and s.ticks == 0 for s in seen)


@pytest.mark.qemu
@pytest.mark.kvm
def test_a_cpu_that_does_not_start_is_an_error(boot: Boot) -> None:
    # cpus=2 on a 1-vCPU machine: the guest assumes APIC id 1, which answers no SIPI
    guest = boot(cpus=1, append="cpus=2")
    assert guest.wait_exit() == 0, guest.describe()
    lines = guest.text()
    assert "hsg: error cpu 1 apic=1 did not start" in lines, guest.describe()
    assert not statuses(lines)


@pytest.mark.qemu
@pytest.mark.kvm
def test_working_set_too_big_for_ram_resets(boot: Boot) -> None:
    guest = boot(append="ws=1G", mem="256M")
    assert guest.wait_exit() == 0, guest.describe()
    lines = guest.text()
    error = next((line for line in lines if line.startswith("hsg: error ws=")), None)
    assert error is not None, guest.describe()
    assert error.startswith(f"hsg: error ws={1 << 30} does not fit: usable=")
    assert 200 << 20 < int(line_fields(error, 2)["usable"]) < 256 << 20
    assert not statuses(lines) and "hsg: ready" not in lines


@pytest.mark.qemu
@pytest.mark.kvm
def test_large_working_set_on_two_cpus(boot: Boot) -> None:
    guest = boot(cpus=2, append="ws=400M status_ms=200", mem="512M")
    last = guest.wait_status(lambda s: s.passes >= 2, timeout=120)
    assert last.integrity == "ok" and last.cpus == 2
    assert last.steps >= 2 * (400 << 20) // 4096


# --- what the guest must notice ------------------------------------------------------------------------------


class GdbStub:
    """Just enough of the GDB remote protocol to poke guest memory through QEMU's gdbstub (which pauses the VM
    while a debugger is attached): a stand-in for a VMM that corrupts guest RAM."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buffer = b""

    def _packet(self) -> str:
        while True:
            start = self.buffer.find(b"$")
            end = self.buffer.find(b"#", start + 1) if start >= 0 else -1
            if end >= 0 and len(self.buffer) >= end + 3:
                reply = self.buffer[start + 1 : end].decode()
                self.buffer = self.buffer[end + 3 :]
                self.sock.sendall(b"+")
                return reply
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("gdbstub closed the connection")
            self.buffer += chunk

    def command(self, payload: str) -> str:
        checksum = sum(payload.encode()) % 256
        self.sock.sendall(f"${payload}#{checksum:02x}".encode())
        while True:
            reply = self._packet()
            if not reply.startswith(("T", "S")):  # QEMU announces the stop caused by attaching, unasked
                return reply

    def write_memory(self, address: int, data: bytes) -> None:
        assert self.command(f"M{address:x},{len(data):x}:{data.hex()}") == "OK"

    def detach(self) -> None:
        self.command("D")
        self.sock.close()


@pytest.fixture
def gdb_socket(tmp_path: Path) -> Path:
    return tmp_path / "gdb.sock"


def gdb_args(path: Path) -> list[str]:
    return ["-chardev", f"socket,id=gdb0,path={path},server=on,wait=off", "-gdb", "chardev:gdb0"]


@pytest.mark.qemu
@pytest.mark.kvm
def test_corrupted_working_set_is_reported(boot: Boot, guest_elf: Path, gdb_socket: Path) -> None:
    guest = boot(append="ws=4M status_ms=50", extra=gdb_args(gdb_socket))
    guest.wait_status(lambda s: s.passes >= 1)
    # The working set starts at the first page after the image; corrupt one word of its 3rd page.
    target = (symbol(guest_elf, "_end") + 0xFFF) // 0x1000 * 0x1000 + 2 * 0x1000 + 0x18
    stub = GdbStub(gdb_socket)
    stub.write_memory(target, (0x0BADC0DE0BADC0DE).to_bytes(8, "little"))
    stub.detach()
    _, failure = guest.wait_line(lambda line: line.startswith("hsg: integrity FAIL "))
    f = line_fields(failure, 3)
    assert f["cpu"] == "0" and int(f["addr"], 16) == target and f["got"] == "0xbadc0de0badc0de", failure
    assert f["expected"] != f["got"]
    later = guest.wait_status(lambda s: s.integrity == "FAIL")
    after = guest.wait_status(lambda s: s.seq > later.seq)
    assert after.integrity == "FAIL", "integrity=FAIL must stick"
    assert sum(line.startswith("hsg: integrity FAIL ") for line in guest.text()) == 1


@pytest.mark.qemu
@pytest.mark.kvm
def test_unexpected_exception_panics_and_resets(boot: Boot, guest_elf: Path, gdb_socket: Path) -> None:
    guest = boot(append="status_ms=50", extra=gdb_args(gdb_socket))
    guest.wait_status(lambda s: s.seq >= 1)
    step = symbol(guest_elf, "workload_step")
    stub = GdbStub(gdb_socket)
    stub.write_memory(step, b"\xf4")  # hlt: a #GP in ring 3 that is not port I/O
    stub.detach()
    assert guest.wait_exit() == 0, guest.describe()
    panic = next((line for line in guest.text() if line.startswith("hsg: panic ")), None)
    assert panic is not None, guest.describe()
    assert panic.startswith(f"hsg: panic #GP rip={step:#x} "), panic


# --- virtio-mmio drivers -------------------------------------------------------------------------------------

# QEMU's virtio-mmio transports are legacy (version 1) unless told otherwise; the guest drives version 2 only.
MODERN = ["-global", "virtio-mmio.force-legacy=false"]
# QEMU 7.2 microvm appends virtio_mmio.device= entries to the cmdline only when ACPI is off; the guest then has
# neither an MP table nor a MADT and uses the bootstrap CPU alone unless cpus= says more.
NO_ACPI = "microvm,acpi=off"
MICROVM_VIRTIO_BASE = 0xFEB0_0000  # transport i at base + i * 0x200; devices fill them from the last one down
MICROVM_VIRTIO_STRIDE = 0x200
RNG = ["-device", "virtio-rng-device"]
F_FLUSH, F_MAC, F_EVENT_IDX, F_VERSION_1 = 9, 5, 29, 32
ETH_P_HSG = 0x88B5
EXISTING_KEYS = ["seq", "cpus", "steps", "passes", "ticks", "integrity", "gap_us", "maxgap_us", "uptime_us"]
DEVICE_KEYS = {
    "blk": ["blk_acked", "blk_read", "blk_bad"],
    "net": ["net_tx", "net_rx", "net_rx_last"],
    "rng": ["rng_bytes"],
}


def _load_checker() -> ModuleType:
    path = REPO / "guest" / "testguest" / "tools" / "check_disk.py"
    spec = importlib.util.spec_from_file_location("hsg_check_disk", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


disk_checker = _load_checker()


def check_disk(image: Path, acked_seq: int, blocks: int) -> list[str]:
    problems: list[str] = disk_checker.check_disk(image, acked_seq, blocks)
    return problems


def virtio_lines(lines: list[str]) -> list[dict[str, str]]:
    return [line_fields(line, 2) for line in lines if line.startswith("hsg: virtio ")]


def device_line(guest: QemuGuest, driver: str) -> dict[str, str]:
    found = [d for d in virtio_lines(guest.text()) if d.get("driver") == driver]
    assert len(found) == 1, guest.describe()
    return found[0]


def counters(line: str) -> dict[str, int]:
    """A status line's numeric keys, in order."""
    return {key: int(value) for key, value in line_fields(line, 2).items() if key != "integrity"}


def status_counters(guest: QemuGuest) -> list[dict[str, int]]:
    return [counters(line) for line in guest.text() if line.startswith("hsg: status ")]


def wait_counters(guest: QemuGuest, predicate: Callable[[dict[str, int]], bool], timeout: float = 60) -> dict[str, int]:
    _, line = guest.wait_line(lambda text: text.startswith("hsg: status ") and predicate(counters(text)), timeout)
    return counters(line)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as image:
        image.truncate(8 << 20)
    return path


def blk_args(image: Path) -> list[str]:
    return ["-drive", f"id=disk0,file={image},format=raw,if=none", "-device", "virtio-blk-device,drive=disk0"]


@pytest.mark.qemu
@pytest.mark.kvm
def test_virtio_devices_come_from_the_qemu_cmdline(boot: Boot, disk: Path) -> None:
    net = ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]
    guest = boot(
        cpus=2, append="cpus=2 exit_after=8 microbench=1", machine=NO_ACPI, extra=[*MODERN, *RNG, *blk_args(disk), *net]
    )
    assert guest.wait_exit() == 0, guest.describe()
    lines = guest.text()
    devices = virtio_lines(lines)
    assert sorted(d["driver"] for d in devices) == ["blk", "net", "rng"], guest.describe()
    # -device order: the first one sits in the highest of microvm's 8 transports
    expected = {"rng": (7, 4), "blk": (6, 2), "net": (5, 1)}
    for d in devices:
        slot, device_id = expected[d["driver"]]
        assert int(d["addr"], 16) == MICROVM_VIRTIO_BASE + slot * MICROVM_VIRTIO_STRIDE, d
        assert (d["size"], d["irq"], d["version"], d["id"]) == ("512", str(5 + slot), "2", str(device_id)), d
        features = int(d["features"], 16)
        assert features & (1 << F_VERSION_1) and features & (1 << F_EVENT_IDX), d
    blk, net_line = device_line(guest, "blk"), device_line(guest, "net")
    assert int(blk["features"], 16) & (1 << F_FLUSH) and blk["flush"] == "1"
    assert blk["blocks"] == str((8 << 20) // 4096) and blk["batch"] == "8"
    assert net_line["mac"] == "52:54:00:12:34:56" and net_line["mac_from_device"] == "1"  # QEMU's default MAC
    assert int(net_line["features"], 16) & (1 << F_MAC)
    assert lines.index("hsg: ready") > max(i for i, line in enumerate(lines) if line.startswith("hsg: virtio "))
    bench = {
        k: int(v) for line in lines if line.startswith("hsg: microbench ") for k, v in [line.split()[2].split("=")]
    }
    assert bench["virtio_notify_ns"] > 0 and bench["virtio_reg_read_ns"] > 0, bench

    seen = statuses(lines)
    assert len(seen) == 8 and all(s.integrity == "ok" and s.cpus == 2 for s in seen), guest.describe()
    keys = [list(counters(line)) for line in lines if line.startswith("hsg: status ")]
    device_keys = DEVICE_KEYS["blk"] + DEVICE_KEYS["net"] + DEVICE_KEYS["rng"]
    assert all(k == [key for key in EXISTING_KEYS if key != "integrity"] + device_keys for k in keys), keys[0]


@pytest.mark.qemu
@pytest.mark.kvm
def test_blk_acknowledged_writes_are_on_the_image(boot: Boot, disk: Path) -> None:
    guest = boot(append="exit_after=30", machine=NO_ACPI, extra=[*MODERN, *blk_args(disk)])
    assert guest.wait_exit() == 0, guest.describe()
    blocks = int(device_line(guest, "blk")["blocks"])
    seen = status_counters(guest)
    assert len(seen) == 30
    assert all(s["blk_bad"] == 0 for s in seen), guest.describe()
    acked = [s["blk_acked"] for s in seen]
    assert acked == sorted(acked) and acked[-1] > acked[0], acked
    # blk_rate=200 by default; this host stalls at times, so only ask for a fraction of it
    assert acked[-1] >= 100 and seen[-1]["blk_read"] >= 20, seen[-1]
    assert check_disk(disk, acked[-1], blocks) == []

    # The checker notices a lost acknowledged write, and a damaged one.
    assert check_disk(disk, acked[-1] + 64, blocks), "64 writes that never happened were not missed"
    with open(disk, "r+b") as image:
        os.pwrite(image.fileno(), b"\xff", 3 * 4096 + 1000)
    problems = check_disk(disk, acked[-1], blocks)
    assert len(problems) == 1 and problems[0].startswith("block 3: CRC"), problems


@pytest.mark.qemu
@pytest.mark.kvm
def test_blk_journal_wraps_inside_blk_blocks(boot: Boot, disk: Path) -> None:
    guest = boot(append="exit_after=20 blk_blocks=64 blk_rate=0", machine=NO_ACPI, extra=[*MODERN, *blk_args(disk)])
    assert guest.wait_exit() == 0, guest.describe()
    assert device_line(guest, "blk")["blocks"] == "64"
    last = status_counters(guest)[-1]
    assert last["blk_acked"] > 3 * 64 and last["blk_bad"] == 0, last
    assert check_disk(disk, last["blk_acked"], 64) == []
    data = disk.read_bytes()
    assert data[64 * 4096 :] == bytes(len(data) - 64 * 4096), "the journal wrote past blk_blocks"


@pytest.mark.qemu
@pytest.mark.kvm
def test_blk_read_back_catches_a_damaged_block(boot: Boot, disk: Path) -> None:
    guest = boot(append="status_ms=50", machine=NO_ACPI, extra=[*MODERN, *blk_args(disk)])
    # Reads walk the acknowledged blocks from 0 at about half the write rate: damage one the walk has yet to reach
    # and the writes will not touch again before the ring wraps (2048 blocks at 200/s: ~10 s).
    now = wait_counters(guest, lambda s: s["blk_acked"] - s["blk_read"] >= 100)
    target = (now["blk_acked"] + now["blk_read"]) // 2
    with open(disk, "r+b") as image:
        os.pwrite(image.fileno(), b"\x00" * 16, target * 4096 + 2000)
    _, failure = guest.wait_line(lambda line: line.startswith("hsg: blk FAIL "))
    f = line_fields(failure, 3)
    assert f == {
        "block": str(target),
        "expected_seq": str(target + 1),
        "got_block": str(target),
        "got_seq": str(target + 1),
        "what": "crc",
    }
    later = wait_counters(guest, lambda s: s["blk_bad"] >= 1)
    after = wait_counters(guest, lambda s: s["seq"] >= later["seq"] + 5)
    assert after["blk_bad"] == 1 and after["blk_acked"] > later["blk_acked"], after


@pytest.mark.qemu
@pytest.mark.kvm
def test_rng_bytes_rise(boot: Boot) -> None:
    guest = boot(append="exit_after=10", machine=NO_ACPI, extra=[*MODERN, *RNG])
    assert guest.wait_exit() == 0, guest.describe()
    rng = [s["rng_bytes"] for s in status_counters(guest)]
    assert rng == sorted(rng) and rng[-1] >= 5 * 64, rng
    assert all(k not in status_counters(guest)[-1] for k in DEVICE_KEYS["blk"] + DEVICE_KEYS["net"])
    assert not any(line.startswith("hsg: warning rng") for line in guest.text())


@pytest.mark.qemu
@pytest.mark.kvm
def test_virtio_needs_reset_is_reported(boot: Boot, guest_elf: Path, gdb_socket: Path) -> None:
    guest = boot(append="status_ms=50", machine=NO_ACPI, extra=[*MODERN, *RNG, *gdb_args(gdb_socket)])
    wait_counters(guest, lambda s: s["rng_bytes"] > 0)
    # A chain pointing past the queue is a driver error: QEMU marks the device broken and sets DEVICE_NEEDS_RESET.
    stub = GdbStub(gdb_socket)
    stub.write_memory(symbol(guest_elf, "rng_vq") + 12, struct.pack("<HH", 1, 200))  # desc[0]: NEXT, next=200
    stub.detach()
    addr = device_line(guest, "rng")["addr"]
    error = f"hsg: error virtio addr={addr} driver=rng: device needs reset"
    guest.wait_line(lambda line: line == error)
    before = status_counters(guest)[-1]  # printed right after the error line (the same status tick)
    stopped = wait_counters(guest, lambda s: s["seq"] > before["seq"])
    later = wait_counters(guest, lambda s: s["seq"] >= stopped["seq"] + 5)
    assert later["rng_bytes"] == stopped["rng_bytes"] and later["steps"] > stopped["steps"], later
    assert guest.text().count(error) == 1


@pytest.mark.qemu
@pytest.mark.kvm
def test_legacy_transports_are_not_driven(boot: Boot, disk: Path) -> None:
    guest = boot(append="exit_after=3", machine=NO_ACPI, extra=[*RNG, *blk_args(disk)])
    assert guest.wait_exit() == 0, guest.describe()
    devices = virtio_lines(guest.text())
    assert len(devices) == 2 and all(d["version"] == "1" and d["driver"] == "none" for d in devices), devices
    errors = [line for line in guest.text() if line.startswith("hsg: error virtio ")]
    assert len(errors) == 2 and all(line.endswith("legacy (version 1) device, not driven") for line in errors)
    assert list(status_counters(guest)[-1]) == [key for key in EXISTING_KEYS if key != "integrity"]
    assert disk.read_bytes() == bytes(8 << 20)


@pytest.mark.qemu
@pytest.mark.kvm
def test_acpi_microvm_entries_given_by_hand(boot: Boot) -> None:
    # With ACPI (the default) microvm has 24 transports and adds no cmdline entries: the first -device sits in
    # the last transport. Also: an empty transport, an address with no transport, an entry that does not parse.
    last = MICROVM_VIRTIO_BASE + 23 * MICROVM_VIRTIO_STRIDE
    entries = f"virtio_mmio.device=512@{last:#x}:0 virtio_mmio.device=0x200@{MICROVM_VIRTIO_BASE:#x}:1:7 "
    entries += "virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=oops"
    guest = boot(append=f"exit_after=4 {entries}", extra=[*MODERN, *RNG])
    assert guest.wait_exit() == 0, guest.describe()
    lines = guest.text()
    assert lines.count("hsg: warning bad virtio_mmio.device= entry, ignored") == 1
    devices = virtio_lines(lines)
    assert [(d["addr"], d["size"], d["irq"], d["version"], d["id"], d["driver"]) for d in devices] == [
        (f"{last:#x}", "512", "0", "2", "4", "rng"),
        (f"{MICROVM_VIRTIO_BASE:#x}", "512", "1", "2", "0", "none"),  # an empty transport: DeviceID 0
        ("0xd0001000", "4096", "5", "0", "0", "none"),  # nothing there: no "virt"
    ], guest.describe()
    assert status_counters(guest)[-1]["rng_bytes"] > 0

    plain = boot(append="exit_after=2", extra=[*MODERN, *RNG])
    assert plain.wait_exit() == 0, plain.describe()
    assert not virtio_lines(plain.text()), "QEMU with ACPI was expected to add no virtio_mmio.device= entries"


@pytest.mark.qemu
@pytest.mark.kvm
def test_drivers_can_be_turned_off(boot: Boot, disk: Path) -> None:
    net = ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]
    guest = boot(append="exit_after=3 blk=0 net=0 rng=0", machine=NO_ACPI, extra=[*MODERN, *RNG, *blk_args(disk), *net])
    assert guest.wait_exit() == 0, guest.describe()
    assert sorted(d["id"] for d in virtio_lines(guest.text()) if d["driver"] == "off") == ["1", "2", "4"]
    assert list(status_counters(guest)[-1]) == [key for key in EXISTING_KEYS if key != "integrity"]
    assert disk.read_bytes() == bytes(8 << 20)


# --- virtio-net through a real tap ---------------------------------------------------------------------------


class TapSocket:
    """A raw AF_PACKET socket on the tap for ethertype 0x88B5; a thread keeps the guest's "HSG1" frames."""

    def __init__(self, name: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_HSG))
        self.sock.bind((name, ETH_P_HSG))
        self.sock.settimeout(0.2)
        self.name = name
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if address[2] != socket.PACKET_OUTGOING and frame[14:18] == b"HSG1":
                self.frames.append(frame)

    def send(self, dst: bytes, counter: int) -> None:
        src = bytes.fromhex("02000000fe01")
        frame = dst + src + ETH_P_HSG.to_bytes(2, "big") + b"HST1" + counter.to_bytes(8, "little")
        self.sock.send(frame.ljust(60, b"\0"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def tap_args(name: str) -> list[str]:
    return [
        "-netdev", f"tap,id=net0,ifname={name},script=no,downscript=no", "-device", "virtio-net-device,netdev=net0",
    ]  # fmt: skip


@pytest.mark.qemu
@pytest.mark.kvm
def test_net_frames_both_ways_through_a_tap(boot: Boot, tap: str) -> None:
    host = TapSocket(tap)
    try:
        guest = boot(append="status_ms=50", machine=NO_ACPI, extra=[*MODERN, *tap_args(tap)])
        guest.wait_line(lambda line: line == "hsg: ready")
        mac = bytes.fromhex(device_line(guest, "net")["mac"].replace(":", ""))
        sent = 300  # more than the 64 receive buffers: the guest must repost them
        for counter in range(1, sent + 1):
            host.send(mac, counter)
        now = wait_counters(guest, lambda s: s["net_rx"] >= sent and s["net_tx"] >= 10, timeout=60)
        assert now["net_rx"] == sent and now["net_rx_last"] == sent, now
        later = wait_counters(guest, lambda s: s["seq"] >= now["seq"] + 5)
        assert later["net_rx"] == sent, "frames counted that were never sent"

        # Every frame the guest counted as sent has reached the host by now, in order, from its MAC, broadcast.
        deadline = time.monotonic() + 10
        while len(host.frames) < later["net_tx"] and time.monotonic() < deadline:
            time.sleep(0.05)
        frames = list(host.frames)
        assert len(frames) >= later["net_tx"] > 0, (len(frames), later)
        assert [int.from_bytes(f[18:26], "little") for f in frames] == list(range(1, len(frames) + 1))
        assert all(f[:6] == b"\xff" * 6 and f[6:12] == mac and len(f) == 60 for f in frames)
    finally:
        host.close()
