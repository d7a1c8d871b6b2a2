"""What `bench.upgrade` measured, summarized: per size and VMM, the figures and the tables it prints, and the
issue's targets stated as met or missed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import gaps
from bench.guest import Status
from bench.report import Latency, Table, fmt, ratio
from bench.subjects import FLOOR_OPERATIONS, Operation

FLOOR_MOVE = FLOOR_OPERATIONS["move"]
FLOOR_BARE = FLOOR_OPERATIONS["move-bare"]
FLOOR_PAUSE = FLOOR_OPERATIONS["pause-resume"]

STATUS_MS = 20


@dataclass(frozen=True)
class Size:
    key: str
    label: str
    cpus: int
    mem_mib: int
    ws: str


SIZES = (
    Size("1cpu", "1 vCPU 256 MiB ws=16M", 1, 256, "16M"),
    Size("2cpu", "2 vCPU 256 MiB ws=16M", 2, 256, "16M"),
    Size("16g", "1 vCPU 16 GiB ws=16M", 1, 16 * 1024, "16M"),
    Size("ws400", "1 vCPU 512 MiB ws=400M", 1, 512, "400M"),
)


@dataclass
class Run:
    """Everything measured for one subject (hotswap or a QEMU mode) at one size."""

    size: Size
    subject: str
    operations: list[Operation] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    aborted: str = ""

    @property
    def ok(self) -> list[Operation]:
        return [op for op in self.operations if op.ok]


@dataclass
class Figures:
    """The per-run summaries the tables print (None: nothing to summarize)."""

    n: int
    failures: int
    downtime: Latency | None
    stop_to_resume: Latency | None
    command: Latency | None
    total_time: Latency | None
    copied_median: float | None
    copied_max: float | None
    pause_gap: Latency | None
    pause_baseline: Latency | None
    window_gap: Latency | None
    window_baseline: Latency | None
    line_baseline: Latency | None
    window_lines: float | None
    clock_shift: Latency | None
    clock_shift_abs_max: float | None
    lines_missing: int
    integrity_ok: bool
    phases: dict[str, Latency]


def _latency(values: Sequence[float]) -> Latency | None:
    return Latency.of(values) if values else None


def figures(run: Run) -> Figures:
    statuses = run.statuses
    ok = [op for op in run.operations if op.ok]
    pause_gaps, pause_base, window_gaps, window_base, line_base, lines, shifts = [], [], [], [], [], [], []
    for op in ok:
        reading = gaps.read_window(statuses, op.window)
        if reading.gap_us is not None:
            window_gaps.append(reading.gap_us / 1000)
            lines.append(op.window.lines)
        base_lines = op.baseline.select(statuses) if op.baseline is not None else []
        if base_lines:
            window_base.append(max(s.gap_us for s in base_lines) / 1000)
            pause_base.append(max(s.gap_us for s in base_lines[: gaps.PAUSE_LINES]) / 1000)
            line_base += [s.gap_us / 1000 for s in base_lines]
        if op.pause_start_ns is not None:
            carrying = gaps.pause_window(statuses, op.pause_start_ns)
            if carrying:
                pause_gaps.append(max(s.gap_us for s in carrying) / 1000)
        shift = gaps.clock_shift_us(statuses, op.window, op.quiet_since)
        if shift is not None:
            shifts.append(shift / 1000)
    copied = [float(op.copied_bytes) for op in ok if op.copied_bytes is not None]
    phase_names = sorted({name for op in ok for name in op.phases_us})
    return Figures(
        n=len(run.operations),
        failures=len(run.operations) - len(ok),
        downtime=_latency([op.downtime_ms for op in ok if op.downtime_ms is not None]),
        stop_to_resume=_latency([op.stop_to_resume_ms for op in ok if op.stop_to_resume_ms is not None]),
        command=_latency([op.command_s for op in ok]),
        total_time=_latency([op.total_time_ms for op in ok if op.total_time_ms is not None]),
        copied_median=sorted(copied)[len(copied) // 2] if copied else None,
        copied_max=max(copied) if copied else None,
        pause_gap=_latency(pause_gaps),
        pause_baseline=_latency(pause_base),
        window_gap=_latency(window_gaps),
        window_baseline=_latency(window_base),
        line_baseline=_latency(line_base),
        window_lines=sorted(lines)[len(lines) // 2] if lines else None,
        clock_shift=_latency(shifts),
        clock_shift_abs_max=max((abs(v) for v in shifts), default=None),
        lines_missing=gaps.sequence_breaks(statuses),
        integrity_ok=all(s.integrity == "ok" for s in statuses),
        phases={
            name: Latency.of([op.phases_us[name] / 1000 for op in ok if name in op.phases_us]) for name in phase_names
        },
    )


def _cells(summary: Latency | None, scale: float = 1.0, digits: int = 2) -> list[str]:
    return summary.cells(scale, digits) if summary is not None else ["-", "-", "-"]


def _p50(summary: Latency | None) -> float | None:
    return summary.median if summary is not None else None


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def tables(results: list[tuple[Run, Figures]]) -> list[Table]:
    downtime = Table(
        ["size", "VMM", "ok/n", "p50", "p99", "max", "p50 vs hotswap", "stop->resume p50", "p99", "max"],
        caption="downtime, ms (hotswap: first vCPU paused -> last running, taken in the VMMs; "
        "QEMU: its query-migrate `downtime`, and source STOP -> destination RESUME from QMP event timestamps)",
    )
    gap = Table(
        ["size", "VMM", "at pause p50", "p99", "max", "quiet p50", "p99", "max",
         "window p50", "p99", "max", "quiet p50", "p99", "max", "lines", "p50 vs hotswap"],
        caption=f"gap seen by the guest, ms (status every {STATUS_MS} ms; 'at pause': the {gaps.PAUSE_LINES} lines "
        f"after the pause began; 'window': upgrade start -> {gaps.TAIL_LINES} periods after its end; 'quiet': as many "
        "lines with nothing going on, same guest, right after; last column: at-pause p50 / hotswap's)",
    )  # fmt: skip
    cost = Table(
        ["size", "VMM", "command p50 s", "p99", "max", "QEMU total-time p50 ms", "p99", "max",
         "guest RAM copied MiB p50", "max", "line gap quiet p50", "p99", "max", "clock shift p50 ms", "max |shift|",
         "lines lost", "integrity"],
        caption="cost: command wall time (hotswap: `hotswap upgrade`; QEMU: destination start -> guest running), "
        "bytes of guest RAM sent, the single-line quiet gap, and whether the guest's clock ran through (shift ~0)",
    )  # fmt: skip
    reference: dict[str, Figures] = {run.size.key: fig for run, fig in results if run.subject == "hotswap"}
    for run, fig in results:
        ref = reference.get(run.size.key)
        downtime.add(
            run.size.label, run.subject, f"{fig.n - fig.failures}/{fig.n}", *_cells(fig.downtime),
            ratio(_p50(fig.downtime), _p50(ref.downtime) if ref else None), *_cells(fig.stop_to_resume),
        )  # fmt: skip
        gap.add(
            run.size.label, run.subject, *_cells(fig.pause_gap), *_cells(fig.pause_baseline), *_cells(fig.window_gap),
            *_cells(fig.window_baseline), fmt(fig.window_lines, 0),
            ratio(_p50(fig.pause_gap), _p50(ref.pause_gap) if ref else None),
        )  # fmt: skip
        cost.add(
            run.size.label, run.subject, *_cells(fig.command, 1, 3), *_cells(fig.total_time, 1, 0),
            _mib(fig.copied_median), _mib(fig.copied_max), *_cells(fig.line_baseline),
            fmt(_p50(fig.clock_shift)), fmt(fig.clock_shift_abs_max),
            str(fig.lines_missing), "ok" if fig.integrity_ok else "FAIL",
        )  # fmt: skip
    tables_of_parts = [
        _parts_table(
            results,
            "hotswap",
            "hotswap downtime phases, ms, p50 (p99) as the upgrade report gives them "
            "(successor_start and prepare happen before the pause)",
        ),
        _parts_table(
            results,
            FLOOR_BARE,
            f"{FLOOR_BARE}: its parts, ms, p50 (p99) (records_us: the vCPU records written; vm_us: the VM state "
            "captured and restored; vcpus_*: the fresh VM's wait for its vCPU threads)",
        ),
        _parts_table(
            results,
            FLOOR_MOVE,
            f"{FLOOR_MOVE}: its parts, ms, p50 (p99) (prepare_us before the pause; inside it records_us: the vCPU "
            "records written, capture_us: VM and devices captured, then the fresh VM's restore of VM and devices "
            "and its wait for the vCPU threads)",
        ),
    ]
    return [downtime, gap, cost, *(t for t in tables_of_parts if t.rows)]


def _floor_notes(by: dict[tuple[str, str], Figures]) -> list[str]:
    """Where the floors measured in this run (--floor) put the 5x targets against QEMU's gaps."""
    peers = [(mode, by.get(("1cpu", mode))) for mode in ("QEMU plain", "QEMU x-ignore-shared")]
    notes = []
    for subject in (FLOOR_PAUSE, FLOOR_BARE, FLOOR_MOVE):
        floor = by.get(("1cpu", subject))
        if not (floor and floor.pause_gap and floor.downtime):
            continue
        gap = floor.pause_gap.median
        line = f"{subject} (1 vCPU, p50): downtime {floor.downtime.median:.2f} ms, gap at the pause {gap:.2f} ms"
        for mode, peer in peers:
            if peer and peer.pause_gap:
                needed = peer.pause_gap.median / 5
                line += f"; 5x below {mode}'s gap ({peer.pause_gap.median:.2f} ms) needs {needed:.2f} ms: " + (
                    "the floor is below it" if gap <= needed else "the floor is ABOVE it"
                )
        notes.append(line)
    return notes


def _parts_table(results: list[tuple[Run, Figures]], subject: str, caption: str) -> Table:
    names = sorted({name for run, fig in results if run.subject == subject for name in fig.phases})
    table = Table(["size", *names], caption=caption)
    for run, fig in results:
        if run.subject == subject and fig.phases:
            table.add(
                run.size.label,
                *(f"{fig.phases[n].median:.2f} ({fig.phases[n].p99:.2f})" if n in fig.phases else "-" for n in names),
            )
    return table


def verdicts(results: list[tuple[Run, Figures]]) -> list[str]:
    """The issue's targets, each stated as met or missed (never tuned: the figures are what they are)."""
    by = {(run.size.key, run.subject): fig for run, fig in results}
    notes = []
    one = by.get(("1cpu", "hotswap"))
    if one and one.downtime:
        d = one.downtime
        notes.append(
            f"target 1 vCPU downtime p50 <= 1 ms, p99 <= 2 ms: p50 {d.median:.2f} ms, p99 {d.p99:.2f} ms -> "
            + ("MET" if d.median <= 1 and d.p99 <= 2 else "MISSED")
        )
    if one and one.pause_gap and one.window_gap:
        g, w = one.pause_gap.median, one.window_gap.median
        line = (
            f"target 1 vCPU gap seen by the guest p50 <= 1.5 ms: {g:.2f} ms at the pause, {w:.2f} ms over the "
            "whole upgrade window -> " + ("MET" if g <= 1.5 else "MISSED")
        )
        if one.line_baseline:
            line += f" (this host's own single-line gap p50 with nothing going on: {one.line_baseline.median:.2f} ms)"
        notes.append(line)
        for mode in ("QEMU plain", "QEMU x-ignore-shared"):
            peer = by.get(("1cpu", mode))
            if peer and peer.pause_gap and peer.window_gap:
                factor = peer.pause_gap.median / g if g else float("inf")
                whole = peer.window_gap.median / w if w else float("inf")
                notes.append(
                    f"target gap >= 5x smaller than {mode}'s (1 vCPU, p50): at the pause {peer.pause_gap.median:.2f} "
                    f"/ {g:.2f} = {factor:.2f}x, over the window {peer.window_gap.median:.2f} / {w:.2f} = "
                    f"{whole:.2f}x -> " + ("MET" if factor >= 5 else "MISSED")
                )
    notes += _floor_notes(by)
    big = by.get(("16g", "hotswap"))
    if one and big and one.downtime and big.downtime:
        r50 = big.downtime.median / one.downtime.median
        r99 = big.downtime.p99 / one.downtime.p99
        notes.append(
            f"target 16 GiB within 20% of 256 MiB (hotswap downtime): p50 ratio {r50:.2f}, p99 ratio {r99:.2f} -> "
            + ("MET" if r50 <= 1.2 else "MISSED")
        )
    for run, fig in results:
        if run.aborted:
            notes.append(f"{run.size.label} {run.subject}: {run.aborted}")
        if run.subject == "hotswap" and fig.copied_max not in (None, 0.0):
            notes.append(f"{run.size.label} hotswap reported guest RAM copied: {fig.copied_max} bytes (expected 0)")
    return notes
