"""Protocol 5's vCPU state records (kvm/lane.py), the old VMM's side: the shared memfd and one eventfd per vCPU,
offered in CONFIG before the pause, and the writers the window runs once the successor accepted them."""

from __future__ import annotations

import os
from typing import Any

from hotswap.errors import HotswapError
from hotswap.machine.machine import Machine
from hotswap.machine.signal_fd import drain, wait_readable
from kvm.lane import HEADER_BYTES, LaneRegion, LaneWriter, LaneWriterSet, slot_offsets

RECORDS_TIMEOUT = 5.0  # seconds; ten ioctls per vCPU and a copy: a few hundred us


class OutgoingRecords:
    """Owns the memfd mapping and the eventfds (close() releases them; the successor holds its own copies)."""

    def __init__(self, machine: Machine) -> None:
        self._vcpus = [thread.vcpu for thread in machine.vcpu_threads]
        self.layouts = machine.lane_layouts()
        self._offsets, size = slot_offsets(self.layouts)
        self.region = LaneRegion.create(size)
        self.notify = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in self.layouts]
        self._writers: LaneWriterSet | None = None
        # Signalled by the writing thread once it runs without the GIL, and once the records are out.
        self.started = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.done = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def fds(self) -> list[int]:
        """CONFIG's "lane" fds: the memfd, then each vCPU's eventfd."""
        return [self.region.fd, *self.notify]

    def config(self) -> list[dict[str, Any]]:
        """CONFIG's "lane": each vCPU's record layout."""
        return [layout.to_dict() for layout in self.layouts]

    def arm(self, generation: int) -> None:
        """Build the writers (before the pause): records for the successor becoming `generation`."""
        self._writers = LaneWriterSet(
            [
                LaneWriter(vcpu, self.region, offset, layout, notify, generation)
                for vcpu, offset, layout, notify in zip(
                    self._vcpus, self._offsets, self.layouts, self.notify, strict=True
                )
            ]
        )

    @property
    def armed(self) -> bool:
        return self._writers is not None

    @property
    def size(self) -> int:
        """Bytes the records take (headers included)."""
        return sum(HEADER_BYTES + layout.payload_bytes for layout in self.layouts)

    def write(self, fault: str | None = None) -> None:
        """Inside the window, on the thread that may touch the vCPUs: capture every vCPU into its record and signal
        each successor vCPU thread, in C; `started` is signalled as soon as this runs without the GIL, `done` at
        the end. `fault` (safety tests) damages vCPU 0's record. wait_written() says how it went."""
        assert self._writers is not None, "write() before arm()"
        drain(self.started)
        drain(self.done)
        self._writers.send(self.started, self.done, fault)

    def wait_written(self) -> int:
        """Wait for write() (on any thread) to be done; raises what failed. Returns how long it took (us)."""
        assert self._writers is not None, "wait_written() before arm()"
        if not wait_readable(self.done, RECORDS_TIMEOUT):
            raise HotswapError(f"the vCPU records were not written within {RECORDS_TIMEOUT} s")
        drain(self.done)
        return self._writers.check()

    def send_all(self, fault: str | None = None) -> int:
        """write() and wait_written() on this thread. Returns the bytes written."""
        self.write(fault)
        self.wait_written()
        return self.size

    def close(self) -> None:
        self._writers = None
        self.region.close()
        for fd in (*self.notify, self.started, self.done):
            os.close(fd)
        self.notify = []
