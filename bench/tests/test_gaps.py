"""Windows over status lines and what they read: no KVM needed."""

from __future__ import annotations

from bench import gaps
from bench.guest import Status

MS = 1_000_000  # ns


def line(
    seq: int, gap_us: int = 1000, arrived_ms: float = 0.0, uptime_ms: float = 0.0, integrity: str = "ok"
) -> Status:
    return Status(seq, 1, seq * 10, seq, seq, integrity, gap_us, gap_us, int(uptime_ms * 1000), int(arrived_ms * MS))


def test_operation_window_spans_start_to_tail_and_baseline_follows() -> None:
    window = gaps.operation_window(10, 14)
    assert window == gaps.Window(10, 16) and window.lines == 6
    assert gaps.baseline_window(window) == gaps.Window(18, 24)
    assert gaps.operation_window(10, 10) == gaps.Window(10, 12)


def test_read_window_takes_the_largest_gap_and_counts_missing_lines() -> None:
    statuses = [line(s, gap_us=1000 * s) for s in (10, 11, 12, 14, 15, 16, 17)]
    reading = gaps.read_window(statuses, gaps.Window(10, 15))
    assert reading == gaps.WindowReading(gap_us=15000, missing=1, integrity_ok=True)
    assert gaps.read_window(statuses, gaps.Window(100, 102)).gap_us is None


def test_read_window_sees_an_integrity_failure() -> None:
    statuses = [line(1), line(2, integrity="FAIL")]
    assert not gaps.read_window(statuses, gaps.Window(0, 2)).integrity_ok


def test_pause_window_takes_the_lines_that_arrived_after_the_pause_began() -> None:
    statuses = [line(s, arrived_ms=20.0 * s) for s in range(1, 10)]
    carrying = gaps.pause_window(statuses, pause_start_ns=int(65 * MS))
    assert [s.seq for s in carrying] == [4, 5]


def test_clock_shift_is_zero_when_the_clock_runs_through_and_shows_a_hidden_pause() -> None:
    # 20 ms lines; arrival = uptime + 3 ms latency (+ jitter on some lines).
    through = [line(s, arrived_ms=20.0 * s + 3 + (s % 3), uptime_ms=20.0 * s) for s in range(1, 60)]
    window = gaps.Window(20, 30)
    assert gaps.clock_shift_us(through, window) == 0.0
    # A guest whose clock stood still for 50 ms at line 25: afterwards lines arrive 50 ms "late" for their uptime.
    hidden = [line(s, arrived_ms=20.0 * s + 3 + (50 if s >= 25 else 0), uptime_ms=20.0 * s) for s in range(1, 60)]
    assert gaps.clock_shift_us(hidden, window) == 50_000.0


def test_clock_shift_ignores_lines_before_quiet_since_and_needs_enough_lines() -> None:
    statuses = [line(s, arrived_ms=20.0 * s + (500 if s <= 12 else 0), uptime_ms=20.0 * s) for s in range(1, 60)]
    window = gaps.Window(20, 30)
    assert gaps.clock_shift_us(statuses, window, quiet_since=12) == 0.0
    assert gaps.clock_shift_us(statuses, window, quiet_since=19) is None  # one line before: too few


def test_realtime_to_monotonic() -> None:
    import time

    assert abs(gaps.realtime_to_monotonic_ns(time.time_ns()) - time.monotonic_ns()) < 50 * MS


def test_sequence_breaks() -> None:
    assert gaps.sequence_breaks([line(s) for s in (1, 2, 3)]) == 0
    assert gaps.sequence_breaks([line(s) for s in (1, 3, 3, 4)]) == 2
