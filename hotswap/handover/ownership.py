"""Who runs the guest once STATE is out: an ownership token both VMMs share (protocol 3).

The old VMM creates an eventfd holding 1 for each handover and passes it with CONFIG. Reading an eventfd is atomic:
the first read gets the 1, every later one finds 0 (EAGAIN, non-blocking). So exactly one process ever takes it,
and only the one that took it runs the guest after STATE: the successor once it restored the state (then it resumes
at once, with no round trip to the old VMM inside the pause), or the old VMM rolling back after an error or a
timeout (then the successor, finding the token gone, gives up without running a vCPU). An old VMM that dies after
STATE never takes it, so its successor takes over by taking the token."""

from __future__ import annotations

import os


class OwnershipToken:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(cls) -> OwnershipToken:
        return cls(os.eventfd(1, os.EFD_NONBLOCK | os.EFD_CLOEXEC))

    def take(self) -> bool:
        """True if this process now owns the guest; False if the other one took the token first."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
