"""Live upgrade on a real guest: the guest keeps running, once, with its counters and memory intact."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from framework.guest import Status, guest_cmdline, statuses
from framework.vmm import GuestVm, pids_with_tag

pytestmark = pytest.mark.kvm


def assert_continues(vm: GuestVm, before: list[Status], count: int = 3) -> list[Status]:
    """The guest goes on from where it was: same boot, counters rising, integrity ok, timer ticking."""
    last = before[-1]
    after = vm.wait_statuses(count, after=last.seq)
    output = vm.output()
    assert output.count("hsg: boot ") == 1, "the guest rebooted"
    seqs = [s.seq for s in statuses(output)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "status lines were lost or repeated"
    assert after[-1].steps > last.steps and after[-1].passes >= last.passes
    assert after[-1].ticks > last.ticks, "timer interrupts stopped arriving"
    assert after[-1].uptime_us > last.uptime_us
    assert all(s.integrity == "ok" for s in statuses(output))
    return after


def vmm_pids(vm: GuestVm) -> list[int]:
    """VMM processes of this VM (successors included), waiting briefly for an exiting one to go."""
    deadline = time.monotonic() + 5
    pids = pids_with_tag(vm.tag)
    while len(pids) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = pids_with_tag(vm.tag)
    return pids


@pytest.mark.parametrize("cpus", [1, 2])
def test_upgrade_hands_the_guest_to_a_new_process(vm: GuestVm, guest_elf: Path, cpus: int) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50), cpus=cpus)
    old_pid = vm.pid
    before = vm.wait_statuses(3)
    result = vm.upgrade()
    assert result["old_pid"] == old_pid and result["new_pid"] != old_pid
    assert result["generation"] == 2 and result["guest_memory_copied_bytes"] == 0
    assert result["downtime_us"] > 0
    # The successor published its staged registry record before the command returned, and left nothing else.
    assert json.loads((vm.run_dir / f"{vm.name}.json").read_text())["pid"] == result["new_pid"]
    assert not list(vm.run_dir.glob("*.tmp")), "a staged registry record was left behind"
    # Protocol 5: the vCPUs went as records in shared memory, taken by the successor's vCPU threads before its
    # main thread looked for them.
    assert result["vcpu_records"] is True
    restore = result["restore_detail_us"]
    assert {"vcpus_us", "vcpus_wait_us", "vcpus_lead_us"} <= set(restore) and "vcpus_unpack_us" not in restore
    assert result["state_bytes"] > cpus * 4096  # each record holds at least the XSAVE area
    # The old VMM's side, part by part: the parts tile the capture phase (each rounded down to whole us).
    capture = result["capture_detail_us"]
    assert set(capture) == {"vcpus_us", "platform_us", "platform_pack_us"}
    assert all(v >= 0 for v in capture.values()) and sum(capture.values()) <= result["phases_us"]["capture"] + 5
    assert sum(capture.values()) >= result["phases_us"]["capture"] - 5
    assert capture["vcpus_us"] > 0  # reading a vCPU is ten ioctls: never under a microsecond
    assert vmm_pids(vm) == [result["new_pid"]], "exactly one VMM must run the guest"
    info = vm.info()
    assert (info["pid"], info["generation"], info["state"]) == (result["new_pid"], 2, "running")
    assert_continues(vm, before)


def test_a_successor_that_declines_the_vcpu_records_gets_state_vcpus(run_dir: Path, guest_elf: Path) -> None:
    """The old VMM's fallback when the successor does not take the vCPUs as records (another layout, in real life;
    here a fault makes it decline): STATE_VCPUS then STATE, as in protocol 4, and the guest runs on."""
    vm = GuestVm(run_dir, env={"HOTSWAP_FAULT": "successor@2:records:decline"})
    try:
        vm.start(guest_elf, guest_cmdline(status_ms=50), cpus=2)
        before = vm.wait_statuses(3)
        result = vm.upgrade()
        assert result["vcpu_records"] is False
        assert set(result["capture_detail_us"]) == {
            "vcpus_us", "vcpus_send_us", "platform_us", "platform_pack_us"}  # fmt: skip
        assert {"vcpus_unpack_us", "vcpus_parse_us", "vcpus_us"} <= set(result["restore_detail_us"])
        assert vmm_pids(vm) == [result["new_pid"]]
        seen = assert_continues(vm, before)
        assert vm.upgrade()["vcpu_records"] is True, "the fault fires once: the next successor takes the records"
        assert_continues(vm, seen, count=1)
    finally:
        vm.kill()


def test_ten_upgrades_in_a_row(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50), cpus=2)
    seen = vm.wait_statuses(2)
    pids = {vm.pid}
    for generation in range(2, 12):
        result = vm.upgrade()
        assert result["generation"] == generation
        pids.add(result["new_pid"])
        seen = assert_continues(vm, seen, count=1)
    assert len(pids) == 11
    assert vmm_pids(vm) == [vm.pid]


def test_console_client_and_api_path_survive(vm: GuestVm, guest_elf: Path, run_dir: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50))
    vm.wait_statuses(2)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(run_dir / f"{vm.name}.console"))
    client.settimeout(10)
    try:
        received = b""
        while b"hsg: status" not in received:
            received += client.recv(65536)
        result = vm.upgrade()
        # Lines printed by the guest after the upgrade reach the same connection, now served by the new VMM.
        marker = vm.wait_statuses(2, after=vm.statuses()[-1].seq)[-1]
        text = ""
        while f"seq={marker.seq} " not in text:
            chunk = client.recv(65536)
            assert chunk, "the console connection was closed by the upgrade"
            text += chunk.decode(errors="replace")
    finally:
        client.close()
    assert json.loads(vm.cli("info", vm.name, "--json").stdout)["pid"] == result["new_pid"]


def test_upgrade_of_a_paused_vm_is_refused(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    vm.wait_statuses(1)
    vm.cli("pause", vm.name)
    result = vm.cli("upgrade", vm.name, check=False)
    assert result.returncode != 0 and "paused" in result.stderr
    vm.cli("resume", vm.name)
    assert vm.info()["generation"] == 1


def test_upgrade_with_a_missing_executable_is_refused(vm: GuestVm, guest_elf: Path, run_dir: Path) -> None:
    vm.start(guest_elf, guest_cmdline())
    before = vm.wait_statuses(1)
    result = vm.cli("upgrade", vm.name, "--exec", str(run_dir / "nope"), check=False)
    assert result.returncode != 0 and "not an executable" in result.stderr
    assert "Traceback" not in result.stderr
    assert_continues(vm, before, count=2)


def test_exec_mode_keeps_the_pid(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50), cpus=2)
    pid = vm.pid
    before = vm.wait_statuses(2)
    result = vm.upgrade("--mode", "exec")
    assert (result["mode"], result["old_pid"], result["new_pid"], result["generation"]) == ("exec", pid, pid, 2)
    assert vmm_pids(vm) == [pid]
    seen = assert_continues(vm, before)
    # A transfer-mode upgrade from the re-executed VMM works too.
    assert vm.upgrade()["generation"] == 3
    assert_continues(vm, seen)


def test_exec_mode_falls_back_when_the_new_image_cannot_take_over(run_dir: Path, guest_elf: Path) -> None:
    with GuestVm(run_dir, env={"HOTSWAP_FAULT": "exec@2:takeover:raise"}) as vm:
        vm.start(guest_elf, guest_cmdline(status_ms=50))
        pid = vm.pid
        before = vm.wait_statuses(2)
        result = vm.upgrade("--mode", "exec")
        assert result["old_pid"] == result["new_pid"] == pid
        assert "exec.takeover_failed" in vm.log()  # the first image failed; the previous command took the guest back
        assert_continues(vm, before)


def test_exec_mode_refuses_a_target_that_cannot_take_over(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, guest_cmdline(status_ms=50))
    before = vm.wait_statuses(1)
    result = vm.cli("upgrade", vm.name, "--mode", "exec", "--exec", "/bin/true", check=False)
    assert result.returncode != 0 and "cannot take over by exec" in result.stderr
    assert vm.info()["generation"] == 1
    assert_continues(vm, before)
