"""Tap fds opened the way a manager (libvirt, a test) opens one before handing it to `hotswap run --net fd=N`."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from devices.virtio.tap import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUN_PATH, TUNSETIFF

TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
_IFREQ = struct.Struct("16sH22x")


def attach_tap(name: str, flags: int = TAP_FLAGS) -> int:
    """Open /dev/net/tun and TUNSETIFF it to `name` (created if missing, gone with the last fd unless persistent)
    with `flags`, and nothing more: no vnet header size, blocking, inheritable only where passed (pass_fds)."""
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


def tap_fds_of(pid: int, name: str) -> list[int]:
    """The fds of process `pid` attached to tap interface `name` (their fdinfo says `iff: NAME`)."""
    found = []
    for entry in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            info = entry.read_text()
        except OSError:
            continue
        if f"iff:\t{name}" in info.splitlines():
            found.append(int(entry.name))
    return found
