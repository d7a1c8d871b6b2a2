"""virtio devices on a real guest across live upgrades: no acknowledged disk write lost, every host frame counted.

The test guest's drivers (docs/test-guest.md: the disk journal, test frames, rng) keep writing, flushing and
reading back, exchanging frames and reading entropy while the VMM is replaced again and again.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest
from framework.guest import REPO, guest_cmdline
from framework.taps import attach_tap, tap_fds_of
from framework.vmm import GuestVm, pids_with_tag

sys.path.insert(0, str(REPO / "guest" / "testguest" / "tools"))
from check_disk import check_disk

pytestmark = pytest.mark.kvm

UPGRADES = int(os.environ.get("HOTSWAP_TEST_UPGRADES", "100"))
ETHERTYPE = 0x88B5


class HostEnd:
    """The host side of the guest's network: sends numbered HST1 frames into the tap, counts the guest's HSG1."""

    def __init__(self, tap: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        self.sock.bind((tap, ETHERTYPE))
        self.sock.settimeout(0.2)
        self.sent = 0
        self.guest_counters: list[int] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self) -> None:
        self.sent += 1
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack(">H", ETHERTYPE) + b"HST1"
        self.sock.send((frame + struct.pack("<Q", self.sent)).ljust(60, b"\0"))

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if frame[12:14] == struct.pack(">H", ETHERTYPE) and frame[14:18] == b"HSG1":
                self.guest_counters.append(struct.unpack_from("<Q", frame, 18)[0])

    def close(self) -> None:
        self._stop.set()
        self._reader.join(2)
        self.sock.close()


def test_devices_lose_nothing_across_upgrades(vm: GuestVm, guest_elf: Path, tmp_path: Path, tap: str) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    os.truncate(image, 8 << 20)
    cmdline = guest_cmdline(status_ms=50, extra="blk_rate=200")
    vm.start(guest_elf, cmdline, 2, "256M", "--disk", str(image), "--net", f"tap={tap}", "--rng")
    first = vm.wait_statuses(2)[-1]
    assert {"blk_acked", "net_rx", "rng_bytes"} <= first.extra.keys(), vm.output()[-2000:]
    blocks = int(
        next(
            t.split("=")[1]
            for line in vm.output().splitlines()
            if "driver=blk" in line
            for t in line.split()
            if t.startswith("blocks=")
        )
    )
    host = HostEnd(tap)
    try:
        sending = threading.Event()
        sending.set()

        def keep_sending() -> None:  # ~200 frames/s, straight through every upgrade
            while sending.is_set():
                host.send()
                time.sleep(0.005)

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        pids = {vm.pid}
        for _ in range(UPGRADES):
            pids.add(vm.upgrade()["new_pid"])
        sending.clear()
        sender.join()
        # Every frame the host sent during the upgrades reaches the guest (counted by it, none lost, none twice).
        vm.wait_for(
            lambda _: (s := vm.statuses()) and s[-1].extra["net_rx"] == host.sent,
            timeout=20,
            what=f"the guest to count all {host.sent} host frames",
        )
        last = vm.statuses()[-1]
        assert last.extra["net_rx_last"] == host.sent
        vm.cli("stop", vm.name)
        deadline = time.monotonic() + 10
        while pids_with_tag(vm.tag) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        host.close()
    assert len(pids) == UPGRADES + 1
    lines = vm.statuses()
    assert vm.output().count("hsg: boot ") == 1
    assert all(s.integrity == "ok" and s.extra["blk_bad"] == 0 for s in lines)
    assert lines[-1].extra["blk_acked"] > first.extra["blk_acked"] + UPGRADES  # the journal kept going
    assert lines[-1].extra["rng_bytes"] > first.extra["rng_bytes"]
    # Every frame the guest sent reached the host, in order, none lost across the upgrades.
    assert host.guest_counters == list(range(host.guest_counters[0], host.guest_counters[-1] + 1))
    assert host.guest_counters[-1] >= lines[-1].extra["net_tx"] - 1
    # Every write the guest saw acknowledged (written and flushed) is on the image, intact. The guest may have
    # acknowledged more after its last status line; those are allowed to be there too.
    newer = 200 * 50 // 1000 + 8
    assert check_disk(image, lines[-1].extra["blk_acked"], blocks, newer_allowed=newer) == []


def test_read_only_disk_refuses_writes(vm: GuestVm, guest_elf: Path, tmp_path: Path) -> None:
    image = tmp_path / "ro.img"
    image.write_bytes(b"")
    os.truncate(image, 4 << 20)
    vm.start(guest_elf, guest_cmdline(status_ms=50), 1, "128M", "--disk", f"{image},ro")
    lines = vm.wait_statuses(3)
    assert image.read_bytes() == bytes(4 << 20), "a read-only disk was written"
    assert vm.info()["state"] == "running"
    # The device answers writes with VIRTIO_BLK_S_IOERR (1); the guest's journal never gets one acknowledged.
    assert "hsg: warning blk request failed status=1" in vm.output()
    assert all(s.extra["blk_acked"] == 0 for s in lines)


def test_net_on_a_handed_in_tap_fd_across_upgrades(vm: GuestVm, guest_elf: Path, tap: str) -> None:
    """`--net fd=N`: a tap fd opened by the caller (as libvirt does) serves the guest, and moves with each upgrade."""
    mac = "52:54:00:ab:cd:ef"
    fd = attach_tap(tap)  # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR; the vnet header size is left for the VMM to set
    try:
        vm.start(guest_elf, guest_cmdline(status_ms=50), 1, "128M", "--net", f"fd={fd},mac={mac}", pass_fds=[fd])
    finally:
        os.close(fd)  # the VMM's from now on
    vm.wait_for(lambda text: "driver=net" in text and f"mac={mac} mac_from_device=1" in text, what="the net driver")
    config = vm.info()["config"]
    assert config["nets"] == [{"tap": tap, "mac": mac, "fd": fd}]
    assert "handed in as fd" in vm.cli("info", vm.name).stdout
    host = HostEnd(tap)
    try:
        for upgrade in ((), ("--mode", "exec"), None):
            sent_before, heard_before = host.sent, len(host.guest_counters)
            for _ in range(20):
                host.send()
                time.sleep(0.005)
            vm.wait_for(
                lambda _: (s := vm.statuses()) and s[-1].extra["net_rx"] == host.sent,
                timeout=20,
                what=f"the guest to count all {host.sent} host frames (gen {vm.info()['generation']})",
            )
            assert host.sent == sent_before + 20 and vm.statuses()[-1].extra["net_rx_last"] == host.sent
            deadline = time.monotonic() + 10
            while len(host.guest_counters) < heard_before + 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(host.guest_counters) >= heard_before + 3, "the guest's frames stopped reaching the host"
            assert tap_fds_of(vm.pid or 0, tap), "the VMM holds no fd of the tap"
            if upgrade is not None:
                vm.upgrade(*upgrade)
                assert vm.info()["config"] == config  # the successor runs the same config, fd number and all
    finally:
        host.close()
    assert vm.info()["generation"] == 3
    assert len(tap_fds_of(vm.pid or 0, tap)) == 1
    assert vm.output().count("hsg: boot ") == 1
    assert host.guest_counters == list(range(host.guest_counters[0], host.guest_counters[-1] + 1))
