"""`python -m bench.jitter`: the gaps the test guest sees while it just runs, with the VMM's CPU idle and busy,
hotswap and QEMU side by side.

No upgrade happens here. What is measured is how much of the load on the VMM's own CPUs reaches the guest: the
upgrade's helpers (the `hotswap upgrade` command and the successor starting up) are such a load, and so is
anything else a host runs there. Both VMMs are pinned the same way (`--pin` of bench.upgrade: the guest's vCPU on
the last CPU, every other thread of the VMM and this benchmark on the others). The loads, each started on the
VMM's CPUs for `--seconds` while the guest runs:

    idle          nothing
    idle-loop     a busy loop at SCHED_IDLE (it yields to anything else that wants the CPU)
    busy-loop     a busy loop at normal priority
    imports       Python importing hotswap's upgrade code in a loop at SCHED_IDLE: what an upgrade's start-up does

Per VMM and load: each status line's `gap_us` (the longest interval between two progress steps of the guest since
the line before; status every 20 ms) as p50 / p90 / p99 / max, and how many lines saw more than 2 ms. The VMMs
take turns (one guest runs while the other is paused), `--rounds` times over the loads, and the lines of all
rounds are pooled. The hotswap guest prints through the MMIO UART, QEMU's through COM1 (microvm has no MMIO UART):
the same difference as in bench.upgrade.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.guest import cmdline, guest_image
from bench.host import HostWatch
from bench.placement import Placement, cpu_list, pinned_placement
from bench.qemu import Fleet, QemuSpec, qemu_version
from bench.report import BenchError, Table, add_record_options, emit, fmt, percentile, pick_subset
from bench.snapshot import add_option, run_measure
from bench.subjects import HotswapSubject, QemuSubject, Subject

STATUS_MS = 20
OVER_MS = 2.0
LOADS = ("idle", "idle-loop", "busy-loop", "imports")
BUSY = "while True: pass"
IMPORTS = (
    "import subprocess, sys\n"
    "while True: subprocess.run([sys.executable, '-c', 'import hotswap.cli, hotswap.handover.successor'])"
)


def start_load(load: str, placement: Placement) -> subprocess.Popen[bytes] | None:
    """The load, on the VMM's CPUs, in a process group of its own (stopped with stop_load)."""
    if load == "idle":
        return None
    code = IMPORTS if load == "imports" else BUSY
    command = [sys.executable, "-c", code]
    if load != "busy-loop":
        command = ["chrt", "--idle", "0", *command]
    # taskset and chrt exec the command, so the pid is the loop's; what it starts inherits CPUs and policy
    return subprocess.Popen(["taskset", "-c", cpu_list(placement.vmm_cpus), *command], start_new_session=True)


def stop_load(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group it leads: the loop and an import it started
    except ProcessLookupError:
        pass
    process.wait()


def gaps_under(subject: Subject, load: str, seconds: float, placement: Placement) -> list[float]:
    """Resume `subject`, put `load` on the VMM's CPUs for `seconds`, pause it again: the status lines' gaps (ms)."""
    quiet_since = subject.resume()
    process = start_load(load, placement)
    try:
        time.sleep(0.2)  # the load is under way before the first line counted
        first = subject.tap.last_seq()
        time.sleep(seconds)
        last = subject.tap.last_seq()
    finally:
        stop_load(process)
    subject.pause()
    lines = subject.tap.statuses_between(max(first, quiet_since), last)
    if len(lines) < seconds * 1000 / STATUS_MS / 2:
        raise BenchError(f"{subject.name} under {load}: only {len(lines)} status lines in {seconds:.0f} s")
    return [line.gap_us / 1000 for line in lines]


def measure(args: argparse.Namespace, root: Path) -> int:
    watch = HostWatch()
    placement = pinned_placement(1)
    if placement is None:
        raise BenchError("jitter: needs at least 2 CPUs (the guest's vCPU on one, the VMM on the others)")
    kernel = guest_image(root)
    workdir = Path(tempfile.mkdtemp(prefix="hotswap-bench-jitter-"))
    started_on = os.sched_getaffinity(0)
    os.sched_setaffinity(0, placement.vmm_cpus)  # this process and the console readers it starts
    gaps: dict[tuple[str, str], list[float]] = {}
    subjects: list[Subject] = []
    try:
        with Fleet(workdir) as fleet:
            subjects.append(
                HotswapSubject(workdir, "jitter", kernel, cmdline(uart="mmio", status_ms=STATUS_MS), 1, 256, placement)
            )
            if not args.no_qemu:
                spec = QemuSpec(kernel, cmdline(uart="port", status_ms=STATUS_MS), 256, 1, None, placement)
                subjects.append(QemuSubject(fleet, spec, timeout=60.0))
            try:
                for subject in subjects:
                    print(f"booting {subject.name}", file=sys.stderr, flush=True)
                    subject.boot()
                    subject.pause()
                for round_ in range(args.rounds):
                    for load in args.load_list:
                        for subject in subjects:
                            found = gaps_under(subject, load, args.seconds, placement)
                            gaps.setdefault((subject.name, load), []).extend(found)
                            print(
                                f"round {round_ + 1}/{args.rounds} {subject.name:8s} {load:10s} "
                                f"p50 {percentile(found, 50):.2f} ms, {sum(g > OVER_MS for g in found)} over "
                                f"{OVER_MS:.0f} ms",
                                file=sys.stderr,
                                flush=True,
                            )
            finally:
                for subject in subjects:
                    subject.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.sched_setaffinity(0, started_on)

    table = Table(
        ["VMM", "load on the VMM's CPUs", "lines", "gap p50 ms", "p90", "p99", "max", f"lines > {OVER_MS:.0f} ms"]
    )
    for subject in subjects:
        for load in args.load_list:
            values = gaps[(subject.name, load)]
            table.add(
                subject.name,
                load,
                len(values),
                fmt(percentile(values, 50)),
                fmt(percentile(values, 90)),
                fmt(percentile(values, 99)),
                fmt(max(values)),
                sum(g > OVER_MS for g in values),
            )
    notes = [
        f"{args.rounds} rounds x {args.seconds:.0f} s per VMM and load, lines pooled; status every {STATUS_MS} ms; "
        f"{placement.describe()} (both VMMs); guest: test guest, 1 vCPU, 256 MiB, ws 16M, hotswap uart=mmio, "
        f"QEMU uart=port. Peer: {qemu_version() if not args.no_qemu else 'none (--no-qemu)'} microvm.",
        "loads: idle-loop = `python -c 'while True: pass'` under `chrt --idle 0`; busy-loop = the same at normal "
        "priority; imports = Python importing hotswap.cli and hotswap.handover.successor in a loop, SCHED_IDLE",
        *args.note,
        watch.summary(),
    ]
    emit("jitter: the guest's gaps with its VMM's CPU idle and busy (no upgrade)", table, notes, args.record)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.jitter", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per VMM, load and round (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the loads (default 3)")
    parser.add_argument("--loads", default=",".join(LOADS), help="subset of " + ",".join(LOADS))
    parser.add_argument("--no-qemu", action="store_true", help="hotswap only")
    add_option(parser)
    add_record_options(parser)
    args = parser.parse_args(argv)
    args.load_list = pick_subset(parser, "--loads", args.loads, LOADS)
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds must be at least 1 and --rounds at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_measure("bench.jitter", parse_args(argv), measure)


if __name__ == "__main__":
    sys.exit(main())
