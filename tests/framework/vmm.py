"""A VMM started by a test: through the real CLI (`hotswap run --daemon`), with its guest's console in a file.

Every process that belongs to a test VM carries HOTSWAP_TEST_TAG=<unique> in its environment (successors inherit
it), so teardown finds each one by pid, including successors started by a VMM, and kills it. Never by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from framework.guest import Status, statuses
from framework.procs import kill_pids as kill_pids  # the tests import it from here
from framework.procs import pids_with_env

HOTSWAP = [sys.executable, "-m", "hotswap"]


def hotswap(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; `pass_fds` are fds it inherits (e.g. a tap for `--net fd=N`)."""
    result = subprocess.run(
        [*HOTSWAP, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        pass_fds=pass_fds,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"hotswap {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return result


def pids_with_tag(tag: str) -> list[int]:
    """Processes whose environment holds HOTSWAP_TEST_TAG=tag."""
    return pids_with_env("HOTSWAP_TEST_TAG", tag)


class GuestVm:
    """One VM under test. Use as a context manager (or call kill()) so nothing outlives the test."""

    def __init__(self, run_dir: Path, name: str = "t", env: dict[str, str] | None = None) -> None:
        self.run_dir = run_dir
        self.name = name
        self.tag = uuid.uuid4().hex
        self.console = run_dir / f"{name}.console.log"
        self.env = {"HOTSWAP_RUN_DIR": str(run_dir), "HOTSWAP_TEST_TAG": self.tag, **(env or {})}
        self.pid: int | None = None

    def start(
        self, kernel: Path, cmdline: str, cpus: int = 1, mem: str = "256M", *extra: str, pass_fds: Sequence[int] = ()
    ) -> GuestVm:
        """`pass_fds`: fds the VMM inherits (`--net fd=N`); the caller may close its own copies once this returns."""
        result = hotswap(
            "run",
            "--daemon",
            "--json",
            "--kernel",
            str(kernel),
            "--cmdline",
            cmdline,
            "--cpus",
            str(cpus),
            "--mem",
            mem,
            "--name",
            self.name,
            "--console-log",
            str(self.console),
            *extra,
            env=self.env,
            pass_fds=pass_fds,
        )
        self.pid = json.loads(result.stdout)["pid"]
        return self

    def __enter__(self) -> GuestVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        kill_pids(pids_with_tag(self.tag))

    # -- talking to it ----------------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return hotswap(*args, env=self.env, check=check, timeout=timeout)

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cli("info", self.name, "--json").stdout)
        self.pid = data["pid"]
        return data

    def upgrade(self, *args: str) -> dict[str, Any]:
        result = self.cli("upgrade", self.name, "--json", *args)
        data: dict[str, Any] = json.loads(result.stdout)
        self.pid = data["new_pid"]
        return data

    # -- the guest's output -----------------------------------------------------------------------------------
    def output(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def statuses(self) -> list[Status]:
        return statuses(self.output())

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0, what: str = "output") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if predicate(text):
                return text
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}; console so far:\n{self.output()[-3000:]}"
        )

    def wait_statuses(self, count: int, after: int = 0, timeout: float = 30.0) -> list[Status]:
        """Wait until `count` status lines with seq > after exist; return those."""
        self.wait_for(
            lambda t: len([s for s in statuses(t) if s.seq > after]) >= count,
            timeout,
            f"{count} status lines after seq {after}",
        )
        return [s for s in self.statuses() if s.seq > after]

    def log(self) -> str:
        try:
            return (self.run_dir / f"{self.name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
