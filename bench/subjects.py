"""The VMs a benchmark measures, behind one small interface: boot the test guest, hand it on (hotswap: a live
upgrade; QEMU: a same-host migration to a new QEMU process), pause and resume it (so that only one guest runs at a
time while the others wait their turn), and close (every process killed by pid).

Each operation returns an `Operation`: the status lines that framed it, the VMM's own figures, and when the pause
began on CLOCK_MONOTONIC (to find the status lines that carry it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from framework.procs import kill_pids

from bench.console import ConsoleTap, connect_console
from bench.gaps import OFFSET_LINES, Window, operation_window, realtime_to_monotonic_ns
from bench.guest import boot_tsc_khz
from bench.hotswap_vm import HotswapVm
from bench.placement import Placement, cpu_list
from bench.qemu import Fleet, QemuSpec, QemuVm, migrate, start_destination
from bench.qmp import QmpError
from bench.report import BenchError

BOOT_TIMEOUT = 120.0  # a 400 MB working set's first pass is slow here
LINE_TIMEOUT = 60.0
# Status lines let by after a resume before measuring: the wait shows as a gap in one of the first, and the guest
# clock check needs OFFSET_LINES quiet lines before an operation.
SETTLE_AFTER_RESUME = OFFSET_LINES + 2


@dataclass
class Operation:
    """One upgrade or migration, successful or not."""

    ok: bool
    window: Window
    command_s: float  # wall time: the CLI command (hotswap); destination start to running guest (QEMU)
    downtime_ms: float | None  # hotswap's downtime_us; QEMU's own `downtime` field
    stop_to_resume_ms: float | None  # QEMU: source STOP event -> destination RESUME event (hotswap: None)
    total_time_ms: float | None  # QEMU's `total-time` (hotswap: None)
    copied_bytes: int | None  # hotswap: guest_memory_copied_bytes; QEMU: ram transferred
    pause_start_ns: int | None  # CLOCK_MONOTONIC when the guest's vCPUs stopped
    phases_us: dict[str, int] = field(default_factory=dict)
    error: str = ""
    baseline: Window | None = None  # the quiet lines measured after it (set by the benchmark)
    quiet_since: int = 0  # nothing but the guest's work happened after this status line up to the operation


class Subject(Protocol):
    name: str
    tap: ConsoleTap

    def boot(self) -> None: ...

    def operate(self) -> Operation: ...

    def pause(self) -> None: ...

    def resume(self) -> int:
        """Run again; returns the status line after which the guest has been running undisturbed."""
        ...

    def close(self) -> None: ...


def wait_for_boot(tap: ConsoleTap) -> int:
    """Wait for the guest's boot line and its first status lines; returns the TSC rate it reported (kHz)."""
    tsc_khz = boot_tsc_khz(tap.wait_line("hsg: boot ", BOOT_TIMEOUT)[1])
    tap.wait_statuses(0, SETTLE_AFTER_RESUME, BOOT_TIMEOUT)
    return tsc_khz


def failed_operation(tap: ConsoleTap, before: int, started: float, exc: BenchError) -> Operation:
    """An operation that failed: its window so far and why."""
    window = operation_window(before, tap.last_seq())
    return Operation(False, window, time.monotonic() - started, None, None, None, None, None, error=str(exc))


RESUME_LINES = 2  # a wait shows in one of the first two status lines after it (one may have been mid-print)


def settle(tap: ConsoleTap, lines: int = SETTLE_AFTER_RESUME) -> int:
    """Let `lines` status lines by after a resume; returns the last line that can still show the wait."""
    resumed_at = tap.last_seq()
    tap.wait_statuses(resumed_at, lines, LINE_TIMEOUT)
    return resumed_at + RESUME_LINES


# -- hotswap -----------------------------------------------------------------------------------------------------
class HotswapSubject:
    def __init__(
        self,
        run_dir: Path,
        name: str,
        kernel: Path,
        cmdline: str,
        cpus: int,
        mem_mib: int,
        placement: Placement | None = None,
    ) -> None:
        self.name = "hotswap"
        self.placement = placement
        self.vm = HotswapVm(run_dir, name)
        self.tap = ConsoleTap()
        self._boot_args = (kernel, cmdline, cpus, f"{mem_mib}M")
        self.tsc_khz = 0

    def boot(self) -> None:
        kernel, cmdline, cpus, mem = self._boot_args
        self.vm.start(kernel, cmdline, cpus, mem, self.placement)
        # A new console client is sent the recent output first, so the boot line is not missed.
        self.tap.attach_socket(self.vm.open_console(), self.vm.name)
        self.tsc_khz = wait_for_boot(self.tap)

    def operate(self) -> Operation:
        before = self.tap.last_seq()
        started = time.monotonic()
        try:
            upgrade = self.vm.upgrade()
        except BenchError as exc:
            return failed_operation(self.tap, before, started, exc)
        window = operation_window(before, self.tap.last_seq())
        resumed = self.vm.resumed_ns(upgrade.generation)
        pause_start = None
        if resumed is not None:
            pause_start = realtime_to_monotonic_ns(resumed) - upgrade.downtime_us * 1000
        return Operation(
            ok=True,
            window=window,
            command_s=upgrade.command_s,
            downtime_ms=upgrade.downtime_us / 1000,
            stop_to_resume_ms=None,
            total_time_ms=None,
            copied_bytes=upgrade.copied_bytes,
            pause_start_ns=pause_start,
            phases_us={k: int(v) for k, v in upgrade.result.get("phases_us", {}).items()},
        )

    def pause(self) -> None:
        self.vm.pause()

    def resume(self) -> int:
        self.vm.resume()
        return settle(self.tap)

    def close(self) -> None:
        try:
            self.tap.close()
        finally:
            self.vm.kill()


# -- the floor: hotswap's machine code in one process (bench/floor_vmm.py) ---------------------------------------
FLOOR_OPERATIONS = {
    "move": "floor: in-process move",
    "move-bare": "floor: in-process move, ioctls only",
    "pause-resume": "floor: pause+resume",
}


class FloorSubject:
    """The test guest in a `bench.floor_vmm` process; each operation is its `move` or its `pause-resume`."""

    def __init__(
        self,
        run_dir: Path,
        kernel: Path,
        cmdline: str,
        cpus: int,
        mem_mib: int,
        operation: str,
        placement: Placement | None = None,
    ) -> None:
        self.name = FLOOR_OPERATIONS[operation]
        self.operation = operation
        self.tap = ConsoleTap()
        self.tsc_khz = 0
        self._socket = run_dir / f"floor-{operation}.console"
        self._log = run_dir / f"floor-{operation}.log"
        self._argv = [
            sys.executable, "-m", "bench.floor_vmm", "--kernel", str(kernel), "--cmdline", cmdline,
            "--cpus", str(cpus), "--mem-mib", str(mem_mib), "--console-socket", str(self._socket),
            "--console-log", str(run_dir / f"floor-{operation}.console.log"),
        ]  # fmt: skip
        if placement is not None:
            self._argv += ["--vcpu-cpus", cpu_list(placement.vcpu_cpus), "--vmm-cpus", cpu_list(placement.vmm_cpus)]
        self.process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def _ask(self, command: str) -> dict[str, Any]:
        process = self.process
        if process is None or process.stdin is None or process.stdout is None:
            raise BenchError(f"{self.name}: not booted")
        try:
            process.stdin.write(command + "\n")
            process.stdin.flush()
        except OSError as exc:
            raise BenchError(f"{self.name}: {command}: the VMM is gone ({exc}); {self._stderr_tail()}") from exc
        return self._answer(command)

    def _answer(self, command: str) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise BenchError(f"{self.name}: {command}: no answer, the VMM ended; {self._stderr_tail()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"{self.name}: {answer['error']}")
        return answer

    def _stderr_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def boot(self) -> None:
        self._stderr = self._log.open("w")
        self.process = subprocess.Popen(
            self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self._answer("start")
        self.tap.attach_socket(connect_console(self._socket, self.name), self.name)
        self.tsc_khz = wait_for_boot(self.tap)

    def operate(self) -> Operation:
        before = self.tap.last_seq()
        started = time.monotonic()
        try:
            answer = self._ask(self.operation)
        except BenchError as exc:
            return failed_operation(self.tap, before, started, exc)
        return Operation(
            ok=True,
            window=operation_window(before, self.tap.last_seq()),
            command_s=time.monotonic() - started,
            downtime_ms=int(answer["downtime_us"]) / 1000,
            stop_to_resume_ms=None,
            total_time_ms=None,
            copied_bytes=0,
            pause_start_ns=int(answer["pause_start_ns"]),
            phases_us={k: int(v) for k, v in answer.get("detail_us", {}).items()},
        )

    def pause(self) -> None:
        self._ask("pause")

    def resume(self) -> int:
        self._ask("resume")
        return settle(self.tap)

    def close(self) -> None:
        try:
            self.tap.close()
        finally:
            if self.process is not None:
                kill_pids([self.process.pid])
                self.process.wait()
                for pipe in (self.process.stdin, self.process.stdout):
                    if pipe is not None:
                        pipe.close()
            if self._stderr is not None:
                self._stderr.close()


# -- QEMU ----------------------------------------------------------------------------------------------------------
class QemuSubject:
    """QEMU microvm, migrated to a new QEMU on this host each operation: plain, or shared memory + x-ignore-shared."""

    def __init__(self, fleet: Fleet, spec: QemuSpec, timeout: float) -> None:
        self.shared = spec.shared_mem is not None
        self.name = "QEMU x-ignore-shared" if self.shared else "QEMU plain"
        self.fleet = fleet
        self.spec = spec
        self.timeout = timeout
        self.tap = ConsoleTap()
        self.vm: QemuVm | None = None

    def _current(self) -> QemuVm:
        if self.vm is None:
            raise BenchError(f"{self.name}: not booted")
        return self.vm

    def boot(self) -> None:
        self.vm = self.fleet.start(self.spec)
        self.tap.attach_socket(self.vm.open_console(), self.vm.name)
        wait_for_boot(self.tap)

    def operate(self) -> Operation:
        source = self._current()
        before = self.tap.last_seq()
        started = time.monotonic()
        dest = start_destination(self.fleet, source)
        self.tap.attach_socket(dest.open_console(), dest.name)
        migration = migrate(source, dest, self.shared, timeout=self.timeout)
        if migration.completed:
            self.fleet.kill(source)  # its console socket closes: the tap goes on with the destination's
            self.vm = dest
        else:
            self.fleet.kill(dest)
            try:
                source.command("cont")  # a failed migration can leave the source paused
            except QmpError:
                pass
        elapsed = time.monotonic() - started
        window = operation_window(before, self.tap.last_seq())
        return Operation(
            ok=migration.completed,
            window=window,
            command_s=elapsed,
            downtime_ms=migration.downtime_ms,
            stop_to_resume_ms=migration.stop_to_resume_ms,
            total_time_ms=migration.total_time_ms,
            copied_bytes=migration.ram_transferred,
            pause_start_ns=None if migration.stopped_ns is None else realtime_to_monotonic_ns(migration.stopped_ns),
            error="" if migration.completed else f"migration {migration.status} {migration.error}".strip(),
        )

    def pause(self) -> None:
        self._current().command("stop")

    def resume(self) -> int:
        self._current().command("cont")
        return settle(self.tap)

    def close(self) -> None:
        try:
            self.tap.close()
        finally:
            if self.vm is not None:
                self.fleet.kill(self.vm)
            if self.spec.shared_mem is not None:
                self.spec.shared_mem.unlink(missing_ok=True)
