"""`python -m bench.boot`: time from starting the VMM to the test guest's first `hsg: status` line, hotswap vs QEMU
microvm, on the same guest image and command line, interleaved A B C A B C ...

    A  `python -m hotswap run` (foreground, console on stdout), guest uart=port (the same cmdline QEMU gets)
    B  `qemu-system-x86_64 -M microvm ...`, guest uart=port (microvm has no MMIO UART)
    C  `python -m hotswap run`, guest uart=mmio (hotswap's fast console path), unless --no-mmio
    D  `python -m hotswap --version` to its exit: the interpreter and CLI start-up every `hotswap run` pays first

The clock starts just before the process is spawned and stops when the benchmark reads the line from the VMM's
stdout (a pipe). Every process is killed by pid as soon as its line has arrived.

QEMU runs microvm because `-M pc` spends ~5 s in SeaBIOS here (firmware runs in emulated ring 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from framework.procs import kill_pids

from bench.guest import boot_tsc_khz, cmdline, console_lines, guest_image
from bench.host import HostWatch
from bench.hotswap_vm import HOTSWAP
from bench.qemu import Fleet, QemuSpec, qemu_version
from bench.report import BenchError, Latency, Table, add_record_options, emit, ratio
from bench.snapshot import add_option, run_measure

BOOT_TIMEOUT = 60.0
STATUS_MS = 10  # the first status line follows `hsg: ready` by this much


@dataclass(frozen=True)
class Boot:
    to_boot_line_s: float
    to_status_s: float
    boot_line: str


def read_until(fd: int, started: float, deadline: float) -> Boot:
    """Read a VMM's stdout until the first status line; the times are from `started` (time.monotonic())."""
    boot_at: float | None = None
    boot_line = ""
    for line, now in console_lines(fd, deadline, "boot: a status line"):
        if boot_at is None and line.startswith("hsg: boot "):
            boot_at, boot_line = now, line
        if line.startswith("hsg: status "):
            if boot_at is None:
                raise BenchError("boot: a status line came before the boot line")
            return Boot(boot_at - started, now - started, boot_line)
    raise AssertionError("console_lines ends only by raising")


def boot_hotswap(kernel: Path, guest_cmdline: str, cpus: int, mem_mib: int, run_dir: Path, name: str) -> Boot:
    env = {**os.environ, "HOTSWAP_RUN_DIR": str(run_dir)}
    argv = [
        *HOTSWAP, "run", "--kernel", str(kernel), "--cmdline", guest_cmdline, "--cpus", str(cpus),
        "--mem", f"{mem_mib}M", "--name", name,
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        return read_until(process.stdout.fileno(), started, started + BOOT_TIMEOUT)
    finally:
        kill_pids([process.pid])
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def boot_qemu(fleet: Fleet, spec: QemuSpec) -> Boot:
    started = time.monotonic()
    vm = fleet.start(spec, serial="stdio", connect=False)
    try:
        assert vm.process is not None and vm.process.stdout is not None
        return read_until(vm.process.stdout.fileno(), started, started + BOOT_TIMEOUT)
    except BenchError as exc:
        raise BenchError(f"{exc}; QEMU log: {vm.log_tail()}") from exc
    finally:
        fleet.kill(vm)


def cli_floor() -> float:
    """Seconds from spawning `python -m hotswap --version` to its exit."""
    started = time.monotonic()
    subprocess.run([*HOTSWAP, "--version"], check=True, capture_output=True, timeout=BOOT_TIMEOUT)
    return time.monotonic() - started


@dataclass
class Series:
    label: str
    boot_line: list[float] = field(default_factory=list)
    status: list[float] = field(default_factory=list)

    def add(self, boot: Boot) -> None:
        self.boot_line.append(boot.to_boot_line_s * 1000)
        self.status.append(boot.to_status_s * 1000)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.boot", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100, help="boots of each kind (default 100)")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--mem", type=int, default=256, help="guest RAM in MiB (default 256)")
    parser.add_argument("--no-mmio", action="store_true", help="skip the hotswap uart=mmio series")
    add_option(parser)
    add_record_options(parser)
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_measure("bench.boot", parse_args(argv), measure)


def measure(args: argparse.Namespace, root: Path) -> int:
    watch = HostWatch()
    kernel = guest_image(root)
    workdir = Path(tempfile.mkdtemp(prefix="hotswap-bench-boot-"))
    try:
        with Fleet(workdir) as fleet:
            # The first boot is not counted: it warms the page cache and reads the TSC frequency KVM reports
            # (hotswap publishes it in CPUID), which both sides then get on the cmdline: no PIT calibration.
            first = boot_hotswap(kernel, cmdline(uart="port"), args.cpus, args.mem, workdir, "warmup")
            tsc_khz = boot_tsc_khz(first.boot_line)
            port = cmdline(uart="port", status_ms=STATUS_MS, tsc_khz=tsc_khz)
            mmio = cmdline(uart="mmio", status_ms=STATUS_MS, tsc_khz=tsc_khz)
            spec = QemuSpec(kernel, port, args.mem, args.cpus)
            boot_qemu(fleet, spec)
            if not args.no_mmio:
                boot_hotswap(kernel, mmio, args.cpus, args.mem, workdir, "warmup-mmio")
            series = [Series("hotswap, uart=port"), Series("QEMU microvm, uart=port")]
            if not args.no_mmio:
                series.append(Series("hotswap, uart=mmio"))
            floor: list[float] = []
            for rep in range(args.reps):
                series[0].add(boot_hotswap(kernel, port, args.cpus, args.mem, workdir, f"a{rep}"))
                series[1].add(boot_qemu(fleet, spec))
                if not args.no_mmio:
                    series[2].add(boot_hotswap(kernel, mmio, args.cpus, args.mem, workdir, f"c{rep}"))
                floor.append(cli_floor() * 1000)
                if (rep + 1) % 10 == 0:
                    print(f"{rep + 1}/{args.reps}", file=sys.stderr, flush=True)
    except BenchError as exc:
        print(f"bench.boot: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    qemu_status = Latency.of(series[1].status)
    table = Table(
        ["VMM", "n", "to `hsg: boot` p50", "p99", "max", "to first status p50", "p99", "max", "vs QEMU p50"],
        caption="boot, ms: process start -> line read from its stdout",
    )
    for s in series:
        status = Latency.of(s.status)
        table.add(
            s.label, len(s.status), *Latency.of(s.boot_line).cells(digits=1), *status.cells(digits=1),
            ratio(status.median, qemu_status.median),
        )  # fmt: skip
    cli = Latency.of(floor)
    table.add("`python -m hotswap --version` (exit)", len(floor), "-", "-", "-", *cli.cells(digits=1), "-")
    notes = [
        f"test guest, {args.cpus} vCPU, {args.mem} MiB, cmdline `{port}` (uart=mmio for the `hotswap, uart=mmio` row); "
        f"interleaved A B C D, {args.reps} each, one warm-up boot of each first (not counted); the last row is "
        "the interpreter and CLI start-up alone (no VM), the floor under hotswap's figures",
        f"hotswap: `{Path(sys.executable).name} -m hotswap run` in the foreground (interpreter start included); "
        f"peer: {qemu_version()}, `-M microvm` (PVH boot; `-M pc` would add ~5 s of SeaBIOS in emulated ring 0 here)",
        "guest output costs differ: with uart=port every byte traps to the guest's ring 0, emulated here",
        *args.note,
        watch.summary(),
    ]
    emit("boot: VMM start -> first status line of the test guest", table, notes, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
