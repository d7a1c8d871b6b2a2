"""Gate (hotswap/machine/signal_fd.py): one write releases every waiter; open_and_wait opens it and counts the
released threads' signals in one C call."""

from __future__ import annotations

import os
import threading

from hotswap.machine.signal_fd import Gate


def _semaphore() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK | os.EFD_SEMAPHORE)


def _waiters(gate: Gate, counter: int, count: int) -> list[threading.Thread]:
    def wait_then_signal() -> None:
        if gate.wait(5):
            os.eventfd_write(counter, 1)

    threads = [threading.Thread(target=wait_then_signal) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_open_and_wait_releases_every_waiter_and_counts_them() -> None:
    gate, counter = Gate(), _semaphore()
    try:
        threads = _waiters(gate, counter, 3)
        assert gate.open_and_wait(counter, 3, timeout=5) == 3
        assert gate.is_open
        for thread in threads:
            thread.join(5)
            assert not thread.is_alive()
    finally:
        gate.release()
        os.close(counter)


def test_open_and_wait_gives_up_after_the_timeout_with_what_it_saw() -> None:
    gate, counter = Gate(), _semaphore()
    try:
        threads = _waiters(gate, counter, 1)
        assert gate.open_and_wait(counter, 2, timeout=0.2) == 1  # the second thread never came
        for thread in threads:
            thread.join(5)
    finally:
        gate.release()
        os.close(counter)


def test_a_closed_gate_holds_waiters_again() -> None:
    gate = Gate()
    try:
        gate.open()
        assert gate.wait(0.01)
        gate.close()
        assert not gate.wait(0.05)
    finally:
        gate.release()
