"""virtio-rng / entropy device (virtio 1.x §5.4): fills device-writable buffers with os.getrandom()."""

from __future__ import annotations

import os
from typing import Any

from devices.virtio.constants import COMMON_FEATURES, DeviceId
from devices.virtio.device import VirtioDevice
from devices.virtio.state import StateReader

DEFAULT_QUEUE_SIZE = 64
MAX_REQUEST_BYTES = 64 * 1024  # per request; the driver asks again for more


class VirtioRng(VirtioDevice):
    device_id = DeviceId.RNG
    name = "virtio-rng"

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        super().__init__([queue_size])

    @property
    def device_features(self) -> int:
        return COMMON_FEATURES

    def config_bytes(self) -> bytes:
        return b""

    def process_queue(self, index: int) -> None:
        queue = self.queue(index)
        memory = self.memory()
        while (chain := queue.pop()) is not None:
            budget = MAX_REQUEST_BYTES
            written = 0
            # Only device-writable buffers are filled; the used length counts what was written.
            for desc in chain.descriptors:
                if not desc.writable or budget == 0:
                    continue
                length = min(desc.length, budget)
                memory.write(desc.gpa, os.getrandom(length))
                written += length
                budget -= length
            queue.add_used(chain.head, written)

    def save(self) -> dict[str, Any]:
        return {}

    def restore_state(self, state: object, where: str) -> None:
        StateReader(state, where).finish()
