"""AfterPause (hotswap/machine/after_pause.py): the work runs exactly once, on the vCPU thread that parks last, or
on the controlling thread when no vCPU parks; what it raises reaches the controlling thread."""

from __future__ import annotations

import threading

import pytest

from hotswap.machine.after_pause import AfterPause


def test_the_last_vcpu_to_park_runs_the_work() -> None:
    ran_on: list[str] = []
    after = AfterPause(lambda: ran_on.append(threading.current_thread().name), vcpus=3)
    parked: list[threading.Thread] = []
    for index in range(3):
        thread = threading.Thread(target=after.vcpu_parked, name=f"vcpu{index}")
        thread.start()
        thread.join()  # one after the other: vcpu2 parks last
        parked.append(thread)
        assert after.started == (index == 2)
    after.finish()
    assert ran_on == ["vcpu2"]


def test_the_controlling_thread_runs_the_work_when_no_vcpu_parked() -> None:
    ran_on: list[str] = []
    after = AfterPause(lambda: ran_on.append(threading.current_thread().name), vcpus=2)
    after.vcpu_parked()  # one of two: the other was parked already and never arrives
    after.finish()
    assert ran_on == [threading.current_thread().name]
    after.vcpu_parked()  # a late arrival does not run it again
    assert len(ran_on) == 1


def test_finish_raises_what_the_work_raised_on_a_vcpu_thread() -> None:
    def work() -> None:
        raise ValueError("the successor refused")

    after = AfterPause(work, vcpus=1)
    thread = threading.Thread(target=after.vcpu_parked)
    thread.start()
    thread.join()
    with pytest.raises(ValueError, match="the successor refused"):
        after.finish()


def test_finish_waits_for_work_still_running() -> None:
    release = threading.Event()
    done: list[bool] = []

    def work() -> None:
        release.wait(5)
        done.append(True)

    after = AfterPause(work, vcpus=1)
    thread = threading.Thread(target=after.vcpu_parked)
    thread.start()
    finisher = threading.Thread(target=after.finish)
    finisher.start()
    finisher.join(0.1)
    assert finisher.is_alive(), "finish() returned while the work was still running"
    release.set()
    finisher.join(5)
    thread.join(5)
    assert done == [True]
