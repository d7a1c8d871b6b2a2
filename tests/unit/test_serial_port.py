"""The UART as the machine wires it (hotswap/machine/serial_port.py): the C-served queue and the model stay one
device. Exits the queue would serve are fed to it as KVM would leave them (tests/unit/test_byte_queue.py's
Exits); the console and the event loop are fakes that record what reached them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from mmio_exits import BASE, Exits

from devices.serial import Serial
from hotswap.machine.serial_port import SerialPort

DATA, IER, LCR, MCR, LSR = 0, 1, 3, 4, 5


class FakeConsole:
    def __init__(self) -> None:
        self.out = bytearray()
        self.flushes = 0

    def write(self, data: bytes) -> None:
        self.out += data

    def flush(self) -> None:
        self.flushes += 1


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []
        self.later: list[tuple[float, Callable[[], None]]] = []
        self.readers: dict[int, Any] = {}

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.soon.append(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.later.append((delay, fn))

    def add_reader(self, fd: int, handler: Any) -> None:
        self.readers[fd] = handler

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def run_soon(self) -> None:
        while self.soon:
            self.soon.pop(0)()

    def fire_timers(self) -> int:
        due, self.later = self.later, []
        for _, fn in due:
            fn()
        return len(due)


class NoInterrupt:
    def pulse(self) -> None:
        pass


class Port:
    def __init__(self) -> None:
        self.console = FakeConsole()
        self.loop = FakeLoop()
        self.serial = Serial(NoInterrupt(), self.console.write)
        self.port = SerialPort(self.serial, self.console, self.loop, BASE)  # type: ignore[arg-type]
        self.loop.run_soon()
        self.exits = Exits()

    def guest_prints(self, text: bytes) -> None:
        """Byte by byte as the guest stores them: through the queue while it serves, else through the bus."""
        for byte in text:
            if not self.exits.offer(self.port.queue, BASE + DATA, bytes([byte])):
                self.port.write(DATA, bytes([byte]))

    def notify(self) -> None:
        self.loop.readers[self.port.queue.notify_fd](self.port.queue.notify_fd)


@pytest.fixture
def p() -> Iterator[Port]:
    port = Port()
    yield port
    port.port.close()


def test_a_fresh_uart_is_served_in_c_and_the_io_thread_listens(p: Port) -> None:
    assert p.port.queue.is_open
    assert p.port.queue.notify_fd in p.loop.readers


def test_whole_lines_reach_the_console_when_the_io_thread_is_told(p: Port) -> None:
    p.guest_prints(b"status 1\nstat")
    assert p.port.queue.served == 13 and p.console.out == b""
    p.notify()
    assert p.console.out == b"status 1\n"


def test_a_partial_line_is_sent_on_after_the_flush_delay(p: Port) -> None:
    p.guest_prints(b"login: ")
    p.notify()
    assert p.console.out == b""
    assert p.loop.fire_timers() == 1
    assert p.console.out == b"login: " and p.console.flushes == 1


def test_a_partial_line_completed_in_time_is_not_split(p: Port) -> None:
    p.guest_prints(b"sta")
    p.notify()  # partial: a timer is set
    p.guest_prints(b"tus\nne")
    p.notify()
    assert p.console.out == b"status\n"
    p.loop.fire_timers()  # what was partial then went out with its newline; "ne" is younger
    assert p.console.out == b"status\n"
    p.loop.fire_timers()  # "ne" has waited a whole delay now
    assert p.console.out == b"status\nne"


def test_an_access_the_model_handles_takes_the_queue_first(p: Port) -> None:
    p.guest_prints(b"ab")
    p.port.write(LCR, bytes([0x83]))  # divisor latch: THR writes now reach the divisor, not the line
    assert p.console.out == b"ab"
    assert not p.port.queue.is_open
    p.guest_prints(b"\x01")  # DLL, through the model
    p.port.write(LCR, bytes([0x03]))
    assert p.port.queue.is_open
    p.guest_prints(b"c\n")
    p.port.flush()
    assert p.console.out == b"abc\n"


def test_with_the_thr_empty_interrupt_enabled_every_byte_goes_through_the_model(p: Port) -> None:
    p.port.write(IER, bytes([0x02]))
    served = p.port.queue.served
    p.guest_prints(b"irq\n")
    assert p.port.queue.served == served and p.console.out == b"irq\n"


def test_input_closes_the_queue_so_the_guest_sees_data_ready(p: Port) -> None:
    assert p.port.enqueue_input(b"y") == 1
    assert not p.exits.offer(p.port.queue, BASE + LSR, read=1)
    assert p.port.read(LSR, 1)[0] & 0x01
    assert p.port.read(DATA, 1) == b"y"
    assert p.port.queue.is_open  # read empty: plain again


def test_save_takes_what_is_queued_and_latches_thr_empty(p: Port) -> None:
    p.guest_prints(b"x")
    state = p.port.save()
    assert p.console.out == b"x"
    assert state.thr_empty_pending


def test_restore_opens_or_closes_the_queue_to_match_the_state(p: Port) -> None:
    p.port.restore(p.serial.save().__class__(ier=0x02))
    assert not p.port.queue.is_open
    p.port.restore(p.serial.save().__class__())
    assert p.port.queue.is_open


def test_order_holds_when_the_queue_is_full(p: Port) -> None:
    text = bytes(65 + i % 26 for i in range(5000))  # more than the queue holds, nobody taking
    p.guest_prints(text)
    p.port.flush()
    assert p.console.out == text
