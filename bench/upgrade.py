"""`python -m bench.upgrade`: consecutive live upgrades of one test guest, side by side with QEMU migrating the same
guest to a new QEMU process on the same host (plain, and shared memory + x-ignore-shared).

For each machine size one hotswap VM and one QEMU VM per mode are booted; they take turns in blocks (`--block`
operations each, hotswap, QEMU plain, QEMU x-ignore-shared, again ...) while the others are paused, so only one
guest runs at a time. After every operation the benchmark waits for as many quiet status lines as the operation's
window held: the baseline, measured on the same guest in the same run (bench/gaps.py explains the windows).

    python -m bench.upgrade --quick            # a few operations per size, for development
    python -m bench.upgrade --record           # 100 of each (takes a while), appended to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import gaps
from bench.guest import cmdline, guest_image
from bench.host import HostWatch
from bench.placement import Placement, pinned_placement
from bench.qemu import Fleet, QemuSpec, qemu_version, shm_path
from bench.report import BenchError, add_record_options, emit, pick_subset
from bench.snapshot import add_option, run_measure
from bench.subjects import FLOOR_OPERATIONS, FloorSubject, HotswapSubject, Operation, QemuSubject, Subject
from bench.upgrade_analysis import SIZES, STATUS_MS, Figures, Run, Size, figures, tables, verdicts

MAX_FAILURES_IN_A_ROW = 3
PINNED_NOTE = (
    "placement: pinned (--pin): per size, the guest's vCPU threads on the last CPUs, every other thread (the VMM's "
    "own, hotswap's upgrade command and successor, QEMU's main loop and migration, this benchmark) on the others; "
    "the same for both VMMs; a size with as many vCPUs as the host has CPUs runs shared"
)
SHARED_NOTE = "placement: shared (no --pin): every thread may run on any CPU, the scheduler decides"


# -- running -------------------------------------------------------------------------------------------------------
def make_subjects(
    size: Size, args: argparse.Namespace, kernel: Path, workdir: Path, fleet: Fleet, placement: Placement | None
) -> list[Subject]:
    subjects: list[Subject] = [
        HotswapSubject(
            workdir,
            f"bench-{size.key}",
            kernel,
            cmdline(uart=args.hotswap_uart, ws=size.ws, status_ms=STATUS_MS),
            size.cpus,
            size.mem_mib,
            placement,
        )
    ]
    if not args.no_qemu:
        qemu_cmdline = cmdline(uart="port", ws=size.ws, status_ms=STATUS_MS)
        for shared in (False, True):
            shm = shm_path(size.key) if shared else None
            spec = QemuSpec(kernel, qemu_cmdline, size.mem_mib, size.cpus, shm, placement)
            subjects.append(QemuSubject(fleet, spec, timeout=args.migration_timeout))
    if args.floor:
        floor_cmdline = cmdline(uart=args.hotswap_uart, ws=size.ws, status_ms=STATUS_MS)
        for operation in FLOOR_OPERATIONS:
            subjects.append(FloorSubject(workdir, kernel, floor_cmdline, size.cpus, size.mem_mib, operation, placement))
    return subjects


def measure_once(subject: Subject, quiet_since: int) -> Operation:
    """One operation, then the quiet lines after it (its baseline window, and enough for the clock check)."""
    operation = subject.operate()
    operation.quiet_since = quiet_since
    operation.baseline = gaps.baseline_window(operation.window)
    target = max(operation.baseline.last, operation.window.last + gaps.OFFSET_LINES)
    subject.tap.wait_statuses(target - 1, 1, 60.0)
    return operation


def run_size(size: Size, args: argparse.Namespace, kernel: Path, log: Callable[[str], None]) -> list[Run]:
    workdir = Path(tempfile.mkdtemp(prefix=f"hotswap-bench-{size.key}-"))
    runs: list[Run] = []
    placement = pinned_placement(size.cpus) if args.pin else None
    if args.pin:
        log(f"[{size.key}] " + (placement.describe() if placement else "too few CPUs to pin: shared CPUs"))
    started_on = os.sched_getaffinity(0)
    if placement is not None:
        os.sched_setaffinity(0, placement.vmm_cpus)  # this thread and the console readers it starts
    try:
        with Fleet(workdir) as fleet:
            subjects = make_subjects(size, args, kernel, workdir, fleet, placement)
            runs = [Run(size, s.name) for s in subjects]
            try:
                for subject in subjects:
                    log(f"[{size.key}] booting {subject.name}")
                    subject.boot()
                    subject.pause()
                done = 0
                while done < args.reps:
                    count = min(args.block, args.reps - done)
                    for subject, run in zip(subjects, runs, strict=True):
                        if run.aborted:
                            continue
                        try:
                            quiet_since = subject.resume()
                            _block(subject, run, count, quiet_since)
                            if not run.aborted:
                                subject.pause()
                        except BenchError as exc:  # this VMM is out of the run; the others go on
                            run.aborted = f"stopped: {exc}"
                        log(_progress(run, done + count))
                    done += count
            finally:
                for subject, run in zip(subjects, runs, strict=True):
                    run.statuses = subject.tap.all_statuses()
                    subject.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.sched_setaffinity(0, started_on)
    return runs


def _block(subject: Subject, run: Run, count: int, quiet_since: int) -> None:
    failures = 0
    for _ in range(count):
        operation = measure_once(subject, quiet_since)
        quiet_since = operation.window.last
        run.operations.append(operation)
        failures = 0 if operation.ok else failures + 1
        if failures >= MAX_FAILURES_IN_A_ROW:
            run.aborted = f"stopped after {failures} failures in a row; last: {operation.error}"
            return


def _progress(run: Run, target: int) -> str:
    ok = run.ok
    downtime = [op.downtime_ms for op in ok if op.downtime_ms is not None]
    median = f"{sorted(downtime)[len(downtime) // 2]:.2f} ms" if downtime else "-"
    return (
        f"[{run.size.key}] {run.subject}: {len(ok)}/{len(run.operations)} ok of {target}, downtime median {median}"
        + (f" ABORTED: {run.aborted}" if run.aborted else "")
    )


# -- command line ----------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100, help="operations per size and VMM (default 100)")
    parser.add_argument("--block", type=int, default=10, help="operations per turn before the next VMM's (10)")
    parser.add_argument("--quick", action="store_true", help="development run: --reps 6 --block 3")
    parser.add_argument(
        "--sizes", default=",".join(s.key for s in SIZES), help="subset of " + ",".join(s.key for s in SIZES)
    )
    parser.add_argument("--no-qemu", action="store_true", help="hotswap only")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="vCPU threads on CPUs of their own, everything else on the others, both VMMs (bench/placement.py)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also the floor under an upgrade's pause on this host (bench/floor_vmm.py): the guest moved to a fresh "
        "VM inside one process with hotswap's machine code (also with only the ioctls inside the pause), and a bare "
        "pause+resume",
    )
    parser.add_argument("--hotswap-uart", choices=["mmio", "port"], default="mmio", help="hotswap guest's UART (mmio)")
    parser.add_argument(
        "--migration-timeout", type=float, default=60.0, help="seconds before a QEMU migration is cancelled"
    )
    add_option(parser)
    add_record_options(parser, "tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.block = 6, 3
    keys = pick_subset(parser, "--sizes", args.sizes, [s.key for s in SIZES])
    args.size_list = [s for s in SIZES if s.key in keys]
    if args.reps < 1 or args.block < 1:
        parser.error("--reps and --block must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_measure("bench.upgrade", parse_args(argv), measure)


def measure(args: argparse.Namespace, root: Path) -> int:

    def log(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    watch = HostWatch()
    kernel = guest_image(root)
    results: list[tuple[Run, Figures]] = []
    lost: list[str] = []
    for size in args.size_list:
        try:
            for run in run_size(size, args, kernel, log):
                results.append((run, figures(run)))
        except BenchError as exc:
            log(f"[{size.key}] not measured: {exc}")
            lost.append(f"{size.label}: not measured: {exc}")
    if not results:
        print("bench.upgrade: nothing was measured", file=sys.stderr)
        return 1
    notes = [
        f"{args.reps} operations per size and VMM, in turns of {args.block}: hotswap, QEMU plain, QEMU "
        f"x-ignore-shared; one guest running at a time. Guest: test guest, status_ms={STATUS_MS}, "
        f"hotswap uart={args.hotswap_uart}, QEMU uart=port (microvm has no MMIO UART). Peer: {qemu_version()} "
        "microvm, same-host migration over a unix socket, max-bandwidth 10 GiB/s, default downtime-limit (300 ms).",
        PINNED_NOTE if args.pin else SHARED_NOTE,
        "clock shift: how far the guest's clock (status uptime_us against the host time each line arrived, minimum "
        f"over {gaps.OFFSET_LINES} lines either side) fell behind across an operation; ~0 (within a few ms of "
        "arrival jitter) means the guest's clock ran through the pause, so its gaps include the whole pause",
        *verdicts(results),
        *lost,
        *args.note,
        watch.summary(),
    ]
    emit("upgrade: hotswap live upgrade vs QEMU same-host migration", tables(results), notes, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
