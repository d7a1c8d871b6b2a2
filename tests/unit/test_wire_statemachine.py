"""The receiver (successor) and sender (old VMM) state machines: the one legal order, aborts, the commit point."""

from __future__ import annotations

import pytest

from hotswap.wire import MessageType, ProtocolError, Receiver, ReceiverState, Sender, SenderState

T = MessageType
R = ReceiverState
S = SenderState

# Protocol 5 (this build's old VMMs) with the vCPU records declined, and protocol 4: the state in two messages;
# the successor takes the ownership token instead of a RESTORED/COMMIT round trip.
SEQUENCE = [T.HELLO, T.CONFIG, T.READY, T.STATE_VCPUS, T.STATE, T.RESUMED]
RECEIVER_STATES = [R.HELLO_SENT, R.CONFIGURED, R.READY_SENT, R.VCPUS_RECEIVED, R.STATE_RECEIVED, R.RESUMED]
SENDER_STATES = [S.HELLO_RECEIVED, S.CONFIG_SENT, S.READY_RECEIVED, S.VCPUS_SENT, S.STATE_SENT, S.RESUMED]
# Protocol 3, and protocol 5 with the vCPU records accepted (the vCPUs in shared memory): STATE alone.
TOKEN_SEQUENCE = [T.HELLO, T.CONFIG, T.READY, T.STATE, T.RESUMED]
TOKEN_STATES = [R.HELLO_SENT, R.CONFIGURED, R.READY_SENT, R.STATE_RECEIVED, R.RESUMED]
# Protocols 1-2 (older old VMMs handing over to this build).
COMMIT_SEQUENCE = [T.HELLO, T.CONFIG, T.READY, T.STATE, T.RESTORED, T.COMMIT, T.RESUMED]
COMMIT_STATES = [R.HELLO_SENT, R.CONFIGURED, R.READY_SENT, R.STATE_RECEIVED, R.RESTORED_SENT, R.COMMITTED, R.RESUMED]


def sequence_of(protocol: int) -> list[MessageType]:
    return SEQUENCE if protocol >= 4 else TOKEN_SEQUENCE if protocol == 3 else COMMIT_SEQUENCE


def receiver_at(steps: int, protocol: int = 4) -> Receiver:
    machine = Receiver(protocol)
    for msg_type in sequence_of(protocol)[:steps]:
        machine.advance(msg_type)
    return machine


def test_receiver_walks_the_sequence() -> None:
    machine = Receiver()
    assert machine.state is R.STARTED
    for msg_type, state in zip(SEQUENCE, RECEIVER_STATES, strict=True):
        assert machine.advance(msg_type) is state
        assert machine.state is state
    assert machine.finished and machine.committed and not machine.can_abort


def test_receiver_walks_protocol_3s_sequence() -> None:
    machine = Receiver(3)
    for msg_type, state in zip(TOKEN_SEQUENCE, TOKEN_STATES, strict=True):
        assert machine.advance(msg_type) is state
    assert machine.finished and machine.committed


@pytest.mark.parametrize("protocol", [1, 2])
def test_receiver_walks_the_older_protocols_commit_sequence(protocol: int) -> None:
    machine = Receiver(protocol)
    for msg_type, state in zip(COMMIT_SEQUENCE, COMMIT_STATES, strict=True):
        assert machine.advance(msg_type) is state
    assert machine.finished and machine.committed


def test_the_protocol_is_chosen_once_config_arrived() -> None:
    machine = receiver_at(2)  # CONFIGURED, protocol 4's sequence so far
    machine.use_protocol(2)
    machine.advance(T.READY)
    machine.advance(T.STATE)
    with pytest.raises(ProtocolError, match=r"got RESUMED in state STATE_RECEIVED \(expected RESTORED\)"):
        machine.advance(T.RESUMED)
    with pytest.raises(ProtocolError, match="cannot change the protocol in state STATE_RECEIVED"):
        machine.use_protocol(3)
    with pytest.raises(ProtocolError, match="protocol 9 is not one of"):
        Receiver(9)


def test_sender_walks_the_sequence() -> None:
    machine = Sender()
    assert machine.state is S.STARTED and not machine.state_sent
    for msg_type, state in zip(SEQUENCE, SENDER_STATES, strict=True):
        assert machine.advance(msg_type) is state
        assert machine.state_sent == (state in (S.STATE_SENT, S.RESUMED))
    assert machine.finished and machine.committed


def test_the_brief_example_message() -> None:
    machine = receiver_at(1)
    with pytest.raises(ProtocolError) as info:
        machine.advance(T.STATE)
    assert str(info.value) == "handover receiver: got STATE in state HELLO_SENT (expected CONFIG)"
    assert machine.state is R.HELLO_SENT  # a rejected message changes nothing


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_every_out_of_order_message_is_rejected(protocol: int) -> None:
    sequence = sequence_of(protocol)
    for steps in range(len(sequence) + 1):
        for wrong in [t for t in MessageType if t not in (T.ERROR, T.ABORT)]:
            if steps < len(sequence) and wrong is sequence[steps]:
                continue
            machine = receiver_at(steps, protocol)
            with pytest.raises(ProtocolError, match=f"got {wrong.name} in state {machine.state.name}"):
                machine.advance(wrong)


@pytest.mark.parametrize("steps", range(len(SEQUENCE) + 1))
def test_the_sender_rejects_every_out_of_order_message(steps: int) -> None:
    """This build's old VMM speaks protocol 5 only: after STATE, RESTORED or COMMIT is as wrong as anything else."""
    for wrong in [t for t in MessageType if t not in (T.ERROR, T.ABORT)]:
        if steps < len(SEQUENCE) and wrong is SEQUENCE[steps]:
            continue
        machine = Sender()
        for msg_type in SEQUENCE[:steps]:
            machine.advance(msg_type)
        state = machine.state
        with pytest.raises(ProtocolError, match=f"got {wrong.name} in state {state.name}"):
            machine.advance(wrong)
        assert machine.state is state


def test_migration_types_are_reserved_but_not_part_of_the_handover() -> None:
    machine = receiver_at(3)
    with pytest.raises(ProtocolError, match="got MEMORY_PAGES in state READY_SENT"):
        machine.advance(T.MEMORY_PAGES)


@pytest.mark.parametrize(
    ("protocol", "steps"), [(4, n) for n in range(5)] + [(3, n) for n in range(4)] + [(2, n) for n in range(6)]
)
@pytest.mark.parametrize("ending", [T.ABORT, T.ERROR])
def test_abort_or_error_before_the_commit_point_ends_in_aborted(protocol: int, steps: int, ending: MessageType) -> None:
    machine = receiver_at(steps, protocol)
    assert machine.can_abort
    assert machine.advance(ending) is R.ABORTED
    assert machine.finished and not machine.committed and not machine.can_abort
    with pytest.raises(ProtocolError, match="got READY in state ABORTED"):
        machine.advance(T.READY)
    with pytest.raises(ProtocolError, match=r"got ABORT in state ABORTED \(the sequence is over\)"):
        machine.advance(T.ABORT)


def test_nothing_aborts_after_commit() -> None:
    machine = receiver_at(6, protocol=2)
    assert machine.state is R.COMMITTED and machine.committed
    with pytest.raises(ProtocolError, match=r"got ABORT in state COMMITTED \(the guest is already committed\)"):
        machine.advance(T.ABORT)
    assert machine.advance(T.RESUMED) is R.RESUMED


def test_nothing_aborts_after_resumed() -> None:
    machine = receiver_at(6)
    assert machine.state is R.RESUMED and machine.committed
    with pytest.raises(ProtocolError, match=r"got ERROR in state RESUMED \(the guest is already committed\)"):
        machine.advance(T.ERROR)


def test_sender_error_after_state_ends_the_wire_sequence() -> None:
    # After STATE the token decides who runs the guest (hotswap/handover/ownership.py); the wire just ends.
    machine = Sender()
    for msg_type in SEQUENCE[:4]:
        machine.advance(msg_type)
    assert not machine.state_sent  # STATE_VCPUS alone: the successor cannot take the guest yet
    machine.advance(T.STATE)
    assert machine.state_sent
    assert machine.advance(T.ERROR) is S.ABORTED


def test_incoming_and_outgoing_follow_the_direction() -> None:
    receiver, sender = Receiver(), Sender()
    for msg_type in SEQUENCE:
        successor_sends = msg_type in (T.HELLO, T.READY, T.RESUMED)
        assert receiver.outgoing() == ({msg_type} if successor_sends else set())
        assert receiver.incoming() == (set() if successor_sends else {msg_type})
        assert sender.incoming() == ({msg_type} if successor_sends else set())
        assert sender.outgoing() == (set() if successor_sends else {msg_type})
        receiver.advance(msg_type)
        sender.advance(msg_type)
    assert receiver.incoming() == receiver.outgoing() == frozenset()


def test_a_receiver_that_took_the_vcpu_records_expects_state_alone() -> None:
    machine = Receiver(5)
    for msg_type in (T.HELLO, T.CONFIG):
        machine.advance(msg_type)
    machine.use_protocol(5, lane=True)  # decided before READY, from CONFIG's offer
    assert machine.lane
    for msg_type, state in zip(TOKEN_SEQUENCE[2:], TOKEN_STATES[2:], strict=True):
        assert machine.advance(msg_type) is state
    assert machine.finished and machine.committed


def test_a_receiver_that_took_the_records_refuses_state_vcpus() -> None:
    machine = Receiver(5)
    for msg_type in (T.HELLO, T.CONFIG):
        machine.advance(msg_type)
    machine.use_protocol(5, lane=True)
    machine.advance(T.READY)
    with pytest.raises(ProtocolError, match="got STATE_VCPUS in state READY_SENT \\(expected STATE\\)"):
        machine.advance(T.STATE_VCPUS)


def test_only_protocol_5_has_records() -> None:
    machine = Receiver(4)
    machine.use_protocol(4, lane=True)
    assert not machine.lane
    for msg_type in (T.HELLO, T.CONFIG, T.READY):
        machine.advance(msg_type)
    assert machine.incoming() == frozenset({T.STATE_VCPUS})


def test_the_sender_drops_state_vcpus_once_the_records_were_taken() -> None:
    machine = Sender()
    for msg_type in (T.HELLO, T.CONFIG, T.READY):
        machine.advance(msg_type)
    machine.use_lane()
    assert machine.outgoing() == frozenset({T.STATE})
    machine.advance(T.STATE)
    assert machine.state_sent
    assert machine.advance(T.RESUMED) is S.RESUMED and machine.committed


def test_the_sender_cannot_drop_state_vcpus_once_sent() -> None:
    machine = Sender()
    for msg_type in (T.HELLO, T.CONFIG, T.READY, T.STATE_VCPUS):
        machine.advance(msg_type)
    with pytest.raises(ProtocolError, match="VCPUS_SENT is not part of the new sequence"):
        machine.use_lane()
