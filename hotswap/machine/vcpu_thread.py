"""One thread per vCPU running KVM_RUN, with pause/resume.

Pausing: set kvm_run.immediate_exit and send the thread a signal. A vCPU inside KVM_RUN returns EINTR; one about to
enter returns at once because of immediate_exit. Either way KVM first completes a pending port-I/O or MMIO read, so
the state read while paused is consistent (the KVM API documents this for immediate_exit). The thread then waits;
its vCPU is touched by other threads only while `paused` is set.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from hotswap.machine.exit_handler import ExitBus, Stop, handle_exit
from kvm import KvmError, Vcpu
from kvm._ffi import lib

KICK_SIGNAL = signal.SIGRTMIN + 1  # SIGRTMIN itself is taken by some libcs' thread internals
_kick_handler_installed = False


def install_kick_handler() -> None:
    """A no-op C-level handler: the signal only interrupts KVM_RUN and never wakes the Python main thread."""
    global _kick_handler_installed
    if not _kick_handler_installed:
        rc = lib.hs_install_kick_handler(KICK_SIGNAL)
        if rc < 0:
            raise KvmError("sigaction", -rc, "vCPU kick signal")
        _kick_handler_installed = True


class VcpuThread:
    """Runs one vCPU. `on_stop(index, Stop)` is called (from this thread) when the guest must stop."""

    def __init__(self, vcpu: Vcpu, pio: ExitBus, mmio: ExitBus, on_stop: Callable[[int, Stop], None]) -> None:
        install_kick_handler()
        self.vcpu = vcpu
        self._pio = pio
        self._mmio = mmio
        self._on_stop = on_stop
        self._pause_requested = False
        self._quit = False
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"vcpu{vcpu.id}", daemon=True)
        self._ident: int | None = None
        self.paused_at_ns = 0
        self.resumed_at_ns = 0

    @property
    def index(self) -> int:
        return self.vcpu.id

    def start(self, paused: bool = False) -> None:
        """Start the thread; with paused=True it waits for resume() before the first KVM_RUN."""
        if paused:
            self._pause_requested = True
            self.vcpu.immediate_exit = True
        self._thread.start()

    # -- pause / resume (called from other threads) -----------------------------------------------------------
    def request_pause(self) -> None:
        """Ask the vCPU to stop; wait_paused() waits for it. Split so several vCPUs stop in parallel."""
        self._resume.clear()
        self._pause_requested = True
        self.vcpu.immediate_exit = True
        ident = self._ident
        if ident is not None and not self._paused.is_set():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass  # the thread already ended

    def wait_paused(self, timeout: float | None = None) -> bool:
        return self._paused.wait(timeout)

    def pause(self, timeout: float | None = None) -> bool:
        self.request_pause()
        return self.wait_paused(timeout)

    @property
    def is_paused(self) -> bool:
        return self._paused.is_set()

    def resume(self) -> None:
        self._pause_requested = False
        self.vcpu.immediate_exit = False
        self._paused.clear()
        self._resume.set()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread for good (the machine is shutting down or was handed over)."""
        self._quit = True
        self.request_pause()
        self._resume.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        self._ident = threading.get_ident()
        vcpu = self.vcpu
        pio, mmio = self._pio, self._mmio
        try:
            while not self._quit:
                if self._pause_requested:
                    # Enter once with immediate_exit set: completes a pending I/O read before we report paused.
                    vcpu.run()
                    if self._pause_requested:
                        self._park()
                    continue
                result = handle_exit(vcpu.run(), pio, mmio, vcpu)
                if isinstance(result, Stop):
                    if result.kind == "failure":
                        result = Stop(result.kind, f"vCPU {vcpu.id}: {result.detail}{self._where()}")
                    self._on_stop(vcpu.id, result)
                    self._park_until_quit()
                    return
        except KvmError as exc:
            self._on_stop(vcpu.id, Stop("failure", f"vCPU {vcpu.id}: {exc}"))
            self._park_until_quit()

    def _where(self) -> str:
        """Where the guest was, for failure reports (best effort: the vCPU may be unreadable)."""
        try:
            regs = self.vcpu.get_regs()
            sregs = self.vcpu.get_sregs()
        except KvmError:
            return ""
        return f" at RIP {regs.rip:#x} (CS {sregs.cs.selector:#x}, CPL {sregs.cs.dpl}, CR0 {sregs.cr0:#x})"

    def _park(self) -> None:
        self.paused_at_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self._paused.set()
        self._resume.wait()
        self.resumed_at_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def _park_until_quit(self) -> None:
        self._paused.set()
        while not self._quit:
            self._resume.wait(1.0)
            self._resume.clear()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
