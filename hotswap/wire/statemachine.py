"""The shared machinery of the handover state machines (receiver.py for the successor, sender.py for the old VMM).

Each side walks one fixed sequence. Every message it sends or receives is fed to `advance`, which moves to the next
state or raises ProtocolError naming the message and the state ("got STATE in state HELLO_SENT"). ERROR and ABORT,
in either direction, end the sequence in ABORTED from any state before the commit point; after it the guest belongs
to the successor and nothing can abort it any more.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Generic, TypeVar

from hotswap.wire.errors import ProtocolError
from hotswap.wire.messages import MessageType

S = TypeVar("S", bound=Enum)

ENDING_TYPES = frozenset({MessageType.ERROR, MessageType.ABORT})


class Step(Generic[S]):
    """One legal transition: on `msg_type`, which this side `sends` (or receives), go to `target`."""

    __slots__ = ("msg_type", "sends", "target")

    def __init__(self, msg_type: MessageType, sends: bool, target: S) -> None:
        self.msg_type = msg_type
        self.sends = sends
        self.target = target


class HandoverStateMachine(Generic[S]):
    """A linear sequence of states with ABORTED reachable from every state before `committed`."""

    role = "handover"

    def __init__(self, start: S, steps: Mapping[S, Step[S]], committed: S, aborted: S) -> None:
        self.state = start
        self._aborted = aborted
        self._start = start
        self._use(steps, committed)

    def _use(self, steps: Mapping[S, Step[S]], committed: S) -> None:
        """Walk `steps` from here on (a successor learns the protocol, and with it the sequence, from CONFIG)."""
        order = [self._start]
        while order[-1] in steps:
            order.append(steps[order[-1]].target)
        if self.state not in order and self.state != self._aborted:
            raise ProtocolError(f"{self.role}: state {self.state.name} is not part of the new sequence")
        self._steps = steps
        self._final = order[-1]
        self._committed_from = order.index(committed)  # states at or after this index cannot abort
        self._order = order

    @property
    def committed(self) -> bool:
        return self.state != self._aborted and self._order.index(self.state) >= self._committed_from

    @property
    def finished(self) -> bool:
        return self.state in (self._final, self._aborted)

    @property
    def can_abort(self) -> bool:
        return not self.finished and not self.committed

    def incoming(self) -> frozenset[MessageType]:
        """The message this side may receive next (for Channel.recv's `expect`), empty if it is to send next."""
        step = self._steps.get(self.state)
        return frozenset({step.msg_type}) if step is not None and not step.sends else frozenset()

    def outgoing(self) -> frozenset[MessageType]:
        """The message this side is to send next, empty if it is to receive next."""
        step = self._steps.get(self.state)
        return frozenset({step.msg_type}) if step is not None and step.sends else frozenset()

    def advance(self, msg_type: MessageType) -> S:
        """Record that `msg_type` was sent or received; returns the new state."""
        if msg_type in ENDING_TYPES:
            if not self.can_abort:
                reason = "the guest is already committed" if self.committed else "the sequence is over"
                raise ProtocolError(f"{self.role}: got {msg_type.name} in state {self.state.name} ({reason})")
            self.state = self._aborted
            return self.state
        step = self._steps.get(self.state)
        if step is None or step.msg_type != msg_type:
            expected = f" (expected {step.msg_type.name})" if step is not None else " (the sequence is over)"
            raise ProtocolError(f"{self.role}: got {msg_type.name} in state {self.state.name}{expected}")
        self.state = step.target
        return self.state
