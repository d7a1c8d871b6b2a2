"""Parsing the test guest's console lines (docs/test-guest.md): no KVM needed."""

from __future__ import annotations

import pytest

from bench.guest import Status, boot_tsc_khz, cmdline
from bench.report import BenchError

LINE = (
    "hsg: status seq=12 cpus=2 steps=1289193 passes=280 ticks=23 integrity=ok gap_us=12187 maxgap_us=12517 "
    "uptime_us=1303513 newkey=1"
)


def test_status_line_parses_with_its_arrival_time() -> None:
    status = Status.parse(LINE, arrived_ns=42)
    assert status == Status(12, 2, 1289193, 280, 23, "ok", 12187, 12517, 1303513, 42)


@pytest.mark.parametrize("line", ["hsg: boot cpus=1", "hsg: status seq=1 cpus=2", "hsg: status seq=x " + LINE[16:]])
def test_other_or_cut_lines_are_not_statuses(line: str) -> None:
    assert Status.parse(line) is None


def test_boot_line_tsc() -> None:
    assert boot_tsc_khz("hsg: boot cpus=2 ws=1 tsc_khz=2596212 tsc_source=pit") == 2596212
    with pytest.raises(BenchError):
        boot_tsc_khz("hsg: ready")


def test_cmdline() -> None:
    assert cmdline("mmio", "400M", 20, 2596212) == "uart=mmio ws=400M status_ms=20 tsc_khz=2596212"
    assert cmdline() == "uart=port ws=16M status_ms=20"
