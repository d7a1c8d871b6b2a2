"""The soak's per-line checks catch what they claim to: no KVM needed."""

from __future__ import annotations

from bench.guest import Status
from bench.soak import Checker


def line(seq: int, steps: int | None = None, ticks: int | None = None, uptime: int | None = None,
         integrity: str = "ok") -> Status:  # fmt: skip
    return Status(
        seq, 1, steps if steps is not None else seq * 100, seq, ticks if ticks is not None else seq, integrity, 5, 5,
        uptime if uptime is not None else seq * 1000,
    )  # fmt: skip


def test_an_unbroken_run_passes_and_lines_are_checked_once() -> None:
    checker = Checker()
    assert checker.check([line(1), line(2)]) == []
    assert checker.check([line(1), line(2), line(3)]) == []
    assert checker.checked == 3


def test_each_kind_of_problem_is_reported() -> None:
    checker = Checker()
    checker.check([line(1)])
    assert checker.check([line(3)]) == ["status lines 2..2 missing"]
    assert checker.check([line(4, steps=300)]) == ["steps did not advance at seq 4"]
    assert checker.check([line(5, ticks=1)]) == ["a counter went backwards at seq 5"]
    assert checker.check([line(6, uptime=1)]) == ["uptime did not advance at seq 6"]
    assert checker.check([line(7, integrity="FAIL")]) == ["integrity FAIL at seq 7"]
