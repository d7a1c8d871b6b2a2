"""What every benchmark shares: summary statistics, an aligned text table, and recording it in docs/benchmarks.md.

Percentiles use the nearest-rank method (p99 of 100 samples is the 99th smallest), so every figure printed is a
value that was actually measured.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "benchmarks.md"


_tree: str | None = None  # what hotswap ran from, when it was not this working tree (bench/snapshot.py)


def set_tree(description: str | None) -> None:
    global _tree
    _tree = description


class BenchError(Exception):
    """A benchmark could not measure what it set out to (the message names the step)."""


# -- statistics ------------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, 0 < p <= 100."""
    if not values:
        raise BenchError("percentile: no values")
    if not 0 < p <= 100:
        raise BenchError(f"percentile: p={p} is outside (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class Latency:
    """median / p99 / max of a latency sample (>= 100 values for a recorded figure)."""

    n: int
    median: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency:
        if not values:
            raise BenchError("latency summary: no values")
        return cls(len(values), statistics.median(values), percentile(values, 99), max(values))

    def cells(self, scale: float = 1.0, digits: int = 2) -> list[str]:
        return [fmt(self.median * scale, digits), fmt(self.p99 * scale, digits), fmt(self.max * scale, digits)]


@dataclass(frozen=True)
class Throughput:
    """min / median / max of a throughput sample (>= 5 values for a recorded figure)."""

    n: int
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Throughput:
        if not values:
            raise BenchError("throughput summary: no values")
        return cls(len(values), min(values), statistics.median(values), max(values))

    def cells(self, scale: float = 1.0, digits: int = 2) -> list[str]:
        return [fmt(self.min * scale, digits), fmt(self.median * scale, digits), fmt(self.max * scale, digits)]


def median_of(summary: Throughput | None) -> float | None:
    """The summary's median; None for a series without values."""
    return summary.median if summary is not None else None


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell; '-' when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "-"
    return f"{numerator / denominator:.{digits}f}x"


# -- tables ----------------------------------------------------------------------------------------------------
@dataclass
class Table:
    """An aligned text table: text columns left-aligned, numeric ones right-aligned."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""  # a line printed above the table

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.headers):
            raise BenchError(f"table: row has {len(cells)} cells, the table has {len(self.headers)} columns")
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        numeric = [all(_looks_numeric(row[i]) for row in self.rows) and bool(self.rows) for i in range(len(widths))]

        def line(cells: list[str]) -> str:
            parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
            return "  ".join(parts).rstrip()

        rule = "  ".join("-" * w for w in widths)
        caption = [self.caption] if self.caption else []
        return "\n".join([*caption, line(self.headers), rule, *(line(r) for r in self.rows)])


def _looks_numeric(cell: str) -> bool:
    text = cell.rstrip("x%").replace("/", "").replace(".", "", 1).lstrip("-+")
    return cell in ("-", "") or text.isdigit()


# -- where and when --------------------------------------------------------------------------------------------
def machine_description() -> str:
    cpu = "unknown CPU"
    mem_kib = 0
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                mem_kib = int(text.split()[1])
                break
    except OSError:
        pass
    return (
        f"Linux {platform.release()}, {cpu}, {os.cpu_count()} cores, {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"Python {platform.python_version()}"
    )


def git_description() -> str:
    """The commit of this checkout, and how many paths differ from it (when the benchmark started)."""
    return _GIT_AT_START


def _git_now() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout

    commit = git("rev-parse", "--short=12", "HEAD").strip() or "unknown"
    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return f"{commit} (dirty: {len(changed)} paths differ)" if changed else commit


_GIT_AT_START = _git_now()  # taken on import, as a benchmark starts: the code it runs is this code


def load_average() -> str:
    try:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    except (OSError, ValueError):
        return "unknown"
    return f"{one} / {five} / {fifteen}"


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, "-m", _module_name(), *sys.argv[1:]])


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name)
    return Path(sys.argv[0]).stem


# -- recording -------------------------------------------------------------------------------------------------
def _tables(table: Table | Sequence[Table]) -> list[Table]:
    return [table] if isinstance(table, Table) else list(table)


def render_record(
    title: str, table: Table | Sequence[Table], notes: Sequence[str], when: datetime.datetime | None = None
) -> str:
    stamp = (when or datetime.datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"### {title}",
        "",
        f"- date: {stamp}",
        f"- machine: {machine_description()}",
        f"- commit: {_tree}; benchmark scripts from the working tree at {git_description()}"
        if _tree
        else f"- commit: {git_description()}",
        f"- command: `{command_line()}`",
        f"- load average (1/5/15 min) when recorded: {load_average()}",
        "",
    ]
    for part in _tables(table):
        lines += ["```", part.render(), "```", ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n\n"


def record(title: str, table: Table | Sequence[Table], notes: Sequence[str], path: Path = RESULTS) -> None:
    """Append the table with its date, machine, commit and command line to docs/benchmarks.md."""
    text = render_record(title, table, notes)
    if not path.exists():
        raise BenchError(f"record: {path} does not exist (it carries the header that explains the figures)")
    with path.open("a") as out:
        out.write(text)


def emit(title: str, table: Table | Sequence[Table], notes: Sequence[str], save: bool) -> None:
    """Print the table (always) and record it (with --record)."""
    print(f"\n{title}\n")
    for part in _tables(table):
        print(part.render())
        print()
    for note in notes:
        print(f"  - {note}")
    if save:
        record(title, table, notes)
        print(f"\nrecorded in {RESULTS.relative_to(REPO)}")


# -- command line ----------------------------------------------------------------------------------------------------
def add_record_options(parser: argparse.ArgumentParser, what: str = "table") -> None:
    """`--record` and `--note`, which emit() reads: `what` is "table" or "tables", as the benchmark prints."""
    parser.add_argument("--record", action="store_true", help=f"append the {what} to docs/benchmarks.md")
    parser.add_argument("--note", action="append", default=[], help=f"a note to record with the {what} (repeatable)")


def pick_subset(parser: argparse.ArgumentParser, option: str, text: str, known: Sequence[str]) -> list[str]:
    """The comma-separated names in `text`, in `known`'s order; an unknown or no name is a usage error."""
    chosen = {name for name in text.split(",") if name}
    unknown = chosen - set(known)
    if unknown or not chosen:
        parser.error(f"{option}: unknown {', '.join(sorted(unknown)) or 'empty list'}")
    return [name for name in known if name in chosen]
