"""virtio devices behind a virtio-mmio (version 2) transport: split virtqueues, blk, net and rng."""

from __future__ import annotations

from devices.virtio.block import VirtioBlock
from devices.virtio.device import VirtioDevice
from devices.virtio.errors import TapError, VirtioError, VirtqueueError
from devices.virtio.net import VirtioNet
from devices.virtio.queue import Descriptor, DescriptorChain, Virtqueue
from devices.virtio.rng import VirtioRng
from devices.virtio.tap import open_tap
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
    "open_tap",
]
