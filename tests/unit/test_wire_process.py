"""The channel between two processes: a child started like a successor VMM, with a socketpair end and fds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from hotswap.handover.ownership import OwnershipToken
from hotswap.state import pack, pack_part, unpack
from hotswap.state.sample import sample_tree
from hotswap.wire import (
    PROTOCOL_VERSION,
    Channel,
    ErrorCode,
    Hello,
    MessageType,
    PeerClosed,
    RemoteError,
    Sender,
    negotiate,
)

T = MessageType

# A stand-in successor: HELLO, takes CONFIG + fds, writes into the guest-RAM memfd it got, checks the STATE
# containers (the vCPUs, then the rest), takes the ownership token (the last fd) and answers like the real one would
# (protocol 4).
CHILD = textwrap.dedent(
    """
    import os, socket, sys
    from hotswap.state import StateError, join_parts, unpack_part
    from hotswap.handover.ownership import OwnershipToken
    from hotswap.wire import Channel, ErrorCode, Hello, MessageType as T, Receiver

    sock = socket.socket(fileno=int(sys.argv[1]))
    machine = Receiver()
    with Channel(sock, peer="old VMM") as channel:
        channel.send(T.HELLO, Hello.local().encode()); machine.advance(T.HELLO)
        config = channel.recv(5.0, expect=machine.incoming()); machine.advance(config.type)
        ram = config.fds[0]
        os.pwrite(ram, b"written by pid %d" % os.getpid(), 0)
        channel.send(T.READY, str(len(config.fds)).encode()); machine.advance(T.READY)
        vcpus = channel.recv(5.0, expect=machine.incoming()); machine.advance(vcpus.type)
        state = channel.recv(5.0, expect=machine.incoming()); machine.advance(state.type)
        try:
            version, tree = join_parts([unpack_part(vcpus.payload), unpack_part(state.payload)])
        except StateError as err:
            channel.send_error(ErrorCode.BAD_STATE, str(err))
            sys.exit(3)
        if not OwnershipToken(config.fds[-1]).take():
            sys.exit(4)
        channel.send(T.RESUMED, str(len(tree["vcpus"])).encode()); machine.advance(T.RESUMED)
        config.close_fds()
    """
)


@pytest.fixture
def successor() -> Iterator[tuple[Channel, subprocess.Popen[bytes]]]:
    parent_end, child_end = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(child_end.fileno())],
        pass_fds=[child_end.fileno()],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    child_end.close()
    try:
        with Channel(parent_end, peer="successor") as channel:
            yield channel, child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def test_full_handover_sequence_with_fds_across_processes(successor: tuple[Channel, subprocess.Popen[bytes]]) -> None:
    channel, child = successor
    machine = Sender()
    ram = os.memfd_create("hotswap-test-ram")
    others = [os.dup(ram) for _ in range(298)]  # hundreds of fds, as a VM with many devices would hand over
    token = OwnershipToken.create()
    try:
        hello = Hello.decode(channel.recv(10.0, expect=machine.incoming()).payload)
        machine.advance(T.HELLO)
        assert hello.pid == child.pid
        assert negotiate(hello, state_format=1) == PROTOCOL_VERSION
        channel.send(T.CONFIG, b"{}", [ram, *others, token.fd])
        machine.advance(T.CONFIG)
        assert channel.recv(10.0, expect=machine.incoming()).payload == b"300"
        machine.advance(T.READY)
        tree = sample_tree(vcpus=3)
        channel.send(T.STATE_VCPUS, pack_part({"vcpus": tree.pop("vcpus")}))
        machine.advance(T.STATE_VCPUS)
        assert not machine.state_sent
        channel.send(T.STATE, pack_part(tree))
        machine.advance(T.STATE)
        assert machine.state_sent and not machine.committed
        assert channel.recv(10.0, expect=machine.incoming()).payload == b"3"
        machine.advance(T.RESUMED)
        assert machine.finished and machine.committed
        assert not token.take(), "the successor took the token: the guest is no longer ours"
        assert os.pread(ram, 64, 0) == b"written by pid %d" % child.pid
    finally:
        for fd in (ram, *others):
            os.close(fd)
        token.close()
    assert child.wait(timeout=10) == 0


def test_a_rejected_state_reaches_the_old_vmm_as_an_error(successor: tuple[Channel, subprocess.Popen[bytes]]) -> None:
    channel, child = successor
    ram = os.memfd_create("hotswap-test-ram")
    try:
        channel.recv(10.0, expect={T.HELLO})
        channel.send(T.CONFIG, b"", [ram, ram])
        channel.recv(10.0, expect={T.READY})
        tree = sample_tree(vcpus=1)
        channel.send(T.STATE_VCPUS, pack_part({"vcpus": tree.pop("vcpus")}))
        corrupted = bytearray(pack_part(tree))
        corrupted[100] ^= 0xFF
        channel.send(T.STATE, bytes(corrupted))
        with pytest.raises(RemoteError) as info:
            channel.recv(10.0, expect={T.RESUMED})
        assert info.value.code is ErrorCode.BAD_STATE
        assert "state container: bad checksum" in str(info.value)
    finally:
        os.close(ram)
    assert child.wait(timeout=10) == 3


def test_a_dead_successor_is_seen_as_peer_closed(successor: tuple[Channel, subprocess.Popen[bytes]]) -> None:
    channel, child = successor
    channel.recv(10.0, expect={T.HELLO})
    child.kill()
    child.wait(timeout=10)
    with pytest.raises(PeerClosed, match="successor closed the connection while waiting for READY"):
        channel.recv(10.0, expect={T.READY})


def test_state_survives_the_trip_exactly() -> None:
    # The same bytes decode to the same tree in another process: nothing depends on process-local state.
    tree = sample_tree(vcpus=2, seed=5)
    blob = pack(tree)
    script = (
        "import sys; from hotswap.state import unpack, pack; "
        "sys.stdout.buffer.write(pack(unpack(sys.stdin.buffer.read()).tree))"
    )
    result = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True, check=True, timeout=30)
    assert result.stdout == blob
    assert unpack(result.stdout).tree == tree
