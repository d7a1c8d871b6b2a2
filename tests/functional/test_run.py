"""The foundation on a real guest: boot the test guest, watch it work, list it, pause and resume it, stop it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from framework.guest import guest_cmdline, statuses
from framework.vmm import HOTSWAP, GuestVm, kill_pids, pids_with_tag

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("cpus", [1, 2])
def test_test_guest_boots_and_works(vm: GuestVm, guest_elf: Path, cpus: int) -> None:
    vm.start(guest_elf, guest_cmdline(), cpus=cpus)
    lines = vm.wait_statuses(6)
    assert f"hsg: boot cpus={cpus}" in vm.output()
    assert all(f"hsg: cpu {i} " in vm.output() for i in range(cpus))
    assert [s.seq for s in lines] == list(range(lines[0].seq, lines[0].seq + len(lines)))
    assert all(s.integrity == "ok" and s.cpus == cpus for s in lines)
    assert lines[-1].steps > lines[0].steps  # the ring-3 workload makes progress
    assert lines[-1].passes > lines[0].passes  # and completes generations over its working set
    assert lines[-1].ticks > lines[0].ticks  # LAPIC timer interrupts arrive


def test_ls_shows_running_vm(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    vm.wait_statuses(1)
    rows = json.loads(vm.cli("ls", "--json").stdout)
    assert [(r["name"], r["pid"], r["state"]) for r in rows] == [(vm.name, vm.pid, "running")]
    text = vm.cli("ls").stdout
    assert vm.name in text and str(vm.pid) in text


def test_pause_stops_the_guest_and_resume_continues_it(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50))
    vm.wait_statuses(3)
    assert json.loads(vm.cli("pause", vm.name, "--json").stdout)["state"] == "paused"
    time.sleep(0.3)  # a status line being printed when the pause came has finished by now
    frozen = vm.output()
    time.sleep(1.0)
    assert vm.output() == frozen, "the guest printed while paused"
    last = statuses(frozen)[-1]
    vm.cli("resume", vm.name)
    after = vm.wait_statuses(2, after=last.seq)
    assert after[0].seq == last.seq + 1  # the counter continues where it stopped
    assert after[0].steps > last.steps
    # The guest measured the pause itself (TSC in ring 3): a gap of about the 1.3 s we kept it paused.
    assert after[0].gap_us >= 1_000_000
    assert all(s.integrity == "ok" for s in after)


def test_stop_ends_the_vmm_and_cleans_up(vm: GuestVm, guest_elf: Path, run_dir: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    vm.wait_statuses(1)
    vm.cli("stop", vm.name)
    deadline = time.monotonic() + 10
    while pids_with_tag(vm.tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids_with_tag(vm.tag) == []
    assert not (run_dir / f"{vm.name}.sock").exists()
    assert json.loads(vm.cli("ls", "--json").stdout) == []


def test_guest_reset_ends_the_vmm_with_status_0(run_dir: Path, guest_elf: Path) -> None:
    tag = "reset-" + os.urandom(4).hex()
    env = {**os.environ, "HOTSWAP_RUN_DIR": str(run_dir), "HOTSWAP_TEST_TAG": tag}
    try:
        result = subprocess.run(
            [
                *HOTSWAP,
                "run",
                "--kernel",
                str(guest_elf),
                "--cmdline",
                guest_cmdline(extra="exit_after=3"),
                "--mem",
                "128M",
                "--name",
                "fg",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        kill_pids(pids_with_tag(tag))
    assert result.returncode == 0, result.stderr
    assert len(statuses(result.stdout)) == 3 and "hsg: exit" in result.stdout
    assert "reset" in result.stderr and "Traceback" not in result.stderr
