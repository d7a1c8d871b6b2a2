"""The test guest's I/O benchmark mode (`iobench=<kind>`, docs/test-guest.md) as bench.blk and bench.net drive it:
boot the guest with a virtio device on hotswap (`python -m hotswap run --disk/--net`, foreground) or on QEMU microvm
(`-device virtio-blk-device` / `virtio-net-device`), read its console from the VMM's stdout until the
`hsg: iobench` result line, and kill the VMM by pid.

The guest times itself with its TSC; the VMM start, the guest's boot and the VMM's exit are outside the figures.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from framework.guest import line_fields
from framework.procs import kill_pids

from bench.guest import console_lines
from bench.hotswap_vm import HOTSWAP
from bench.qemu import Fleet, QemuSpec, QemuVm
from bench.report import BenchError

RUN_TIMEOUT_MARGIN = 60.0  # seconds on top of the run itself: VMM start, boot, a net-rx wait for the first frame
EXIT_WAIT = 5.0  # after the result line the guest resets itself; the VMM is killed if it is still there after this
MEM_MIB = 128
RESULT_PREFIX = "hsg: iobench "
START_PREFIX = "hsg: iobench-start "


@dataclass(frozen=True)
class IoResult:
    """One `hsg: iobench` line. Rates are computed from ops, bytes and secs_us (the printed iops/mbps are rounded)."""

    kind: str
    ops: int
    bytes: int
    secs_us: int
    depth: int
    bs: int
    errors: int
    notifies: int
    other: int = 0
    seq_first: int = 0
    seq_last: int = 0

    @classmethod
    def parse(cls, line: str) -> IoResult | None:
        """The line's fields, or None for any other line (or one cut short)."""
        if not line.startswith(RESULT_PREFIX):
            return None
        f = line_fields(line)
        try:
            return cls(
                kind=f["kind"],
                ops=int(f["ops"]),
                bytes=int(f["bytes"]),
                secs_us=int(f["secs_us"]),
                depth=int(f["depth"]),
                bs=int(f["bs"]),
                errors=int(f["errors"]),
                notifies=int(f["notifies"]),
                other=int(f.get("other", "0")),
                seq_first=int(f.get("seq_first", "0")),
                seq_last=int(f.get("seq_last", "0")),
            )
        except (KeyError, ValueError):
            return None

    @property
    def secs(self) -> float:
        return self.secs_us / 1e6

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.secs if self.secs_us else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.secs if self.secs_us else 0.0

    @property
    def window_frames(self) -> int:
        """net-rx: frames the host numbered within the guest's counting window (first to last counted)."""
        return self.seq_last - self.seq_first + 1 if self.ops else 0


@dataclass
class GuestRun:
    """One guest's benchmark: its result and every console line it printed."""

    result: IoResult
    lines: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.lines if line.startswith("hsg: warning")]


def host_tsc_khz() -> int:
    """The TSC frequency KVM gives its guests (KVM_GET_TSC_KHZ), which both VMMs' guests see unscaled. Passed to
    every guest on its cmdline: the guest's own PIT calibration (25 ms) was off by up to 8% on this loaded host."""
    from kvm import Kvm  # only the benchmarks that boot guests need /dev/kvm

    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        try:
            return vcpu.get_tsc_khz()
        finally:
            vcpu.close()


def guest_cmdline(kind: str, secs: int, depth: int, uart: str, tsc_khz: int | None = None, extra: str = "") -> str:
    """`uart` is `mmio` (hotswap's MMIO UART) or `port` (COM1: QEMU microvm has no MMIO UART). Without `tsc_khz` the
    guest measures its TSC against the PIT (25 ms); the benchmarks pass host_tsc_khz() to every guest."""
    words = [f"uart={uart}", f"iobench={kind}", f"iobench_secs={secs}", f"iobench_depth={depth}"]
    if tsc_khz:
        words.insert(1, f"tsc_khz={tsc_khz}")
    return " ".join([*words, *extra.split()])


@dataclass(frozen=True)
class Hooks:
    """Called from the reading thread: with the guest's `iobench-start` line, and as soon as its result arrives."""

    on_start: Callable[[str], None] | None = None
    on_result: Callable[[IoResult], None] | None = None


def read_result(fd: int, deadline: float, hooks: Hooks = Hooks()) -> GuestRun:
    """Read a VMM's stdout until the guest's result line."""
    lines: list[str] = []
    for line, _ in console_lines(fd, deadline, "iobench: the result line"):
        lines.append(line)
        if line.startswith("hsg: error") or line.startswith("hsg: panic"):
            raise BenchError(f"iobench: the guest failed: {line}")
        if line.startswith(START_PREFIX) and hooks.on_start is not None:
            hooks.on_start(line)
        result = IoResult.parse(line)
        if result is not None:
            if hooks.on_result is not None:
                hooks.on_result(result)
            return GuestRun(result, lines)
    raise AssertionError("console_lines ends only by raising")


def _finish(pid: int, wait: Callable[[float], object]) -> None:
    """Let the VMM end after the guest's reset; kill it by pid if it does not."""
    try:
        wait(EXIT_WAIT)
    except subprocess.TimeoutExpired:
        pass
    kill_pids([pid])


def run_hotswap(
    kernel: Path,
    cmdline: str,
    device_args: list[str],
    run_dir: Path,
    name: str,
    secs: int,
    hooks: Hooks = Hooks(),
) -> GuestRun:
    """`hotswap run` in the foreground with the guest's console on its stdout (a pipe); 1 vCPU."""
    argv = [
        *HOTSWAP, "run", "--kernel", str(kernel), "--cmdline", cmdline, "--cpus", "1", "--mem", f"{MEM_MIB}M",
        "--name", name, *device_args,
    ]  # fmt: skip
    env = {**os.environ, "HOTSWAP_RUN_DIR": str(run_dir)}
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        return read_result(process.stdout.fileno(), time.monotonic() + secs + RUN_TIMEOUT_MARGIN, hooks)
    finally:
        _finish(process.pid, lambda t: process.wait(timeout=t))
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@dataclass
class DeviceQemuVm(QemuVm):
    """bench.qemu's microvm with virtio-mmio devices: ACPI off, so QEMU appends the `virtio_mmio.device=` entries to
    the guest's cmdline, and modern (virtio 1.x) transports, which the guest requires."""

    devices: list[str] = field(default_factory=list)

    def arguments(self) -> list[str]:
        args = super().arguments()
        machine = args.index("-M") + 1
        args[machine] += ",acpi=off"
        return [*args, "-global", "virtio-mmio.force-legacy=false", *self.devices]


@dataclass
class QemuRunner:
    """Starts each QEMU in `fleet` (which kills it by pid when it closes, whatever happened)."""

    fleet: Fleet
    count: int = 0

    def run(
        self,
        kernel: Path,
        cmdline: str,
        device_args: list[str],
        secs: int,
        hooks: Hooks = Hooks(),
    ) -> GuestRun:
        self.count += 1
        spec = QemuSpec(kernel, cmdline, MEM_MIB, 1)
        vm = DeviceQemuVm(spec, self.fleet.workdir, f"iob{self.count}", serial="stdio", devices=device_args)
        self.fleet.vms.append(vm)
        vm.launch()
        try:
            process = vm.process
            assert process is not None and process.stdout is not None
            run = read_result(process.stdout.fileno(), time.monotonic() + secs + RUN_TIMEOUT_MARGIN, hooks)
            _finish(process.pid, lambda t: process.wait(timeout=t))
            return run
        except BenchError as exc:
            raise BenchError(f"{exc}; QEMU log: {vm.log_tail()}") from exc
        finally:
            self.fleet.kill(vm)


def qemu_blk_args(image: Path) -> list[str]:
    """QEMU's defaults spelled out: cache=writeback (the host page cache, as hotswap), aio=threads."""
    return [
        "-drive", f"id=disk0,file={image},format=raw,if=none,cache=writeback,aio=threads",
        "-device", "virtio-blk-device,drive=disk0",
    ]  # fmt: skip


def qemu_net_args(tap: str) -> list[str]:
    return [
        "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
        "-device", "virtio-net-device,netdev=net0",
    ]  # fmt: skip
