"""The VMM process: a machine, its control API, its registry record, and the main thread waiting for the end.

The main thread only waits: for the guest to stop (poweroff, reset, failure), for a shutdown request, for a signal,
or for a live upgrade to hand the guest to a successor. Everything else runs on the vCPU, I/O and API threads.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from hotswap import __version__, exitcodes, log, registry
from hotswap.api.actions import Action, Describe, Pause, Resume, Shutdown, Upgrade
from hotswap.api.server import ApiServer
from hotswap.errors import ApiError

# Imported when the VMM starts, not at its upgrade: a VMM hands over once in its life, so a lazy import here ran
# in every upgrade, ~15 ms of CPU holding the GIL while the vCPU threads needed it for their exits (a 4-5 ms gap
# for the guest; ftrace sched events, docs/design-notes.md).
from hotswap.handover.sender import hand_over
from hotswap.machine.exit_handler import Stop
from hotswap.machine.machine import Machine, RunState
from hotswap.proctitle import set_process_title
from hotswap.quick_exit import leave_at_once
from hotswap.state import codec as state_codec


class Vmm:
    def __init__(self, machine: Machine, api_listener: socket.socket) -> None:
        self.machine = machine
        self.api = ApiServer(api_listener, self)
        self._busy = threading.Lock()  # one state-changing action at a time (pause/resume/upgrade/shutdown)
        self._handed_over = threading.Event()
        self._upgrade_replied = threading.Event()
        self._staged: registry.StagedRecord | None = None
        self._log = log.get("vmm")

    # -- the controller ---------------------------------------------------------------------------------------
    def execute(self, action: Action) -> dict[str, Any]:
        if isinstance(action, Describe):
            return self.describe()
        if not self._busy.acquire(blocking=False):
            raise ApiError("another operation (an upgrade, pause or resume) is in progress", 409)
        try:
            return self._execute_locked(action)
        finally:
            self._busy.release()

    def _execute_locked(self, action: Action) -> dict[str, Any]:
        machine = self.machine
        if machine.state is RunState.STOPPED or machine.stop_reason is not None:
            raise ApiError("the guest has stopped", 409)
        if isinstance(action, Pause):
            if machine.state is not RunState.RUNNING:
                raise ApiError(f"cannot pause: the VM is {machine.state.value}", 409)
            machine.pause()
            self._log.info("vmm.paused")
            return self.describe()
        if isinstance(action, Resume):
            if machine.state is not RunState.PAUSED:
                raise ApiError(f"cannot resume: the VM is {machine.state.value}", 409)
            machine.resume()
            self._log.info("vmm.resumed")
            return self.describe()
        if isinstance(action, Shutdown):
            machine.request_stop(Stop("poweroff", "shutdown requested through the API"))
            return {"state": "stopping"}
        if isinstance(action, Upgrade):
            return self.upgrade(action)
        raise ApiError(f"unsupported action {action!r}", 400)

    def replied(self, action: Action) -> None:
        if isinstance(action, Upgrade) and self._handed_over.is_set():
            self._upgrade_replied.set()  # the user has the outcome of the upgrade that handed the guest over

    def describe(self) -> dict[str, Any]:
        machine = self.machine
        config = machine.config
        return {
            "name": config.name,
            "pid": os.getpid(),
            "version": __version__,
            "state": machine.state.value,
            "generation": machine.generation,
            "uptime_s": round((time.time_ns() - machine.booted_at_ns) / 1e9, 3),
            "booted_at_ns": machine.booted_at_ns,
            "cpus": config.cpus,
            "mem_size": config.mem_size,
            "api_socket": config.api_socket,
            "console_socket": config.console_socket if config.console == "socket" else None,
            # UART exits this process served in C, without Python (kvm/byte_queue.py)
            "serial_exits_in_c": machine.devices.serial_port.queue.served,
            # "c" when the state codec's happy path is compiled (hotswap/state/_fastcodec.c), else "python"
            "state_codec": state_codec.IMPLEMENTATION,
            "config": config.to_dict(),
        }

    def upgrade(self, action: Upgrade) -> dict[str, Any]:
        result = hand_over(self, action)
        return result

    # -- lifetime ---------------------------------------------------------------------------------------------
    def _record(self) -> registry.VmRecord:
        config = self.machine.config
        return registry.VmRecord(config.name, os.getpid(), config.api_socket, config.console_socket)

    def stage_registration(self) -> None:
        """A successor, before the guest's pause: write our record now, so that register() is one rename."""
        self._staged = registry.stage_record(self._record())

    def discard_registration(self) -> None:
        """A successor that gives up: remove the record it staged."""
        self._staged = None
        registry.discard_staged(self.machine.config.name, os.getpid())

    def register(self) -> None:
        """Publish our record: from now `hotswap ls`, --name and --pid find this process."""
        config = self.machine.config
        staged, self._staged = self._staged, None
        registry.publish_record(staged if staged is not None else registry.stage_record(self._record()))
        set_process_title(config.name, self.machine.generation)
        log.bind(vm=config.name, generation=self.machine.generation)

    def mark_handed_over(self) -> None:
        self._handed_over.set()
        self.machine.request_stop(Stop("handover", "the guest now runs in a successor VMM"))

    def run(self) -> int:
        """Serve until the guest stops (returns the process exit status) or is handed over (ends the process:
        leave_at_once)."""
        self._install_signal_handlers()
        self.api.start()
        reason = None
        while reason is None:
            reason = self.machine.wait(0.5)
        if self._handed_over.is_set():
            self._upgrade_replied.wait(5.0)  # let the API thread finish telling the user how it went
            self._log.info("vmm.handed_over")
            # Nothing to finalize: the successor holds its own copies of every fd and the registry record is its.
            leave_at_once(exitcodes.OK)
        self._log.info("vmm.stopping", kind=reason.kind, detail=reason.detail)
        print(f"hotswap: {self.machine.config.name}: {reason.detail}", file=sys.stderr, flush=True)
        self.api.close()
        config = self.machine.config
        self.machine.devices.flush_output()
        self.machine.console.close(unlink=config.console_socket if config.console == "socket" else None)
        self.machine.shutdown()
        _unlink(config.api_socket)
        registry.remove_record(config.name, os.getpid())
        return exitcodes.STOP_KIND_EXIT.get(reason.kind, exitcodes.ERROR)

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            self.machine.request_stop(Stop("poweroff", f"{name} received: stopping the VM"))

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_signal)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
