"""Starting a VMM from `hotswap run`: in the foreground, or as a daemon that reports back once the guest runs."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from hotswap import exitcodes, heap, log, registry, sdnotify
from hotswap.config import MachineConfig
from hotswap.errors import HotswapError
from hotswap.machine.machine import Machine
from hotswap.sockets import make_listener
from hotswap.vmm import Vmm


def start_vmm(config: MachineConfig) -> Vmm:
    """Create the sockets and the machine, boot the guest, register it. Errors leave nothing behind."""
    api_listener = make_listener(config.api_socket)
    machine: Machine | None = None
    try:
        machine = Machine.create(config)
        vmm = Vmm(machine, api_listener)
        heap.settle()
        machine.boot()
        vmm.register()
        sdnotify.notify(ready=1, mainpid=os.getpid())  # Type=notify units: the guest is booting, we are up
        log.get("vmm").info("vmm.started", name=config.name, cpus=config.cpus, mem_size=config.mem_size)
        return vmm
    except BaseException:
        if machine is not None:
            machine.console.close(unlink=config.console_socket if config.console == "socket" else None)
            machine.shutdown()
        api_listener.close()
        _unlink(config.api_socket)
        raise


def run_foreground(config: MachineConfig) -> int:
    vmm = start_vmm(config)
    return vmm.run()


def run_daemon(config: MachineConfig, as_json: bool) -> int:
    """Fork a detached VMM; print its pid and sockets once the guest runs, or its one-line error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        _detach_stdio(registry.log_path(config.name))
        log.configure(os.environ.get("HOTSWAP_LOG_LEVEL", "info"), json=True)
        try:
            vmm = start_vmm(config)
        except HotswapError as exc:
            os.write(write_end, json.dumps({"error": str(exc)}).encode())
            os._exit(exitcodes.ERROR)
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": f"internal error: {exc!r}"}).encode())
            os._exit(exitcodes.ERROR)
        os.write(write_end, json.dumps({"pid": os.getpid()}).encode())
        os.close(write_end)
        os._exit(vmm.run())
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    try:
        report: dict[str, Any] = json.loads(raw) if raw else {"error": "the VMM exited before reporting"}
    except ValueError:
        report = {"error": f"the VMM reported garbage: {raw[:80]!r}"}
    if "error" in report:
        os.waitpid(pid, 0)
        print(f"hotswap: error: {report['error']}", file=sys.stderr)
        return exitcodes.ERROR
    result = {
        "name": config.name,
        "pid": report["pid"],
        "api_socket": config.api_socket,
        "console_socket": config.console_socket,
        "log": registry.log_path(config.name),
    }
    if as_json:
        print(json.dumps(result))
    else:
        print(f"started {config.name}: pid {result['pid']}, api {config.api_socket}, console {config.console_socket}")
    return exitcodes.OK


def _detach_stdio(log_file: str) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
