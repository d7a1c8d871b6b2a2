"""--vcpu-cpus/--vmm-cpus on a real guest: where each thread runs, before and after live upgrades, and the
priorities an upgrade leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from framework.guest import guest_cmdline
from framework.vmm import GuestVm
from test_upgrade import assert_continues

pytestmark = pytest.mark.kvm


def threads(pid: int) -> dict[int, tuple[str, str, int]]:
    """tid -> (comm, allowed CPUs as the kernel lists them, nice; -100 for a thread not in SCHED_OTHER)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        comm = Path(f"{base}/comm").read_text().strip()
        allowed = next(
            line.split(":", 1)[1].strip()
            for line in Path(f"{base}/status").read_text().splitlines()
            if line.startswith("Cpus_allowed_list:")
        )
        stat = Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()  # fields 3.. of proc(5)
        policy, nice = int(stat[38]), int(stat[16])
        if policy != os.SCHED_OTHER:
            nice = -100
        found[int(tid)] = (comm, allowed, nice)
    return found


def two_cpus() -> tuple[int, int]:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip(f"placement needs 2 CPUs; this process may use only {allowed}")
    return allowed[0], allowed[-1]


def assert_placed(pid: int, vmm_cpu: int, vcpu_cpu: int) -> None:
    seen = threads(pid)
    vcpus = [info for info in seen.values() if info[0] == "vcpu0"]
    assert [allowed for _, allowed, _ in vcpus] == [str(vcpu_cpu)], seen
    others = {comm: allowed for comm, allowed, _ in seen.values() if comm != "vcpu0"}
    assert set(others.values()) == {str(vmm_cpu)}, seen
    assert any(comm.startswith("kvm-") for comm in others), f"KVM's worker is not among the VMM's tasks: {seen}"
    # The successor started SCHED_IDLE (a pinned VMM's helpers do): every thread of it is back to normal.
    assert {nice for _, _, nice in seen.values()} == {0}, f"a thread runs at another priority: {seen}"


def test_vcpus_and_vmm_stay_on_their_cpus_across_upgrades(vm: GuestVm, guest_elf: Path) -> None:
    vmm_cpu, vcpu_cpu = two_cpus()
    vm.start(guest_elf, guest_cmdline(status_ms=50), 1, "256M", "--vcpu-cpus", str(vcpu_cpu))
    before = vm.wait_statuses(2)
    config = vm.info()["config"]
    assert (config["vcpu_cpus"], config["vmm_cpus"]) == ([vcpu_cpu], [vmm_cpu])
    assert_placed(vm.pid or 0, vmm_cpu, vcpu_cpu)
    for generation in (2, 3):
        result = vm.upgrade()
        assert result["generation"] == generation
        assert_placed(result["new_pid"], vmm_cpu, vcpu_cpu)
    assert_continues(vm, before)


def test_unpinned_vmm_runs_anywhere_at_normal_priority(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50))
    vm.wait_statuses(1)
    result = vm.upgrade()
    everywhere = os.sched_getaffinity(0)
    for comm, allowed, nice in threads(result["new_pid"]).values():
        assert nice == 0, f"{comm} runs at nice {nice} after the upgrade"
        cpus = {int(c) for part in allowed.split(",") for c in _expand(part)}
        assert cpus >= everywhere, f"{comm} was restricted to {allowed}"
    assert "vcpu_cpus" not in vm.info()["config"]


def test_vmm_cpus_alone_leave_the_vcpus_anywhere(vm: GuestVm, guest_elf: Path) -> None:
    vmm_cpu, _ = two_cpus()
    vm.start(guest_elf, guest_cmdline(status_ms=50), 1, "256M", "--vmm-cpus", str(vmm_cpu))
    vm.wait_statuses(1)
    everywhere = os.sched_getaffinity(0)

    def check(pid: int) -> None:
        for comm, allowed, _nice in threads(pid).values():
            cpus = {c for part in allowed.split(",") for c in _expand(part)}
            if comm == "vcpu0":
                assert cpus >= everywhere, f"the vCPU thread was restricted to {allowed}"
            else:
                assert cpus == {vmm_cpu}, f"{comm} runs on {allowed}, not the VMM's CPU {vmm_cpu}"

    check(vm.pid or 0)
    check(vm.upgrade()["new_pid"])


def _expand(part: str) -> range:
    low, _, high = part.partition("-")
    return range(int(low), int(high or low) + 1)


def test_upgrade_command_follows_the_vmm_cpus() -> None:
    vmm_cpu, _ = two_cpus()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        os.sched_setaffinity(sleeper.pid, {vmm_cpu})
        code = (
            "import os; from hotswap.machine.affinity import follow_process; "
            f"follow_process({sleeper.pid}, frozenset(os.sched_getaffinity(0))); print(sorted(os.sched_getaffinity(0)))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"[{vmm_cpu}]"
    finally:
        sleeper.kill()
        sleeper.wait()


PLACE_EARLY = (
    "import os, sys; from hotswap.upgrade_placement import place_early; "
    "placed = place_early(sys.argv[1:]); "
    "print(placed, sorted(os.sched_getaffinity(0)), os.sched_getscheduler(0) == os.SCHED_IDLE)"
)


def test_upgrade_command_places_itself_before_its_imports(vm: GuestVm, guest_elf: Path) -> None:
    """`hotswap upgrade NAME` of a pinned VMM moves onto the VMM's CPUs at idle priority first thing
    (hotswap/upgrade_placement.py), before it imports the rest of hotswap; an unpinned one leaves it as it was."""
    vmm_cpu, vcpu_cpu = two_cpus()
    vm.start(guest_elf, guest_cmdline(status_ms=50), 1, "256M", "--vcpu-cpus", str(vcpu_cpu))
    vm.wait_statuses(1)

    def place(*argv: str) -> str:
        env = {**os.environ, **vm.env}
        return subprocess.run(
            [sys.executable, "-c", PLACE_EARLY, *argv], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()

    assert place("upgrade", vm.name) == f"True [{vmm_cpu}] True"
    assert place("--log-level", "info", "upgrade", "--pid", str(vm.pid), "--json") == f"True [{vmm_cpu}] True"
    everywhere = sorted(os.sched_getaffinity(0))
    assert place("upgrade", "--all") == f"False {everywhere} False"
    assert place("upgrade", "no-such-vm") == f"False {everywhere} False"
    # The real entry (the installed `hotswap` script and `python -m hotswap`) places itself before parsing:
    # `--help` ends the command in its parser, and an atexit handler reports where it ran by then.
    entry = (
        "import atexit, os, sys; atexit.register(lambda: print('placed', sorted(os.sched_getaffinity(0)), "
        "os.sched_getscheduler(0) == os.SCHED_IDLE)); sys.argv = ['hotswap', *sys.argv[1:]]; "
        "from hotswap.__main__ import run; run()"
    )
    shown = subprocess.run(
        [sys.executable, "-c", entry, "upgrade", vm.name, "--help"],
        capture_output=True, text=True, check=True, env={**os.environ, **vm.env},
    ).stdout  # fmt: skip
    assert shown.splitlines()[-1] == f"placed [{vmm_cpu}] True", shown
    # And the real command still upgrades (its own placement per VM follows after parsing).
    assert vm.upgrade()["generation"] == 2
