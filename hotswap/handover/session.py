"""A channel that walks the handover's state machine: every message sent or received must be the next one in the
sequence (hotswap.wire.receiver / hotswap.wire.sender), or the handover stops with a ProtocolError that names the
message and the state. The receive side asks the machine which message it expects next."""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

from hotswap.wire.channel import Channel
from hotswap.wire.messages import Message, MessageType
from hotswap.wire.statemachine import HandoverStateMachine

S = TypeVar("S", bound=Enum)


class TrackedChannel(Generic[S]):
    def __init__(self, channel: Channel, machine: HandoverStateMachine[S]) -> None:
        self.channel = channel
        self.machine = machine

    @property
    def state(self) -> S:
        return self.machine.state

    def send(
        self,
        msg_type: MessageType,
        payload: bytes = b"",
        fds: list[int] | tuple[int, ...] = (),
        timeout: float | None = None,
    ) -> None:
        self.machine.advance(msg_type)
        self.channel.send(msg_type, payload, fds, timeout=timeout)

    def recv(self, timeout: float | None) -> Message:
        message = self.channel.recv(timeout, self.machine.incoming())
        self.machine.advance(message.type)
        return message
