"""What a virtio device model provides to the transport.

A device knows its queues' maximum sizes, its feature bits and its configuration space; the transport owns the
register file, the Virtqueue objects and interrupts. The transport serialises every call (one lock), so a device
needs no locking of its own. A device raises VirtqueueError (or GuestMemoryError) for a fatal driver mistake; a
bad request that can be answered (an error status) is answered instead.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from devices.interfaces import GuestMemory
from devices.virtio.errors import VirtioError
from devices.virtio.queue import Virtqueue


class VirtioDevice(abc.ABC):
    device_id: int
    name: str

    def __init__(self, queue_max_sizes: Sequence[int]) -> None:
        self.queue_max_sizes = tuple(queue_max_sizes)
        self._memory: GuestMemory | None = None
        self._queues: list[Virtqueue] = []
        self.features = 0  # negotiated (driver-accepted) features, valid while active

    # -- identity and configuration ------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device_features(self) -> int:
        """All feature bits offered, transport-independent ones (VERSION_1, EVENT_IDX, ...) included."""

    @abc.abstractmethod
    def config_bytes(self) -> bytes:
        """The device-specific configuration space as the driver sees it."""

    def read_config(self, offset: int, size: int) -> bytes:
        """Config space reads; bytes past the end read as zero."""
        data = self.config_bytes()[offset : offset + size]
        return data + bytes(size - len(data))

    def write_config(self, offset: int, data: bytes) -> None:  # noqa: B027 - read-only by default
        """Config space writes; the devices here have no writable fields, so writes are ignored."""

    # -- life cycle ----------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._memory is not None

    def activate(self, memory: GuestMemory, queues: Sequence[Virtqueue], features: int) -> None:
        """DRIVER_OK: start using the queues (already activated by the transport) with the negotiated features."""
        self._memory = memory
        self._queues = list(queues)
        self.features = features

    def reset(self) -> None:
        """Device reset: forget the queues and anything tied to this driver instance."""
        self._memory = None
        self._queues = []
        self.features = 0

    def memory(self) -> GuestMemory:
        if self._memory is None:
            raise VirtioError(f"{self.name}: used before activation")
        return self._memory

    def queue(self, index: int) -> Virtqueue:
        return self._queues[index]

    # -- work ----------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def process_queue(self, index: int) -> None:
        """The driver notified queue `index` (only called while active and the queue is ready)."""

    def poll_fds(self) -> list[int]:
        """Host fds the event loop should watch for readability now (may change after every call)."""
        return []

    def on_fd_readable(self, fd: int) -> None:  # noqa: B027 - devices without host fds have nothing to do
        """One of poll_fds() became readable."""

    def recheck(self) -> None:
        """After resume (and after restore): look at every ready queue once, since a notification may have been
        lost while the VMM was quiesced or in flight to the previous process."""
        for index, queue in enumerate(self._queues):
            if queue.ready and queue.active:
                self.process_queue(index)

    # -- state and resources -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def save(self) -> dict[str, Any]:
        """Device-specific state (configuration the guest has seen); never host resources."""

    @abc.abstractmethod
    def restore_state(self, state: object, where: str) -> None:
        """Load what save() produced; raise devices.errors.StateError naming the field on any mismatch."""

    def close(self) -> None:  # noqa: B027 - devices without host resources have nothing to close
        """Release host resources (fds) the device owns."""
