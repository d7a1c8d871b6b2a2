"""The gap the guest saw, read from its status lines.

Each status line carries `gap_us`: the longest interval between two consecutive progress steps of the guest's
workload since the previous status line, measured with the guest's TSC. For an operation (an upgrade, a migration)
the benchmark notes the last status line it had received when the operation started and when it ended; the
operation's window is every line after the first, up to `TAIL_LINES` status periods after the second, and the gap
the guest saw is the largest `gap_us` in it.

The pause itself is also located in time (hotswap: its log's resume timestamp minus the reported downtime; QEMU:
the STOP event of the source), and the largest `gap_us` of the first `PAUSE_LINES` lines that arrived after the
pause began is the gap at the pause: a status line's gap is formatted before it is printed, so a pause that falls
while a line is being printed shows in the line after it.

This host stalls every process for 5-16 ms now and then, so a window's maximum is compared with the maximum over a
window of as many lines taken while nothing was going on (the baseline), as well as with single lines.

Whether the guest's clock ran through the pause (or hid part of it) shows in the host arrival time of each line
minus its `uptime_us`: that offset (its minimum over a few lines, to drop scheduling noise) must not move.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.guest import Status

PAUSE_LINES = 2  # status lines after the pause began that can carry its gap (one may have been mid-print)
TAIL_LINES = 2  # status periods after an operation ended that still count as its window
SETTLE_LINES = 2  # status lines skipped after an operation's window before a baseline window starts
OFFSET_LINES = 10  # lines whose minimum arrival-minus-uptime gives the clock offset on either side


@dataclass(frozen=True)
class Window:
    """Status lines with after < seq <= last."""

    after: int
    last: int

    @property
    def lines(self) -> int:
        return self.last - self.after

    def select(self, statuses: Sequence[Status]) -> list[Status]:
        return [s for s in statuses if self.after < s.seq <= self.last]


def operation_window(seq_at_start: int, seq_at_end: int, tail: int = TAIL_LINES) -> Window:
    """The window of an operation that started when `seq_at_start` was the last line seen and ended at
    `seq_at_end`."""
    return Window(seq_at_start, max(seq_at_end, seq_at_start) + tail)


def baseline_window(after_operation: Window, settle: int = SETTLE_LINES) -> Window:
    """As many lines as `after_operation` holds, starting `settle` lines after it (nothing going on then)."""
    start = after_operation.last + settle
    return Window(start, start + after_operation.lines)


@dataclass(frozen=True)
class WindowReading:
    gap_us: int | None  # the largest gap_us in the window; None if no line of it arrived
    missing: int  # status lines of the window that never arrived (lost or never printed)
    integrity_ok: bool


def read_window(statuses: Sequence[Status], window: Window) -> WindowReading:
    lines = window.select(statuses)
    seqs = {s.seq for s in lines}
    return WindowReading(
        gap_us=max((s.gap_us for s in lines), default=None),
        missing=window.lines - len(seqs),
        integrity_ok=all(s.integrity == "ok" for s in lines),
    )


def clock_offset_us(statuses: Sequence[Status]) -> float | None:
    """min(host arrival - guest uptime) over the lines, in us; None without arrival times."""
    offsets = [s.arrived_ns / 1000 - s.uptime_us for s in statuses if s.arrived_ns]
    return min(offsets) if offsets else None


def clock_shift_us(
    statuses: Sequence[Status], window: Window, quiet_since: int = 0, lines: int = OFFSET_LINES
) -> float | None:
    """How much the guest's clock fell behind the host's across the window (0 when the clock ran through).

    Only lines after `quiet_since` count before the window: earlier ones may predate another pause (a resume).
    """
    before = [s for s in statuses if max(window.after - lines, quiet_since) < s.seq <= window.after]
    after = [s for s in statuses if window.last < s.seq <= window.last + lines]
    if len(before) < lines // 2 or len(after) < lines // 2:
        return None
    start, end = clock_offset_us(before), clock_offset_us(after)
    if start is None or end is None:
        return None
    return end - start


def sequence_breaks(statuses: Sequence[Status]) -> int:
    """Places where the status sequence skips or repeats a number (0 for an unbroken run)."""
    return sum(1 for a, b in itertools.pairwise(statuses) if b.seq != a.seq + 1)


def realtime_to_monotonic_ns(realtime_ns: int) -> int:
    """A CLOCK_REALTIME timestamp (from a log or a QMP event) on CLOCK_MONOTONIC, the clock lines arrive on."""
    return realtime_ns - (time.time_ns() - time.monotonic_ns())


def pause_window(statuses: Sequence[Status], pause_start_ns: int, lines: int = PAUSE_LINES) -> list[Status]:
    """The first `lines` status lines that arrived after the pause began (CLOCK_MONOTONIC ns)."""
    return [s for s in statuses if s.arrived_ns > pause_start_ns][:lines]
