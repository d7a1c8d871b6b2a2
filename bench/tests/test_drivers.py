"""The drivers against real VMMs: hotswap upgrades and QEMU migrations of the test guest, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from framework.procs import alive

from bench import boot, gaps
from bench.guest import cmdline, guest_image
from bench.placement import pinned_placement
from bench.qemu import Fleet, QemuSpec, shm_path
from bench.subjects import FLOOR_OPERATIONS, FloorSubject, HotswapSubject, QemuSubject


@pytest.fixture(scope="module")
def kernel() -> Path:
    return guest_image()


@pytest.mark.kvm
def test_hotswap_upgrade_is_measured_and_every_process_is_killed(kernel: Path, tmp_path: Path) -> None:
    subject = HotswapSubject(tmp_path, "t", kernel, cmdline(uart="mmio"), 1, 128)
    try:
        subject.boot()
        old_pid = subject.vm.pid
        quiet = subject.tap.last_seq()
        operation = subject.operate()
        assert operation.ok, operation.error
        assert subject.vm.pid != old_pid
        assert operation.copied_bytes == 0 and operation.downtime_ms is not None and operation.downtime_ms > 0
        assert operation.pause_start_ns is not None and operation.window.after >= quiet
        after = subject.tap.wait_statuses(operation.window.last, 3, timeout=30)
        assert all(s.integrity == "ok" for s in after)
        carrying = gaps.pause_window(subject.tap.all_statuses(), operation.pause_start_ns)
        assert len(carrying) == gaps.PAUSE_LINES
        pids = subject.vm.settled_pids()
        assert pids == [subject.vm.pid]
    finally:
        subject.close()
    assert not any(alive(pid) for pid in pids)


@pytest.mark.kvm
@pytest.mark.parametrize("operation", list(FLOOR_OPERATIONS))
def test_the_floor_vmm_moves_or_pauses_the_guest_and_is_killed(kernel: Path, tmp_path: Path, operation: str) -> None:
    # Pinned as bench.upgrade --pin runs it (on a 1-CPU machine: shared).
    subject = FloorSubject(tmp_path, kernel, cmdline(uart="mmio"), 1, 128, operation, pinned_placement(1))
    try:
        subject.boot()
        assert subject.process is not None
        pid = subject.process.pid
        for _ in range(5):  # each move after the first tears the one before down first
            operation_done = subject.operate()
            assert operation_done.ok, operation_done.error
            assert operation_done.downtime_ms is not None and operation_done.downtime_ms > 0
            assert operation_done.pause_start_ns is not None
            after = subject.tap.wait_statuses(operation_done.window.last, 3, timeout=30)
            assert [s.seq for s in after][:3] == list(
                range(operation_done.window.last + 1, operation_done.window.last + 4)
            )
            assert all(s.integrity == "ok" for s in after)
            carrying = gaps.pause_window(subject.tap.all_statuses(), operation_done.pause_start_ns)
            assert len(carrying) == gaps.PAUSE_LINES
            # The guest's own clock saw the pause: the gap it reports covers at least the downtime.
            assert max(s.gap_us for s in carrying) >= operation_done.downtime_ms * 1000
        if operation == "move":
            assert {"vm_us", "devices_us", "vcpus_us", "prepare_us"} <= set(operation_done.phases_us)
        subject.pause()
        paused_at = subject.tap.last_seq()
        subject.resume()
        assert subject.tap.last_seq() > paused_at
        assert gaps.sequence_breaks(subject.tap.all_statuses()) == 0, "a status line was lost or broken"
    finally:
        subject.close()
    assert not alive(pid)


@pytest.mark.kvm
@pytest.mark.qemu
@pytest.mark.parametrize("shared", [False, True], ids=["plain", "x-ignore-shared"])
def test_qemu_migration_hands_the_guest_on(kernel: Path, tmp_path: Path, shared: bool) -> None:
    spec = QemuSpec(kernel, cmdline(), 128, 1, shm_path(f"test-{shared}") if shared else None)
    with Fleet(tmp_path) as fleet:
        subject = QemuSubject(fleet, spec, timeout=60)
        try:
            subject.boot()
            first = subject.vm
            assert first is not None
            operation = subject.operate()
            assert operation.ok, operation.error
            assert subject.vm is not first and not alive(first.pid)
            assert operation.total_time_ms is not None and operation.total_time_ms > 0
            assert operation.stop_to_resume_ms is not None and operation.stop_to_resume_ms > 0
            assert operation.copied_bytes is not None
            if shared:
                assert operation.copied_bytes < 1 << 20  # RAM stays in the shared file
            else:
                assert operation.copied_bytes > 1 << 20  # at least the 16 MiB working set travels
            after = subject.tap.wait_statuses(operation.window.last, 3, timeout=30)
            assert [s.seq for s in after][:3] == list(range(operation.window.last + 1, operation.window.last + 4))
            assert subject.vm is not None
            pid = subject.vm.pid
        finally:
            subject.close()
        assert not alive(pid) and fleet.vms == []
        if spec.shared_mem is not None:
            assert not spec.shared_mem.exists()


@pytest.mark.kvm
@pytest.mark.qemu
def test_boot_times_both_vmms(kernel: Path, tmp_path: Path) -> None:
    hotswap = boot.boot_hotswap(kernel, cmdline(status_ms=10), 1, 128, tmp_path, "b")
    assert 0 < hotswap.to_boot_line_s < hotswap.to_status_s and hotswap.boot_line.startswith("hsg: boot ")
    with Fleet(tmp_path) as fleet:
        qemu = boot.boot_qemu(fleet, QemuSpec(kernel, cmdline(status_ms=10), 128, 1))
        assert fleet.vms == []
    assert 0 < qemu.to_boot_line_s < qemu.to_status_s
