"""The successor's side of a handover, as an explicit state machine.

    successor                         old VMM
    STARTED      --- HELLO ------->
    HELLO_SENT   <-- CONFIG + fds ---
    CONFIGURED   --- READY ------->      (VM, memslots, vCPUs, devices built before any pause)
    READY_SENT   <-- STATE ----------    (old VMM has paused the guest)
    STATE_RECEIVED --- RESTORED --->
    RESTORED_SENT <-- COMMIT --------    commit point: from here the guest is the successor's
    COMMITTED    --- RESUMED ----->
    RESUMED

ERROR or ABORT (either way) before COMMITTED -> ABORTED: the old VMM resumes the guest.
"""

from __future__ import annotations

from enum import Enum

from hotswap.wire.messages import MessageType
from hotswap.wire.statemachine import HandoverStateMachine, Step


class ReceiverState(Enum):
    STARTED = "started"
    HELLO_SENT = "hello-sent"
    CONFIGURED = "configured"
    READY_SENT = "ready-sent"
    STATE_RECEIVED = "state-received"
    RESTORED_SENT = "restored-sent"
    COMMITTED = "committed"
    RESUMED = "resumed"
    ABORTED = "aborted"


_R = ReceiverState
_STEPS = {
    _R.STARTED: Step(MessageType.HELLO, True, _R.HELLO_SENT),
    _R.HELLO_SENT: Step(MessageType.CONFIG, False, _R.CONFIGURED),
    _R.CONFIGURED: Step(MessageType.READY, True, _R.READY_SENT),
    _R.READY_SENT: Step(MessageType.STATE, False, _R.STATE_RECEIVED),
    _R.STATE_RECEIVED: Step(MessageType.RESTORED, True, _R.RESTORED_SENT),
    _R.RESTORED_SENT: Step(MessageType.COMMIT, False, _R.COMMITTED),
    _R.COMMITTED: Step(MessageType.RESUMED, True, _R.RESUMED),
}


class Receiver(HandoverStateMachine[ReceiverState]):
    role = "handover receiver"

    def __init__(self) -> None:
        super().__init__(_R.STARTED, _STEPS, committed=_R.COMMITTED, aborted=_R.ABORTED)
