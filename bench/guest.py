"""The test guest as the benchmarks use it: its image, its command line, and its status lines
(docs/test-guest.md has the format)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from framework.guest import StatusLine, line_fields

from bench.report import REPO, BenchError


def guest_image(root: Path = REPO) -> Path:
    """Build `root`/guest/build/testguest.elf (incremental) and return its path."""
    try:
        out = subprocess.run(
            [str(root / "guest" / "build-testguest.sh")], check=True, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"building the test guest: {exc}") from exc
    path = Path(out.stdout.strip().splitlines()[-1])
    if not path.is_file():
        raise BenchError(f"building the test guest: {path} is not a file")
    return path


def console_lines(fd: int, deadline: float, awaited: str) -> Iterator[tuple[str, float]]:
    """The complete lines a VMM writes to `fd` (its stdout, a pipe), each with the time.monotonic() at which its
    chunk was read. BenchError, naming `awaited` ("boot: a status line") and the last lines, if the output ends or
    `deadline` passes first."""
    buffer = b""
    last: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{awaited}: none in time; last lines: {last}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        now = time.monotonic()
        if not chunk:
            raise BenchError(f"{awaited}: the VMM closed its output first; last lines: {last}")
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace").strip("\r\n\x00 ")
            last = [*last[-4:], line]
            yield line, now


def cmdline(uart: str = "port", ws: str = "16M", status_ms: int = 20, tsc_khz: int | None = None) -> str:
    """The guest's command line; `uart` is `port` (COM1, the only UART QEMU microvm has) or `mmio` (hotswap)."""
    words = [f"uart={uart}", f"ws={ws}", f"status_ms={status_ms}"]
    if tsc_khz:
        words.append(f"tsc_khz={tsc_khz}")
    return " ".join(words)


@dataclass(frozen=True)
class Status(StatusLine):
    """One `hsg: status` line, with the host time (CLOCK_MONOTONIC, ns) at which the benchmark received it."""

    arrived_ns: int = 0

    @classmethod
    def parse(cls, line: str, arrived_ns: int = 0) -> Status | None:
        """The status line's fields, or None for any other line (or a status line cut short)."""
        if not line.startswith("hsg: status "):
            return None
        try:
            return cls.from_fields(line_fields(line), arrived_ns=arrived_ns)
        except (KeyError, ValueError):
            return None


def boot_tsc_khz(line: str) -> int:
    """tsc_khz from the guest's `hsg: boot` line."""
    if not line.startswith("hsg: boot "):
        raise BenchError(f"reading tsc_khz: not a boot line: {line!r}")
    try:
        return int(line_fields(line)["tsc_khz"])
    except (KeyError, ValueError) as exc:
        raise BenchError(f"reading tsc_khz: no number in {line!r}") from exc
