"""A byte queue that serves a UART's transmit exits in C, inside the vCPU's run loop (`Vcpu.run(queue)`).

A guest that prints through a memory-mapped 16550 takes one MMIO exit per byte and one per status poll. Each of
them handled in Python needs the GIL; a vCPU thread that finds it held by another thread sleeps until it is
released, and on a nested host that wake-up alone can take milliseconds: a stall the guest sees. While the device
model says the UART is in its plain transmit mode (the VMM decides that, and opens or closes the queue), `hs_run`
queues each byte written to the data register and answers reads of the status register with a fixed value, then
re-enters KVM_RUN without ever returning to Python. Everything else exits to Python as before.

The consumer (the VMM's I/O thread) is told through an eventfd at each newline, when the queue is half full, and
when a byte lands in an empty queue; it takes the bytes with `take()`. A full queue, or a closed one, hands the
exit to Python, which must take what is queued first so bytes stay in order.
"""

from __future__ import annotations

import os

from kvm._ffi import CData, ffi, lib

CAPACITY = 4096


class ByteQueue:
    def __init__(self, base: int, data_offset: int, status_offset: int, status_value: int) -> None:
        """Serve 1-byte writes to `base + data_offset` (queued) and 1-byte reads of `base + status_offset`
        (answered `status_value`) while open. Starts closed."""
        self.notify_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.c: CData = ffi.new("struct hs_byte_queue *")
        self.c.base = base
        self.c.data_offset = data_offset
        self.c.status_offset = status_offset
        self.c.status_value = status_value
        self.c.notify_fd = self.notify_fd
        self._out = ffi.new("uint8_t[]", CAPACITY)

    @property
    def is_open(self) -> bool:
        return bool(self.c.open)

    def set_open(self, open_: bool) -> None:
        """Serve in C (True) or hand every exit to Python (False). Takes effect for the next exit."""
        if bool(self.c.open) != open_:
            lib.hs_byte_queue_set_open(self.c, 1 if open_ else 0)

    def take(self, whole_lines: bool = False) -> bytes:
        """What is queued (with `whole_lines`, up to the last newline); clears the pending notification."""
        count = lib.hs_byte_queue_take(self.c, self._out, CAPACITY, 1 if whole_lines else 0)
        return ffi.buffer(self._out, count)[:] if count else b""

    def clear_notification(self) -> None:
        """Read the eventfd (the consumer does this before taking, so no notification is lost)."""
        try:
            os.eventfd_read(self.notify_fd)
        except BlockingIOError:
            pass

    def held(self) -> int:
        """Bytes queued now."""
        return int(lib.hs_byte_queue_count(self.c))

    @property
    def served(self) -> int:
        """Exits served in C so far."""
        return int(self.c.served)

    def close(self) -> None:
        self.set_open(False)
        if self.notify_fd >= 0:
            os.close(self.notify_fd)
            self.notify_fd = -1
            self.c.notify_fd = -1
