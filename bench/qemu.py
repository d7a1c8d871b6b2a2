"""The peer: QEMU microvm booting the same test guest, and same-host migration between two QEMU processes.

    qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities -m .. -smp .. -nodefaults
        -no-user-config -nographic -no-reboot -kernel guest/build/testguest.elf -append ..

(`-cpu host` alone aborts on this machine: "failed to set MSR 0x10a".) The serial console goes to stdout (a pipe)
or to a unix socket the benchmark reads; QMP is on a unix socket. Every QEMU started here belongs to a `Fleet`,
which kills each one by pid when it closes, whatever happened.

Migration: a destination started with `-incoming defer`, both sides' capabilities set, `migrate` on the source,
then the source's MIGRATION events until it completes. Two modes: plain (RAM copied over the socket) and shared
(RAM in a /dev/shm file mapped share=on by both, with the `x-ignore-shared` capability: only device state moves).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from framework.procs import kill_pids

from bench.console import connect_console
from bench.placement import Placement, cpu_list, pin_threads
from bench.qmp import Qmp, QmpError, event_time_ns
from bench.report import BenchError

QEMU = "qemu-system-x86_64"
START_TIMEOUT = 30.0
MAX_BANDWIDTH = 10 * 1024**3  # bytes/s: far above what a unix socket carries here, so it never limits
TERMINAL_STATES = ("completed", "failed", "cancelled")


def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as exc:
        raise BenchError(f"qemu: {QEMU} is not usable: {exc}") from exc
    return out.splitlines()[0].strip() if out else "unknown"


@dataclass(frozen=True)
class QemuSpec:
    """What to boot. `shared_mem`: back guest RAM with this file (in /dev/shm), share=on, for x-ignore-shared."""

    kernel: Path
    cmdline: str
    mem_mib: int
    cpus: int = 1
    shared_mem: Path | None = None
    placement: Placement | None = None  # None: shared CPUs (bench/placement.py)


@dataclass
class QemuVm:
    spec: QemuSpec
    workdir: Path
    name: str
    serial: str = "socket"  # "socket": a unix socket server; "stdio": QEMU's stdout, a pipe (process.stdout)
    incoming: bool = False  # start with -incoming defer (a migration destination)
    process: subprocess.Popen[bytes] | None = None
    qmp: Qmp | None = None
    started_ns: int = 0

    @property
    def qmp_path(self) -> Path:
        return self.workdir / f"{self.name}.qmp"

    @property
    def console_path(self) -> Path:
        return self.workdir / f"{self.name}.console"

    @property
    def migration_path(self) -> Path:
        return self.workdir / f"{self.name}.migrate"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"qemu {self.name}: not started")
        return self.process.pid

    def arguments(self) -> list[str]:
        spec = self.spec
        machine = "microvm"
        args = [QEMU]
        if spec.placement is not None:  # taskset execs QEMU: same pid, every thread starts on the VMM CPUs
            args = ["taskset", "-c", cpu_list(spec.placement.vmm_cpus), QEMU]
        if spec.shared_mem is not None:
            args += [
                "-object",
                f"memory-backend-file,id=mem,size={spec.mem_mib}M,mem-path={spec.shared_mem},share=on",
            ]
            machine += ",memory-backend=mem"
        args += [
            "-M", machine, "-enable-kvm", "-cpu", "host,-arch-capabilities",
            "-m", f"{spec.mem_mib}M", "-smp", str(spec.cpus),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-kernel", str(spec.kernel), "-append", spec.cmdline,
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]  # fmt: skip
        if self.serial == "stdio":
            args += ["-serial", "stdio"]
        else:
            args += ["-chardev", f"socket,id=con,path={self.console_path},server=on,wait=off", "-serial", "chardev:con"]
        if self.incoming:
            args += ["-incoming", "defer"]
        return args

    def launch(self) -> None:
        """Start the process only (the caller waits for what it needs: a console line, or `connect()`)."""
        for path in (self.qmp_path, self.console_path):
            path.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        try:
            self.started_ns = time.monotonic_ns()
            self.process = subprocess.Popen(
                self.arguments(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.serial == "stdio" else log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()

    def connect(self, timeout: float = START_TIMEOUT) -> Qmp:
        """Wait for the QMP socket and negotiate capabilities."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"qemu {self.name}: exited with {self.process.returncode}: {self.log_tail()}")
            if self.qmp_path.exists():
                try:
                    self.qmp = Qmp(str(self.qmp_path))
                    return self.qmp
                except (OSError, QmpError):
                    pass
            if time.monotonic() > deadline:
                raise BenchError(f"qemu {self.name}: no QMP socket after {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.005)

    def pin_vcpus(self, cpus: tuple[int, ...]) -> None:
        """Move the vCPU threads (QEMU creates them at start, before any migration) to `cpus`."""
        threads = [int(cpu["thread-id"]) for cpu in self.command("query-cpus-fast")]
        pin_threads(threads, cpus, f"qemu {self.name}")

    def open_console(self) -> socket.socket:
        """A connection to the serial console socket (QEMU drops output while no client is connected)."""
        return connect_console(self.console_path, f"qemu {self.name}")

    def command(self, name: str, **arguments: Any) -> Any:
        if self.qmp is None:
            raise BenchError(f"qemu {self.name}: not connected")
        return self.qmp.execute(name, **arguments)

    def kill(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.process is not None:
            kill_pids([self.process.pid])
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process.wait(timeout=10)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:].strip() or "(no output)"
        except OSError:
            return "(no log)"


@dataclass
class Fleet:
    """Every QEMU a benchmark starts; `close()` kills each one by pid (use it as a context manager)."""

    workdir: Path
    vms: list[QemuVm] = field(default_factory=list)
    _count: int = 0

    def start(self, spec: QemuSpec, serial: str = "socket", incoming: bool = False, connect: bool = True) -> QemuVm:
        self._count += 1
        vm = QemuVm(spec, self.workdir, f"qemu{self._count}", serial=serial, incoming=incoming)
        self.vms.append(vm)
        vm.launch()
        if connect:
            vm.connect()
            if spec.placement is not None:
                vm.pin_vcpus(spec.placement.vcpu_cpus)
        return vm

    def kill(self, vm: QemuVm) -> None:
        vm.kill()
        if vm in self.vms:
            self.vms.remove(vm)

    def close(self) -> None:
        for vm in list(self.vms):
            self.kill(vm)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- migration ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    """One migration, as QEMU's `query-migrate` reports it (times in ms), plus the benchmark's own wall time."""

    status: str  # completed, failed, cancelled, or "timeout" (cancelled by the benchmark)
    downtime_ms: float | None
    total_time_ms: float | None
    setup_time_ms: float | None
    ram_transferred: int
    ram_total: int
    wall_s: float
    error: str = ""
    stopped_ns: int | None = None  # CLOCK_REALTIME of the source's STOP event (its vCPUs stopped)
    resumed_ns: int | None = None  # CLOCK_REALTIME of the destination's RESUME event (its vCPUs run)

    @property
    def stop_to_resume_ms(self) -> float | None:
        """The guest's pause as hotswap measures its own downtime: source vCPUs stopped -> destination running."""
        if self.stopped_ns is None or self.resumed_ns is None:
            return None
        return (self.resumed_ns - self.stopped_ns) / 1e6

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def start_destination(fleet: Fleet, source: QemuVm) -> QemuVm:
    """A QEMU waiting for `source`'s guest: same spec (same shared file, if any), `-incoming defer`."""
    return fleet.start(replace(source.spec), serial=source.serial, incoming=True)


def migrate(
    source: QemuVm,
    dest: QemuVm,
    shared: bool,
    timeout: float = 120.0,
    downtime_limit_ms: int | None = None,
) -> Migration:
    """Migrate source -> dest over a unix socket; on return the destination runs the guest (if completed)."""
    capabilities = [{"capability": "x-ignore-shared", "state": shared}]
    dest.command("migrate-set-capabilities", capabilities=capabilities)
    uri = f"unix:{dest.migration_path}"
    dest.migration_path.unlink(missing_ok=True)
    dest.command("migrate-incoming", uri=uri)
    source.command("migrate-set-capabilities", capabilities=[*capabilities, {"capability": "events", "state": True}])
    parameters: dict[str, Any] = {"max-bandwidth": MAX_BANDWIDTH}
    if downtime_limit_ms is not None:
        parameters["downtime-limit"] = downtime_limit_ms
    source.command("migrate-set-parameters", **parameters)

    if source.qmp is None or dest.qmp is None:
        raise BenchError("migrate: both QEMUs must be connected")
    first_event = len(source.qmp.events)
    started = time.monotonic()
    source.command("migrate", uri=uri)
    status = _wait_terminal(source, first_event, started + timeout)
    if status == "timeout":
        try:
            source.command("migrate_cancel")
            _wait_terminal(source, first_event, time.monotonic() + 30)
        except QmpError:
            pass  # the status stays "timeout"; the source is killed by its fleet either way
    wall = time.monotonic() - started
    info = _final_info(source, status)
    ram = info.get("ram", {})
    stopped = resumed = None
    if status == "completed":
        _wait_running(dest)
        stopped = _event_time(source.qmp, "STOP", first_event)
        resumed = _event_time(dest.qmp, "RESUME", 0)
    return Migration(
        status=status,
        downtime_ms=_number(info.get("downtime")),
        total_time_ms=_number(info.get("total-time")),
        setup_time_ms=_number(info.get("setup-time")),
        ram_transferred=int(ram.get("transferred", 0)),
        ram_total=int(ram.get("total", 0)),
        wall_s=wall,
        error=str(info.get("error-desc", "")),
        stopped_ns=stopped,
        resumed_ns=resumed,
    )


def _wait_terminal(source: QemuVm, first_event: int, deadline: float) -> str:
    if source.qmp is None:
        raise BenchError(f"qemu {source.name}: not connected")
    index = first_event
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        try:
            index, event = source.qmp.wait_event("MIGRATION", timeout=remaining, start=index)
        except QmpError as exc:
            if "timed out" in str(exc):
                return "timeout"
            raise
        index += 1
        status = str(event.get("data", {}).get("status", ""))
        if status in TERMINAL_STATES:
            return status


def _final_info(source: QemuVm, status: str, timeout: float = 2.0) -> dict[str, Any]:
    """query-migrate once its figures are in: QEMU sends the `completed` event a moment before it has computed
    total-time and downtime (they read 0 if asked at once)."""
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = source.command("query-migrate")
        settled = info.get("status") in TERMINAL_STATES and (status != "completed" or info.get("total-time", 0) > 0)
        if settled or time.monotonic() > deadline:
            return info
        time.sleep(0.002)


def _event_time(qmp: Qmp, name: str, start: int) -> int | None:
    try:
        return event_time_ns(qmp.wait_event(name, timeout=2.0, start=start)[1])
    except QmpError:
        return None


def _wait_running(vm: QemuVm, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = vm.command("query-status").get("status")
        if status == "running":
            return
        if status not in ("inmigrate", "paused", "prelaunch", "finish-migrate", "restore-vm"):
            raise BenchError(f"qemu {vm.name}: after the migration it is {status!r}, not running")
        if time.monotonic() > deadline:
            raise BenchError(f"qemu {vm.name}: not running {timeout:.0f} s after the migration ({status})")
        time.sleep(0.002)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def shm_path(tag: str) -> Path:
    return Path("/dev/shm") / f"hotswap-bench-{os.getpid()}-{tag}"
