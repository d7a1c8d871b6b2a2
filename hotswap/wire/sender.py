"""The old VMM's side of a handover, as an explicit state machine (the mirror of receiver.py).

    STARTED -> HELLO_RECEIVED -> CONFIG_SENT -> READY_RECEIVED -> VCPUS_SENT -> STATE_SENT -> RESUMED (received)

This build sends protocol 5 only: STATE_VCPUS then STATE, or, when the successor accepted the vCPU records in
shared memory (READY "lane": true; `use_lane`), STATE alone (READY_RECEIVED -> STATE_SENT). After STATE the guest
belongs to whoever takes the ownership token first (hotswap/handover/ownership.py): the successor, which then
resumes it and sends RESUMED, or the old VMM rolling back after an error or a timeout.
The wire's own commit point is RESUMED: nothing can abort after it.
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
    VCPUS_SENT = "vcpus-sent"
    STATE_SENT = "state-sent"
    RESUMED = "resumed"
    ABORTED = "aborted"


_S = SenderState
_SPLIT_STEPS = {
    _S.STARTED: Step(MessageType.HELLO, False, _S.HELLO_RECEIVED),
    _S.HELLO_RECEIVED: Step(MessageType.CONFIG, True, _S.CONFIG_SENT),
    _S.CONFIG_SENT: Step(MessageType.READY, False, _S.READY_RECEIVED),
    _S.READY_RECEIVED: Step(MessageType.STATE_VCPUS, True, _S.VCPUS_SENT),
    _S.VCPUS_SENT: Step(MessageType.STATE, True, _S.STATE_SENT),
    _S.STATE_SENT: Step(MessageType.RESUMED, False, _S.RESUMED),
}
_LANE_STEPS = {**_SPLIT_STEPS, _S.READY_RECEIVED: Step(MessageType.STATE, True, _S.STATE_SENT)}


class Sender(HandoverStateMachine[SenderState]):
    role = "handover sender"

    def __init__(self) -> None:
        super().__init__(_S.STARTED, _SPLIT_STEPS, committed=_S.RESUMED, aborted=_S.ABORTED)

    def use_lane(self) -> None:
        """The successor took the vCPU records in shared memory: no STATE_VCPUS (only right after READY)."""
        self._use(_LANE_STEPS, committed=_S.RESUMED)

    @property
    def state_sent(self) -> bool:
        """STATE is out: from here the ownership token, not the wire, says who runs the guest."""
        return self.state in (_S.STATE_SENT, _S.RESUMED)
