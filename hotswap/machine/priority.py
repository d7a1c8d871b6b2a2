"""Real-time priority for the threads that carry a guest's pause window.

On a busy host a thread woken inside the window (the successor receiving STATE, a vCPU thread released by the gate)
waits for a time slice behind every CPU-bound process: measured here, that turned a ~1 ms handover into 10+ ms. So
the threads on the window's critical path run SCHED_FIFO while they wait for and do that work, and drop back to
normal scheduling before the guest's own code runs again (a vCPU never runs guest code at real-time priority).
Needs CAP_SYS_NICE (root); without it everything runs at normal priority and nothing else changes.
HOTSWAP_RT=0 in the VMM's environment turns it off (to measure what it buys).
"""

from __future__ import annotations

import os
import resource

PRIORITY = 10  # above every SCHED_OTHER thread, far below the kernel's own real-time threads (50, 99)


def boost() -> bool:
    """Move the calling thread to SCHED_FIFO; False when not permitted or turned off (then nothing changed)."""
    if os.environ.get("HOTSWAP_RT") == "0":
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
# The successor's start-up and preparation (~0.3 s of CPU) and the old VMM's exit are work the guest should never
# wait for. They run at this nice value; the successor's threads go back to 0 before READY (its vCPU threads, which
# inherit the value from the thread that creates them, never run guest code at it).
BACKGROUND_NICE = 10


def _enabled() -> bool:
    return os.environ.get("HOTSWAP_RT") != "0"


def can_restore_priority() -> bool:
    """Whether this process may move a thread back from BACKGROUND_NICE to 0 (needs root or RLIMIT_NICE >= 20)."""
    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


def background_process(pid: int) -> bool:
    """Lower process `pid`'s main thread (and so the threads it starts) to BACKGROUND_NICE."""
    if not (_enabled() and can_restore_priority()):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, pid, BACKGROUND_NICE)
    except OSError:
        return False
    return True


def _set_all_threads(nice: int) -> bool:
    ok = True
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except OSError:
            ok = ok and not os.path.exists(f"/proc/self/task/{tid}")  # a thread that just ended is fine
    return ok


def background_all_threads() -> None:
    """Every thread of this process to BACKGROUND_NICE (an old VMM after it handed its guest over)."""
    if _enabled():
        _set_all_threads(BACKGROUND_NICE)


def foreground_all_threads() -> bool:
    """Every thread of this process back to nice 0; False if some could not be moved."""
    return _set_all_threads(0)
