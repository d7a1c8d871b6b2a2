"""Real-time priority for the threads that carry a guest's pause window, idle priority for an upgrade's helpers.

On a busy host a thread woken inside the window (the successor receiving STATE, a vCPU thread released by the gate)
waits for a time slice behind every CPU-bound process: measured here, that turned a ~1 ms handover into 10+ ms. So
the threads on the window's critical path run SCHED_FIFO while they wait for and do that work, and drop back to
normal scheduling before the guest's own code runs again (a vCPU never runs guest code at real-time priority).
Needs CAP_SYS_NICE (root); without it everything runs at normal priority and nothing else changes.
HOTSWAP_RT=0 in the VMM's environment turns both off (to measure what they buy).
"""

from __future__ import annotations

import os
import resource

PRIORITY = 10  # above every SCHED_OTHER thread, far below the kernel's own real-time threads (50, 99)


def _enabled() -> bool:
    return os.environ.get("HOTSWAP_RT") != "0"


def boost() -> bool:
    """Move the calling thread to SCHED_FIFO; False when not permitted or turned off (then nothing changed)."""
    if not _enabled():
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PRIORITY))
    except (PermissionError, OSError):
        return False
    return True


def unboost() -> None:
    """Back to normal scheduling (harmless if the thread was never boosted)."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass


# -- background priority for an upgrade's own work ---------------------------------------------------------------
# The successor's start-up and preparation (~0.3 s of CPU), the old VMM's exit and the upgrade command are work the
# guest should never wait for. What "wait" means here: a VMM thread that holds the GIL and is preempted on its CPU
# stalls every vCPU exit behind it (ftrace: 3 ms stalls while the successor started on the VMM's CPU at nice 10,
# because the scheduler lets a running task finish its slice, a 4 ms tick here). On a VMM pinned away from its
# vCPUs (--vcpu-cpus) these helpers run SCHED_IDLE: any VMM thread that wakes takes their CPU at once, and the VMM's
# CPUs have little else to do. Unpinned, the guest's own vCPUs may keep every CPU busy: at nice 10 an upgrade of
# the 2-vCPU test guest on this 2-CPU host took 2.5 s p50 instead of 0.77 s, for a gap at the pause of 8.3 ms p50
# instead of 11 ms (bench.upgrade, both noisy), so unpinned helpers keep normal priority. A successor's threads go
# back to SCHED_OTHER before READY (its vCPU threads, which inherit the policy of the thread that creates them,
# never run guest code in it).


def can_restore_priority() -> bool:
    """Whether this process may move a thread from SCHED_IDLE back to SCHED_OTHER (root, or RLIMIT_NICE >= 20)."""
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


def _background(tid: int) -> bool:
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        return False
    return True


def background_process(pid: int) -> bool:
    """Move process `pid`'s main thread (and so the threads it starts) to SCHED_IDLE, only when it can come back
    (can_restore_priority)."""
    if not (_enabled() and can_restore_priority()):
        return False
    return _background(pid)


def _tids() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def background_all_threads() -> None:
    """Every thread of this process to SCHED_IDLE (an old VMM after it handed its guest over; the upgrade command
    once it knows its VMM is pinned)."""
    if _enabled():
        for tid in _tids():
            _background(tid)


def unboost_all_threads() -> None:
    """Every real-time thread of this process back to SCHED_OTHER: an old VMM's parked vCPU threads, before they
    are woken to end (at real-time priority they would preempt the guest's vCPU in the successor)."""
    _normal_all_threads(os.SCHED_FIFO)  # a thread left behind was never boosted (no permission)


def foreground_all_threads() -> bool:
    """Every thread of this process from SCHED_IDLE back to SCHED_OTHER; False if some could not be moved."""
    return _normal_all_threads(os.SCHED_IDLE)


def _normal_all_threads(policy: int) -> bool:
    """Every thread of this process in `policy` to SCHED_OTHER; False if some could not be moved."""
    ok = True
    for tid in _tids():
        try:
            if os.sched_getscheduler(tid) == policy:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            ok = ok and not os.path.exists(f"/proc/self/task/{tid}")  # a thread that just ended is fine
    return ok
