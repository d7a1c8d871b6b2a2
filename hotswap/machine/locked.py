"""A bus device behind a lock: device models are plain state machines, but vCPU threads and the I/O thread can
reach the same device (the UART's registers from the guest, its receive FIFO from console input)."""

from __future__ import annotations

import threading

from devices.interfaces import BusDevice


class LockedDevice:
    def __init__(self, device: BusDevice, lock: threading.Lock) -> None:
        self._device = device
        self._lock = lock

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            return self._device.read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._device.write(offset, data)
