"""Channel over real sockets: framing, fds (SCM_RIGHTS), truncation, timeouts, limits and ERROR propagation."""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
import zlib
from collections.abc import Iterator

import pytest

from hotswap.wire import (
    Channel,
    ErrorCode,
    Message,
    MessageType,
    PeerClosed,
    ProtocolError,
    RemoteAbort,
    RemoteError,
    WireTimeout,
)
from hotswap.wire.messages import encode_header

T = MessageType


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    before = open_fds()
    yield
    leaked = open_fds() - before
    assert not leaked, f"leaked fds: {sorted(leaked)}"


@pytest.fixture
def pair(no_fd_leak: None) -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    with Channel(a, peer="successor") as old, Channel(b, peer="old VMM") as new:
        yield old, new


@pytest.fixture
def raw_pair(no_fd_leak: None) -> Iterator[tuple[socket.socket, Channel]]:
    """A raw socket to forge bytes with, and a Channel reading them."""
    a, b = socket.socketpair()
    with a, Channel(b, peer="forger") as channel:
        yield a, channel


def fd_identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


# --- round trips ------------------------------------------------------------------------------------------------


def test_message_round_trip(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    old.send(T.CONFIG, b"config bytes")
    old.send(T.COMMIT)
    assert new.recv(1.0) == Message(T.CONFIG, 0, b"config bytes", ())
    assert new.recv(1.0, expect={T.COMMIT}) == Message(T.COMMIT, 0, b"", ())


def test_large_payload_in_both_directions(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    payload = os.urandom(3 * 1024 * 1024)  # more than the socket buffers: needs the sender and receiver to overlap
    sender = threading.Thread(target=old.send, args=(T.STATE, payload))
    sender.start()
    received = new.recv(5.0)
    sender.join()
    assert received.payload == payload
    new.send(T.RESTORED, memoryview(payload)[:100])
    assert old.recv(1.0).payload == payload[:100]


def test_one_thread_sends_while_another_receives_with_timeouts(pair: tuple[Channel, Channel]) -> None:
    # Both directions at once, each larger than the socket buffers: needs independent send and receive waits.
    old, new = pair
    payloads = {old: os.urandom(2 * 1024 * 1024), new: os.urandom(2 * 1024 * 1024)}
    senders = [threading.Thread(target=c.send, args=(T.STATE, payloads[c]), kwargs={"timeout": 10.0}) for c in pair]
    for sender in senders:
        sender.start()
    received = {new: new.recv(10.0).payload, old: old.recv(10.0).payload}
    for sender in senders:
        sender.join()
    assert received[new] == payloads[old]
    assert received[old] == payloads[new]


def test_fds_arrive_as_new_descriptors_of_the_same_files(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    read_end, write_end = os.pipe()
    memfd = os.memfd_create("hotswap-test-ram")
    try:
        os.write(memfd, b"guest ram")
        old.send(T.CONFIG, b"cfg", [memfd, write_end])
        message = new.recv(1.0, expect={T.CONFIG})
        try:
            assert len(message.fds) == 2
            assert set(message.fds).isdisjoint({memfd, write_end})
            assert fd_identity(message.fds[0]) == fd_identity(memfd)
            assert os.pread(message.fds[0], 9, 0) == b"guest ram"
            os.write(message.fds[1], b"!")
            assert os.read(read_end, 1) == b"!"
            assert os.get_inheritable(message.fds[0]) is False
        finally:
            message.close_fds()
        assert len(message.fds) == 0
    finally:
        for fd in (read_end, write_end, memfd):
            os.close(fd)


@pytest.mark.parametrize("count", [1, 253, 254, 600, 1000])
def test_many_fds_are_split_across_header_bytes(pair: tuple[Channel, Channel], count: int) -> None:
    old, new = pair
    memfds = [os.memfd_create(f"m{i}") for i in range(min(count, 8))]
    try:
        for index, fd in enumerate(memfds):
            os.write(fd, str(index).encode())
        fds = [memfds[i % len(memfds)] for i in range(count)]
        old.send(T.CONFIG, b"payload after the fds", fds)
        old.send(T.COMMIT)
        message = new.recv(2.0)
        try:
            assert message.payload == b"payload after the fds"
            assert len(message.fds) == count
            for index, fd in enumerate(message.fds):  # order is kept across chunks
                assert os.pread(fd, 8, 0) == str(index % len(memfds)).encode()
        finally:
            message.close_fds()
        assert new.recv(1.0).type is T.COMMIT  # the stream stays in step after a chunked message
    finally:
        for fd in memfds:
            os.close(fd)


def test_too_many_fds_are_refused_before_anything_is_sent(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    with pytest.raises(ProtocolError, match="4049 fds exceed the limit of 4048"):
        old.send(T.CONFIG, b"", [0] * 4049)
    old.send(T.READY)
    assert new.recv(1.0).type is T.READY


# --- fd accounting ----------------------------------------------------------------------------------------------


def test_ancillary_buffer_too_small_is_detected_and_fds_are_closed(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with Channel(a) as old, Channel(b, fds_per_chunk=4) as new:
        memfds = [os.memfd_create("m") for _ in range(10)]
        try:
            old.send(T.CONFIG, b"x", memfds)  # one chunk of 10; the receiver has room for 4
            with pytest.raises(ProtocolError, match=r"fds truncated \(more than 4 in one chunk\)"):
                new.recv(1.0)
            with pytest.raises(ProtocolError, match="unusable after an earlier error"):
                new.recv(1.0)
        finally:
            for fd in memfds:
                os.close(fd)


def test_fd_count_mismatch_closes_what_arrived(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    header = encode_header(T.CONFIG, 0, 3, 0)  # announces 3 fds
    memfd = os.memfd_create("m")
    try:
        raw.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd]))])
        with pytest.raises(ProtocolError, match="CONFIG announced 3 fds but 1 arrived"):
            channel.recv(1.0)
    finally:
        os.close(memfd)


def test_fds_without_an_announcement_are_refused(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    memfd = os.memfd_create("m")
    try:
        raw.sendmsg(
            [encode_header(T.READY, 0, 0, 0)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd]))]
        )
        with pytest.raises(ProtocolError, match="READY announced 0 fds but 1 arrived"):
            channel.recv(1.0)
    finally:
        os.close(memfd)


def test_fds_of_an_unexpected_message_are_closed(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    memfd = os.memfd_create("m")
    try:
        old.send(T.CONFIG, b"", [memfd, memfd])
        with pytest.raises(ProtocolError, match="got CONFIG while waiting for READY"):
            new.recv(1.0, expect={T.READY})
        old.send(T.READY)
        assert new.recv(1.0, expect={T.READY}).type is T.READY  # framing is intact: the channel goes on
    finally:
        os.close(memfd)


# --- truncation and peer close ----------------------------------------------------------------------------------


def test_peer_closed_before_a_message(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed, match="forger closed the connection while waiting for READY"):
        channel.recv(1.0, expect={T.READY})


def test_truncated_header(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    raw.sendall(encode_header(T.READY, 0, 0, 0)[:5])
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed, match=r"mid-message \(5 of 16 header bytes\)"):
        channel.recv(1.0)


def test_truncated_payload(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    raw.sendall(encode_header(T.STATE, 0, 0, 1000) + b"x" * 999)
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(
        PeerClosed, match=r"mid-message \(999 of 1000 STATE payload bytes\) while waiting for a message"
    ):
        channel.recv(1.0)


def test_peer_close_mid_message_closes_fds_already_received(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    memfd = os.memfd_create("m")
    try:
        header = encode_header(T.CONFIG, 0, 1, 10)
        raw.sendmsg([header, b"abc"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd]))])
        raw.shutdown(socket.SHUT_WR)
        with pytest.raises(PeerClosed):
            channel.recv(1.0)
    finally:
        os.close(memfd)  # the no_fd_leak fixture checks the received copy was closed


def test_send_to_a_closed_peer(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    b.close()
    with Channel(a, peer="successor") as channel, pytest.raises(PeerClosed, match="successor closed the connection"):
        channel.send(T.STATE, b"x" * 100)


# --- timeouts ---------------------------------------------------------------------------------------------------


def test_timeout_with_nothing_received_leaves_the_channel_usable(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    with pytest.raises(WireTimeout, match="timed out with nothing received while waiting for RESTORED") as info:
        new.recv(0.05, expect={T.RESTORED})
    assert not info.value.partial
    old.send(T.RESTORED)
    assert new.recv(1.0).type is T.RESTORED


def test_timeout_in_the_middle_of_a_message_breaks_the_channel(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    raw.sendall(encode_header(T.STATE, 0, 0, 100) + b"partial")
    with pytest.raises(WireTimeout, match="in the middle of a message") as info:
        channel.recv(0.05)
    assert info.value.partial
    raw.sendall(b"y" * 93)
    with pytest.raises(ProtocolError, match="unusable"):
        channel.recv(0.05)


def test_zero_timeout_polls(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    with pytest.raises(WireTimeout):
        new.recv(0)
    old.send(T.READY, b"r")
    assert new.recv(0).payload == b"r"


def test_send_timeout_when_the_peer_does_not_read(pair: tuple[Channel, Channel]) -> None:
    old, _new = pair
    with pytest.raises(WireTimeout, match="while sending STATE"):
        old.send(T.STATE, b"x" * (16 * 1024 * 1024), timeout=0.1)
    with pytest.raises(ProtocolError, match=r"unusable after an earlier error \(WireTimeout while sending STATE\)"):
        old.send(T.READY)


# --- limits and garbage -----------------------------------------------------------------------------------------


def test_oversized_length_is_refused_before_reading_it(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with a, Channel(b, max_payload=1024) as channel:
        a.sendall(encode_header(T.STATE, 0, 0, 1025))
        with pytest.raises(ProtocolError, match="STATE payload of 1025 bytes exceeds the limit of 1024"):
            channel.recv(1.0)


def test_oversized_send_is_refused(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with b, Channel(a, max_payload=10) as channel, pytest.raises(ProtocolError, match="exceeds 10"):
        channel.send(T.STATE, b"x" * 11)


def test_garbage_is_a_protocol_error(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError, match="bad magic b'GE'"):
        channel.recv(1.0)


def test_unknown_type_is_a_protocol_error(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    header = bytearray(encode_header(T.READY, 0, 0, 0))
    struct.pack_into("<H", header, 2, 0x4242)
    struct.pack_into("<I", header, 12, zlib.crc32(bytes(header[:12])))
    raw.sendall(bytes(header))
    with pytest.raises(ProtocolError, match="unknown message type 0x4242"):
        channel.recv(1.0)


# --- ERROR and ABORT --------------------------------------------------------------------------------------------


def test_error_where_another_message_was_expected_reaches_the_user(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    new.send_error(ErrorCode.RESTORE_FAILED, "KVM_SET_LAPIC failed: EINVAL (vcpus[1].lapic)")
    with pytest.raises(RemoteError) as info:
        old.recv(1.0, expect={T.RESTORED})
    assert info.value.code is ErrorCode.RESTORE_FAILED
    assert info.value.message == "KVM_SET_LAPIC failed: EINVAL (vcpus[1].lapic)"
    assert str(info.value) == "successor reported RESTORE_FAILED: KVM_SET_LAPIC failed: EINVAL (vcpus[1].lapic)"
    assert not isinstance(info.value, RemoteAbort)


def test_error_also_raises_without_expect(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    new.send_error(ErrorCode.BUSY, "an upgrade is already running")
    with pytest.raises(RemoteError, match="BUSY: an upgrade is already running"):
        old.recv(1.0)


def test_error_is_returned_when_expected(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    new.send_error(ErrorCode.TIMEOUT, "slow")
    message = old.recv(1.0, expect={T.READY, T.ERROR})
    assert message.type is T.ERROR


def test_abort_raises_remote_abort(pair: tuple[Channel, Channel]) -> None:
    old, new = pair
    old.send_abort(ErrorCode.ABORTED, "cancelled by the user")
    with pytest.raises(RemoteAbort, match=r"old VMM aborted \(ABORTED\): cancelled by the user") as info:
        new.recv(1.0, expect={T.STATE})
    assert info.value.code is ErrorCode.ABORTED


def test_malformed_error_payload_still_raises(raw_pair: tuple[socket.socket, Channel]) -> None:
    raw, channel = raw_pair
    raw.sendall(encode_header(T.ERROR, 0, 0, 2) + b"\x01\x00")
    with pytest.raises(RemoteError, match="malformed ERROR payload") as info:
        channel.recv(1.0)
    assert info.value.code is ErrorCode.UNKNOWN


# --- TCP --------------------------------------------------------------------------------------------------------


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


def test_tcp_sets_nodelay_and_carries_messages(no_fd_leak: None) -> None:
    client, accepted = tcp_pair()
    with Channel(client) as source, Channel(accepted) as destination:
        assert source.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        payload = os.urandom(200_000)
        source.send(T.STATE, payload)
        assert destination.recv(2.0).payload == payload
        with pytest.raises(ProtocolError, match="fds can only be sent over a unix socket"):
            source.send(T.CONFIG, b"", [0])
        source.close()
        with pytest.raises(PeerClosed):
            destination.recv(1.0)


def test_a_datagram_socket_is_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(ValueError, match="stream socket"):
        Channel(a)
