"""virtio devices behind a virtio-mmio (version 2) transport: split virtqueues, blk, net and rng.

How a VMM wires one device (at `hotswap.layout.VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE`, GSI
`VIRTIO_FIRST_GSI + i`):

    device = VirtioBlock(fd, read_only=..., serial=...)          # or VirtioNet(open_tap(name), mac), VirtioRng()
    # (a tap fd handed in by the caller: adopt_tap_fd(fd) first, then VirtioNet(fd, mac))
    transport = VirtioMmioTransport(device, memory, irq)         # irq.pulse() writes the GSI's irqfd
    bus: [base, base + VIRTIO_MMIO_SIZE) -> transport.read / transport.write   (vCPU threads)
    for q in range(transport.num_queues):                        # notifications skip the vCPU exit path
        ioeventfd(addr=base + transport.QUEUE_NOTIFY_OFFSET, len=4, datamatch=q) -> event loop: transport.notify(q)
    event loop: watch transport.poll_fds() for readability -> transport.on_fd_readable(fd); the set changes, so
        re-read poll_fds() after every notify()/on_fd_readable() (net offers its tap only while the guest has
        posted receive buffers)

Live upgrade: vCPUs paused -> transport.quiesce() -> transport.save() (a plain dict; fds travel separately).
Successor: a fresh device on the inherited fd -> VirtioMmioTransport.restore(device, memory, irq, state) (comes
back quiesced) -> new ioeventfds/irqfd -> transport.resume() once the vCPUs may run: it re-checks every queue,
since notifications that reached the old process's eventfds are not carried over.
Rollback (the successor failed before COMMIT): the old process simply calls transport.resume().
"""

from __future__ import annotations

from devices.virtio.block import VirtioBlock
from devices.virtio.device import VirtioDevice
from devices.virtio.errors import TapError, VirtioError, VirtqueueError
from devices.virtio.net import VirtioNet
from devices.virtio.queue import Descriptor, DescriptorChain, Virtqueue
from devices.virtio.rng import VirtioRng
from devices.virtio.tap import adopt_tap_fd, check_tap_fd, open_tap
from devices.virtio.transport import VirtioMmioTransport

__all__ = [
    "Descriptor",
    "DescriptorChain",
    "TapError",
    "VirtioBlock",
    "VirtioDevice",
    "VirtioError",
    "VirtioMmioTransport",
    "VirtioNet",
    "VirtioRng",
    "Virtqueue",
    "VirtqueueError",
    "adopt_tap_fd",
    "check_tap_fd",
    "open_tap",
]
