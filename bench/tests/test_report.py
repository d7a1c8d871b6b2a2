"""Summary statistics, the table printer and recording: no KVM needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report
from bench.report import BenchError, Latency, Table, Throughput, percentile


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == 50
    assert percentile([7.0], 99) == 7.0
    assert percentile([3, 1, 2], 1) == 1  # unsorted input


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(BenchError, match="no values"):
        percentile([], 50)
    with pytest.raises(BenchError, match="outside"):
        percentile([1], 0)


def test_latency_and_throughput_summaries() -> None:
    lat = Latency.of([5.0, 1.0, 3.0, 100.0])
    assert (lat.n, lat.median, lat.p99, lat.max) == (4, 4.0, 100.0, 100.0)
    assert lat.cells(scale=0.5, digits=1) == ["2.0", "50.0", "50.0"]
    thr = Throughput.of([2.0, 9.0, 4.0, 1.0, 3.0])
    assert (thr.min, thr.median, thr.max) == (1.0, 3.0, 9.0)


def test_table_aligns_numbers_right_and_text_left() -> None:
    table = Table(["name", "ms"], caption="cap")
    table.add("a", "1.50")
    table.add("longer", "12.25")
    lines = table.render().splitlines()
    assert lines[0] == "cap"
    assert lines[1] == "name       ms"
    assert lines[3] == "a        1.50"
    assert lines[4] == "longer  12.25"


def test_table_rejects_a_short_row() -> None:
    with pytest.raises(BenchError, match="2 columns"):
        Table(["a", "b"]).add("only one")


def test_ratio_and_fmt() -> None:
    assert report.ratio(3.0, 1.5) == "2.00x"
    assert report.ratio(1.0, 0.0) == "-"
    assert report.ratio(None, 1.0) == "-"
    assert report.fmt(None) == "-"
    assert report.fmt(1.234, 1) == "1.2"


def test_record_appends_with_machine_commit_and_command(tmp_path: Path) -> None:
    target = tmp_path / "benchmarks.md"
    target.write_text("# header\n")
    table = Table(["x"])
    table.add("1")
    report.record("a title", [table, table], ["a note"], path=target)
    text = target.read_text()
    assert text.startswith("# header\n### a title\n")
    assert text.count("```") == 4 and "- a note" in text
    for label in ("- date: ", "- machine: Linux ", "cores", "GiB RAM", "- commit: ", "- command: `"):
        assert label in text


def test_record_needs_the_results_file(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="does not exist"):
        report.record("t", Table(["x"]), [], path=tmp_path / "missing.md")
