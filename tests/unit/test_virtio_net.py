"""virtio-net with a SOCK_DGRAM socketpair standing in for the tap fd (one datagram = vnet header + frame)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence

import pytest
from virtio_fakes import DriverQueue, FakeInterrupt, FakeMemory, device_features, driver_ok, negotiate, reg_read

from devices.errors import StateError
from devices.virtio import net
from devices.virtio.constants import COMMON_FEATURES, Status, bit
from devices.virtio.errors import TapError
from devices.virtio.net import RX_QUEUE, TX_QUEUE, VNET_HDR_SIZE, VirtioNet
from devices.virtio.tap import open_tap, tap_name
from devices.virtio.transport import STATUS, VirtioMmioTransport

MAC = "52:54:00:12:34:56"
QUEUE_SIZE = 16
FRAME = bytes.fromhex("ffffffffffff5254001234560806") + bytes(range(46))
Buffer = tuple[int, int, bool]


def vnet_header(flags: int = 0, gso_type: int = 0, num_buffers: int = 0) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso_type, 0, 0, 0, 0, num_buffers)


class NetRig:
    def __init__(self, features: int | None = None) -> None:
        self.memory = FakeMemory()
        self.irq = FakeInterrupt()
        self.host, device_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.host.setblocking(False)
        self.device = VirtioNet(device_end.detach(), MAC, queue_size=QUEUE_SIZE)
        self.transport = VirtioMmioTransport(self.device, self.memory, self.irq)
        self.rx = DriverQueue(self.memory, QUEUE_SIZE)
        self.tx = DriverQueue(self.memory, QUEUE_SIZE)
        assert negotiate(self.transport, features)
        self.rx.configure(self.transport, RX_QUEUE)
        self.tx.configure(self.transport, TX_QUEUE)
        driver_ok(self.transport)

    def post_rx(self, length: int = 2048) -> tuple[int, int]:
        gpa = self.memory.alloc(length)
        self.memory.write(gpa, b"\xcc" * VNET_HDR_SIZE)  # garbage the device must overwrite
        return self.rx.add([(gpa, length, True)]), gpa

    def send_tx(self, buffers: Sequence[Buffer], *, indirect: bool = False) -> int:
        head = self.tx.add(buffers, indirect=indirect)
        self.transport.notify(TX_QUEUE)
        return head

    def tx_packet(self, payload: bytes) -> Buffer:
        gpa = self.memory.alloc(len(payload))
        self.memory.write(gpa, payload)
        return (gpa, len(payload), False)

    def pending_on_host(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.host.recv(65536))
            except BlockingIOError:
                return out

    def healthy(self) -> bool:
        return not reg_read(self.transport, STATUS) & Status.DEVICE_NEEDS_RESET

    def close(self) -> None:
        self.transport.close()
        self.host.close()


@pytest.fixture
def rig() -> Iterator[NetRig]:
    rig = NetRig()
    yield rig
    assert rig.memory.guard_intact()
    rig.close()


def test_features_and_config(rig: NetRig) -> None:
    features = device_features(rig.transport)
    assert features == COMMON_FEATURES | bit(net.F_MAC) | bit(net.F_STATUS) | bit(net.F_CSUM)
    config = rig.transport.read(0x100, 8)
    assert config[:6] == bytes.fromhex("525400123456")
    assert struct.unpack("<H", config[6:8])[0] == net.S_LINK_UP


def test_mac_helpers() -> None:
    assert net.format_mac(net.parse_mac(MAC)) == MAC
    with pytest.raises(ValueError, match="not a MAC"):
        net.parse_mac("52:54:00:12:34")
    mac = net.random_mac()
    assert len(mac) == 6 and mac[0] & 0x02 and not mac[0] & 0x01


# -- transmit ----------------------------------------------------------------------------------------------------
def test_transmit_one_buffer(rig: NetRig) -> None:
    head = rig.send_tx([rig.tx_packet(vnet_header() + FRAME)])
    assert rig.pending_on_host() == [vnet_header() + FRAME]
    assert rig.tx.take_used() == [(head, 0)]
    assert rig.irq.pulses == 1


def test_transmit_scattered_and_indirect(rig: NetRig) -> None:
    rig.send_tx([rig.tx_packet(vnet_header()), rig.tx_packet(FRAME[:20]), rig.tx_packet(FRAME[20:])])
    rig.send_tx([rig.tx_packet(vnet_header() + FRAME[:7]), rig.tx_packet(FRAME[7:])], indirect=True)
    assert rig.pending_on_host() == [vnet_header() + FRAME] * 2
    assert rig.device.tx_frames == 2


@pytest.mark.parametrize("case", ["writable buffer", "shorter than header", "gso frame"])
def test_transmit_refuses_bad_frames(rig: NetRig, case: str) -> None:
    if case == "writable buffer":
        gpa, length, _ = rig.tx_packet(vnet_header() + FRAME)
        buffers = [(gpa, length, True)]
    elif case == "shorter than header":
        buffers = [rig.tx_packet(vnet_header()[:10])]
    else:
        buffers = [rig.tx_packet(vnet_header(gso_type=1) + FRAME)]
    head = rig.send_tx(buffers)
    assert rig.pending_on_host() == []
    assert rig.tx.take_used() == [(head, 0)]
    assert rig.device.tx_dropped == 1
    assert rig.healthy()


def test_partial_checksum_needs_csum_feature() -> None:
    without = NetRig(COMMON_FEATURES | bit(net.F_MAC))
    without.send_tx([without.tx_packet(vnet_header(flags=net.HDR_F_NEEDS_CSUM) + FRAME)])
    assert without.pending_on_host() == []
    without.close()
    with_csum = NetRig()
    with_csum.send_tx([with_csum.tx_packet(vnet_header(flags=net.HDR_F_NEEDS_CSUM) + FRAME)])
    assert len(with_csum.pending_on_host()) == 1
    with_csum.close()


def test_transmit_error_drops_frame(rig: NetRig) -> None:
    rig.host.close()  # the peer is gone: writev fails
    head = rig.send_tx([rig.tx_packet(vnet_header() + FRAME)])
    assert rig.tx.take_used() == [(head, 0)]
    assert rig.device.tx_dropped == 1
    rig.host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


# -- receive -----------------------------------------------------------------------------------------------------
def test_receive_into_posted_buffer(rig: NetRig) -> None:
    assert rig.transport.poll_fds() == []  # no receive buffers yet: do not watch the tap
    head, gpa = rig.post_rx()
    rig.transport.notify(RX_QUEUE)
    assert rig.transport.poll_fds() == [rig.device.fd]
    rig.host.send(vnet_header(flags=2, num_buffers=0) + FRAME)  # the tap may say DATA_VALID; the guest must not see it
    rig.transport.on_fd_readable(rig.device.fd)
    assert rig.rx.take_used() == [(head, VNET_HDR_SIZE + len(FRAME))]
    assert rig.memory.read(gpa, VNET_HDR_SIZE) == vnet_header(num_buffers=1)
    assert rig.memory.read(gpa + VNET_HDR_SIZE, len(FRAME)) == FRAME
    assert rig.irq.pulses == 1
    assert rig.transport.poll_fds() == []


def test_frames_wait_in_the_tap_until_buffers_arrive(rig: NetRig) -> None:
    for i in range(3):
        rig.host.send(vnet_header() + FRAME + bytes([i]))
    rig.transport.on_fd_readable(rig.device.fd)  # no buffers: nothing read
    assert rig.device.rx_frames == 0
    heads = [rig.post_rx()[0] for _ in range(2)]
    rig.transport.notify(RX_QUEUE)  # the guest's notification after posting buffers delivers at once
    assert [h for h, _ in rig.rx.take_used()] == heads
    assert rig.transport.poll_fds() == []  # out of buffers, one frame still queued in the socket
    assert rig.rx.avail_event() == 2  # and the driver will notify when it posts the next buffer
    head, gpa = rig.post_rx()
    rig.transport.notify(RX_QUEUE)
    assert rig.rx.take_used() == [(head, VNET_HDR_SIZE + len(FRAME) + 1)]
    assert rig.memory.read(gpa + VNET_HDR_SIZE + len(FRAME), 1) == b"\x02"


def test_readable_with_nothing_to_read_keeps_buffer(rig: NetRig) -> None:
    rig.post_rx()
    rig.transport.notify(RX_QUEUE)
    rig.transport.on_fd_readable(rig.device.fd)
    assert rig.rx.take_used() == []
    assert rig.transport.poll_fds() == [rig.device.fd]


def test_receive_header_split_across_buffers(rig: NetRig) -> None:
    first, second = rig.memory.alloc(4), rig.memory.alloc(2048)
    head = rig.rx.add([(first, 4, True), (second, 2048, True)])
    rig.host.send(vnet_header() + FRAME)
    rig.transport.notify(RX_QUEUE)
    assert rig.rx.take_used() == [(head, VNET_HDR_SIZE + len(FRAME))]
    assert rig.memory.read(first, 4) + rig.memory.read(second, 8) == vnet_header(num_buffers=1)


@pytest.mark.parametrize("case", ["readable", "too small"])
def test_unusable_receive_buffer(rig: NetRig, case: str) -> None:
    gpa = rig.memory.alloc(2048)
    bad = (gpa, 2048, False) if case == "readable" else (gpa, VNET_HDR_SIZE - 1, True)
    bad_head = rig.rx.add([bad])
    good_head, _ = rig.post_rx()
    rig.host.send(vnet_header() + FRAME)
    rig.transport.notify(RX_QUEUE)
    assert rig.rx.take_used() == [(bad_head, 0), (good_head, VNET_HDR_SIZE + len(FRAME))]
    assert rig.device.rx_errors == 1
    assert rig.healthy()


def test_oversized_frame_is_truncated_not_overflowed(rig: NetRig) -> None:
    gpa = rig.memory.alloc(64)
    after = rig.memory.alloc(16)
    rig.memory.write(after, b"\x77" * 16)
    head = rig.rx.add([(gpa, 64, True)])
    rig.host.send(vnet_header() + bytes(1000))
    rig.transport.notify(RX_QUEUE)
    assert rig.rx.take_used() == [(head, 64)]
    assert rig.memory.read(after, 16) == b"\x77" * 16


# -- live upgrade ------------------------------------------------------------------------------------------------
def test_save_restore_mid_stream(rig: NetRig) -> None:
    rig.post_rx()
    rig.post_rx()
    rig.host.send(vnet_header() + FRAME)
    rig.transport.on_fd_readable(rig.device.fd)
    assert len(rig.rx.take_used()) == 1
    rig.transport.quiesce()
    assert rig.transport.poll_fds() == []  # the event loop stops watching the tap
    rig.host.send(vnet_header() + FRAME[::-1])  # arrives during the handover: waits in the socket
    tx_head = rig.tx.add([rig.tx_packet(vnet_header() + FRAME)])  # its notification is lost
    rig.transport.notify(TX_QUEUE)
    state = rig.transport.save()
    assert state["device"] == {"mac": MAC, "offer_csum": True}
    successor = VirtioNet(os.dup(rig.device.fd), queue_size=QUEUE_SIZE)  # no MAC given: the saved one wins
    transport = VirtioMmioTransport.restore(successor, rig.memory, rig.irq, state)
    assert transport.read(0x100, 6) == bytes.fromhex("525400123456")
    transport.resume()
    assert rig.tx.take_used() == [(tx_head, 0)]
    assert rig.pending_on_host() == [vnet_header() + FRAME]
    ((_, length),) = rig.rx.take_used()
    assert length == VNET_HDR_SIZE + len(FRAME)
    # The old device's fd would be closed by the old process; the new one carries on.
    rig.post_rx()
    rig.host.send(vnet_header() + FRAME)
    assert transport.poll_fds() == [successor.fd]
    transport.on_fd_readable(successor.fd)
    assert len(rig.rx.take_used()) == 1
    transport.close()


def test_restore_rejects_bad_device_state(rig: NetRig) -> None:
    state = rig.transport.save()
    for device_state, match in (
        ({"mac": "nonsense", "offer_csum": True}, "'mac'"),
        ({"mac": MAC, "offer_csum": True, "mtu": 1500}, "unknown field 'mtu'"),
        ({"mac": MAC}, "missing field 'offer_csum'"),
    ):
        successor = VirtioNet(os.dup(rig.device.fd))
        with pytest.raises(StateError, match=match):
            VirtioMmioTransport.restore(successor, rig.memory, rig.irq, {**state, "device": device_state})
        successor.close()


# -- tap -----------------------------------------------------------------------------------------------------------
def test_open_tap_rejects_bad_names() -> None:
    for name in ("", "x" * 16, "a\0b"):
        with pytest.raises(TapError, match="interface name"):
            open_tap(name)


@pytest.mark.skipif(not os.access("/dev/net/tun", os.R_OK | os.W_OK), reason="needs /dev/net/tun")
def test_open_tap_for_real() -> None:
    try:
        fd = open_tap("hsvirtio0")
    except TapError as exc:
        pytest.skip(f"cannot create a tap here: {exc}")
    try:
        assert tap_name(fd) == "hsvirtio0"
        assert not os.get_blocking(fd)
        device = VirtioNet(os.dup(fd))  # an already-open fd is accepted
        device.close()
    finally:
        os.close(fd)


def _tap_with_host_socket(name: str) -> tuple[int, socket.socket]:
    """A tap brought up, and an AF_PACKET socket on its host side (needs root and /dev/net/tun)."""
    try:
        fd = open_tap(name)
    except TapError as exc:
        pytest.skip(f"cannot create a tap here: {exc}")
    try:
        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ifreq = struct.Struct("16sH22x")
        flags = ifreq.unpack(fcntl.ioctl(ctl, 0x8913, ifreq.pack(name.encode(), 0)))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(ctl, 0x8914, ifreq.pack(name.encode(), flags | 1))  # SIOCSIFFLAGS: IFF_UP
        ctl.close()
        host = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        host.bind((name, 0))
    except OSError as exc:
        os.close(fd)
        pytest.skip(f"cannot bring a tap up here: {exc}")
    return fd, host


ETH_P_ALL = 3
ETHERTYPE_TEST = b"\x88\xb5"  # IEEE local experimental: nothing else on the link uses it


@pytest.mark.skipif(not os.access("/dev/net/tun", os.R_OK | os.W_OK), reason="needs /dev/net/tun")
def test_real_tap_round_trip() -> None:
    """Frames through a real kernel tap with IFF_VNET_HDR: the header layout and num_buffers fix-up hold."""
    fd, host = _tap_with_host_socket(f"hsvt{os.getpid() % 100000}")
    memory, irq = FakeMemory(), FakeInterrupt()
    device = VirtioNet(fd, MAC, queue_size=QUEUE_SIZE)
    transport = VirtioMmioTransport(device, memory, irq)
    rx, tx = DriverQueue(memory, QUEUE_SIZE), DriverQueue(memory, QUEUE_SIZE)
    try:
        assert negotiate(transport)
        rx.configure(transport, RX_QUEUE)
        tx.configure(transport, TX_QUEUE)
        driver_ok(transport)
        # guest -> host
        out = bytes.fromhex("525400aabbcc525400123456") + ETHERTYPE_TEST + b"from the guest".ljust(46, b"\0")
        gpa = memory.alloc(VNET_HDR_SIZE + len(out))
        memory.write(gpa, vnet_header() + out)
        tx.add([(gpa, VNET_HDR_SIZE + len(out), False)])
        transport.notify(TX_QUEUE)
        host.settimeout(2)
        while (got := host.recv(4096))[12:14] != ETHERTYPE_TEST:
            pass
        assert got == out
        # host -> guest (other traffic, e.g. IPv6 router solicitations, may arrive too: look for ours)
        inbound = bytes.fromhex("ffffffffffff525400ddeeff") + ETHERTYPE_TEST + b"from the host".ljust(46, b"\0")
        buffers = {}
        for _ in range(8):
            buf = memory.alloc(2048)
            memory.write(buf, b"\xcc" * VNET_HDR_SIZE)
            buffers[rx.add([(buf, 2048, True)])] = buf
        transport.notify(RX_QUEUE)
        host.send(inbound)
        frames = []
        for _ in range(100):
            if device.fd in transport.poll_fds():
                transport.on_fd_readable(device.fd)
            frames += [memory.read(buffers[head], length) for head, length in rx.take_used()]
            if any(f[VNET_HDR_SIZE:] == inbound for f in frames):
                break
            time.sleep(0.01)
        ours = [f for f in frames if f[VNET_HDR_SIZE:] == inbound]
        assert ours == [vnet_header(num_buffers=1) + inbound]
    finally:
        transport.close()
        host.close()
