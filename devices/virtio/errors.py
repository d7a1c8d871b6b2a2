"""The virtio package's exceptions, under the devices hierarchy."""

from __future__ import annotations

from devices.errors import DeviceError


class VirtioError(DeviceError):
    """Base of every virtio failure."""


class VirtqueueError(VirtioError):
    """The driver broke a virtqueue (bad layout, descriptor loop, address outside RAM, ...).

    Fatal for the device: the transport sets DEVICE_NEEDS_RESET and stops processing until the driver resets it.
    """


class TapError(VirtioError):
    """Opening or configuring a tap device failed."""
