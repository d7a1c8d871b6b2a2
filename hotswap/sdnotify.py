"""systemd's notify protocol (sd_notify) without libsystemd: one datagram to $NOTIFY_SOCKET.

A unit with Type=notify and NotifyAccess=all follows a live upgrade: the successor sends MAINPID=<its pid>."""

from __future__ import annotations

import os
import socket


def notify(**fields: str | int) -> bool:
    """Send KEY=VALUE lines; False when not running under systemd (or the socket is gone)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message)
        except OSError:
            return False
    return True
