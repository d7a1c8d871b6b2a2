"""The successor's side of a handover, as an explicit state machine.

Protocol 5 (this build's old VMMs) with the vCPU records accepted (READY "lane": true): protocol 3's sequence
below, without STATE_VCPUS; the vCPUs' state arrives in shared memory (kvm/lane.py) before STATE. Declined:
protocol 4's sequence.

Protocol 4:

    successor                         old VMM
    STARTED      --- HELLO ------->
    HELLO_SENT   <-- CONFIG + fds ---    (the fds include the ownership token)
    CONFIGURED   --- READY ------->      (VM, memslots, vCPUs, devices built before any pause)
    READY_SENT   <-- STATE_VCPUS ----    (old VMM has paused the guest; restore the vCPUs meanwhile)
    VCPUS_RECEIVED <-- STATE --------    (VM, devices, machine)
    STATE_RECEIVED                       restore, take the token, resume the guest
                 --- RESUMED ----->
    RESUMED

Protocol 3 is the same with the whole state in STATE (no STATE_VCPUS).

Protocols 1 and 2 (older VMMs handing over to this build) put a round trip before the resume instead of the token:

    STATE_RECEIVED --- RESTORED --->
    RESTORED_SENT <-- COMMIT --------    commit point: from here the guest is the successor's
    COMMITTED    --- RESUMED ----->
    RESUMED

The sequence is protocol 3's until CONFIG says otherwise (`use_protocol`). ERROR or ABORT (either way) before the
commit point -> ABORTED: the old VMM resumes the guest.
"""

from __future__ import annotations

from enum import Enum

from hotswap.wire.errors import ProtocolError
from hotswap.wire.messages import PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS, MessageType
from hotswap.wire.statemachine import HandoverStateMachine, Step


class ReceiverState(Enum):
    STARTED = "started"
    HELLO_SENT = "hello-sent"
    CONFIGURED = "configured"
    READY_SENT = "ready-sent"
    VCPUS_RECEIVED = "vcpus-received"  # protocol 4, and 5 with the vCPU records declined
    STATE_RECEIVED = "state-received"
    RESTORED_SENT = "restored-sent"  # protocols 1-2
    COMMITTED = "committed"  # protocols 1-2
    RESUMED = "resumed"
    ABORTED = "aborted"


_R = ReceiverState
_COMMON = {
    _R.STARTED: Step(MessageType.HELLO, True, _R.HELLO_SENT),
    _R.HELLO_SENT: Step(MessageType.CONFIG, False, _R.CONFIGURED),
    _R.CONFIGURED: Step(MessageType.READY, True, _R.READY_SENT),
    _R.READY_SENT: Step(MessageType.STATE, False, _R.STATE_RECEIVED),
}
_TOKEN_STEPS = {**_COMMON, _R.STATE_RECEIVED: Step(MessageType.RESUMED, True, _R.RESUMED)}
_SPLIT_STEPS = {
    **_TOKEN_STEPS,
    _R.READY_SENT: Step(MessageType.STATE_VCPUS, False, _R.VCPUS_RECEIVED),
    _R.VCPUS_RECEIVED: Step(MessageType.STATE, False, _R.STATE_RECEIVED),
}
_COMMIT_STEPS = {
    **_COMMON,
    _R.STATE_RECEIVED: Step(MessageType.RESTORED, True, _R.RESTORED_SENT),
    _R.RESTORED_SENT: Step(MessageType.COMMIT, False, _R.COMMITTED),
    _R.COMMITTED: Step(MessageType.RESUMED, True, _R.RESUMED),
}


class Receiver(HandoverStateMachine[ReceiverState]):
    role = "handover receiver"
    protocol: int
    lane: bool  # protocol 5, the vCPU records accepted: the vCPUs come through shared memory, not STATE_VCPUS

    def __init__(self, protocol: int = PROTOCOL_VERSION) -> None:
        super().__init__(_R.STARTED, _TOKEN_STEPS, committed=_R.RESUMED, aborted=_R.ABORTED)
        self.use_protocol(protocol)

    def use_protocol(self, protocol: int, lane: bool = False) -> None:
        """Follow the sequence of `protocol` (known once CONFIG arrived; it must not have gone past CONFIGURED);
        protocol 5 with `lane` (the vCPU records accepted) has no STATE_VCPUS."""
        if protocol not in SUPPORTED_PROTOCOL_VERSIONS:
            raise ProtocolError(f"{self.role}: protocol {protocol} is not one of {SUPPORTED_PROTOCOL_VERSIONS}")
        if self.state not in (_R.STARTED, _R.HELLO_SENT, _R.CONFIGURED):
            raise ProtocolError(f"{self.role}: cannot change the protocol in state {self.state.name}")
        if protocol >= 5 and lane:
            self._use(_TOKEN_STEPS, committed=_R.RESUMED)
        elif protocol >= 4:
            self._use(_SPLIT_STEPS, committed=_R.RESUMED)
        elif protocol == 3:
            self._use(_TOKEN_STEPS, committed=_R.RESUMED)
        else:
            self._use(_COMMIT_STEPS, committed=_R.COMMITTED)
        self.protocol = protocol
        self.lane = protocol >= 5 and lane
