"""`hotswap console`: connect the terminal to a VM's console socket. Ctrl-] detaches."""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty

from hotswap import exitcodes
from hotswap.errors import ConfigError

DETACH = b"\x1d"  # Ctrl-]


def attach(path: str) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot attach to console {path}: {exc.strerror or exc}") from None
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    if interactive:
        tty.setraw(stdin)
        os.write(1, b"[attached; Ctrl-] detaches]\r\n")
    try:
        _pump(sock, stdin, interactive)
    except BrokenPipeError:
        pass  # our reader went away (`hotswap console vm | head`): that is how attaching ends
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
    return exitcodes.OK


def _pump(sock: socket.socket, stdin: int, interactive: bool) -> None:
    reading_stdin = True
    while True:
        watched = [sock] + ([stdin] if reading_stdin else [])
        readable, _, _ = select.select(watched, [], [])
        if sock in readable:
            data = sock.recv(65536)
            if not data:
                return  # the VM stopped
            os.write(1, data)
        if stdin in readable:
            data = os.read(stdin, 4096)
            if not data:
                reading_stdin = False
                continue
            if interactive and DETACH in data:
                data = data.split(DETACH, 1)[0]
                if data:
                    sock.sendall(data)
                return
            sock.sendall(data)
