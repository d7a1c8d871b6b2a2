"""The process name shows the VM name and its generation (`ps`, `top`), so an operator sees which VMM is which."""

from __future__ import annotations

try:
    import prctl
except ImportError:  # python-prctl is a declared dependency; degrade rather than fail if it is missing
    prctl = None


def set_process_title(name: str, generation: int) -> None:
    if prctl is None:
        return
    title = f"hotswap {name} gen{generation}"
    try:
        prctl.set_name(f"hs:{name}"[:15])  # the kernel's comm, 15 bytes
        prctl.set_proctitle(title)
    except (OSError, ValueError):
        pass


def set_thread_name(name: str) -> None:
    """The calling thread's comm (15 bytes), as `ps -L` and `top -H` show it."""
    if prctl is None:
        return
    try:
        prctl.set_name(name[:15])
    except (OSError, ValueError):
        pass
