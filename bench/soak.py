"""`python -m bench.soak`: many consecutive live upgrades of one test guest that verifies its memory all along.

After every upgrade the benchmark waits for new status lines and checks all lines so far: integrity=ok in every
one, the sequence unbroken (no line lost or repeated), the counters (steps, passes, timer ticks, uptime) moving
forward, a single boot; and that exactly one VMM process of this VM remains. Anything else counts as a failure of
that upgrade. The table gives the failures and the downtime hotswap reported.

    python -m bench.soak --count 50          # a short run
    python -m bench.soak --record            # 1000 upgrades, appended to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.console import ConsoleTap
from bench.guest import Status, cmdline, guest_image
from bench.host import HostWatch
from bench.hotswap_vm import HotswapVm
from bench.report import BenchError, Latency, Table, add_record_options, emit
from bench.snapshot import add_option, run_measure

LINE_TIMEOUT = 60.0


@dataclass
class Checker:
    """Checks status lines as they come: each line against the one before it."""

    last: Status | None = None
    checked: int = 0

    def check(self, statuses: Sequence[Status]) -> list[str]:
        problems = []
        for status in statuses:
            if self.last is not None and status.seq <= self.last.seq:
                continue
            problems += self._compare(status)
            self.last = status
            self.checked += 1
        return problems

    def _compare(self, status: Status) -> list[str]:
        problems = []
        if status.integrity != "ok":
            problems.append(f"integrity {status.integrity} at seq {status.seq}")
        prev = self.last
        if prev is None:
            return problems
        if status.seq != prev.seq + 1:
            problems.append(f"status lines {prev.seq + 1}..{status.seq - 1} missing")
        if status.steps <= prev.steps:
            problems.append(f"steps did not advance at seq {status.seq}")
        if status.passes < prev.passes or status.ticks < prev.ticks:
            problems.append(f"a counter went backwards at seq {status.seq}")
        if status.uptime_us <= prev.uptime_us:
            problems.append(f"uptime did not advance at seq {status.seq}")
        return problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="upgrades (default 1000)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--mem", type=int, default=512, help="guest RAM in MiB (default 512)")
    parser.add_argument("--ws", default="64M", help="the guest's working set (default 64M)")
    parser.add_argument("--status-ms", type=int, default=50)
    parser.add_argument("--lines-between", type=int, default=2, help="new status lines to see between upgrades (2)")
    add_option(parser)
    add_record_options(parser)
    args = parser.parse_args(argv)
    if args.count < 1 or args.lines_between < 1:
        parser.error("--count and --lines-between must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_measure("bench.soak", parse_args(argv), measure)


def measure(args: argparse.Namespace, root: Path) -> int:
    watch = HostWatch()
    kernel = guest_image(root)
    workdir = Path(tempfile.mkdtemp(prefix="hotswap-bench-soak-"))
    guest_cmdline = cmdline(uart="mmio", ws=args.ws, status_ms=args.status_ms)
    failures: Counter[str] = Counter()
    examples: list[str] = []
    downtime: list[float] = []
    command: list[float] = []
    copied = 0
    tap = ConsoleTap()
    checker = Checker()
    final_pids: list[int] = []
    boots = 0
    started = time.monotonic()

    def fail(kind: str, detail: str, number: int) -> None:
        failures[kind] += 1
        if len(examples) < 10:
            examples.append(f"upgrade {number}: {detail}")

    try:
        with HotswapVm(workdir, "soak") as vm:
            vm.start(kernel, guest_cmdline, args.cpus, f"{args.mem}M")
            tap.attach_socket(vm.open_console(), vm.name)
            tap.wait_statuses(0, 3, LINE_TIMEOUT)
            checker.check(tap.all_statuses())
            for number in range(1, args.count + 1):
                try:
                    upgrade = vm.upgrade()
                except BenchError as exc:
                    fail("upgrade command failed", str(exc), number)
                else:
                    downtime.append(upgrade.downtime_us / 1000)
                    command.append(upgrade.command_s)
                    copied = max(copied, upgrade.copied_bytes)
                pids = vm.settled_pids()
                if len(pids) != 1:
                    fail("VMM processes != 1", f"{len(pids)} VMM processes: {pids}", number)
                try:
                    tap.wait_statuses(tap.last_seq(), args.lines_between, LINE_TIMEOUT)
                except BenchError as exc:
                    fail("guest stopped printing", str(exc), number)
                    break
                for problem in checker.check(tap.statuses_after(checker.last.seq if checker.last else 0)):
                    fail("guest check", problem, number)
                if number % 50 == 0:
                    print(
                        f"{number}/{args.count} upgrades, {sum(failures.values())} failures, "
                        f"{time.monotonic() - started:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
            final_pids = vm.settled_pids()
            boots = sum(1 for _, line in tap.lines if line.startswith("hsg: boot "))
            tap.close()
    except BenchError as exc:
        print(f"bench.soak: {exc}", file=sys.stderr)
        return 1
    finally:
        tap.close()
        shutil.rmtree(workdir, ignore_errors=True)

    if len(final_pids) != 1:
        failures["VMM processes != 1 at the end"] += 1
    if boots != 1:
        failures["guest rebooted"] += 1
    table = Table(
        ["upgrades", "failures", "downtime p50 ms", "p99", "max", "command p50 s", "p99", "max",
         "status lines checked", "guest RAM copied", "VMM processes at the end"],
        caption="soak: consecutive hotswap upgrades of one guest that checks its memory",
    )  # fmt: skip
    table.add(
        args.count, sum(failures.values()),
        *(Latency.of(downtime).cells() if downtime else ["-"] * 3),
        *(Latency.of(command).cells(digits=3) if command else ["-"] * 3),
        checker.checked, copied, len(final_pids),
    )  # fmt: skip
    notes = [
        f"test guest, {args.cpus} vCPUs, {args.mem} MiB, cmdline `{guest_cmdline}`; {args.lines_between} new "
        "status lines seen between upgrades",
        "failures by kind: " + (", ".join(f"{k}: {v}" for k, v in failures.items()) or "none"),
        *examples,
        *args.note,
        watch.summary(),
    ]
    emit("soak: consecutive upgrades, guest verifying its memory", table, notes, args.record)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
