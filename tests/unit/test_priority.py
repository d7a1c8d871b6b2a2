"""priority.unboost_all_threads: an old VMM's parked vCPU threads (SCHED_FIFO while parked) go back to normal
scheduling before they are woken to end, so they never preempt the guest's vCPU in the successor."""

from __future__ import annotations

import os
import threading

import pytest

from hotswap.machine import priority


def test_unboost_all_threads_returns_boosted_threads_to_normal() -> None:
    boosted = threading.Event()
    release = threading.Event()
    tids: list[int] = []

    def parked() -> None:
        tids.append(threading.get_native_id())
        if priority.boost():
            boosted.set()
        release.wait(10)

    thread = threading.Thread(target=parked)
    thread.start()
    try:
        if not boosted.wait(5):
            pytest.skip("this process may not use SCHED_FIFO (needs CAP_SYS_NICE), so nothing is ever boosted")
        assert os.sched_getscheduler(tids[0]) == os.SCHED_FIFO
        priority.unboost_all_threads()
        assert os.sched_getscheduler(tids[0]) == os.SCHED_OTHER
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread was never boosted: left as it was
    finally:
        release.set()
        thread.join()
