"""The receiver (successor) and sender (old VMM) state machines: the one legal order, aborts, the commit point."""

from __future__ import annotations

import pytest

from hotswap.wire import MessageType, ProtocolError, Receiver, ReceiverState, Sender, SenderState

T = MessageType
R = ReceiverState
S = SenderState

SEQUENCE = [T.HELLO, T.CONFIG, T.READY, T.STATE, T.RESTORED, T.COMMIT, T.RESUMED]
RECEIVER_STATES = [R.HELLO_SENT, R.CONFIGURED, R.READY_SENT, R.STATE_RECEIVED, R.RESTORED_SENT, R.COMMITTED, R.RESUMED]
SENDER_STATES = [
    S.HELLO_RECEIVED,
    S.CONFIG_SENT,
    S.READY_RECEIVED,
    S.STATE_SENT,
    S.RESTORED_RECEIVED,
    S.COMMITTED,
    S.RESUMED,
]


def receiver_at(steps: int) -> Receiver:
    machine = Receiver()
    for msg_type in SEQUENCE[:steps]:
        machine.advance(msg_type)
    return machine


def test_receiver_walks_the_sequence() -> None:
    machine = Receiver()
    assert machine.state is R.STARTED
    for msg_type, state in zip(SEQUENCE, RECEIVER_STATES, strict=True):
        assert machine.advance(msg_type) is state
        assert machine.state is state
    assert machine.finished and machine.committed and not machine.can_abort


def test_sender_walks_the_sequence() -> None:
    machine = Sender()
    assert machine.state is S.STARTED and machine.owns_guest
    for msg_type, state in zip(SEQUENCE, SENDER_STATES, strict=True):
        assert machine.advance(msg_type) is state
    assert machine.finished and not machine.owns_guest


def test_the_brief_example_message() -> None:
    machine = receiver_at(1)
    with pytest.raises(ProtocolError) as info:
        machine.advance(T.STATE)
    assert str(info.value) == "handover receiver: got STATE in state HELLO_SENT (expected CONFIG)"
    assert machine.state is R.HELLO_SENT  # a rejected message changes nothing


@pytest.mark.parametrize("steps", range(len(SEQUENCE) + 1))
def test_every_out_of_order_message_is_rejected(steps: int) -> None:
    for wrong in [t for t in MessageType if t not in (T.ERROR, T.ABORT)]:
        if steps < len(SEQUENCE) and wrong is SEQUENCE[steps]:
            continue
        machine = receiver_at(steps)
        with pytest.raises(ProtocolError, match=f"got {wrong.name} in state {machine.state.name}"):
            machine.advance(wrong)


def test_migration_types_are_reserved_but_not_part_of_the_handover() -> None:
    machine = receiver_at(3)
    with pytest.raises(ProtocolError, match="got MEMORY_PAGES in state READY_SENT"):
        machine.advance(T.MEMORY_PAGES)


@pytest.mark.parametrize("steps", range(6))  # STARTED .. RESTORED_SENT
@pytest.mark.parametrize("ending", [T.ABORT, T.ERROR])
def test_abort_or_error_before_commit_ends_in_aborted(steps: int, ending: MessageType) -> None:
    machine = receiver_at(steps)
    assert machine.can_abort
    assert machine.advance(ending) is R.ABORTED
    assert machine.finished and not machine.committed and not machine.can_abort
    with pytest.raises(ProtocolError, match="got READY in state ABORTED"):
        machine.advance(T.READY)
    with pytest.raises(ProtocolError, match=r"got ABORT in state ABORTED \(the sequence is over\)"):
        machine.advance(T.ABORT)


def test_nothing_aborts_after_commit() -> None:
    machine = receiver_at(6)
    assert machine.state is R.COMMITTED and machine.committed
    with pytest.raises(ProtocolError, match=r"got ABORT in state COMMITTED \(the guest is already committed\)"):
        machine.advance(T.ABORT)
    assert machine.advance(T.RESUMED) is R.RESUMED


def test_sender_abort_before_commit_keeps_the_guest() -> None:
    machine = Sender()
    for msg_type in SEQUENCE[:5]:
        machine.advance(msg_type)
    assert machine.advance(T.ERROR) is S.ABORTED
    assert machine.owns_guest


def test_incoming_and_outgoing_follow_the_direction() -> None:
    receiver, sender = Receiver(), Sender()
    for msg_type in SEQUENCE:
        successor_sends = msg_type in (T.HELLO, T.READY, T.RESTORED, T.RESUMED)
        assert receiver.outgoing() == ({msg_type} if successor_sends else set())
        assert receiver.incoming() == (set() if successor_sends else {msg_type})
        assert sender.incoming() == ({msg_type} if successor_sends else set())
        assert sender.outgoing() == (set() if successor_sends else {msg_type})
        receiver.advance(msg_type)
        sender.advance(msg_type)
    assert receiver.incoming() == receiver.outgoing() == frozenset()
