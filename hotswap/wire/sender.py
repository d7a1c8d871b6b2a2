"""The old VMM's side of a handover, as an explicit state machine (the mirror of receiver.py).

    STARTED -> HELLO_RECEIVED -> CONFIG_SENT -> READY_RECEIVED -> STATE_SENT -> RESTORED_RECEIVED
            -> COMMITTED (COMMIT sent) -> RESUMED (RESUMED received)

Before COMMITTED the guest is the old VMM's: any failure (ERROR, ABORT, timeout, the successor dying) means the old
VMM resumes it. From COMMITTED on it never runs the guest again.
"""

from __future__ import annotations

from enum import Enum

from hotswap.wire.messages import MessageType
from hotswap.wire.statemachine import HandoverStateMachine, Step


class SenderState(Enum):
    STARTED = "started"
    HELLO_RECEIVED = "hello-received"
    CONFIG_SENT = "config-sent"
    READY_RECEIVED = "ready-received"
    STATE_SENT = "state-sent"
    RESTORED_RECEIVED = "restored-received"
    COMMITTED = "committed"
    RESUMED = "resumed"
    ABORTED = "aborted"


_S = SenderState
_STEPS = {
    _S.STARTED: Step(MessageType.HELLO, False, _S.HELLO_RECEIVED),
    _S.HELLO_RECEIVED: Step(MessageType.CONFIG, True, _S.CONFIG_SENT),
    _S.CONFIG_SENT: Step(MessageType.READY, False, _S.READY_RECEIVED),
    _S.READY_RECEIVED: Step(MessageType.STATE, True, _S.STATE_SENT),
    _S.STATE_SENT: Step(MessageType.RESTORED, False, _S.RESTORED_RECEIVED),
    _S.RESTORED_RECEIVED: Step(MessageType.COMMIT, True, _S.COMMITTED),
    _S.COMMITTED: Step(MessageType.RESUMED, False, _S.RESUMED),
}


class Sender(HandoverStateMachine[SenderState]):
    role = "handover sender"

    def __init__(self) -> None:
        super().__init__(_S.STARTED, _STEPS, committed=_S.COMMITTED, aborted=_S.ABORTED)

    @property
    def owns_guest(self) -> bool:
        """True while the old VMM must (keep or resume) running the guest: everything before COMMIT."""
        return not self.committed
