"""`hotswap upgrade --mode exec`: the VMM re-executes itself and keeps its pid (like QEMU's cpr-exec).

The guest's memfds and every other fd survive execve (CLOEXEC cleared on them); the paused guest's state and the
fd layout go into one more memfd, the "exec image", that the new program reads. The pid stays, so a supervisor
that tracks it, or a shell running `hotswap run` in the foreground, sees nothing change.

The price: the pause covers execve, interpreter start-up and building the VM (hundreds of milliseconds where the
default transfer mode pauses for about a millisecond), because nothing can be prepared ahead in a process that
does not exist yet. Before pausing, the target is probed (`_successor --probe`) for the state formats it reads.
If the new image cannot restore the state it execs back into the previous command line with the same image
(once); only if that also fails is the guest lost.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from hotswap import __version__, exitcodes, log
from hotswap.api.actions import Upgrade
from hotswap.api.server import current_connection, raw_response
from hotswap.config import MachineConfig
from hotswap.errors import ApiError, UpgradeError
from hotswap.handover.faults import fault_point
from hotswap.handover.layout import HandoverFds, virtio_fds_for
from hotswap.handover.sender import successor_command
from hotswap.machine.machine import Machine, RunState
from hotswap.machine.virtio import virtio_specs
from hotswap.state import FORMATS, check_fields, decode, encode, get_field, pack, unpack
from hotswap.wire.messages import SUPPORTED_PROTOCOL_VERSIONS

if TYPE_CHECKING:
    from hotswap.vmm import Vmm

FALLBACK_ENV = "HOTSWAP_EXEC_FALLBACK"
IMAGE_FIELDS = frozenset(
    {
        "config",
        "generation",
        "booted_at_ns",
        "fds",
        "fd_numbers",
        "request_fd",
        "state",
        "paused_ns",
        "captured_ns",
        "old_version",
        "fallback_argv",
    }
)


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def probe(argv: list[str], timeout: float) -> dict[str, Any]:
    """Ask the target which protocol and state formats it speaks, before anything is paused."""
    try:
        done = subprocess.run([*argv, "_successor", "--probe"], capture_output=True, text=True, timeout=timeout)
        answer: dict[str, Any] = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise UpgradeError(f"{' '.join(argv)} cannot take over by exec: probing it failed ({exc})") from None
    if FORMATS.current not in answer.get("state_formats", []):
        raise UpgradeError(
            f"{' '.join(argv)} (hotswap {answer.get('version')}) reads state formats {answer.get('state_formats')}, "
            f"this VMM writes format {FORMATS.current}"
        )
    return answer


def probe_answer() -> dict[str, Any]:
    return {
        "version": __version__,
        "protocol_versions": list(SUPPORTED_PROTOCOL_VERSIONS),
        "state_formats": sorted(FORMATS.readable),
    }


def exec_over(vmm: Vmm, action: Upgrade) -> NoReturn:
    """Pause, write the exec image, execve. Returns only by raising (the upgrade failed, the guest runs on)."""
    machine = vmm.machine
    if machine.state is not RunState.RUNNING:
        raise ApiError(f"cannot upgrade: the VM is {machine.state.value} (resume it first)", 409)
    argv = successor_command(action.executable)
    probe(argv, action.timeout)
    connection = current_connection()
    fds = HandoverFds(
        memory=machine.platform.memory.fds,
        console=machine.console.fds(),
        api_listener=vmm.api.listener_fd,
        virtio=[fd for fd in machine.devices.host_fds() if fd is not None],
    )
    inherited = [*fds.flat(), *([connection.fileno()] if connection is not None else [])]
    image_fd = os.memfd_create("hotswap-exec-image", 0)
    vmm.api.stop_accepting()
    machine.console.stop_serving()
    gc.disable()
    window = machine.pause()
    try:
        machine.devices.quiesce()
        image = encode(
            {
                "config": machine.config.to_dict(),
                "generation": machine.generation + 1,
                "booted_at_ns": machine.booted_at_ns,
                "fds": fds.counts(),
                "fd_numbers": fds.flat(),
                "request_fd": connection.fileno() if connection is not None else -1,
                "state": pack(machine.capture_state()),
                "paused_ns": window.first_paused_ns,
                "captured_ns": now_ns(),
                "old_version": __version__,
                "fallback_argv": [sys.executable, "-m", "hotswap"],
            }
        )
        os.write(image_fd, image)
        for fd in inherited:
            os.set_inheritable(fd, True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], [*argv, "_successor", "--exec-image", str(image_fd)])
    except OSError as exc:
        for fd in inherited:
            os.set_inheritable(fd, False)
        os.close(image_fd)
        machine.resume()
        machine.devices.resume()
        gc.enable()
        vmm.api.start()
        raise UpgradeError(f"upgrade by exec failed, the guest keeps running: {exc}") from None
    raise AssertionError("unreachable")


def run_exec_image(image_fd: int) -> int:
    """The new program image: take the paused guest over from the image the previous one left."""
    started = now_ns()
    log.configure_from_environment()
    logger = log.get("handover").bind(side="exec")
    request_fd = -1
    try:
        image = _read_image(image_fd)
        request_fd = get_field(image, "request_fd", int)
        vmm, built = _take_over(image)
    except Exception as exc:
        # Nothing has run the guest since the pause: hand the image back to the command that made it, once.
        logger.error("exec.takeover_failed", error=str(exc))
        if os.environ.get(FALLBACK_ENV) != "1":
            os.environ[FALLBACK_ENV] = "1"
            fallback = _fallback_argv(image_fd)
            if fallback:
                os.execv(fallback[0], [*fallback, "_successor", "--exec-image", str(image_fd)])
        _answer(request_fd, 500, {"error": f"upgrade by exec failed after execve, the guest is lost: {exc}"})
        return exitcodes.ERROR
    os.close(image_fd)
    os.environ.pop(FALLBACK_ENV, None)
    machine = vmm.machine
    restored = now_ns()
    resumed = machine.resume()
    machine.devices.resume()
    gc.freeze()  # what exists now lives as long as this VMM: out of every later collection's way (heap.py)
    gc.enable()
    vmm.register()
    result = {
        "name": machine.config.name,
        "old_pid": os.getpid(),
        "new_pid": os.getpid(),
        "old_version": get_field(image, "old_version", str),
        "new_version": __version__,
        "generation": machine.generation,
        "mode": "exec",
        "downtime_us": us(get_field(image, "paused_ns", int), resumed),
        "state_bytes": len(get_field(image, "state", bytes)),
        "guest_memory_copied_bytes": 0,
        "phases_us": {
            "capture": us(get_field(image, "paused_ns", int), get_field(image, "captured_ns", int)),
            "exec_and_startup": us(get_field(image, "captured_ns", int), started),
            "build": us(started, built),
            "restore": us(built, restored),
            "resume": us(restored, resumed),
        },
    }
    _answer(request_fd, 200, result)
    logger.info("upgrade.done", **{k: v for k, v in result.items() if not isinstance(v, dict)})
    return vmm.run()


def _read_image(image_fd: int) -> dict[str, Any]:
    os.lseek(image_fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(image_fd, 1 << 20):
        chunks.append(chunk)
    return check_fields(decode(b"".join(chunks)), IMAGE_FIELDS, path="exec image")


def _fallback_argv(image_fd: int) -> list[str]:
    """The previous program's command, read leniently (the image may be what this build failed to parse)."""
    try:
        os.lseek(image_fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(image_fd, 1 << 20):
            data += chunk
        image = decode(data)
        argv = image.get("fallback_argv") if isinstance(image, dict) else None
        return [str(arg) for arg in argv] if isinstance(argv, list) else []
    except Exception:
        return []


def us(start: int, end: int) -> int:
    return max(0, (end - start) // 1000)


def _take_over(image: dict[str, Any]) -> tuple[Vmm, int]:
    """Build the machine on the inherited fds and restore the state; returns it with the time it was built."""
    from hotswap.vmm import Vmm

    config = MachineConfig.from_dict(get_field(image, "config", dict))
    numbers = [int(fd) for fd in get_field(image, "fd_numbers", list)]
    layout = HandoverFds.split(get_field(image, "fds", dict), numbers)
    generation = get_field(image, "generation", int)
    log.bind(vm=config.name, generation=generation)
    if os.environ.get(FALLBACK_ENV) != "1":
        fault_point("exec", generation, "takeover")
    machine = Machine.create(
        config,
        memory_fds=layout.memory,
        console_fds=layout.console,
        virtio_fds=virtio_fds_for([spec.kind for spec in virtio_specs(config)], layout.virtio),
        generation=generation,
        booted_at_ns=get_field(image, "booted_at_ns", int),
    )
    for fd in numbers:
        os.set_inheritable(fd, False)
    vmm = Vmm(machine, socket.socket(fileno=layout.api_listener))
    machine.start_paused()
    machine.loop.start()
    built = now_ns()
    machine.restore_state(unpack(get_field(image, "state", bytes)).tree)
    return vmm, built


def _answer(request_fd: int, status: int, payload: dict[str, Any]) -> None:
    if request_fd < 0:
        return
    connection = socket.socket(fileno=request_fd)
    try:
        connection.sendall(raw_response(status, payload))
    except OSError:
        pass
    finally:
        connection.close()
