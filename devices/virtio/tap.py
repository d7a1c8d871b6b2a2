"""Tap devices for virtio-net: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR with a 12-byte vnet header, so each frame read or
written carries the virtio 1.x virtio_net_hdr in front of it. open_tap opens one by name; adopt_tap_fd takes over
one opened by someone else (`--net fd=N`) after checking that it was opened that way."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from devices.virtio.errors import TapError

TUN_PATH = "/dev/net/tun"
SYSFS_NET = "/sys/class/net"
IFNAMSIZ = 16

# _IOW('T', nr, int): direction write (1 << 30), size 4, type 'T'.
TUNSETIFF = 0x4004_54CA
TUNSETVNETHDRSZ = 0x4004_54D8
TUNGETIFF = 0x8004_54D2

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR

VNET_HDR_SIZE = 12  # virtio_net_hdr with num_buffers, the virtio 1.x layout

_IFREQ = struct.Struct(f"{IFNAMSIZ}sH22x")  # struct ifreq: name, flags, padding to 40 bytes
# What a handed-in tap must have been attached with: frames without the 4-byte packet info, with the vnet header.
_REQUIRED_FLAGS = ((IFF_NO_PI, "IFF_NO_PI"), (IFF_VNET_HDR, "IFF_VNET_HDR"))


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
        _set_vnet_hdr_size(fd)
    except OSError as exc:
        os.close(fd)
        raise TapError(f"open tap {name}: TUNSETIFF/TUNSETVNETHDRSZ failed: {exc.strerror}") from None
    return fd


def check_tap_fd(fd: int) -> str:
    """Check that `fd` (handed in by whoever started us, as QEMU's `-netdev tap,fd=N`) is an open tap opened with
    IFF_NO_PI and IFF_VNET_HDR, as open_tap opens one; return its interface name. Changes nothing."""
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        raise TapError(f"fd {fd} is not an open file descriptor") from None
    try:
        name, flags = _get_iff(fd)
    except OSError as exc:
        raise TapError(f"fd {fd} is not a tap device (TUNGETIFF failed: {exc.strerror})") from None
    flags = _device_flags(name, flags)
    if not flags & IFF_TAP:
        raise TapError(f"fd {fd} (interface {name}) is a tun device (IFF_TUN), not a tap (IFF_TAP)")
    missing = [label for flag, label in _REQUIRED_FLAGS if not flags & flag]
    if missing:
        raise TapError(
            f"fd {fd} (interface {name}) was opened without {' and '.join(missing)}: "
            "open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
        )
    return name


def adopt_tap_fd(fd: int) -> str:
    """Take over a handed-in tap fd (check_tap_fd first): configure it as open_tap configures its own (12-byte vnet
    header, non-blocking, close-on-exec). The caller owns `fd` from now on. Returns the interface name."""
    name = check_tap_fd(fd)
    try:
        _set_vnet_hdr_size(fd)
    except OSError as exc:
        raise TapError(f"fd {fd} (interface {name}): TUNSETVNETHDRSZ failed: {exc.strerror}") from None
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)
    return name


def _device_flags(name: str, reported: int) -> int:
    """The flags the tap was attached with. TUNGETIFF reports IFF_TAP and IFF_VNET_HDR faithfully, but ORs in
    IFF_NOFILTER (0x1000, the same bit as IFF_NO_PI) whenever no socket filter is attached, so its IFF_NO_PI says
    nothing; the interface's sysfs `tun_flags` holds the device's own flags, IFF_NO_PI included. A tap in another
    network namespace has no entry in our sysfs (or one of another device, which the other bits give away): then
    only TUNGETIFF's answer is left."""
    try:
        device = int((Path(SYSFS_NET) / name / "tun_flags").read_text(), 16)  # e.g. "0x5002"
    except (OSError, ValueError):
        return reported
    faithful = IFF_TUN | IFF_TAP | IFF_VNET_HDR
    if device & faithful != reported & faithful:
        return reported
    return (reported & ~IFF_NO_PI) | (device & IFF_NO_PI)


def _set_vnet_hdr_size(fd: int) -> None:
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))


def tap_name(fd: int) -> str:
    """The interface name behind a tap fd (e.g. one inherited from a previous VMM process)."""
    try:
        return _get_iff(fd)[0]
    except OSError as exc:
        raise TapError(f"tap name: TUNGETIFF failed: {exc.strerror}") from None


def _get_iff(fd: int) -> tuple[str, int]:
    """TUNGETIFF: the interface name and the IFF_* flags the tun fd was attached with."""
    raw = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
    encoded, flags = _IFREQ.unpack(raw)
    return bytes(encoded).rstrip(b"\0").decode(errors="replace"), flags
