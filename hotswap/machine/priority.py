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
