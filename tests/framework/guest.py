"""The test guest: build it, and read its status lines (docs/test-guest.md has the format)."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[2]
MMIO_UART = "uart=mmio:0xd0000000"


@functools.cache
def test_guest() -> Path:
    """Build guest/build/testguest.elf (incremental) and return its path."""
    out = subprocess.run(
        [str(REPO / "guest" / "build-testguest.sh")], check=True, capture_output=True, text=True, timeout=300
    )
    return Path(out.stdout.strip().splitlines()[-1])


def line_fields(line: str, skip: int = 2) -> dict[str, str]:
    """The key=value tokens of a console line after its first `skip` words."""
    return dict(token.split("=", 1) for token in line.split()[skip:] if "=" in token)


@dataclass(frozen=True)
class StatusLine:
    """The figures every `hsg: status` line has; Status here and bench.guest.Status add what their users need."""

    seq: int
    cpus: int
    steps: int
    passes: int
    ticks: int
    integrity: str
    gap_us: int
    maxgap_us: int
    uptime_us: int

    @classmethod
    def from_fields(cls, fields: dict[str, str], **more: Any) -> Self:
        """The line's figures from its line_fields(), plus the subclass's own `more`.

        Raises KeyError or ValueError when a figure is missing or not a number.
        """
        return cls(
            seq=int(fields["seq"]),
            cpus=int(fields["cpus"]),
            steps=int(fields["steps"]),
            passes=int(fields["passes"]),
            ticks=int(fields["ticks"]),
            integrity=fields["integrity"],
            gap_us=int(fields["gap_us"]),
            maxgap_us=int(fields["maxgap_us"]),
            uptime_us=int(fields["uptime_us"]),
            **more,
        )


BASE_KEYS = {f.name for f in dataclasses.fields(StatusLine)}


@dataclass(frozen=True)
class Status(StatusLine):
    extra: dict[str, int] = field(default_factory=dict)  # device keys (blk_acked, net_rx, rng_bytes, ...) if present

    @classmethod
    def from_line(cls, line: str) -> Status:
        status = cls.parse(line)
        if status is None:
            raise ValueError(f"not a status line: {line!r}")
        return status

    @classmethod
    def parse(cls, line: str) -> Status | None:
        if not line.startswith("hsg: status "):
            return None
        fields = line_fields(line)
        return cls.from_fields(fields, extra={key: int(value) for key, value in fields.items() if key not in BASE_KEYS})


def complete_lines(text: str) -> list[str]:
    """The lines of `text` that are complete (a line still being printed has no newline yet)."""
    lines = text.split("\n")
    return [line.strip() for line in lines[:-1]]


def statuses(text: str) -> list[Status]:
    return [s for s in (Status.parse(line) for line in complete_lines(text)) if s is not None]


def guest_cmdline(ws: str = "16M", status_ms: int = 100, extra: str = "") -> str:
    return f"{MMIO_UART} ws={ws} status_ms={status_ms} {extra}".strip()
