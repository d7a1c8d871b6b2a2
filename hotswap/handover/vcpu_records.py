"""Protocol 5's vCPU state records (kvm/lane.py), the old VMM's side: the shared memfd and one eventfd per vCPU,
offered in CONFIG before the pause, and the writers the window runs once the successor accepted them."""

from __future__ import annotations

import os
from typing import Any

from hotswap.machine.machine import Machine
from kvm.lane import HEADER_BYTES, LaneRegion, LaneWriter, slot_offsets


class OutgoingRecords:
    """Owns the memfd mapping and the eventfds (close() releases them; the successor holds its own copies)."""

    def __init__(self, machine: Machine) -> None:
        self._vcpus = [thread.vcpu for thread in machine.vcpu_threads]
        self.layouts = machine.lane_layouts()
        self._offsets, size = slot_offsets(self.layouts)
        self.region = LaneRegion.create(size)
        self.notify = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in self.layouts]
        self._writers: list[LaneWriter] = []

    def fds(self) -> list[int]:
        """CONFIG's "lane" fds: the memfd, then each vCPU's eventfd."""
        return [self.region.fd, *self.notify]

    def config(self) -> list[dict[str, Any]]:
        """CONFIG's "lane": each vCPU's record layout."""
        return [layout.to_dict() for layout in self.layouts]

    def arm(self, generation: int) -> None:
        """Build the writers (before the pause): records for the successor becoming `generation`."""
        self._writers = [
            LaneWriter(vcpu, self.region, offset, layout, notify, generation)
            for vcpu, offset, layout, notify in zip(self._vcpus, self._offsets, self.layouts, self.notify, strict=True)
        ]

    @property
    def armed(self) -> bool:
        return bool(self._writers)

    def send_all(self, fault: str | None = None) -> int:
        """Inside the window: capture every vCPU into its record and signal the successor's vCPU thread. `fault`
        (safety tests) damages vCPU 0's record. Returns the bytes written."""
        for index, writer in enumerate(self._writers):
            writer.send(fault if index == 0 else None)
        return sum(HEADER_BYTES + layout.payload_bytes for layout in self.layouts)

    def close(self) -> None:
        self._writers = []
        self.region.close()
        for fd in self.notify:
            os.close(fd)
        self.notify = []
