"""bench.upgrade's summaries and verdicts from synthetic runs: no KVM needed."""

from __future__ import annotations

from bench import gaps
from bench.guest import Status
from bench.subjects import Operation
from bench.upgrade_analysis import SIZES, Run, figures, tables, verdicts

MS = 1_000_000


def guest_lines(count: int, pause_at: set[int], pause_gap_us: int) -> list[Status]:
    """20 ms status lines with 0.5 ms gaps; the line after each pause carries its gap; the clock runs through."""
    return [
        Status(s, 1, s * 10, s, s, "ok", pause_gap_us if s in pause_at else 500, 0, s * 20_000, (s * 20 + 1) * MS)
        for s in range(1, count + 1)
    ]


def run_of(subject: str, size_key: str, downtime_ms: float, pause_gap_us: int, copied: int = 0) -> Run:
    size = next(s for s in SIZES if s.key == size_key)
    operations = []
    pause_at = set()
    for k in range(5):
        start = 20 + k * 20  # operation k starts after line `start`, pauses just before line start + 2 arrives
        window = gaps.operation_window(start, start + 3)
        pause_at.add(start + 2)
        operations.append(
            Operation(
                ok=True, window=window, command_s=0.5, downtime_ms=downtime_ms, stop_to_resume_ms=None,
                total_time_ms=None, copied_bytes=copied, pause_start_ns=((start + 1) * 20 + 5) * MS,
                phases_us={"restore": 500}, baseline=gaps.baseline_window(window), quiet_since=start - 12,
            )
        )  # fmt: skip
    return Run(size, subject, operations, guest_lines(150, pause_at, pause_gap_us))


def test_figures_read_the_pause_the_window_and_the_quiet_lines() -> None:
    fig = figures(run_of("hotswap", "1cpu", 0.8, 1200))
    assert fig.n == 5 and fig.failures == 0
    assert fig.downtime is not None and fig.downtime.median == 0.8
    assert fig.pause_gap is not None and fig.pause_gap.median == 1.2
    assert fig.window_gap is not None and fig.window_gap.median == 1.2
    assert fig.pause_baseline is not None and fig.pause_baseline.median == 0.5
    assert fig.line_baseline is not None and fig.line_baseline.max == 0.5
    assert fig.clock_shift is not None and fig.clock_shift.median == 0.0
    assert fig.phases["restore"].median == 0.5
    assert fig.lines_missing == 0 and fig.integrity_ok


def test_verdicts_say_met_and_missed_plainly() -> None:
    fast = [
        run_of("hotswap", "1cpu", 0.8, 1200),
        run_of("QEMU plain", "1cpu", 30.0, 40_000),
        run_of("hotswap", "16g", 0.9, 1200),
    ]
    notes = verdicts([(run, figures(run)) for run in fast])
    assert any(n.startswith("target 1 vCPU downtime") and n.endswith("MET") for n in notes)
    assert any("QEMU plain" in n and "33.33x" in n and n.endswith("MET") for n in notes)
    assert any(n.startswith("target 16 GiB") and n.endswith("MET") for n in notes)
    slow = [run_of("hotswap", "1cpu", 5.0, 9000, copied=4096), run_of("hotswap", "16g", 9.0, 9000)]
    notes = verdicts([(run, figures(run)) for run in slow])
    assert any(n.startswith("target 1 vCPU downtime") and n.endswith("MISSED") for n in notes)
    assert any(n.startswith("target 1 vCPU gap") and "MISSED" in n for n in notes)
    assert any(n.startswith("target 16 GiB") and n.endswith("MISSED") for n in notes)
    assert any("guest RAM copied: 4096.0 bytes (expected 0)" in n for n in notes)


def test_tables_have_a_row_per_run() -> None:
    runs = [run_of("hotswap", "1cpu", 0.8, 1200), run_of("QEMU plain", "1cpu", 30.0, 40_000)]
    rendered = [t.render() for t in tables([(run, figures(run)) for run in runs])]
    assert all("1 vCPU 256 MiB ws=16M" in text for text in rendered)
    assert "37.50x" in rendered[0]  # downtime p50 vs hotswap


def test_the_floors_are_set_against_the_target_and_their_parts_get_a_table() -> None:
    runs = [
        run_of("hotswap", "1cpu", 0.8, 1200),
        run_of("QEMU plain", "1cpu", 4.0, 5000),
        run_of("QEMU x-ignore-shared", "1cpu", 0.9, 3000),
        run_of("floor: pause+resume", "1cpu", 0.15, 300),
        run_of("floor: in-process move", "1cpu", 0.6, 900),
    ]
    results = [(run, figures(run)) for run in runs]
    notes = verdicts(results)
    pause = next(n for n in notes if n.startswith("floor: pause+resume"))
    assert "QEMU x-ignore-shared's gap (3.00 ms) needs 0.60 ms: the floor is below it" in pause
    move = next(n for n in notes if n.startswith("floor: in-process move ("))
    assert "gap at the pause 0.90 ms" in move
    assert "QEMU plain's gap (5.00 ms) needs 1.00 ms: the floor is below it" in move
    assert move.endswith("QEMU x-ignore-shared's gap (3.00 ms) needs 0.60 ms: the floor is ABOVE it")
    rendered = [t.render() for t in tables(results)]
    assert len(rendered) == 5
    assert rendered[-1].startswith("floor: in-process move: its parts") and "0.50 (0.50)" in rendered[-1]
