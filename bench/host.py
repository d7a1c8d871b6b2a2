"""What else ran on the host during a benchmark: its load average, and the processes outside the benchmark that
used CPU time while it ran (other engineers' tests share this 2-core machine; the figures must say so)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command, user + system CPU seconds) for every process now."""
    found: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = command.strip() or stat[stat.find("(") + 1 : stat.rfind(")")]
        found[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def _ours() -> set[int]:
    """This process and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    ours, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo += children.get(pid, [])
    return ours


def _loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


@dataclass
class HostWatch:
    """Snapshot at start; `summary()` at the end names the busy outsiders (alive at both ends, > min_share CPU)."""

    started: float = field(default_factory=time.monotonic)
    load_at_start: str = field(default_factory=_loadavg)
    cpu_at_start: dict[int, tuple[str, float]] = field(default_factory=_cpu_seconds)

    def summary(self, exclude_tag: str | None = None, min_share: float = 0.02) -> str:
        wall = max(time.monotonic() - self.started, 1e-9)
        ours = _ours()
        now = _cpu_seconds()
        busy = []
        for pid, (name, seconds) in now.items():
            if pid in ours or pid not in self.cpu_at_start or (exclude_tag and exclude_tag in name):
                continue
            used = seconds - self.cpu_at_start[pid][1]
            if used / wall >= min_share:
                busy.append((used, pid, name))
        busy.sort(reverse=True)
        outsiders = "; ".join(f"pid {pid} `{name[:70]}` {used:.0f} s CPU" for used, pid, name in busy[:5]) or "none"
        return (
            f"host during the run ({wall / 60:.1f} min): load average {self.load_at_start} at the start, "
            f"{_loadavg()} at the end; other long-running processes using >= {min_share:.0%} of a CPU: {outsiders}"
        )
