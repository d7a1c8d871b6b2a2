"""The test guest's I/O benchmark mode (`iobench=<kind>`, docs/test-guest.md): every kind prints its result line
with work done on hotswap, the blk kinds on QEMU microvm too; reads leave the disk alone and writes change it; what
the guest counts on the network matches what the host's tap counted. 1-second runs.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from framework.guest import MMIO_UART
from framework.vmm import GuestVm

pytestmark = pytest.mark.kvm

QEMU = "qemu-system-x86_64"
ETHERTYPE = 0x88B5
RUN_TIMEOUT = 60.0
IMAGE_BYTES = 16 << 20
BLK_KINDS = ["blk-seq-read", "blk-seq-write", "blk-rand-read", "blk-rand-write"]


def result_fields(output: str) -> dict[str, str]:
    lines = [line.strip() for line in output.splitlines() if line.startswith("hsg: iobench ")]
    assert len(lines) == 1, output[-3000:]
    return dict(token.split("=", 1) for token in lines[0].split()[2:])


def check_result(fields: dict[str, str], kind: str) -> None:
    assert fields["kind"] == kind
    ops, bs = int(fields["ops"]), int(fields["bs"])
    assert ops > 0 and int(fields["errors"]) == 0
    assert int(fields["bytes"]) == ops * bs
    # The run lasts iobench_secs=1 by the guest's TSC (net-rx: first to last frame counted).
    assert 800_000 <= int(fields["secs_us"]) <= 1_500_000


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_BYTES))
    return path


def tap_counter(tap: str, name: str) -> int:
    return int(Path(f"/sys/class/net/{tap}/statistics/{name}").read_text())


class Sender:
    """Numbered "HSB1" frames into the tap, as fast as this thread goes, from start() to stop()."""

    def __init__(self, tap: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((tap, 0))
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        header = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + struct.pack(">H", ETHERTYPE) + b"HSB1"
        while not self._stop.is_set():
            try:
                self.sock.send((header + struct.pack("<Q", self.sent + 1)).ljust(1514, b"\0"))
                self.sent += 1
            except OSError:
                time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sock.close()


def run_hotswap(vm: GuestVm, kernel: Path, kind: str, *devices: str) -> str:
    vm.start(kernel, f"{MMIO_UART} iobench={kind} iobench_secs=1", 1, "128M", *devices)
    return vm.wait_for(lambda text: "hsg: iobench " in text and "hsg: exit" in text, RUN_TIMEOUT, "the result")


# -- hotswap -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", BLK_KINDS)
def test_blk_kinds_on_hotswap(vm: GuestVm, guest_elf: Path, image: Path, kind: str) -> None:
    before = image.read_bytes()
    output = run_hotswap(vm, guest_elf, kind, "--disk", str(image))
    assert f"hsg: iobench-start kind={kind} " in output
    check_result(result_fields(output), kind)
    assert (image.read_bytes() == before) == kind.endswith("read"), "reads must leave the disk alone, writes not"


def test_net_tx_on_hotswap(vm: GuestVm, guest_elf: Path, tap: str) -> None:
    before = tap_counter(tap, "rx_packets")
    output = run_hotswap(vm, guest_elf, "net-tx", "--net", f"tap={tap}")
    fields = result_fields(output)
    check_result(fields, "net-tx")
    assert int(fields["bs"]) == 1514
    vm.kill()  # no frame can arrive after the VMM is gone
    assert tap_counter(tap, "rx_packets") - before == int(fields["ops"]), "every frame the guest sent reached the tap"


def test_net_rx_on_hotswap(vm: GuestVm, guest_elf: Path, tap: str) -> None:
    vm.start(guest_elf, f"{MMIO_UART} iobench=net-rx iobench_secs=1", 1, "128M", "--net", f"tap={tap}")
    vm.wait_for(lambda text: "hsg: iobench-start kind=net-rx" in text, RUN_TIMEOUT, "the start line")
    sender = Sender(tap)
    sender.start()
    try:
        output = vm.wait_for(lambda text: "hsg: iobench " in text, RUN_TIMEOUT, "the result")
    finally:
        sender.stop()
    fields = result_fields(output)
    check_result(fields, "net-rx")
    first, last, ops = int(fields["seq_first"]), int(fields["seq_last"]), int(fields["ops"])
    assert 1 <= first <= last <= sender.sent
    assert ops <= last - first + 1, "the guest counted more frames than the host numbered in its window"


def test_without_the_device_the_guest_says_so_and_resets(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, f"{MMIO_UART} iobench=blk-rand-read iobench_secs=1", 1, "128M")
    output = vm.wait_for(lambda text: "hsg: error iobench" in text, RUN_TIMEOUT, "the error line")
    assert "hsg: error iobench kind=blk-rand-read: no virtio-blk device" in output
    assert "hsg: iobench " not in output


def test_unknown_kind_is_a_warning_and_the_normal_workload_runs(vm: GuestVm, guest_elf: Path) -> None:
    vm.start(guest_elf, f"{MMIO_UART} iobench=blk-sideways exit_after=2", 1, "128M")
    vm.wait_statuses(2, timeout=RUN_TIMEOUT)
    output = vm.output()
    assert "hsg: warning bad value for iobench=, using the default" in output
    assert "hsg: iobench" not in output


# -- QEMU microvm --------------------------------------------------------------------------------------------------
def run_qemu(kernel: Path, kind: str, image: Path) -> str:
    if shutil.which(QEMU) is None:
        pytest.skip(f"NO QEMU: {QEMU} is not installed (Debian package qemu-system-x86)")
    argv = [
        QEMU, "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "128M", "-smp", "1",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-append", f"iobench={kind} iobench_secs=1",
        "-global", "virtio-mmio.force-legacy=false",
        "-drive", f"id=disk0,file={image},format=raw,if=none", "-device", "virtio-blk-device,drive=disk0",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = b""
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + RUN_TIMEOUT
        while b"hsg: exit" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
    finally:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    return output.decode(errors="replace")


@pytest.mark.qemu
@pytest.mark.parametrize("kind", BLK_KINDS)
def test_blk_kinds_on_qemu(guest_elf: Path, image: Path, kind: str) -> None:
    before = image.read_bytes()
    output = run_qemu(guest_elf, kind, image)
    check_result(result_fields(output), kind)
    assert (image.read_bytes() == before) == kind.endswith("read"), "reads must leave the disk alone, writes not"
