"""The VMM's I/O thread: one selector over eventfds, sockets, the tap and stdin.

Device I/O that must not run on a vCPU thread (virtio queue work signalled by ioeventfds, tap frames, console input)
is served here. Other threads add and remove fds through `call_soon`, which wakes the loop with an eventfd.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable

from hotswap import log

Handler = Callable[[int], None]


class EventLoop:
    def __init__(self, name: str = "io") -> None:
        self._selector = selectors.DefaultSelector()
        self._wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._selector.register(self._wakeup, selectors.EVENT_READ, None)
        self._pending: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # heap of (monotonic due time, seq, fn)
        self._timer_seq = itertools.count()
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._log = log.get("eventloop")
        self._idle = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run fn on the loop thread (thread-safe)."""
        with self._lock:
            self._pending.append(fn)
        os.eventfd_write(self._wakeup, 1)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run fn on the loop thread after `delay` seconds (thread-safe)."""
        due = time.monotonic() + delay
        self.call_soon(lambda: heapq.heappush(self._timers, (due, next(self._timer_seq), fn)))

    def add_reader(self, fd: int, handler: Handler) -> None:
        """Call handler(fd) on the loop thread whenever fd is readable. Call from the loop thread or via call_soon."""
        try:
            self._selector.modify(fd, selectors.EVENT_READ, handler)
        except KeyError:
            self._selector.register(fd, selectors.EVENT_READ, handler)

    def remove_reader(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def run_sync(self, fn: Callable[[], None], timeout: float = 5.0) -> None:
        """Run fn on the loop thread and wait for it (used to quiesce devices from the control thread)."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            fn()
            return
        done = threading.Event()
        error: list[BaseException] = []

        def wrapper() -> None:
            try:
                fn()
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        self.call_soon(wrapper)
        if not done.wait(timeout):
            raise TimeoutError("the I/O thread did not answer")
        if error:
            raise error[0]

    def stop(self) -> None:
        self._stop = True
        os.eventfd_write(self._wakeup, 1)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        self._selector.close()
        os.close(self._wakeup)

    def _run(self) -> None:
        while not self._stop:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            for key, _events in self._selector.select(timeout):
                if key.data is None:
                    self._drain_pending()
                    continue
                try:
                    key.data(key.fd)
                except Exception as exc:  # one device's failure must not stop every other device's I/O
                    self._log.error("eventloop.handler_failed", fd=key.fd, error=str(exc))
                    self.remove_reader(key.fd)
            self._run_due_timers()

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _due, _seq, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception as exc:
                self._log.error("eventloop.timer_failed", error=str(exc))

    def _drain_pending(self) -> None:
        try:
            os.eventfd_read(self._wakeup)
        except BlockingIOError:
            pass
        while True:
            with self._lock:
                if not self._pending:
                    return
                fn = self._pending.popleft()
            try:
                fn()
            except Exception as exc:
                self._log.error("eventloop.call_failed", error=str(exc))
