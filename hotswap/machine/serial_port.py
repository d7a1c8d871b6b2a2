"""The UART as the machine wires it: the 16550 model behind a lock, on both buses, with its MMIO transmit path
served in C while the model allows it (kvm/byte_queue.py).

Why: the test guest (and any polled console, such as Linux's earlycon) prints through the MMIO UART one exit per
byte. Handled in Python, every one of them needed the GIL; the guest's status line then waited whenever another
thread of the VMM held it (the upgrade's own work, the I/O thread), and on this nested host the wake-up of a vCPU
thread sleeping on the GIL took up to milliseconds (docs/design-notes.md, "Load on the other CPU alone").

How it stays one device: the queue is open only while `Serial.transmits_plainly()` holds; every access that
reaches the model here first moves what the queue holds to the console (so bytes stay in order) and then opens or
closes the queue to match the model's new state. Console input closes it before the model holds any byte, so the
guest sees LSR's data-ready bit on its next poll. The I/O thread takes whole lines when told (a newline, half a
queue, the first byte into an empty queue) and a lone partial line (a prompt) after FLUSH_DELAY.
"""

from __future__ import annotations

import threading

from devices.serial import LINE_STATUS_IDLE, LSR_OFFSET, THR_OFFSET, Serial, SerialState
from hotswap.machine.console import FLUSH_DELAY, Console
from hotswap.machine.eventloop import EventLoop
from kvm.byte_queue import ByteQueue

U32 = 0xFFFFFFFF  # the queue's head and tail count bytes modulo 2**32


class SerialPort:
    """The bus device for the UART's registers (port I/O and MMIO alias alike), plus the C-served queue."""

    def __init__(self, serial: Serial, console: Console, loop: EventLoop, mmio_base: int) -> None:
        self.serial = serial
        self._console = console
        self._loop = loop
        self._lock = threading.Lock()
        self.queue = ByteQueue(mmio_base, THR_OFFSET, LSR_OFFSET, LINE_STATUS_IDLE)
        self._partial_since: int | None = None  # the queue's tail when a lone partial line was seen
        self._sync_locked()
        loop.call_soon(lambda: loop.add_reader(self.queue.notify_fd, self._on_notify))

    # -- guest accesses that reach Python (the bus device) ------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._take_locked()
            value = self.serial.read(offset, size)
            self._sync_locked()
            return value

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._take_locked()
            self.serial.write(offset, data)
            self._sync_locked()

    # -- host side ----------------------------------------------------------------------------------------------
    def enqueue_input(self, data: bytes) -> int:
        with self._lock:
            self.queue.set_open(False)  # before the model holds a byte: the next LSR poll must reach the model
            taken = self.serial.enqueue_input(data)
            self._sync_locked()
            return taken

    def flush(self) -> None:
        """Move everything queued to the console (before a capture, and before the console closes)."""
        with self._lock:
            self._take_locked()

    def save(self) -> SerialState:
        with self._lock:
            self._take_locked()
            return self.serial.save()

    def restore(self, state: SerialState) -> None:
        with self._lock:
            self._take_locked()
            self.serial.restore(state)
            self._sync_locked()

    def close(self) -> None:
        self._loop.remove_reader(self.queue.notify_fd)
        self.queue.close()

    # -- the I/O thread ---------------------------------------------------------------------------------------
    def _on_notify(self, _fd: int) -> None:
        self.queue.clear_notification()
        with self._lock:
            self._deliver_locked(self.queue.take(whole_lines=True))
            self._watch_partial_locked()

    def _flush_partial(self) -> None:
        """FLUSH_DELAY after a partial line was seen queued: send it on unless its newline took it meanwhile."""
        with self._lock:
            since, self._partial_since = self._partial_since, None
            if since is not None and 0 < (since - int(self.queue.c.head)) & U32 < 1 << 31:
                self._take_locked()  # some of what was queued then is still there: send it now
                self._console.flush()
            self._watch_partial_locked()

    # -- helpers (with the lock held) ---------------------------------------------------------------------------
    def _take_locked(self) -> None:
        self._deliver_locked(self.queue.take())

    def _deliver_locked(self, data: bytes) -> None:
        if data:
            self.serial.note_transmitted()
            self._console.write(data)

    def _watch_partial_locked(self) -> None:
        """A partial line (no newline yet) is queued: look again in FLUSH_DELAY (one timer at a time)."""
        if self._partial_since is None and self.queue.held():
            self._partial_since = int(self.queue.c.tail)
            self._loop.call_later(FLUSH_DELAY, self._flush_partial)

    def _sync_locked(self) -> None:
        self.queue.set_open(self.serial.transmits_plainly())
