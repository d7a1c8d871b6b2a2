"""What else ran on the host during a benchmark: other engineers' tests share this 2-core machine, and the figures
must say so. A sampler thread reads every process's CPU time once a second and charges what each used since the
last sample to its command line, leaving out the benchmark's own processes (its children, and every VMM carrying a
HOTSWAP_BENCH_TAG, which successors inherit). Processes that live less than a second between two samples are
counted from their start, so little is missed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.hotswap_vm import TAG_VARIABLE

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 1.0


@dataclass(frozen=True)
class _Proc:
    ppid: int
    cpu_s: float
    command: str


def _processes() -> dict[int, _Proc]:
    found: dict[int, _Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        name = command or f"[{stat[stat.find('(') + 1 : stat.rfind(')')]}]"
        found[int(entry)] = _Proc(int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, name)
    return found


def _tagged(pid: int) -> bool:
    try:
        return f"{TAG_VARIABLE}=".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


@dataclass
class HostWatch:
    """Start it when the benchmark starts; `summary()` stops it and says what the others used."""

    started: float = field(default_factory=time.monotonic)
    load_at_start: str = field(default_factory=_loadavg)
    used: dict[str, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _ours: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, name="host-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        procs = _processes()
        me = os.getpid()
        for pid, proc in procs.items():
            if pid == me or proc.ppid in self._ours or (pid not in self._last and _tagged(pid)):
                self._ours.add(pid)
            if pid in self._ours:
                continue
            before = self._last.get(pid, 0.0 if not first else proc.cpu_s)
            if proc.cpu_s > before:
                name = proc.command[:80]
                self.used[name] = self.used.get(name, 0.0) + proc.cpu_s - before
            self._last[pid] = proc.cpu_s
        self._ours &= set(procs)
        self._last = {pid: cpu for pid, cpu in self._last.items() if pid in procs}

    def summary(self) -> str:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sample()
        wall = max(time.monotonic() - self.started, 1e-9)
        cores = os.cpu_count() or 1
        total = sum(self.used.values())
        busiest = sorted(self.used.items(), key=lambda item: item[1], reverse=True)[:5]
        top = "; ".join(f"`{name}` {seconds:.0f} s" for name, seconds in busiest if seconds >= 1)
        return (
            f"host during the run ({wall / 60:.1f} min): load average {self.load_at_start} at the start, "
            f"{_loadavg()} at the end; processes outside the benchmark used {total:.0f} CPU-seconds, "
            f"{total / (wall * cores):.0%} of the {cores} CPUs" + (f" (most: {top})" if top else "")
        )
