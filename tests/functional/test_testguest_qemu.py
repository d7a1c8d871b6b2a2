"""The test guest (guest/testguest) booted by QEMU microvm through PVH: the boot lines, SMP start-up, the LAPIC
timer, the ring-3 workload and its integrity check, the cmdline keys, the exit and panic paths.

QEMU is the peer the guest must boot on besides hotswap. Every QEMU is started with -no-reboot (the guest's reset
ends it) and killed by its PID in teardown whatever happened. docs/test-guest.md describes the console format.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def fields(line: str, skip: int) -> dict[str, str]:
    """The key=value tokens of a console line after its first `skip` words."""
    return dict(token.split("=", 1) for token in line.split()[skip:] if "=" in token)


@dataclass(frozen=True)
class Status:
    seq: int
    cpus: int
    steps: int
    passes: int
    ticks: int
    integrity: str
    gap_us: int
    maxgap_us: int
    uptime_us: int

    @classmethod
    def parse(cls, line: str) -> Status:
        f = fields(line, 2)
        return cls(
            seq=int(f["seq"]),
            cpus=int(f["cpus"]),
            steps=int(f["steps"]),
            passes=int(f["passes"]),
            ticks=int(f["ticks"]),
            integrity=f["integrity"],
            gap_us=int(f["gap_us"]),
            maxgap_us=int(f["maxgap_us"]),
            uptime_us=int(f["uptime_us"]),
        )


# --- QEMU ----------------------------------------------------------------------------------------------------


class QemuGuest:
    """One QEMU microvm running the test guest; its serial console is QEMU's stdout, read by a thread."""

    def __init__(self, kernel: Path, cpus: int, append: str, mem: str, extra: list[str]) -> None:
        self.argv = [
            QEMU, "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", mem,
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
            lambda text: text.startswith("hsg: status ") and predicate(Status.parse(text)), timeout
        )
        return Status.parse(line)

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

    def start(cpus: int = 1, append: str = "", mem: str = "256M", extra: list[str] | None = None) -> QemuGuest:
        guest = QemuGuest(guest_elf, cpus, append, mem, extra or [])
        started.append(guest)
        return guest

    yield start
    for guest in started:
        guest.kill()


def statuses(lines: list[str]) -> list[Status]:
    return [Status.parse(line) for line in lines if line.startswith("hsg: status ")]


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
    boot_line = fields(lines[first], 2)
    assert boot_line["cpus"] == str(cpus)
    assert boot_line["ws"] == str(16 << 20)
    assert boot_line["tsc_source"] == "pit", "QEMU publishes no TSC leaf: the PIT must have been used"
    assert 100_000 < int(boot_line["tsc_khz"]) < 10_000_000
    assert boot_line["uart"] == "port" and boot_line["timer_hz"] == "10"
    assert boot_line["cpu_source"] == "madt", "microvm has no MP table: CPUs come from the ACPI MADT"
    cpu_lines = lines[first + 1 : first + 1 + cpus]
    assert [line.split()[2] for line in cpu_lines] == [str(i) for i in range(cpus)]
    assert all(line.startswith("hsg: cpu ") and line.endswith(" online") for line in cpu_lines)
    assert len({fields(line, 3)["apic"] for line in cpu_lines}) == cpus, "APIC ids must differ"
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
    boot_line = fields(next(line for line in lines if line.startswith("hsg: boot ")), 2)
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
    assert 200 << 20 < int(fields(error, 2)["usable"]) < 256 << 20
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
    f = fields(failure, 3)
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
