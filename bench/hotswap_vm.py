"""hotswap driven the way a user drives it: the CLI (`python -m hotswap ...`, this checkout's installed package).

Every VMM a benchmark starts carries HOTSWAP_BENCH_TAG=<unique> in its environment, which successors inherit, so
`kill()` finds each one by pid, however many upgrades happened, and kills it by pid.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.procs import kill_pids, pids_with_env

from bench.console import connect_console
from bench.placement import Placement, cpu_list
from bench.report import BenchError

HOTSWAP = [sys.executable, "-m", "hotswap"]
TAG_VARIABLE = "HOTSWAP_BENCH_TAG"


@dataclass(frozen=True)
class Upgrade:
    """One `hotswap upgrade --json`: its report and the command's wall time."""

    result: dict[str, Any]
    command_s: float

    @property
    def downtime_us(self) -> int:
        return int(self.result["downtime_us"])

    @property
    def copied_bytes(self) -> int:
        return int(self.result["guest_memory_copied_bytes"])

    @property
    def generation(self) -> int:
        return int(self.result["generation"])


class HotswapVm:
    """One daemon VM (`hotswap run --daemon`), its console socket, its successors. Use as a context manager."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.run_dir = run_dir
        self.name = name
        self.tag = uuid.uuid4().hex
        self.env = {**os.environ, "HOTSWAP_RUN_DIR": str(run_dir), TAG_VARIABLE: self.tag}
        self.pid = 0

    @property
    def console_log(self) -> Path:
        return self.run_dir / f"{self.name}.console.log"

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [*HOTSWAP, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"hotswap {args[0]}: no answer after {timeout:.0f} s") from exc
        if result.returncode != 0:
            raise BenchError(f"hotswap {' '.join(args)}: exited {result.returncode}: {result.stderr.strip()[-2000:]}")
        return result

    def start(self, kernel: Path, cmdline: str, cpus: int, mem: str, placement: Placement | None = None) -> HotswapVm:
        # The console log is for post-mortems; the benchmark reads the console socket.
        pinning = []
        if placement is not None:
            pinning = ["--vcpu-cpus", cpu_list(placement.vcpu_cpus), "--vmm-cpus", cpu_list(placement.vmm_cpus)]
        result = self.cli(
            "run", "--daemon", "--json", "--kernel", str(kernel), "--cmdline", cmdline, "--cpus", str(cpus),
            "--mem", mem, "--name", self.name, "--console-log", str(self.console_log), *pinning,
        )  # fmt: skip
        self.pid = int(json.loads(result.stdout)["pid"])
        return self

    def open_console(self) -> socket.socket:
        return connect_console(self.run_dir / f"{self.name}.console", f"hotswap {self.name}")

    def upgrade(self, timeout: float = 60.0) -> Upgrade:
        started = time.monotonic()
        result = self.cli("upgrade", self.name, "--json", timeout=timeout)
        elapsed = time.monotonic() - started
        data: dict[str, Any] = json.loads(result.stdout)
        self.pid = int(data["new_pid"])
        return Upgrade(data, elapsed)

    def pause(self) -> None:
        self.cli("pause", self.name)

    def resume(self) -> None:
        self.cli("resume", self.name)

    def pids(self) -> list[int]:
        """Every live process of this VM (a VMM, a successor being started, an old VMM on its way out)."""
        return pids_with_env(TAG_VARIABLE, self.tag)

    def settled_pids(self, timeout: float = 5.0) -> list[int]:
        """The VM's processes once an old VMM that is exiting has gone (or after `timeout`)."""
        deadline = time.monotonic() + timeout
        pids = self.pids()
        while len(pids) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = self.pids()
        return pids

    def resumed_ns(self, generation: int) -> int | None:
        """CLOCK_REALTIME (ns) at which the successor of `generation` logged that it resumed the guest.

        Read from the VMM's JSON log (its `handover.resumed` record): the upgrade report gives durations only.
        """
        try:
            text = (self.run_dir / f"{self.name}.log").read_text(errors="replace")
        except OSError:
            return None
        for line in reversed(text.splitlines()):
            if '"handover.resumed"' not in line:
                continue
            try:
                entry = json.loads(line)
                if entry.get("generation") == generation:
                    return _iso_to_ns(str(entry["timestamp"]))
            except (ValueError, KeyError):
                continue
        return None

    def log_tail(self) -> str:
        try:
            return (self.run_dir / f"{self.name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        kill_pids(self.pids())

    def __enter__(self) -> HotswapVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _iso_to_ns(stamp: str) -> int:
    moment = datetime.datetime.fromisoformat(stamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
