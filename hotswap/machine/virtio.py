"""virtio-mmio devices wired into the machine: bus slot, irqfd, one ioeventfd per queue, host fds on the I/O thread.

Queue notifications never take a Python vCPU exit: the guest's store to QueueNotify hits a KVM ioeventfd, the I/O
thread wakes and runs the device. Interrupts go out through an irqfd. The device model itself (devices/virtio) knows
none of this.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from devices.virtio import TapError, VirtioBlock, VirtioMmioTransport, VirtioNet, VirtioRng, adopt_tap_fd, open_tap
from devices.virtio.device import VirtioDevice
from hotswap.config import MachineConfig
from hotswap.errors import ConfigError
from hotswap.layout import VIRTIO_FIRST_GSI, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE
from hotswap.machine.eventloop import EventLoop
from hotswap.machine.interrupts import IrqfdLine
from kvm import GuestMemory, Vm

KINDS = {"blk": "virtio-blk", "net": "virtio-net", "rng": "virtio-rng"}


@dataclass(frozen=True)
class VirtioSpec:
    """One virtio device of a config, in slot order."""

    kind: str  # "blk", "net" or "rng"
    index: int  # slot: address VIRTIO_MMIO_BASE + index * stride, GSI VIRTIO_FIRST_GSI + index
    option: Any  # DiskConfig / NetConfig / None

    @property
    def base(self) -> int:
        return VIRTIO_MMIO_BASE + self.index * VIRTIO_MMIO_STRIDE

    @property
    def gsi(self) -> int:
        return VIRTIO_FIRST_GSI + self.index

    @property
    def name(self) -> str:
        return f"virtio{self.index}"

    def cmdline(self) -> str:
        """How Linux (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) and the test guest find the device."""
        return f"virtio_mmio.device=4K@{self.base:#x}:{self.gsi}"


def virtio_specs(config: MachineConfig) -> list[VirtioSpec]:
    specs: list[VirtioSpec] = []
    for disk in config.disks:
        specs.append(VirtioSpec("blk", len(specs), disk))
    for net in config.nets:
        specs.append(VirtioSpec("net", len(specs), net))
    if config.rng:
        specs.append(VirtioSpec("rng", len(specs), None))
    return specs


def open_host_fd(spec: VirtioSpec) -> int | None:
    """Open the host resource behind a device (a fresh VMM; a successor inherits the fd instead). A tap handed in
    as `--net fd=N` is already open in this process: from here on it is ours (a handover passes it on as any tap)."""
    if spec.kind == "blk":
        flags = (os.O_RDONLY if spec.option.read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            return os.open(spec.option.path, flags)
        except OSError as exc:
            raise ConfigError(f"cannot open disk {spec.option.path}: {exc.strerror}") from None
    if spec.kind == "net" and spec.option.fd is not None:
        try:
            adopt_tap_fd(spec.option.fd)
        except TapError as exc:
            raise ConfigError(f"--net fd={spec.option.fd}: {exc}") from None
        fd: int = spec.option.fd
        return fd
    if spec.kind == "net":
        try:
            return open_tap(spec.option.tap)
        except (OSError, TapError) as exc:
            raise ConfigError(f"cannot open tap {spec.option.tap}: {exc}") from None
    return None


def make_device(spec: VirtioSpec, fd: int | None) -> VirtioDevice:
    if spec.kind == "blk":
        assert fd is not None
        return VirtioBlock(fd, read_only=spec.option.read_only, serial=f"hotswap-{spec.name}")
    if spec.kind == "net":
        assert fd is not None
        return VirtioNet(fd, spec.option.mac)
    return VirtioRng()


class VirtioSlot:
    """A device at its slot. The bus maps the slot (not the transport), so a restored transport can take over."""

    def __init__(self, spec: VirtioSpec, vm: Vm, memory: GuestMemory, loop: EventLoop, host_fd: int | None) -> None:
        self.spec = spec
        self.host_fd = host_fd
        self._vm = vm
        self._memory = memory
        self._loop = loop
        self.irq = IrqfdLine(vm, spec.gsi)
        self.transport = VirtioMmioTransport(make_device(spec, host_fd), memory, self.irq)
        self._notify_fds: list[int] = []
        self._host_readers: set[int] = set()
        for queue in range(self.transport.num_queues):
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            vm.ioeventfd(efd, spec.base + VirtioMmioTransport.QUEUE_NOTIFY_OFFSET, 4, datamatch=queue)
            self._notify_fds.append(efd)

    # -- the bus (vCPU threads) -------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        return self.transport.read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        self.transport.write(offset, data)

    # -- the I/O thread ---------------------------------------------------------------------------------------
    def start_io(self) -> None:
        """Serve notifications and host fds (on the event loop thread)."""
        for queue, efd in enumerate(self._notify_fds):
            self._loop.add_reader(efd, functools.partial(self._on_notify, queue=queue))
        self._sync_host_readers()

    def stop_io(self) -> None:
        for efd in self._notify_fds:
            self._loop.remove_reader(efd)
        for fd in self._host_readers:
            self._loop.remove_reader(fd)
        self._host_readers.clear()

    def _on_notify(self, efd: int, *, queue: int) -> None:
        try:
            os.eventfd_read(efd)
        except BlockingIOError:
            return
        self.transport.notify(queue)
        self._sync_host_readers()

    def _on_host_readable(self, fd: int) -> None:
        self.transport.on_fd_readable(fd)
        self._sync_host_readers()

    def _sync_host_readers(self) -> None:
        """The device's host fds change (net offers its tap only while the guest has receive buffers posted)."""
        wanted = set(self.transport.poll_fds())
        for fd in self._host_readers - wanted:
            self._loop.remove_reader(fd)
        for fd in wanted - self._host_readers:
            self._loop.add_reader(fd, self._on_host_readable)
        self._host_readers = wanted

    # -- lifecycle --------------------------------------------------------------------------------------------
    def quiesce(self) -> None:
        """Let the device finish what it does (blk I/O is synchronous, under the transport's lock) and stop
        processing: notifications that still arrive are only remembered. Called on the controlling thread, so the
        pause window does not wait for the I/O thread; that thread drops the device's fds when it gets to it."""
        self.transport.quiesce()
        self._loop.call_soon(self.stop_io)

    def resume(self) -> None:
        """On the I/O thread: re-check every queue (a notification may have reached only the old process)."""
        self.transport.resume()
        self.start_io()

    def save(self) -> dict[str, Any]:
        return {"kind": KINDS[self.spec.kind], "state": self.transport.save()}

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the fresh transport by one carrying the saved state (still quiesced until resume())."""
        device = self.transport.device
        self.transport = VirtioMmioTransport.restore(device, self._memory, self.irq, state)

    def close(self) -> None:
        for efd in self._notify_fds:
            os.close(efd)
        self._notify_fds.clear()
        self.irq.close()
