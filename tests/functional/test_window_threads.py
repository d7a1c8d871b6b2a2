"""Who does the pause window's work, on the real /dev/kvm: the vCPU that stops last runs the work after a pause
(a handover's capture and send) with every vCPU stopped, and a parked vCPU thread runs a restore batch posted to
it (a successor's vCPU restore) and reports what KVM refused."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from framework.guest import guest_cmdline

from hotswap.config import MachineConfig
from hotswap.errors import HotswapError
from hotswap.machine.machine import Machine, RunState
from kvm import KvmError, vcpu_state
from kvm.vcpu_state import VcpuState

pytestmark = pytest.mark.kvm


def _config(guest_elf: Path, where: Path, cpus: int) -> MachineConfig:
    return MachineConfig(
        name="window",
        mem_size=64 << 20,
        cpus=cpus,
        kernel=str(guest_elf),
        cmdline=guest_cmdline(ws="4M", status_ms=20),
        console="socket",
        console_socket=str(where / "console.sock"),
        console_log=str(where / "console.log"),
    )


@pytest.fixture
def running(guest_elf: Path, tmp_path: Path) -> Iterator[Machine]:
    """The test guest with 2 vCPUs, running in this process (its threads stop with it)."""
    machine = Machine.create(_config(guest_elf, tmp_path, cpus=2))
    try:
        machine.boot()
        time.sleep(0.3)
        yield machine
    finally:
        machine.shutdown()


@pytest.fixture
def parked(guest_elf: Path, tmp_path: Path) -> Iterator[Machine]:
    """A machine whose vCPU threads wait parked (as a successor's do before its state arrives)."""
    machine = Machine.create(_config(guest_elf, tmp_path, cpus=1))
    try:
        machine.start_paused()
        yield machine
    finally:
        machine.shutdown()


def test_work_after_pause_runs_on_the_vcpu_that_stopped_last(running: Machine) -> None:
    seen: dict[str, object] = {}
    vcpu_threads = {f"vcpu{t.index}" for t in running.vcpu_threads}

    def work() -> None:
        seen["thread"] = threading.current_thread().name
        # The others have reported paused; this one reports only once the work is done.
        seen["paused"] = sum(t.is_paused for t in running.vcpu_threads)
        seen["captured"] = running.capture_vcpus()

    window = running.pause(then=work)
    assert seen["thread"] in vcpu_threads
    assert seen["paused"] == len(running.vcpu_threads) - 1
    assert len(seen["captured"]) == 2  # type: ignore[arg-type]
    assert window.first_paused_ns <= window.last_paused_ns
    assert running.state is RunState.PAUSED and all(t.is_paused for t in running.vcpu_threads)
    running.resume()
    assert running.state is RunState.RUNNING


def test_what_the_work_raises_reaches_the_pauser_and_the_guest_can_resume(running: Machine) -> None:
    def work() -> None:
        raise ValueError("successor gone")

    with pytest.raises(ValueError, match="successor gone"):
        running.pause(then=work)
    assert running.state is RunState.PAUSED
    running.resume()
    running.pause()  # the vCPUs run and stop again normally
    running.resume()


def _with_rax(state: VcpuState, rax: int) -> VcpuState:
    regs = bytearray(state.regs)
    regs[0:8] = struct.pack("<Q", rax)
    return VcpuState(**{**state.to_dict(), "regs": bytes(regs)})  # type: ignore[arg-type]


def test_a_posted_restore_batch_runs_on_the_parked_vcpu_thread(parked: Machine) -> None:
    thread = parked.vcpu_threads[0]
    vcpu = thread.vcpu
    thread.post_batch(vcpu_state.load(vcpu, _with_rax(vcpu_state.capture(vcpu), 0xFEED_F00D)), spin_after=True)
    assert thread.wait_posted(5) >= 0
    assert struct.unpack_from("<Q", vcpu_state.capture(vcpu).regs)[0] == 0xFEED_F00D


DEBUGFS = Path("/sys/kernel/debug")


@pytest.fixture
def kvm_debugfs() -> Iterator[None]:
    """KVM's debugfs, mounted for the test if the host has not (as root; unmounted again afterwards)."""
    if (DEBUGFS / "kvm").exists() or os.geteuid() != 0:
        yield
        return
    mounted = subprocess.run(["mount", "-t", "debugfs", "debugfs", str(DEBUGFS)], capture_output=True, text=True)
    try:
        yield
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(DEBUGFS)], check=False)


def kvm_vcpu_pid(machine: Machine, index: int) -> int:
    """The thread KVM has recorded as running a vCPU (debugfs: kvm/PID-VMFD/vcpuN/pid)."""
    where = Path("/sys/kernel/debug/kvm") / f"{os.getpid()}-{machine.platform.vm.fd}" / f"vcpu{index}" / "pid"
    if not where.exists():
        pytest.skip(f"KVM's debugfs is not mounted here ({where} is missing): cannot see which thread owns a vCPU")
    return int(where.read_text())


def test_a_parked_vcpu_already_belongs_to_its_own_thread(kvm_debugfs: None, parked: Machine) -> None:
    """A successor's vCPUs are entered once from their own threads before the pause (immediate_exit: no guest
    code), so the first real entry after the resume is not the one that moves the vCPU between threads."""
    for thread in parked.vcpu_threads:
        assert thread.vcpu.immediate_exit
        assert kvm_vcpu_pid(parked, thread.index) == thread.native_id != os.getpid()


def test_a_posted_batch_that_kvm_refuses_names_the_ioctl(parked: Machine) -> None:
    thread = parked.vcpu_threads[0]
    vcpu = thread.vcpu
    state = vcpu_state.capture(vcpu)
    msrs = bytearray(state.msrs)
    struct.pack_into("<I", msrs, 0, 0xDEAD_0000)  # an MSR no CPU has: KVM stops at that entry
    refused = VcpuState(**{**state.to_dict(), "msrs": bytes(msrs)})  # type: ignore[arg-type]
    thread.post_batch(vcpu_state.load(vcpu, refused))
    with pytest.raises(KvmError, match="KVM_SET_MSRS"):
        thread.wait_posted(5)
    # The thread is still parked and takes more work.
    thread.post_batch(vcpu_state.load(vcpu, state))
    thread.wait_posted(5)


def test_a_posted_batch_waits_for_its_thread(guest_elf: Path, tmp_path: Path) -> None:
    """Nobody but the vCPU's own thread runs what is posted to it: with the thread not started yet, nothing
    runs; once it starts (parked), the batch it finds waiting runs there."""
    machine = Machine.create(_config(guest_elf, tmp_path, cpus=1))
    try:
        thread = machine.vcpu_threads[0]
        vcpu = thread.vcpu
        thread.post_batch(vcpu_state.load(vcpu, _with_rax(vcpu_state.capture(vcpu), 0xC0FFEE)))
        with pytest.raises(HotswapError, match="did not finish"):
            thread.wait_posted(0.2)
        # (no capture here: it would read into the same per-part buffers the posted batch writes from)
        thread.start(paused=True)
        thread.wait_posted(5)
        assert struct.unpack_from("<Q", vcpu_state.capture(vcpu).regs)[0] == 0xC0FFEE
    finally:
        machine.shutdown()
