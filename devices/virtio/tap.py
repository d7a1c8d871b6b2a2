"""Opening a tap device for virtio-net: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR with a 12-byte vnet header, so each
frame read or written carries the virtio 1.x virtio_net_hdr in front of it."""

from __future__ import annotations

import fcntl
import os
import struct

from devices.virtio.errors import TapError

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16

# _IOW('T', nr, int): direction write (1 << 30), size 4, type 'T'.
TUNSETIFF = 0x4004_54CA
TUNSETVNETHDRSZ = 0x4004_54D8
TUNGETIFF = 0x8004_54D2

IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR

VNET_HDR_SIZE = 12  # virtio_net_hdr with num_buffers, the virtio 1.x layout

_IFREQ = struct.Struct(f"{IFNAMSIZ}sH22x")  # struct ifreq: name, flags, padding to 40 bytes


def open_tap(name: str) -> int:
    """Attach to (or create) tap interface `name`; return a non-blocking, close-on-exec fd the caller owns."""
    encoded = name.encode()
    if not encoded or len(encoded) >= IFNAMSIZ or b"\0" in encoded:
        raise TapError(f"open tap: interface name {name!r} must be 1..{IFNAMSIZ - 1} bytes")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TapError(f"open tap {name}: cannot open {TUN_PATH}: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, TAP_FLAGS))
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
    except OSError as exc:
        os.close(fd)
        raise TapError(f"open tap {name}: TUNSETIFF/TUNSETVNETHDRSZ failed: {exc.strerror}") from None
    return fd


def tap_name(fd: int) -> str:
    """The interface name behind a tap fd (e.g. one inherited from a previous VMM process)."""
    try:
        raw = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
    except OSError as exc:
        raise TapError(f"tap name: TUNGETIFF failed: {exc.strerror}") from None
    name, _ = _IFREQ.unpack(raw)
    return bytes(name).rstrip(b"\0").decode()
