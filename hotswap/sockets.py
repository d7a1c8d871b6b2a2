"""Unix sockets the VMM serves (control API, console): created 0600, peers checked with SO_PEERCRED."""

from __future__ import annotations

import os
import socket
import stat
import struct

from hotswap.errors import ConfigError


def make_listener(path: str) -> socket.socket:
    """A unix listening socket at `path`, mode 0600. An existing live socket there is an error; a stale one is
    replaced."""
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from a VMM that died
        else:
            raise ConfigError(f"socket {path} is in use by another process")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(path)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot create socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    listener.listen(16)
    listener.set_inheritable(False)
    return listener


def peer_is_allowed(conn: socket.socket) -> bool:
    """Only root and the VMM's own user may use its sockets (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())
