"""The C side of the UART byte queue (kvm/byte_queue.py): which exits it serves, what it queues, when it tells
the consumer. Exits are written into a kvm_run struct in memory, as KVM would leave them; no /dev/kvm."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from mmio_exits import BASE, Exits

from kvm._ffi import lib
from kvm.byte_queue import CAPACITY, ByteQueue

DATA, STATUS, IDLE = 0, 5, 0x60


@pytest.fixture
def queue() -> Iterator[ByteQueue]:
    q = ByteQueue(BASE, DATA, STATUS, IDLE)
    q.set_open(True)
    yield q
    q.close()


def notified(queue: ByteQueue) -> bool:
    try:
        os.eventfd_read(queue.notify_fd)
    except BlockingIOError:
        return False
    return True


def test_a_closed_queue_serves_nothing() -> None:
    queue, exits = ByteQueue(BASE, DATA, STATUS, IDLE), Exits()
    try:
        assert not queue.is_open
        assert not exits.offer(queue, BASE + DATA, b"x")
        assert not exits.offer(queue, BASE + STATUS, read=1)
        assert queue.held() == 0 and queue.served == 0
    finally:
        queue.close()


def test_data_writes_are_queued_and_status_reads_answered(queue: ByteQueue) -> None:
    exits = Exits()
    exits.write(queue, b"hi")
    assert exits.offer(queue, BASE + STATUS, read=1)
    assert exits.mmio.data[0] == IDLE
    assert queue.served == 3
    assert queue.take() == b"hi"
    assert queue.held() == 0


@pytest.mark.parametrize(
    "addr, data, read",
    [
        (BASE + 1, b"x", 0),  # another register
        (BASE + DATA, b"xy", 0),  # a 2-byte store
        (BASE + STATUS, b"", 2),  # a 2-byte load
        (BASE + DATA, b"", 1),  # reading the data register is the model's (receive FIFO)
        (BASE + STATUS, b"\x00", 0),  # writing LSR
        (BASE - 1, b"x", 0),  # below the device
        (BASE + (1 << 32), b"x", 0),  # far above it
    ],
)
def test_any_other_access_goes_to_python(queue: ByteQueue, addr: int, data: bytes, read: int) -> None:
    exits = Exits()
    assert not exits.offer(queue, addr, data, read)
    assert queue.held() == 0 and queue.served == 0


def test_other_exit_reasons_go_to_python(queue: ByteQueue) -> None:
    exits = Exits()
    exits.offer(queue, BASE + DATA, b"x")
    exits.run.exit_reason = lib.KVM_EXIT_IO
    assert not lib.hs_byte_queue_serve(queue.c, exits.run)


def test_closing_stops_serving_at_once(queue: ByteQueue) -> None:
    exits = Exits()
    exits.write(queue, b"a")
    queue.set_open(False)
    assert not exits.offer(queue, BASE + DATA, b"b")
    assert not exits.offer(queue, BASE + STATUS, read=1)
    assert queue.take() == b"a"  # what was queued stays, for Python to take first


def test_a_full_queue_hands_the_byte_to_python(queue: ByteQueue) -> None:
    exits = Exits()
    exits.write(queue, b"x" * CAPACITY)
    assert not exits.offer(queue, BASE + DATA, b"y")
    assert queue.take() == b"x" * CAPACITY
    assert exits.offer(queue, BASE + DATA, b"y")


def test_take_whole_lines_leaves_a_partial_line(queue: ByteQueue) -> None:
    exits = Exits()
    exits.write(queue, b"one\ntwo\nthr")
    assert queue.take(whole_lines=True) == b"one\ntwo\n"
    assert queue.take(whole_lines=True) == b""
    assert queue.held() == 3
    assert queue.take() == b"thr"


def test_the_consumer_is_told_once_until_it_takes(queue: ByteQueue) -> None:
    exits = Exits()
    exits.write(queue, b"a")  # a byte into an empty queue: told (a prompt may never end its line)
    assert notified(queue)
    exits.write(queue, b"bc\n")  # told already and not taken since: no more writes to the eventfd
    assert not notified(queue)
    assert queue.take(whole_lines=True) == b"abc\n"
    exits.write(queue, b"d")
    assert notified(queue)
    queue.take(whole_lines=True)  # nothing whole: the partial stays, the notification is cleared
    exits.write(queue, b"e")  # not into an empty queue and no newline: nothing to say yet
    assert not notified(queue)
    exits.write(queue, b"\n")
    assert notified(queue)
    assert queue.take(whole_lines=True) == b"de\n"


def test_half_full_tells_the_consumer_without_a_newline(queue: ByteQueue) -> None:
    exits = Exits()
    exits.write(queue, b"x")
    assert notified(queue)
    queue.take()
    exits.write(queue, b"y")
    notified(queue)
    queue.take(whole_lines=True)
    exits.write(queue, b"z" * (CAPACITY // 2 - 2))
    assert not notified(queue)
    exits.write(queue, b"z")  # now half the queue holds bytes
    assert notified(queue)


def test_bytes_keep_their_order_across_the_ring_end(queue: ByteQueue) -> None:
    exits = Exits()
    sent = bytearray()
    received = bytearray()
    for round_ in range(7):  # 7 x 1000 bytes: the ring wraps
        chunk = bytes((round_ * 1000 + i) % 251 for i in range(1000))
        exits.write(queue, chunk)
        sent += chunk
        received += queue.take()
    assert received == sent
    assert queue.served == len(sent)
